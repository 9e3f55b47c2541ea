"""Baselines evaluated with the same protocol and code path as the model.

Each baseline is fitted on the train parts, tuned on validation NDCG@10, and reported on
test with the validation item appended to the history, like the model. A baseline that
cannot run here (memory, a missing library) is a result marked skipped with the reason,
never silently dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pocketrec import _log
from pocketrec.errors import PocketrecError
from pocketrec.evaluation._metrics import Metrics, evaluate
from pocketrec.evaluation._split import Split

# Working memory of the item-item baselines beyond their model: chunks of co-occurrence
# rows and score batches are sized to stay within it.
WORKSPACE_BYTES = 512 * 2**20
# Share of the memory available at the start of `run_baselines` that a baseline may use.
MEMORY_SHARE = 0.8
_SCIPY_HINT = "it needs scipy, which the train extra installs: pip install 'pocketrec[train]'"


class BaselineSkipped(PocketrecError):
    """A baseline cannot run on this split here; the message says why (a row, not a crash)."""


class Baseline(Protocol):
    name: str

    def fit(self, split: Split, **params: Any) -> None: ...

    def score(self, histories: list[np.ndarray]) -> np.ndarray: ...


def available_memory_bytes() -> int:
    """Memory the system can give this process now (MemAvailable on Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _gib(count: float) -> str:
    return f"{count / 2**30:.1f} GiB"


def _scipy_sparse() -> Any:
    try:
        import scipy.sparse
    except ImportError as error:
        raise BaselineSkipped(_SCIPY_HINT) from error
    return scipy.sparse


def indicator_matrix(rows: Sequence[np.ndarray], num_items: int, dtype: type) -> Any:
    """CSR [len(rows), num_items] with a 1 at each row's items (repeats count once)."""
    sparse = _scipy_sparse()
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = np.concatenate(rows).astype(np.int32) if len(rows) else np.zeros(0, np.int32)
    matrix = sparse.csr_matrix(
        (np.ones(len(indices), dtype=dtype), indices, indptr), shape=(len(rows), num_items)
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1
    return matrix


def _fill_in_chunks(out: np.ndarray, left: Any, right: Any) -> None:
    """``out[:] = left @ right`` for sparse CSR factors, a row chunk at a time.

    The sparse product of a whole catalog can hold far more entries than the dense result
    has bytes; chunks keep it within `WORKSPACE_BYTES`.
    """
    chunk = max(1, WORKSPACE_BYTES // (16 * out.shape[1]))
    for start in range(0, out.shape[0], chunk):
        (left[start : start + chunk] @ right).toarray(out=out[start : start + chunk])


def _invert_spd_in_place(matrix: np.ndarray) -> None:
    """Replaces a C-ordered symmetric positive definite matrix by its inverse, no copy.

    Cholesky (potrf) then potri on the Fortran view of the same memory; LAPACK fills one
    triangle, which is mirrored into the other a block of rows at a time.
    """
    from scipy.linalg import lapack

    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (matrix,))
    factor, info = potrf(matrix.T, lower=False, overwrite_a=True, clean=False)
    if info == 0:
        factor, info = potri(factor, lower=False, overwrite_c=True)
    if info != 0 or not np.shares_memory(factor, matrix):
        raise PocketrecError(
            f"inverting the {len(matrix):,}-square regularised Gram matrix failed (LAPACK "
            f"info {info}); a larger l2 makes it better conditioned"
        )
    # The valid triangle is the lower one of the C-ordered array.
    size = len(matrix)
    block = max(1, WORKSPACE_BYTES // (8 * size))
    for start in range(0, size, block):
        stop = min(start + block, size)
        diagonal = matrix[start:stop, start:stop]
        upper = np.triu_indices(stop - start, 1)
        diagonal[upper] = diagonal.T[upper]
        matrix[start:stop, stop:] = matrix[stop:, start:stop].T


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


def _top_n_mask(similarity: np.ndarray, count: int) -> np.ndarray:
    """Per row, the `count` largest entries; equal values go to the lower column first."""
    if count >= similarity.shape[1]:
        return np.ones(similarity.shape, dtype=bool)
    threshold = -np.partition(-similarity, count - 1, axis=1)[:, count - 1 : count]
    above = similarity > threshold
    room = count - above.sum(axis=1, keepdims=True)
    at = similarity == threshold
    return above | (at & (np.cumsum(at, axis=1, dtype=np.int32) <= room))


class ItemKNN:
    """Item-based collaborative filtering with cosine similarity over co-occurrence.

    Keeps the `neighbors` most similar items of each item (ties: the lower item row),
    as a sparse matrix built a chunk of items at a time: memory stays
    O(items × neighbors) plus `WORKSPACE_BYTES`, whatever the catalog size.
    """

    name = "itemknn"

    def __init__(self, memory_budget: int | None = None) -> None:
        self.memory_budget = memory_budget

    def fit(self, split: Split, neighbors: int = 100) -> None:
        if neighbors < 1:
            raise ValueError(f"neighbors must be at least 1, got {neighbors}")
        items = split.num_items
        needed = 12 * items * min(neighbors, items) + 2 * WORKSPACE_BYTES
        budget = self.memory_budget if self.memory_budget is not None else _default_budget()
        if needed > budget:
            raise BaselineSkipped(
                f"ItemKNN with {neighbors} neighbours of {items:,} items needs about "
                f"{_gib(needed)}; the memory budget is {_gib(budget)}"
            )
        sparse = _scipy_sparse()
        users_items = indicator_matrix(split.train, items, np.float64)
        items_users = users_items.T.tocsr()
        norms = np.sqrt(np.asarray(users_items.sum(axis=0)).ravel())
        # float64 similarity rows and the partition/mask temporaries: about 64 bytes a cell.
        chunk = max(1, WORKSPACE_BYTES // (64 * items))
        rows, columns, values = [], [], []
        for start in range(0, items, chunk):
            similarity = (items_users[start : start + chunk] @ users_items).toarray()
            stop = start + len(similarity)
            similarity /= norms[start:stop, None] * norms[None, :]
            similarity[np.arange(stop - start), np.arange(start, stop)] = 0.0
            chunk_rows, chunk_columns = np.nonzero(
                _top_n_mask(similarity, neighbors) & (similarity > 0)
            )
            rows.append(chunk_rows + start)
            columns.append(chunk_columns)
            values.append(similarity[chunk_rows, chunk_columns].astype(np.float32))
        self._similarity = sparse.csr_matrix(
            (np.concatenate(values), (np.concatenate(rows), np.concatenate(columns))),
            shape=(items, items),
        )

    def neighbours(self, item: int) -> dict[int, float]:
        """The kept neighbours of an item row and their cosine similarity."""
        row = self._similarity[item]
        return dict(zip(row.indices.tolist(), row.data.tolist(), strict=True))

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        rows = indicator_matrix(histories, self._similarity.shape[0], np.float32)
        return (rows @ self._similarity).toarray()


class EASE:
    """Embarrassingly Shallow Autoencoder (Steck, 2019), L2 strength `l2`.

    B = I - P / diag(P) with P = (XᵀX + l2·I)⁻¹ and B_ii = 0. Two exact solvers:
    ``dense`` holds B, float32 [items, items]; ``dual`` goes through the users × users
    system (Woodbury: P = (I - Xᵀ(l2·I + XXᵀ)⁻¹X) / l2), float64 [users, users], and scores
    a batch of histories without forming any items × items matrix. ``auto`` takes the one
    needing less memory; a fit whose estimate exceeds the memory budget is skipped.
    """

    name = "ease"

    def __init__(self, memory_budget: int | None = None) -> None:
        self.memory_budget = memory_budget

    @staticmethod
    def memory_needed(split: Split) -> dict[str, int]:
        """Bytes each solver needs on this split: its matrix plus the working memory."""
        interactions = sum(len(items) for items in split.train)
        extra = 2 * WORKSPACE_BYTES + 24 * interactions
        return {
            "dense": 4 * split.num_items**2 + extra,
            "dual": 8 * split.num_users**2 + extra,
        }

    def fit(self, split: Split, l2: float = 200.0, solver: str = "auto") -> None:
        if l2 <= 0:
            raise ValueError(f"l2 must be positive, got {l2}")
        needed = self.memory_needed(split)
        if solver == "auto":
            solver = min(needed, key=lambda name: needed[name])
        elif solver not in needed:
            raise ValueError(f"unknown EASE solver {solver!r}; choose auto, dense or dual")
        budget = self.memory_budget if self.memory_budget is not None else _default_budget()
        if needed[solver] > budget:
            raise BaselineSkipped(
                f"EASE ({solver} solver) on {split.num_items:,} items and "
                f"{split.num_users:,} users needs about {_gib(needed[solver])}; the memory "
                f"budget is {_gib(budget)}"
            )
        self.solver = solver
        if solver == "dense":
            self._fit_dense(split, l2)
        else:
            self._fit_dual(split, l2)

    def _fit_dense(self, split: Split, l2: float) -> None:
        users_items = indicator_matrix(split.train, split.num_items, np.float32)
        weights = np.zeros((split.num_items, split.num_items), dtype=np.float32)
        _fill_in_chunks(weights, users_items.T.tocsr(), users_items)
        weights[np.diag_indices_from(weights)] += l2
        _invert_spd_in_place(weights)
        weights /= -weights.diagonal().copy()[None, :]
        np.fill_diagonal(weights, 0.0)
        self._weights, self._dual = weights, None

    def _fit_dual(self, split: Split, l2: float) -> None:
        users_items = indicator_matrix(split.train, split.num_items, np.float64)
        items_users = users_items.T.tocsr()
        kernel = np.zeros((split.num_users, split.num_users), dtype=np.float64)
        _fill_in_chunks(kernel, users_items, items_users)
        kernel[np.diag_indices_from(kernel)] += l2
        _invert_spd_in_place(kernel)
        # l2 · diag(P)_j = 1 - X_jᵀ K⁻¹ X_j, by item chunks of K⁻¹X.
        diagonal = np.empty(split.num_items, dtype=np.float64)
        chunk = max(1, WORKSPACE_BYTES // (8 * split.num_users))
        for start in range(0, split.num_items, chunk):
            columns = items_users[start : start + chunk]
            projected = columns @ kernel
            diagonal[start : start + len(projected)] = np.asarray(
                columns.multiply(projected).sum(axis=1)
            ).ravel()
        self._dual = (kernel, users_items, items_users, 1.0 - diagonal)
        self._weights = None

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        if self._dual is None:
            assert self._weights is not None
            rows = indicator_matrix(histories, len(self._weights), np.float32)
            return np.asarray(rows @ self._weights)
        rows = indicator_matrix(histories, self._dual[1].shape[1], np.float64)
        return self.transform(rows.toarray()).astype(np.float32)

    def transform(self, rows: np.ndarray) -> np.ndarray:
        """``rows @ B`` for dense float rows ``[R, items]`` (``score`` is this for 0/1 rows)."""
        if self._dual is None:
            assert self._weights is not None
            return np.asarray(rows, dtype=self._weights.dtype) @ self._weights
        kernel, _, items_users, scaled_diagonal = self._dual
        dense = np.asarray(rows, dtype=np.float64)
        # r = x Xᵀ K⁻¹ X, so x P = (x - r) / l2 and score_j = x_j - (xP)_j / P_jj.
        reconstructed = (items_users @ ((dense @ items_users) @ kernel).T).T
        return dense - (dense - reconstructed) / scaled_diagonal[None, :]


DEFAULT_GRIDS: dict[str, list[dict[str, Any]]] = {
    "popularity": [{}],
    "last-item": [{"window": w} for w in (1, 2, 3, 5, 8)],
    "itemknn": [{"neighbors": k} for k in (20, 50, 100, 400, 1000)],
    "ease": [{"l2": v} for v in (5.0, 20.0, 50.0, 200.0, 500.0, 1000.0)],
}


@dataclass(frozen=True)
class BaselineResult:
    """A tuned baseline's metrics, or why it was skipped.

    Attributes:
        name: the baseline.
        params: the parameters with the best validation NDCG@10 (empty when skipped).
        valid: validation metrics at those parameters; None when skipped.
        test: test metrics at those parameters; None when skipped.
        tried: every parameter set tried with its validation NDCG@10.
        skipped: why the baseline could not run here (memory, a missing library); None
            when it ran.
    """

    name: str
    params: dict[str, Any]
    valid: Metrics | None
    test: Metrics | None
    tried: list[tuple[dict[str, Any], float]] = field(default_factory=list)
    skipped: str | None = None


def tune(baseline: Baseline, split: Split, grid: Iterable[Mapping[str, Any]]) -> BaselineResult:
    """Fits each parameter set, keeps the best validation NDCG@10, scores it on test.

    A fit that raises `BaselineSkipped` or runs out of memory makes the result a skipped
    one, with the reason.
    """
    best: tuple[float, dict[str, Any], Metrics] | None = None
    tried: list[tuple[dict[str, Any], float]] = []
    try:
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
        test = evaluate(baseline.score, split, "test")
    except (BaselineSkipped, MemoryError) as error:
        reason = str(error) if isinstance(error, BaselineSkipped) else f"out of memory: {error}"
        _log.LOGGER.warning("skipping baseline %s: %s", baseline.name, reason)
        return BaselineResult(baseline.name, {}, None, None, tried, skipped=reason)
    return BaselineResult(baseline.name, params, valid, test, tried)


def _default_budget() -> int:
    return int(MEMORY_SHARE * available_memory_bytes())


def run_baselines(
    split: Split,
    names: Sequence[str] | None = None,
    *,
    progress: bool = True,
    memory_budget: int | None = None,
) -> dict[str, BaselineResult]:
    """Tunes and evaluates the baselines (all by default) on one split.

    A baseline that cannot run here (its memory estimate exceeds ``memory_budget`` bytes,
    by default `MEMORY_SHARE` of the memory available now, or scipy is missing) is still
    in the result, with `BaselineResult.skipped` saying why.
    """
    budget = memory_budget if memory_budget is not None else _default_budget()
    available: dict[str, Baseline] = {
        b.name: b for b in (Popularity(), LastItem(), ItemKNN(budget), EASE(budget))
    }
    chosen = list(names) if names is not None else list(available)
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {sorted(available)}")
    return {
        name: tune(available[name], split, DEFAULT_GRIDS[name])
        for name in _log.progress(chosen, "baselines", bar=progress)
    }
