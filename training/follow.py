"""Follow vectors: what followed a user's latest items, inside the dot-product contract.

A next-item model learns which item follows which through one table shared by the
history and the targets, and holds rare transitions less exactly than a count per pair:
on a strongly sequential log the last-item baseline beat it (docs/training.md). The
*follow vector* of item ``j`` is the mean table vector of the items that directly followed
``j`` in the train sequences. The user tower adds ``weight`` times those of the user's
latest `WINDOW` items (weights 1, 1/2, 1/4, the last-item baseline's) to its output, so
item ``i``'s score gains ``weight * sum_age 0.5**age * mean_{k after j} q_k . q_i``: the
transition counts seen through the table.

The follow vectors ride in the item table as ``D`` more columns where the user vector is
zero: the SDK, the sync and the fast scorer see an ordinary table of ``2D`` columns. They
double the table, so they are kept only where they gain at least `MIN_GAIN` of validation
NDCG@10, with the weight chosen on validation among `WEIGHTS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from pocketrec import _log
from pocketrec.evaluation import Split, evaluate, target_ranks
from pocketrec.training._trained import TrainedModel
from pocketrec.training.model import (
    FOLLOW_VECTORS,
    build_item_tower,
    build_sequence_encoder,
    title_word_ids,
)

WINDOW = 3
WEIGHTS = (0.3, 1.0, 3.0, 10.0, 30.0)
MIN_GAIN = 0.01
# Transitions per np.add.at call: bounds the [chunk, D] gather.
_CHUNK = 1 << 20


def follow_vectors(split: Split, item_vectors: np.ndarray) -> np.ndarray:
    """float32 ``[N, D]``: row ``j`` is the mean of ``item_vectors`` over the items that
    directly followed ``j`` in ``split.train`` (zeros for an item nothing followed)."""
    vectors = np.asarray(item_vectors, dtype=np.float32)
    sums = np.zeros(vectors.shape, np.float64)
    sequences = [s for s in split.train if len(s) > 1]
    if not sequences:
        return sums.astype(np.float32)
    sources = np.concatenate([s[:-1] for s in sequences])
    targets = np.concatenate([s[1:] for s in sequences])
    for start in range(0, len(sources), _CHUNK):
        chunk = slice(start, start + _CHUNK)
        np.add.at(sums, sources[chunk], vectors[targets[chunk]])
    counts = np.bincount(sources, minlength=len(vectors))
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


def recent_follow(
    follow: np.ndarray, histories: Sequence[np.ndarray], window: int = WINDOW
) -> np.ndarray:
    """float32 ``[B, D]``: the follow vectors of each history's latest ``window`` items,
    weighted 1, 1/2, 1/4, ...: what the user tower adds (before the weight)."""
    out = np.zeros((len(histories), follow.shape[1]), np.float32)
    for row, items in enumerate(histories):
        for age, item in enumerate(np.asarray(items)[::-1][:window]):
            out[row] += 0.5**age * follow[item]
    return out


def fit_follow(trained: TrainedModel, split: Split) -> TrainedModel:
    """``trained`` with follow vectors where they gain `MIN_GAIN` on validation, else as is.

    Records the validation NDCG@10 of every weight tried in
    ``train_config["follow_vectors"]["tried"]`` (weight 0: the model as trained) and, where
    they are kept, the kept model's validation metrics (``["valid"]``), which
    `TrainedModel.best_valid_ndcg` and the bundle's manifest then report. Models without
    a sequence encoder, or with follow vectors already, come back unchanged.
    """
    config = trained.config
    if config.follow_window or config.encoder not in ("attention", "gru"):
        return trained
    table = trained.item_table()
    vectors = table.dequantized()
    follow = follow_vectors(split, vectors)

    targets = split.targets("valid")
    users = np.flatnonzero(targets >= 0)
    histories = [split.histories("valid")[user] for user in users]
    user_vectors = trained.user_vectors(histories, table)
    recent = recent_follow(follow, histories)
    valid = {0.0: trained.best_valid_ndcg}
    for weight in WEIGHTS:
        valid[weight] = _ndcg_at_10(
            user_vectors + weight * recent, vectors, targets[users], histories
        )
    best = max(valid, key=lambda weight: valid[weight])
    kept = best if valid[best] >= valid[0.0] * (1.0 + MIN_GAIN) else 0.0
    _log.LOGGER.info(
        "follow vectors: weight %s (valid ndcg@10 %s)",
        kept,
        ", ".join(f"{weight:g}: {value:.4f}" for weight, value in valid.items()),
    )
    record: dict[str, Any] = {
        "window": WINDOW,
        "weight": kept,
        "tried": {f"{weight:g}": value for weight, value in valid.items()},
    }
    if not kept:
        trained.train_config["follow_vectors"] = record
        return trained
    followed = _with_follow(trained, kept * follow)
    # Every metric of the model as kept, through its own towers (the best epoch's record
    # describes the model without the follow vectors).
    metrics = evaluate(followed.score_fn(), split, "valid").as_dict()
    record["valid"] = {name: value for name, value in metrics.items() if name != "users"}
    followed.train_config["follow_vectors"] = record
    return followed


def _ndcg_at_10(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    targets: np.ndarray,
    histories: Sequence[np.ndarray],
) -> float:
    # `evaluate`'s metric over vectors computed once, not once per weight.
    batch = max(1, min(512, 2**24 // len(item_vectors)))
    ranks = np.concatenate(
        [
            target_ranks(
                user_vectors[start : start + batch] @ item_vectors.T,
                targets[start : start + batch],
                list(histories[start : start + batch]),
            )
            for start in range(0, len(targets), batch)
        ]
    )
    return float(np.mean(np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0)))


def _with_follow(trained: TrainedModel, follow: np.ndarray) -> TrainedModel:
    config = dataclasses.replace(trained.config, follow_window=WINDOW)
    item_tower = build_item_tower(
        trained.num_items, config, trained.item_genres, title_word_ids(trained.titles, config)
    )
    encoder = build_sequence_encoder(config)
    for source, target in ((trained.item_tower, item_tower), (trained.encoder, encoder)):
        for layer in source.layers:
            if layer.weights:
                target.get_layer(layer.name).set_weights(layer.get_weights())
    item_tower.get_layer(FOLLOW_VECTORS).set_weights([follow])
    cold_start = trained.cold_start_vector
    return TrainedModel(
        item_tower,
        encoder,
        config,
        item_ids=trained.item_ids,
        item_genres=trained.item_genres,
        genre_names=trained.genre_names,
        titles=trained.titles,
        history=trained.history,
        best_epoch=trained.best_epoch,
        # The user vector is zero in the follow columns, the cold-start one too.
        cold_start_vector=None if cold_start is None else np.pad(cold_start, (0, len(cold_start))),
        train_config=dict(trained.train_config),
    )
