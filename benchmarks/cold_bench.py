"""Cold start, measured: users the model knows nothing about, and items it never saw.

``pocketrec bench-cold --data LOG`` trains twice with the default settings and reports:

- **New users.** Every user's test target ranked by what a user with an empty history
  gets: the model's own empty-history output, the bundle's cold-start vector
  (`pocketrec.training.cold_start`), and popularity (train counts).
- **New items.** A random ``holdout`` share of the items leaves training entirely (their
  events are dropped, they are not in the item table); each test target that is a held-out
  item is then ranked among the held-out items by the user vector · the item tower's
  features-only vector (title words and genres, what `pocketrec embed-items` gives an id
  the model never saw), against their popularity (their train-period event count, which a
  new catalog does not have yet: an optimistic bar) and random order.

Each ranking's NDCG@10 is also given as a change from popularity's on the same targets,
with its standard error over them (paired): a few hundred targets resolve only large gaps.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pocketrec.evaluation import Split, paired_change
from pocketrec.evaluation._metrics import _ndcg, target_ranks

HOLDOUT = 0.1


@dataclass(frozen=True)
class ColdBenchConfig:
    """What to run.

    Attributes:
        seed: seeds the held-out items and the training.
        holdout: share of items held out of training for the new-item measurement.
        epochs: training epochs (None: the training default).
    """

    seed: int = 0
    holdout: float = HOLDOUT
    epochs: int | None = None


def ranking_metrics(ranks: np.ndarray) -> dict[str, float]:
    """NDCG@10, HR@10 and the count of 0-based ``ranks``."""
    ranks = np.asarray(ranks, dtype=np.float64)
    ndcg = _ndcg(ranks, 10)
    return {
        "ndcg@10": float(ndcg.mean()) if len(ranks) else 0.0,
        "hr@10": float((ranks < 10).mean()) if len(ranks) else 0.0,
        "targets": len(ranks),
    }


def compared_rankings(ranks: dict[str, np.ndarray], reference: str) -> dict[str, dict[str, Any]]:
    """`ranking_metrics` of each ranking of the same targets, and for all but ``reference``
    the change of NDCG@10 from it (``vs_reference``: ``change`` and its paired ``se``),
    where that change exists (two or more targets, a reference that scored)."""
    base = _ndcg(np.asarray(ranks[reference], dtype=np.float64), 10)
    compared: dict[str, dict[str, Any]] = {}
    for name, ranking in ranks.items():
        metrics: dict[str, Any] = ranking_metrics(ranking)
        if name != reference and len(base) > 1 and base.mean() > 0:
            change, error = paired_change(base, _ndcg(np.asarray(ranking, np.float64), 10))
            metrics["vs_reference"] = {"reference": reference, "change": change, "se": error}
        compared[name] = metrics
    return compared


def without_items(split: Split, held: np.ndarray) -> Split:
    """``split`` with the item rows ``held`` removed everywhere (rows renumbered).

    Their events leave the train parts; validation and test targets that are held-out
    items become -1 (outside the universe), as for any item unseen in training.
    """
    keep = np.ones(split.num_items, dtype=bool)
    keep[held] = False
    new_row = np.full(split.num_items, -1, dtype=np.int32)
    new_row[keep] = np.arange(int(keep.sum()), dtype=np.int32)

    def targets(rows: np.ndarray) -> np.ndarray:
        return np.where(rows >= 0, new_row[np.maximum(rows, 0)], -1).astype(np.int32)

    return Split(
        item_ids=split.item_ids[keep],
        users=split.users,
        train=[new_row[items][keep[items]] for items in split.train],
        valid=targets(split.valid),
        test=targets(split.test),
        item_genres=split.item_genres[keep],
        genre_names=split.genre_names,
        titles=[title for title, kept in zip(split.titles, keep, strict=True) if kept],
        stats={**split.stats, "items_held_out": len(held)},
    )


def new_users(trained: Any, split: Split) -> dict[str, dict[str, Any]]:
    """Test targets ranked by the empty-history model, the cold-start vector, popularity."""
    from pocketrec.training.cold_start import cold_start_vector

    vectors = trained.item_vectors()
    evaluated = split.test >= 0
    targets = split.test[evaluated]
    rankings = {
        "model, empty history": _empty_history_vector(trained) @ vectors.T,
        "cold-start vector": vectors @ cold_start_vector(vectors, split.histories("test")),
        "popularity": split.item_popularity().astype(np.float32),
    }
    nothing = [np.zeros(0, np.int64)] * len(targets)
    ranks = {
        name: target_ranks(np.tile(scores, (len(targets), 1)), targets, nothing)
        for name, scores in rankings.items()
    }
    return compared_rankings(ranks, "popularity")


def _empty_history_vector(trained: Any) -> np.ndarray:
    """The user tower's own output for an all-zero mask (what bundles had before)."""
    # The tower reads the table's rows: 2 D wide when the model kept follow vectors.
    length, dim = trained.config.history_length, trained.config.table_dim
    history = np.zeros((1, length, dim), np.float32)
    mask = np.zeros((1, length), np.float32)
    return np.asarray(trained.user_tower({"history": history, "mask": mask}))[0]


