"""Baselines evaluated with the same protocol and code path as the model.

Each baseline is fitted on the train parts, tuned on validation NDCG@10, and reported on
test with the validation item appended to the history, like the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pocketrec import _log
from pocketrec.evaluation._metrics import Metrics, evaluate
from pocketrec.evaluation._split import Split

# Item-item baselines hold a dense [num_items, num_items] matrix.
MAX_ITEMS_FOR_ITEM_ITEM = 15_000


class Baseline(Protocol):
    name: str

    def fit(self, split: Split, **params: Any) -> None: ...

    def score(self, histories: list[np.ndarray]) -> np.ndarray: ...


def _multi_hot(histories: Sequence[np.ndarray], num_items: int) -> np.ndarray:
    matrix = np.zeros((len(histories), num_items), dtype=np.float32)
    for row, items in enumerate(histories):
        matrix[row, items] = 1.0
    return matrix


def _gram(split: Split, chunk: int = 2048) -> np.ndarray:
    """float64 [N, N] co-occurrence counts over users' train items."""
    gram = np.zeros((split.num_items, split.num_items), dtype=np.float64)
    for start in range(0, split.num_users, chunk):
        x = _multi_hot(split.train[start : start + chunk], split.num_items)
        gram += x.T @ x
    return gram


class Popularity:
    """Scores every item by its number of train interactions."""

    name = "popularity"

    def fit(self, split: Split) -> None:
        self._counts = split.item_popularity().astype(np.float32)

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        return np.tile(self._counts, (len(histories), 1))


class LastItem:
    """How often item j directly followed the user's recent items in train sequences.

    `window` recent items count, the latest with weight 1, each earlier one half the
    previous; popularity breaks ties.
    """

    name = "last-item"

    def fit(self, split: Split, window: int = 1) -> None:
        self.window = window
        n = split.num_items
        pairs = [s[:-1].astype(np.int64) * n + s[1:] for s in split.train if len(s) > 1]
        keys, counts = np.unique(np.concatenate(pairs) if pairs else np.zeros(0, np.int64),
                                 return_counts=True)  # fmt: skip
        self._keys, self._counts, self._n = keys, counts.astype(np.float32), n
        popularity = split.item_popularity().astype(np.float32)
        self._tie_break = 1e-3 * popularity / max(float(popularity.max()), 1.0)

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        scores = np.tile(self._tie_break, (len(histories), 1))
        for row, items in enumerate(histories):
            for age, item in enumerate(items[::-1][: self.window]):
                lo, hi = np.searchsorted(self._keys, [item * self._n, (item + 1) * self._n])
                scores[row, self._keys[lo:hi] - item * self._n] += self._counts[lo:hi] * 0.5**age
        return scores


class ItemKNN:
    """Item-based collaborative filtering with cosine similarity over co-occurrence.

    Keeps the `neighbors` most similar items of each item.
    """

    name = "itemknn"

    def fit(self, split: Split, neighbors: int = 100) -> None:
        gram = _gram(split)
        norms = np.sqrt(np.diag(gram))
        similarity = gram / np.maximum(np.outer(norms, norms), 1e-12)
        np.fill_diagonal(similarity, 0.0)
        if neighbors < split.num_items:
            weakest = np.argpartition(-similarity, neighbors, axis=1)[:, neighbors:]
            np.put_along_axis(similarity, weakest, 0.0, axis=1)
        self._similarity = similarity.astype(np.float32)

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        return _multi_hot(histories, len(self._similarity)) @ self._similarity


class EASE:
    """Embarrassingly Shallow Autoencoder (Steck, 2019), L2 strength `l2`."""

    name = "ease"

    def fit(self, split: Split, l2: float = 200.0) -> None:
        gram = _gram(split)
        gram[np.diag_indices_from(gram)] += l2
        precision = np.linalg.inv(gram)
        weights = -precision / np.diag(precision)[None, :]
        np.fill_diagonal(weights, 0.0)
        self._weights = weights.astype(np.float32)

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        return _multi_hot(histories, len(self._weights)) @ self._weights


DEFAULT_GRIDS: dict[str, list[dict[str, Any]]] = {
    "popularity": [{}],
    "last-item": [{"window": w} for w in (1, 2, 3, 5, 8)],
    "itemknn": [{"neighbors": k} for k in (20, 50, 100, 400, 1000)],
    "ease": [{"l2": v} for v in (5.0, 20.0, 50.0, 200.0, 500.0, 1000.0)],
}


@dataclass(frozen=True)
class BaselineResult:
    name: str
    params: dict[str, Any]
    valid: Metrics
    test: Metrics
    tried: list[tuple[dict[str, Any], float]] = field(default_factory=list)


def tune(baseline: Baseline, split: Split, grid: Iterable[Mapping[str, Any]]) -> BaselineResult:
    """Fits each parameter set, keeps the best validation NDCG@10, scores it on test."""
    best: tuple[float, dict[str, Any], Metrics] | None = None
    tried = []
    for params in grid:
        baseline.fit(split, **params)
        valid = evaluate(baseline.score, split, "valid")
        tried.append((dict(params), valid.ndcg_at_10))
        if best is None or valid.ndcg_at_10 > best[0]:
            best = (valid.ndcg_at_10, dict(params), valid)
    if best is None:
        raise ValueError(f"empty parameter grid for baseline {baseline.name}")
    _, params, valid = best
    baseline.fit(split, **params)
    return BaselineResult(
        baseline.name, params, valid, evaluate(baseline.score, split, "test"), tried
    )


def run_baselines(
    split: Split, names: Sequence[str] | None = None, *, progress: bool = True
) -> dict[str, BaselineResult]:
    """Tunes and evaluates the baselines (all by default) on one split.

    Item-item baselines are skipped, with a logged warning, for catalogs over
    `MAX_ITEMS_FOR_ITEM_ITEM` items.
    """
    available: dict[str, Baseline] = {
        b.name: b for b in (Popularity(), LastItem(), ItemKNN(), EASE())
    }
    chosen = list(names) if names is not None else list(available)
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {sorted(available)}")
    results = {}
    for name in _log.progress(chosen, "baselines", bar=progress):
        if name in ("itemknn", "ease") and split.num_items > MAX_ITEMS_FOR_ITEM_ITEM:
            _log.LOGGER.warning(
                "skipping baseline %s: %s items exceed the dense item-item limit of %s",
                name,
                f"{split.num_items:,}",
                f"{MAX_ITEMS_FOR_ITEM_ITEM:,}",
            )
            continue
        results[name] = tune(available[name], split, DEFAULT_GRIDS[name])
    return results
