"""Tiny data and configs for the training tests (a few seconds per training run)."""

from __future__ import annotations

import functools
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from typing import Any

import numpy as np

from pocketrec.data import synthetic
from pocketrec.evaluation import Split, leave_last_out

HISTORY_LENGTH = 8
DIM = 16


@functools.cache
def tiny_split() -> Split:
    """80 users, about 50 items, 4 genres, with sequential structure to learn."""
    return leave_last_out(
        synthetic(num_users=80, num_items=50, mean_events=14, num_clusters=5, num_genres=4, seed=0)
    )


def tiny_model_config(**changes: Any) -> Any:
    """A `ModelConfig` small enough to train in a second per epoch."""
    from pocketrec.training import ModelConfig

    values: dict[str, Any] = {
        "embedding_dim": DIM,
        "history_length": HISTORY_LENGTH,
        "num_heads": 2,
        "ffn_dim": 2 * DIM,
        "dropout": 0.1,
    }
    values.update(changes)
    return ModelConfig(**values)


def tiny_train_config(**changes: Any) -> Any:
    """A short `TrainConfig` without progress bars."""
    from pocketrec.training import TrainConfig

    values: dict[str, Any] = {
        "epochs": 3,
        "batch_size": 32,
        "learning_rate": 5e-3,
        "patience": 3,
        "progress": False,
        "objective": "sequence",
    }
    values.update(changes)
    return TrainConfig(**values)


def random_inputs(
    batch: int, length: int, dim: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Right-aligned ``history`` float32 ``[B, L, D]`` and ``mask`` ``[B, L]``.

    History lengths cycle through 0..L, so the batch includes an empty history.
    """
    rng = np.random.default_rng(seed)
    lengths = np.arange(batch) % (length + 1)
    mask = (np.arange(length)[None, :] >= length - lengths[:, None]).astype(np.float32)
    history = rng.normal(0.0, 0.1, (batch, length, dim)).astype(np.float32) * mask[:, :, None]
    return history, mask