def new_items(split: Split, held: np.ndarray, trained: Any, seed: int) -> dict[str, dict[str, Any]]:
    """Test targets among the ``held`` items, ranked among those items only."""
    kept = np.setdiff1d(np.arange(split.num_items), held)
    new_row = np.full(split.num_items, -1, dtype=np.int64)
    new_row[kept] = np.arange(len(kept))
    position = {int(row): index for index, row in enumerate(held)}
    users = [u for u, target in enumerate(split.test.tolist()) if target in position]
    targets = np.asarray([position[int(split.test[u])] for u in users], dtype=np.int64)
    histories = []
    for history in split.histories("test"):
        rows = new_row[history]
        histories.append(rows[rows >= 0].astype(np.int32))
    features = trained.feature_vectors(
        split.item_genres[held], [split.titles[int(row)] for row in held]
    )
    user_vectors = trained.user_vectors([histories[u] for u in users])
    popularity = split.item_popularity()[held].astype(np.float32)
    random = np.random.default_rng(seed).random(len(held)).astype(np.float32)
    nothing = [np.zeros(0, np.int64)] * len(users)
    ranks = {
        "model, features only": target_ranks(user_vectors @ features.T, targets, nothing),
        "popularity (oracle counts)": target_ranks(
            np.tile(popularity, (len(users), 1)), targets, nothing
        ),
        "random": target_ranks(np.tile(random, (len(users), 1)), targets, nothing),
    }
    return compared_rankings(ranks, "popularity (oracle counts)")


def run_cold_bench(split: Split, config: ColdBenchConfig) -> dict[str, Any]:
    """Both measurements on ``split``; returns what ``cold.json`` holds."""
    from pocketrec.training import ModelConfig, TrainConfig, train

    if not 0.0 < config.holdout < 1.0:
        raise ValueError(f"expected 0 < holdout < 1, got {config.holdout}")
    epochs = {} if config.epochs is None else {"epochs": config.epochs}
    train_config = TrainConfig(seed=config.seed, progress=False, **epochs)
    started = time.perf_counter()
    trained = train(split, ModelConfig(), train_config)
    users = new_users(trained, split)
    rng = np.random.default_rng(config.seed)
    held = np.sort(
        rng.choice(
            split.num_items, size=max(1, round(config.holdout * split.num_items)), replace=False
        )
    )
    reduced = without_items(split, held)
    items = new_items(split, held, train(reduced, ModelConfig(), train_config), config.seed)
    return {
        "new_users": users,
        "new_items": items,
        "items_held_out": len(held),
        "seed": config.seed,
        "seconds": time.perf_counter() - started,
    }


def cold_markdown(results: dict[str, Any]) -> str:
    """The results as two Markdown tables."""
    columns = "NDCG@10 | vs popularity | HR@10 | targets |"
    lines = [f"| new users: ranking | {columns}", "|---|---|---|---|---|"]
    lines += [_markdown_row(name, m) for name, m in results["new_users"].items()]
    lines += [
        "",
        f"| new items ({results['items_held_out']} held out of training): ranking among "
        f"them | {columns}",
        "|---|---|---|---|---|",
    ]
    lines += [_markdown_row(name, m) for name, m in results["new_items"].items()]
    lines += [
        "",
        "vs popularity: the change of NDCG@10 from popularity's on the same targets, ± its "
        "standard error over them (paired).",
    ]
    return "\n".join(lines) + "\n"


def _markdown_row(name: str, metrics: dict[str, Any]) -> str:
    versus = metrics.get("vs_reference")
    change = f"{versus['change']:+.1%} ± {versus['se']:.1%}" if versus else ""
    return (
        f"| {name} | {metrics['ndcg@10']:.4f} | {change} | {metrics['hr@10']:.4f} "
        f"| {metrics['targets']} |"
    )


def write_cold_results(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "cold.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (out / "cold.md").write_text(cold_markdown(results), encoding="utf-8")
