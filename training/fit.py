"""Training of the dual encoder: next-item prediction over every prefix of the train parts.

Each user's train sequence is cut into windows of ``L`` items (sliding from the most recent
end); the causal encoder predicts, at every position of a window, the item that follows.
The loss is a full softmax over the catalog when it is small, else an in-batch softmax with
a logQ popularity correction. Early stopping on validation NDCG@10 (the shared protocol of
`pocketrec.evaluation`) keeps the best epoch's weights.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import dataclasses
import importlib.util
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from pocketrec import _log
from pocketrec.errors import PocketrecError
from pocketrec.evaluation import BaselineSkipped, Metrics, Split, evaluate
from pocketrec.training._trained import TrainedModel
from pocketrec.training.closed_form import fit_low_rank_ease
from pocketrec.training.cold_start import cold_start_vector
from pocketrec.training.follow import fit_follow
from pocketrec.training.item_features import fit_item_features
from pocketrec.training.model import (
    ModelConfig,
    build_item_tower,
    build_sequence_encoder,
    title_word_ids,
)

LOSSES = ("auto", "full", "sampled")
OBJECTIVES = ("auto", "sequence", "set", "ease")


@dataclass(frozen=True)
class TrainConfig:
    """How to train (frozen: derive variants with `dataclasses.replace`).

    Attributes:
        epochs: maximum passes over the training windows.
        batch_size: windows per step.
        learning_rate: Adam learning rate at the start.
        lr_decay: decay the learning rate along a cosine to 10% at the last epoch; the late
            epochs then move little, which steadies the validation metric early stopping
            reads.
        weight_decay: decoupled weight decay (AdamW) of every weight.
        patience: epochs without a better validation NDCG@10 before stopping; the best
            epoch's weights are restored either way.
        seed: seeds weights, dropout and window order; same seed, same model.
        loss: ``"full"`` softmax over every item, ``"sampled"`` in-batch softmax with logQ
            correction, or ``"auto"``: full up to ``full_softmax_max_items`` items.
        full_softmax_max_items: the catalog size up to which ``"auto"`` picks ``"full"``.
        window_stride: items between the ends of two windows of one user (default ``L``:
            each (item, next item) pair is trained once per epoch).
        max_windows: at most this many windows per epoch (a random subset each epoch);
            None uses all.
        tensorboard_dir: where TensorBoard event files go; None writes none.
        progress: show a bar per epoch when stderr is a terminal (`pocketrec._log`); the
            per-epoch log line is written either way.
        exclude_seen: with the full softmax, items already in the window before a position
            are not candidates there (evaluation and the SDK never recommend them either).
        objective: ``"sequence"``: predict the next item in time order with
            ``ModelConfig.encoder``; ``"set"``: order ignored, each epoch shuffles every
            user's items and predicts each from the ones before it in that order (one
            held-out item from a random subset); ``"ease"``: no gradient steps, a low-rank
            EASE solved in closed form into the ``"linear"`` encoder (`closed_form`);
            ``"auto"``: train the sequence and EASE models (the set model in place of an
            EASE past the memory budget) and keep the best on validation, the set and
            EASE models wider and longer (`set_candidate`, `ease_candidate`).
        follow: after next-item training (``objective="sequence"``), add follow vectors
            where they gain on validation (`pocketrec.training.follow`; the fit sets
            ``ModelConfig.follow_window``, whatever the given config says).
    """

    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 2e-3
    lr_decay: bool = True
    weight_decay: float = 0.0
    patience: int = 8
    seed: int = 0
    loss: str = "auto"
    full_softmax_max_items: int = 50_000
    window_stride: int | None = None
    max_windows: int | None = None
    tensorboard_dir: str | None = None
    progress: bool = True
    exclude_seen: bool = True
    objective: str = "auto"
    follow: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` for a setting out of range."""
        for name in ("epochs", "batch_size", "patience", "full_softmax_max_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"expected TrainConfig.{name} >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0 or self.weight_decay < 0:
            raise ValueError(
                f"expected learning_rate > 0 and weight_decay >= 0, got "
                f"{self.learning_rate} and {self.weight_decay}"
            )
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"expected TrainConfig.objective in {OBJECTIVES}, got {self.objective!r}"
            )
        if self.loss not in LOSSES:
            raise ValueError(f"expected TrainConfig.loss in {LOSSES}, got {self.loss!r}")
        for name in ("window_stride", "max_windows"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"expected TrainConfig.{name} >= 1 or None, got {value}")

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready values."""
        return dataclasses.asdict(self)


def make_windows(
    sequences: list[np.ndarray], length: int, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Training windows over time-ordered item sequences.

    For each sequence ``s`` the inputs ``s[:-1]`` predict the targets ``s[1:]``. Windows
    of ``length`` positions end at the most recent input and every ``stride`` inputs before
    it; each is right-aligned like the user tower's input (padding on the left).

    Returns:
        ``items`` int32 ``[W, L]`` (0 at padding) and ``targets`` int32 ``[W, L]`` (the
        next item at each position, -1 at padding).
    """
    items, targets = [], []
    for sequence in sequences:
        sequence = np.asarray(sequence, dtype=np.int32)
        inputs, nexts = sequence[:-1], sequence[1:]
        for end in range(len(inputs), 0, -stride):
            start = max(0, end - length)
            row_items = np.zeros(length, dtype=np.int32)
            row_targets = np.full(length, -1, dtype=np.int32)
            row_items[length - (end - start) :] = inputs[start:end]
            row_targets[length - (end - start) :] = nexts[start:end]
            items.append(row_items)
            targets.append(row_targets)
            if start == 0:
                break
    if not items:
        return np.zeros((0, length), np.int32), np.zeros((0, length), np.int32)
    return np.stack(items), np.stack(targets)


