"""Histories of item rows → the user tower's ``history`` and ``mask`` inputs.

Training and the device share this one function, so the two paths cannot drift.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pocketrec.sdk.table import ItemTable


def encode_histories(
    table: ItemTable,
    histories: Sequence[Sequence[int]] | Sequence[np.ndarray],
    history_length: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Builds the user tower inputs for ``B`` histories.

    Args:
        table: item vectors; rows are dequantized to float32.
        histories: per user, item row indices in ``[0, N)``, oldest first.
        history_length: ``L``, the number of most recent items kept.

    Returns:
        ``history`` float32 ``[B, L, D]`` and ``mask`` float32 ``[B, L]``. Histories are
        right-aligned: the most recent item sits at position ``L - 1``; shorter histories
        are padded on the left with zero vectors and mask 0.

    Raises:
        ValueError: if ``history_length < 1`` or a row is outside ``[0, N)``.
    """
    if isinstance(history_length, bool) or int(history_length) != history_length:
        raise ValueError(f"history_length must be an int, got {history_length!r}")
    if history_length < 1:
        raise ValueError(f"history_length must be >= 1, got {history_length}")
    batch = len(histories)
    history = np.zeros((batch, history_length, table.dim), dtype=np.float32)
    mask = np.zeros((batch, history_length), dtype=np.float32)
    kept = [np.asarray(h, dtype=np.int64).reshape(-1)[-history_length:] for h in histories]
    lengths = np.array([k.size for k in kept], dtype=np.int64)
    if not lengths.sum():
        return history, mask
    # One gather for the whole batch, then scatter each user's rows to the right edge.
    vectors = table.vectors(np.concatenate(kept))
    users = np.repeat(np.arange(batch), lengths)
    ends = np.cumsum(lengths)
    offsets = np.arange(int(ends[-1])) - np.repeat(ends - lengths, lengths)
    positions = history_length - np.repeat(lengths, lengths) + offsets
    history[users, positions] = vectors
    mask[users, positions] = 1.0
    return history, mask
