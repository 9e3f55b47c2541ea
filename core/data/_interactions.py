"""The in-memory form of an interaction log."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ItemInfo:
    """What is known about an item beyond its id."""

    title: str | None = None
    genres: tuple[str, ...] = ()


@dataclass
class Interactions:
    """One row per event, in file order.

    Attributes:
        users: user ids, int64 or str, shape [n].
        items: item ids, int64 or str, shape [n].
        timestamps: float64 [n]; the row index when the source has no time column, so
            that file order is time order.
        weights: optional float32 [n] (e.g. ratings); the split treats every row as an
            implicit interaction whatever its weight.
        items_info: titles and genres by item id (as `str`), where the source has them.
        source: a short description of where the rows came from.
        skipped: reason -> number of input rows left out while loading.
        queries: optional object [n] of str or None: the search query that led to each
            event (a real search log's query column), None where the event had none.
    """

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    weights: np.ndarray | None = None
    items_info: dict[str, ItemInfo] = field(default_factory=dict)
    source: str = ""
    skipped: dict[str, int] = field(default_factory=dict)
    queries: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.users)
        lengths = {len(self.items), len(self.timestamps)}
        for optional in (self.weights, self.queries):
            if optional is not None:
                lengths.add(len(optional))
        if lengths != {n}:
            raise ValueError(
                f"users, items, timestamps (and weights, queries) must have one length; got "
                f"{n} users, {len(self.items)} items, {len(self.timestamps)} timestamps"
                + (f", {len(self.weights)} weights" if self.weights is not None else "")
                + (f", {len(self.queries)} queries" if self.queries is not None else "")
            )
        if self.queries is not None:
            wrong = [q for q in self.queries if q is not None and not isinstance(q, str)]
            if wrong:
                raise TypeError(
                    f"queries must hold str or None per event, got {type(wrong[0]).__name__} "
                    f"{wrong[0]!r}; pass the query text, or None for an event without a query"
                )

    def __len__(self) -> int:
        return len(self.users)

    @property
    def num_users(self) -> int:
        return len(np.unique(self.users))

    @property
    def num_items(self) -> int:
        return len(np.unique(self.items))

    def summary(self) -> str:
        """One line: counts and where the data came from, plus any skipped rows."""
        line = (
            f"{len(self):,} interactions, {self.num_users:,} users, {self.num_items:,} items "
            f"({self.source})"
        )
        if self.queries is not None:
            with_query = sum(q is not None for q in self.queries)
            line += f", {with_query:,} with a search query"
        if self.skipped:
            details = ", ".join(f"{count:,} {reason}" for reason, count in self.skipped.items())
            line += f"; skipped {details}"
        return line
