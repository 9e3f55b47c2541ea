"""A synthetic interaction log with the structure real logs have.

Power-law item popularity, latent taste clusters (each with its own genres), and
sequential structure: after an item a user often moves on to its successor in the same
cluster (think episodes or sequels). Vectorised over users, so millions of items work.
"""

from __future__ import annotations

import numpy as np

from pocketrec.data._interactions import Interactions, ItemInfo


def synthetic(
    num_users: int = 1000,
    num_items: int = 2000,
    *,
    mean_events: int = 40,
    num_clusters: int = 20,
    num_genres: int = 12,
    sequential: float = 0.5,
    popularity_skew: float = 3.0,
    seed: int = 0,
) -> Interactions:
    """Generates a log of roughly `num_users * mean_events` interactions.

    Args:
        num_users, num_items: sizes; `num_items` may go to millions.
        mean_events: mean events per user (every user gets at least 5).
        num_clusters: latent taste clusters; each user mixes one to three of them.
        num_genres: item genres; each cluster favours two of them.
        sequential: probability that the next item is the successor of the current one.
        popularity_skew: larger values concentrate events on popular items.
        seed: everything is a function of it.
    """
    if num_users < 1 or num_items < num_clusters or num_clusters < 1:
        raise ValueError(
            f"need num_users >= 1 and num_items >= num_clusters >= 1; got {num_users} users, "
            f"{num_items} items, {num_clusters} clusters"
        )
    rng = np.random.default_rng(seed)
    cluster_of = rng.integers(0, num_clusters, num_items)
    # Items grouped by cluster, most popular first; the successor of an item is the next
    # one in its cluster's list.
    by_cluster = np.argsort(cluster_of, kind="stable")
    sizes = np.bincount(cluster_of, minlength=num_clusters)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    position = np.empty(num_items, dtype=np.int64)
    position[by_cluster] = np.arange(num_items)
    last_in_cluster = starts[cluster_of] + sizes[cluster_of] - 1
    successor = by_cluster[np.minimum(position + 1, last_in_cluster)]

    lengths = np.maximum(5, rng.poisson(mean_events, num_users))
    steps = int(lengths.max())
    tastes = rng.integers(0, num_clusters, (num_users, 3))
    mix = rng.integers(1, 4, num_users)
    current = np.full(num_users, -1)
    events = np.empty((num_users, steps), dtype=np.int64)
    for step in range(steps):
        choice = tastes[np.arange(num_users), rng.integers(0, mix)]
        rank = np.minimum(
            (sizes[choice] * rng.random(num_users) ** popularity_skew).astype(np.int64),
            sizes[choice] - 1,
        )
        fresh = by_cluster[starts[choice] + rank]
        follow = (current >= 0) & (rng.random(num_users) < sequential)
        current = np.where(follow, successor[np.maximum(current, 0)], fresh)
        events[:, step] = current

    keep = np.arange(steps)[None, :] < lengths[:, None]
    users = np.broadcast_to(np.arange(num_users)[:, None], events.shape)[keep]
    start_time = 1_600_000_000 + rng.integers(0, 86_400 * 365, num_users)
    times = start_time[:, None] + 3600 * np.arange(steps)[None, :]
    genre_pairs = rng.integers(0, num_genres, (num_clusters, 2))
    second_genre = rng.random(num_items) < 0.4
    names = [f"genre-{g}" for g in range(num_genres)]
    info = {
        str(item): ItemInfo(
            title=f"Item {item}",
            genres=tuple(
                names[g]
                for g in dict.fromkeys(
                    genre_pairs[cluster_of[item]][: 2 if second_genre[item] else 1]
                )
            ),
        )
        for item in range(num_items)
    }
    return Interactions(
        users=users.astype(np.int64),
        items=events[keep],
        timestamps=times[keep].astype(np.float64),
        items_info=info,
        source=f"synthetic(num_users={num_users}, num_items={num_items}, seed={seed})",
    )
