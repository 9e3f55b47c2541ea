"""The temporal leave-last-out split shared by every model, baseline and benchmark."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from pocketrec.data import DataError, Interactions

MIN_EVENTS = 3

# Readable names of `Split.stats` keys, for `Split.describe`.
_STAT_NAMES = {
    "duplicates_removed": "repeated (user, item) events removed",
    "users_dropped_under_3_events": f"users dropped (under {MIN_EVENTS} events)",
    "valid_targets_outside_universe": "validation targets not in any train history",
    "test_targets_outside_universe": "test targets not in any train history",
}


@dataclass(frozen=True)
class LoggedQueries:
    """The search queries of a split's kept events (a log with a query column), None
    where an event had none; each field is parallel to the `Split` field of its name.

    Attributes:
        train: per user, the query of each train event.
        valid: per user, the query of the validation event.
        test: per user, the query of the test event.
    """

    train: list[list[str | None]]
    valid: list[str | None]
    test: list[str | None]

    def targets(self, stage: str) -> list[str | None]:
        """The query of each user's ``stage`` ("valid" or "test") event."""
        if stage not in ("valid", "test"):
            raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")
        return self.valid if stage == "valid" else self.test


@dataclass
class Split:
    """Per-user time-ordered train sequences and held-out validation/test targets.

    Items are rows `0..num_items-1` of the universe: the items seen in any train part,
    ordered by their external id. Row `u` of every per-user field is the same user.

    Attributes:
        item_ids: external item id (str) of each row, [num_items].
        users: external user id (str) of each user, [num_users].
        train: per user, int32 item rows in time order (all but the last two events).
        valid: int32 [num_users], the second-last item; -1 where outside the universe.
        test: int32 [num_users], the last item; -1 where outside the universe.
        item_genres: float32 [num_items, num_genres] multi-hot (zero columns without genres).
        genre_names: the genre of each column of `item_genres`.
        titles: title of each item row, None where unknown.
        stats: counts of what the protocol removed or skipped.
        queries: the logged search queries of the events, where the log has a query
            column (`Interactions.queries`); None otherwise.
    """

    item_ids: np.ndarray
    users: np.ndarray
    train: list[np.ndarray]
    valid: np.ndarray
    test: np.ndarray
    item_genres: np.ndarray
    genre_names: list[str]
    titles: list[str | None]
    stats: dict[str, int] = field(default_factory=dict)
    queries: LoggedQueries | None = None

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_users(self) -> int:
        return len(self.users)

    @cached_property
    def item_index(self) -> dict[str, int]:
        """External item id -> row."""
        return {item: row for row, item in enumerate(self.item_ids.tolist())}

    def histories(self, stage: str) -> list[np.ndarray]:
        """Each user's history when predicting `stage`'s target.

        "valid": the train items; "test": the train items then the validation item (when it
        is inside the universe).
        """
        if stage == "valid":
            return self.train
        if stage == "test":
            return [
                np.append(train, valid).astype(np.int32) if valid >= 0 else train
                for train, valid in zip(self.train, self.valid.tolist(), strict=True)
            ]
        raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")

    def targets(self, stage: str) -> np.ndarray:
        """int32 [num_users] target rows of `stage` (-1: skipped)."""
        if stage not in ("valid", "test"):
            raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")
        return self.valid if stage == "valid" else self.test

    def describe(self) -> str:
        """The split's size and `stats` as aligned lines with readable names, for people.

        `stats` stays the machine-readable form (JSON reports); keys without a readable
        name are shown with spaces for underscores.
        """
        rows = [("users", self.num_users), ("items", self.num_items)]
        rows += [(_STAT_NAMES.get(k, k.replace("_", " ")), v) for k, v in self.stats.items()]
        values = [f"{value:,}" for _, value in rows]
        name_width = max(len(name) for name, _ in rows)
        value_width = max(len(value) for value in values)
        return "\n".join(
            f"{name:<{name_width}}  {value:>{value_width}}"
            for (name, _), value in zip(rows, values, strict=True)
        )

    def item_popularity(self) -> np.ndarray:
        """int64 [num_items]: how often each item occurs in the train parts."""
        if not self.train:
            return np.zeros(self.num_items, dtype=np.int64)
        return np.bincount(np.concatenate(self.train), minlength=self.num_items)