def train(
    split: Split,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    progress: bool | None = None,
) -> TrainedModel:
    """Trains the dual encoder on ``split.train`` with early stopping on ``split.valid``.

    Args:
        split: the leave-last-out split (`pocketrec.evaluation.leave_last_out`).
        model_config: the encoder (default `ModelConfig()`).
        train_config: the schedule (default `TrainConfig()`).
        progress: overrides ``train_config.progress``.

    Seeding calls ``tf_keras.utils.set_random_seed`` and turns on TensorFlow op
    determinism, both for the whole process.

    Returns:
        The model at its best validation NDCG@10, with per-epoch metrics in ``history``.

    Raises:
        ValueError: bad settings.
        PocketrecError: no training window (every user has a single train item) or a loss
            that stopped being finite.
    """
    model_config = dataclasses.replace(model_config or ModelConfig(), follow_window=0)
    train_config = train_config if train_config is not None else TrainConfig()
    train_config.validate()
    if train_config.tensorboard_dir and importlib.util.find_spec("tensorboard") is None:
        raise PocketrecError(
            "TrainConfig.tensorboard_dir is set but TensorBoard is not installed; install "
            "pocketrec[train] (it pins tensorboard) or set tensorboard_dir=None"
        )
    if train_config.objective == "auto":
        return _train_every_objective(split, model_config, train_config, progress)
    if train_config.objective == "ease":
        return fit_low_rank_ease(
            split,
            model_config,
            seed=train_config.seed,
            train_config={**train_config.to_dict(), "softmax": "none (closed form)"},
        )
    show = train_config.progress if progress is None else progress
    length = model_config.history_length
    stride = train_config.window_stride or length
    items, targets = make_windows(split.train, length, stride)
    if len(items) == 0:
        raise PocketrecError(
            "no training window: every user has fewer than 2 train items. Next-item "
            "training needs users with at least 4 events (2 train, 1 validation, 1 test)"
        )
    num_items = split.num_items
    full = train_config.loss == "full" or (
        train_config.loss == "auto" and num_items <= train_config.full_softmax_max_items
    )

    tf_keras.utils.set_random_seed(train_config.seed)
    tf.config.experimental.enable_op_determinism()
    trained = TrainedModel(
        build_item_tower(
            num_items,
            model_config,
            split.item_genres,
            title_word_ids(split.titles, model_config),
        ),
        build_sequence_encoder(model_config),
        model_config,
        item_ids=split.item_ids,
        item_genres=split.item_genres,
        genre_names=split.genre_names,
        titles=split.titles,
        train_config={**train_config.to_dict(), "softmax": "full" if full else "sampled"},
    )
    windows_per_epoch = min(len(items), train_config.max_windows or len(items))
    steps = train_config.epochs * -(-windows_per_epoch // train_config.batch_size)
    popularity = np.bincount(np.concatenate(split.train), minlength=num_items) + 1.0
    step = _step_function(
        trained,
        _optimizer(train_config, steps),
        log_q=np.log(popularity / popularity.sum()) if not full else None,
    )
    writer = (
        tf.summary.create_file_writer(train_config.tensorboard_dir)
        if train_config.tensorboard_dir
        else None
    )
    rng = np.random.default_rng(train_config.seed)
    best_ndcg, best_weights, waited = -1.0, None, 0
    for epoch in range(1, train_config.epochs + 1):
        started = time.perf_counter()
        if train_config.objective == "set":
            items, targets = make_windows(
                [rng.permutation(sequence) for sequence in split.train], length, stride
            )
        order = rng.permutation(len(items))[:windows_per_epoch]
        batches = range(0, len(order), train_config.batch_size)
        bar = _log.progress(
            batches, f"epoch {epoch}/{train_config.epochs}", level=logging.DEBUG, bar=show
        )
        total = 0.0
        for done, start in enumerate(bar, start=1):
            chosen = order[start : start + train_config.batch_size]
            loss = float(
                step(
                    tf.constant(items[chosen]),
                    tf.constant(targets[chosen]),
                    tf.constant(
                        seen_pairs(items[chosen], targets[chosen])
                        if train_config.exclude_seen
                        else np.zeros((0, 2), np.int32)
                    ),
                )
            )
            if not np.isfinite(loss):
                raise PocketrecError(
                    f"the training loss became {loss} in epoch {epoch}; lower "
                    f"TrainConfig.learning_rate (now {train_config.learning_rate})"
                )
            total += loss
            bar.set_postfix(loss=f"{total / done:.4f}")
        valid = evaluate(trained.score_fn(), split, "valid")
        record = _record(epoch, total / len(batches), valid, time.perf_counter() - started)
        trained.history.append(record)
        if writer is not None:
            with writer.as_default(step=epoch):
                for name, value in record.items():
                    if name != "epoch":
                        tf.summary.scalar(name, value)
            writer.flush()
        _log.LOGGER.info(
            "epoch %d/%d: loss %.4f, valid ndcg@10 %.4f, hr@10 %.4f (%.1f s)",
            epoch,
            train_config.epochs,
            record["train/loss"],
            valid.ndcg_at_10,
            valid.hr_at_10,
            record["train/seconds"],
        )
        if valid.ndcg_at_10 > best_ndcg:
            best_ndcg, waited, trained.best_epoch = valid.ndcg_at_10, 0, epoch
            best_weights = (trained.item_tower.get_weights(), trained.encoder.get_weights())
        else:
            waited += 1
            if waited >= train_config.patience:
                break
    if writer is not None:
        writer.close()
    assert best_weights is not None
    trained.item_tower.set_weights(best_weights[0])
    trained.encoder.set_weights(best_weights[1])
    trained.train_config["feature_ridge"] = fit_item_features(trained, split)
    trained.cold_start_vector = cold_start_vector(trained.item_vectors(), split.histories("test"))
    if train_config.follow and train_config.objective == "sequence":
        return fit_follow(trained, split)
    return trained


def set_candidate(model_config: ModelConfig) -> ModelConfig:
    """The set model ``objective="auto"`` tries when EASE cannot run.

    A mean over 4x the history and 4x the dimension: with order ignored, every item of a
    user counts, and a mean needs width to keep them apart. On a time-shuffled ML-100K
    this took validation NDCG@10 from 0.159 (L 50, D 64) to 0.176.
    """
    return dataclasses.replace(
        model_config,
        encoder="mean",
        history_length=4 * model_config.history_length,
        embedding_dim=4 * model_config.embedding_dim,
        ffn_dim=4 * model_config.ffn_dim,
    )


def ease_candidate(model_config: ModelConfig) -> ModelConfig:
    """The closed-form EASE model ``objective="auto"`` tries: the ``"linear"`` encoder
    over 8x the history, up to rank 4x the dimension.

    EASE reads a user's whole history; on a time-shuffled ML-100K reading 400 items
    instead of 200 took validation NDCG@10 from 0.1885 to 0.1901 (EASE: 0.1879), and the
    mean of the history vectors costs little more per item.
    """
    return dataclasses.replace(
        model_config,
        encoder="linear",
        history_length=8 * model_config.history_length,
        embedding_dim=4 * model_config.embedding_dim,
    )


def _train_every_objective(
    split: Split, model_config: ModelConfig, train_config: TrainConfig, progress: bool | None
) -> TrainedModel:
    """Trains the sequence and EASE models (the set model when EASE cannot run here); keeps
    the best one on validation.

    Both order-free models read a user's items as a set. Where both ran (ML-100K, its
    shuffled copy, the synthetic log) the closed-form EASE led the set model on validation,
    in seconds where the set model took minutes, so the set model stands in only for an
    EASE past the memory budget (logged).
    """
    candidates = {
        "sequence": (model_config, "sequence"),
        "ease": (ease_candidate(model_config), "ease"),
        "set": (set_candidate(model_config), "set"),
    }
    trained: dict[str, TrainedModel] = {}
    seconds: dict[str, float] = {}
    for name, (model_candidate, objective) in candidates.items():
        if name == "set" and "ease" in trained:
            continue
        _log.LOGGER.info("objective %s (%s encoder) ...", name, model_candidate.encoder)
        candidate_config = dataclasses.replace(train_config, objective=objective)
        started = time.monotonic()
        try:
            trained[name] = train(split, model_candidate, candidate_config, progress)
        except BaselineSkipped as skipped:
            _log.LOGGER.warning("objective %s skipped: %s", name, skipped)
        seconds[name] = round(time.monotonic() - started, 1)
    best_valid = {name: model.best_valid_ndcg for name, model in trained.items()}
    chosen = max(best_valid, key=lambda name: best_valid[name])
    _log.LOGGER.info(
        "objective: %s (valid ndcg@10 %s)",
        chosen,
        ", ".join(f"{name} {value:.4f}" for name, value in best_valid.items()),
    )
    model = trained[chosen]
    model.train_config["objective_candidates"] = best_valid
    model.train_config["objective_seconds"] = seconds
    return model


def _optimizer(train_config: TrainConfig, steps: int) -> tf_keras.optimizers.Optimizer:
    learning_rate: float | tf_keras.optimizers.schedules.LearningRateSchedule = (
        tf_keras.optimizers.schedules.CosineDecay(train_config.learning_rate, steps, alpha=0.1)
        if train_config.lr_decay
        else train_config.learning_rate
    )
    if train_config.weight_decay > 0:
        return tf_keras.optimizers.AdamW(learning_rate, weight_decay=train_config.weight_decay)
    return tf_keras.optimizers.Adam(learning_rate)


def _step_function(
    trained: TrainedModel,
    optimizer: tf_keras.optimizers.Optimizer,
    log_q: np.ndarray | None,
) -> Any:
    """One optimizer step on a batch of windows; returns the mean loss over real positions.

    ``log_q`` None: full softmax over every item. Else in-batch softmax: the batch's
    distinct targets are the candidates, and as popular items are candidates more often,
    ``log_q`` (log train frequency per item) is subtracted from their logits.
    """
    item_tower, encoder = trained.item_tower, trained.encoder
    all_items = tf.range(trained.num_items, dtype=tf.int32)
    log_q_tensor = None if log_q is None else tf.constant(log_q, dtype=tf.float32)
    variables = item_tower.trainable_variables + encoder.trainable_variables
    # Slots created up front: a tf.function that creates variables is traced twice.
    optimizer.build(variables)
    window = tf.TensorSpec([None, trained.config.history_length], tf.int32)

    @tf.function(input_signature=[window, window, tf.TensorSpec([None, 2], tf.int32)])
    def step(items: tf.Tensor, targets: tf.Tensor, seen: tf.Tensor) -> tf.Tensor:
        real = targets >= 0
        mask = tf.cast(real, tf.float32)
        with tf.GradientTape() as tape:
            table = item_tower(all_items, training=True)
            history = tf.gather(table, items) * mask[:, :, None]
            sequence = encoder({"history": history, "mask": mask}, training=True)
            outputs = tf.boolean_mask(sequence, real)
            labels = tf.boolean_mask(targets, real)
            if log_q_tensor is None:
                logits = tf.matmul(outputs, table, transpose_b=True)
                logits = tf.tensor_scatter_nd_update(
                    logits, seen, tf.fill([tf.shape(seen)[0]], -1e9)
                )
            else:
                candidates, labels = tf.unique(labels)
                logits = tf.matmul(outputs, tf.gather(table, candidates), transpose_b=True)
                logits -= tf.gather(log_q_tensor, candidates)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            )
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return loss

    return step


def seen_pairs(items: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """int32 ``[P, 2]`` (real position, item) pairs: at each position, the window's items up
    to it. Positions are numbered over the real positions of all windows, in order (the
    rows of the logits after ``tf.boolean_mask(..., targets >= 0)``)."""
    pairs = []
    base = 0
    for row_items, row_targets in zip(items, targets, strict=True):
        real = int((row_targets >= 0).sum())
        seen_items = row_items[len(row_items) - real :]
        query, key = np.tril_indices(real)
        pairs.append(np.stack([base + query, seen_items[key]], axis=1))
        base += real
    return np.concatenate(pairs).astype(np.int32)


def _record(epoch: int, loss: float, valid: Metrics, seconds: float) -> dict[str, float]:
    record: dict[str, float] = {"epoch": epoch, "train/loss": loss, "train/seconds": seconds}
    for name, value in valid.as_dict().items():
        if name != "users":
            record[f"valid/{name}"] = value
    return record
