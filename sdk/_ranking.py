"""Top-K selection shared by bundle golden outputs and the recommender."""

from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` highest finite ``scores`` (float32 ``[N]``), best first.

    Ties go to the lower row so results are deterministic; ``-inf`` marks excluded rows
    and is never returned, so fewer than ``k`` rows may come back.
    """
    candidates = np.flatnonzero(np.isfinite(scores))
    if candidates.size > k:
        # argpartition keeps the k best, but ties at the boundary must go to the lower row:
        # take every row scoring at least the k-th best, then sort those exactly.
        kth = np.partition(scores[candidates], candidates.size - k)[candidates.size - k]
        candidates = candidates[scores[candidates] >= kth]
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order[:k]]
