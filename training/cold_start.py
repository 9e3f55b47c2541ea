"""What a model recommends to a user it knows nothing about, and how it embeds new items.

A user with an empty (or all-unknown) history gets the *cold-start vector*: the one user
vector whose softmax over the item table best matches what users chose most recently.
Recent choices, not all-time counts: the next event of any user lies after all of them,
and tastes drift (on MovieLens 100K the old favourites rank below the season's releases).
The bundle carries it (``extra["cold_start_vector"]``) and the SDK scores it like any user
vector, so filters, exclusions and the fast top-K path apply unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RECENT_EVENTS = 3


def recent_choices(histories: Sequence[np.ndarray], num_items: int, recent: int) -> np.ndarray:
    """float64 ``[num_items]``: how often each item is among a user's ``recent`` latest."""
    tails = [history[-recent:] for history in histories if len(history)]
    if not tails:
        return np.zeros(num_items)
    return np.bincount(np.concatenate(tails), minlength=num_items).astype(np.float64)


def cold_start_vector(
    item_vectors: np.ndarray,
    histories: Sequence[np.ndarray],
    *,
    recent: int = RECENT_EVENTS,
    steps: int = 500,
    l2: float = 1e-3,
) -> np.ndarray:
    """float32 ``[D]``: softmax regression of users' recent choices on the item vectors.

    Minimises the cross-entropy between ``softmax(item_vectors @ u)`` and the distribution
    of each user's ``recent`` latest items (``histories``: time-ordered item rows), with a
    small L2 penalty, by gradient descent with a step from the rows' curvature bound.
    """
    vectors = np.asarray(item_vectors, dtype=np.float64)
    counts = recent_choices(histories, len(vectors), recent)
    if counts.sum() == 0:
        return np.zeros(vectors.shape[1], np.float32)
    target = counts / counts.sum()
    # The softmax cross-entropy's Hessian is a covariance of the rows: at most the largest
    # squared row norm, so this step never overshoots.
    step = 1.0 / (float((vectors**2).sum(axis=1).max()) + l2)
    user = vectors.T @ target
    for _ in range(steps):
        logits = vectors @ user
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        user -= step * (vectors.T @ (probabilities - target) + l2 * user)
    return user.astype(np.float32)