def leave_last_out(interactions: Interactions) -> Split:
    """Applies the evaluation protocol to an interaction log.

    1. Every row is an implicit interaction; a repeated (user, item) keeps its first event.
    2. Per user, events are sorted by time (ties keep file order); users with fewer than 3
       events are dropped. The last event is the test target, the second-last the
       validation target, the rest is train.
    3. The item universe is the items of the train parts; targets outside it become -1
       and are counted in `stats`.
    4. Where the log has queries, each kept event keeps its own (so a repeated (user, item)
       keeps its first event's query) in `Split.queries`.
    """
    n = len(interactions)
    if n == 0:
        raise DataError("the interaction log is empty: nothing to split")
    user_values, user_codes = np.unique(interactions.users, return_inverse=True)
    item_values, item_codes = np.unique(interactions.items, return_inverse=True)
    order = np.lexsort((np.arange(n), interactions.timestamps, user_codes))
    pair = user_codes[order].astype(np.int64) * len(item_values) + item_codes[order]
    _, first = np.unique(pair, return_index=True)
    kept = order[np.sort(first)]
    users, items = user_codes[kept], item_codes[kept]

    boundaries = np.flatnonzero(np.diff(users)) + 1
    sequences = np.split(items, boundaries)
    events = np.split(kept, boundaries)  # row of each kept event, parallel to `sequences`
    sequence_users = users[np.concatenate([[0], boundaries])]
    long_enough = [len(s) >= MIN_EVENTS for s in sequences]
    sequences = [s for s, keep in zip(sequences, long_enough, strict=True) if keep]
    if not sequences:
        raise DataError(
            f"no user has {MIN_EVENTS} or more distinct interactions; the protocol needs "
            "a train, a validation and a test event per user"
        )
    sequence_users = sequence_users[np.asarray(long_enough)]
    events = [e for e, keep in zip(events, long_enough, strict=True) if keep]

    train_codes = [s[:-2] for s in sequences]
    universe = np.unique(np.concatenate(train_codes))
    row_of = np.full(len(item_values), -1, dtype=np.int32)
    row_of[universe] = np.arange(len(universe), dtype=np.int32)
    valid = row_of[[s[-2] for s in sequences]]
    test = row_of[[s[-1] for s in sequences]]

    item_ids = np.asarray([str(v) for v in item_values[universe]])
    info = interactions.items_info
    genre_names = sorted({g for item in item_ids if item in info for g in info[item].genres})
    genre_column = {g: c for c, g in enumerate(genre_names)}
    item_genres = np.zeros((len(item_ids), len(genre_names)), dtype=np.float32)
    titles: list[str | None] = []
    for row, item in enumerate(item_ids):
        item_info = info.get(item)
        titles.append(item_info.title if item_info else None)
        for genre in item_info.genres if item_info else ():
            item_genres[row, genre_column[genre]] = 1.0

    queries = None
    if interactions.queries is not None:
        by_event = [interactions.queries[e].tolist() for e in events]
        queries = LoggedQueries(
            train=[q[:-2] for q in by_event],
            valid=[q[-2] for q in by_event],
            test=[q[-1] for q in by_event],
        )
    return Split(
        item_ids=item_ids,
        users=np.asarray([str(v) for v in user_values[sequence_users]]),
        train=[row_of[s] for s in train_codes],
        valid=valid,
        test=test,
        item_genres=item_genres,
        genre_names=genre_names,
        titles=titles,
        stats={
            "duplicates_removed": n - len(kept),
            "users_dropped_under_3_events": len(long_enough) - len(sequences),
            "valid_targets_outside_universe": int((valid < 0).sum()),
            "test_targets_outside_universe": int((test < 0).sum()),
        },
        queries=queries,
    )
