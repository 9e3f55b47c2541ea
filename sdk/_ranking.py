"""Top-K selection and the result types shared by bundle golden outputs, recommend and search."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class Reason:
    """One reason a result came back.

    Attributes:
        kind: ``"history"``: an item of the history without which the result scores lower;
            ``"query"``: a search query word the result's text matches.
        value: the history item's id, or the query word (normalized, as matched).
        title: the history item's title, when the bundle knows it.
        weight: for ``"history"``, how much the result's score (user vector · its item
            vector) drops when the item is removed from the history; for ``"query"``, 0.
    """

    kind: Literal["history", "query"]
    value: str
    title: str | None = None
    weight: float = 0.0


@dataclass(frozen=True)
class Recommendation:
    """One recommended item; ``title`` is None when the bundle has no metadata for it.

    ``because`` says why: the matched query words (search only), then up to 3 history
    items whose removal lowers its score most, largest drop first (none for an empty
    history).
    """

    item_id: str
    score: float
    title: str | None = None
    because: tuple[Reason, ...] = ()


@dataclass(frozen=True)
class Recommendations:
    """Result of `Recommender.recommend` and `Recommender.search`, best item first.

    Attributes:
        items: at most ``k`` recommendations.
        unknown_items: history ids not in the bundle's item table; they were ignored.
        model_version: the bundle that served them (`Bundle.model_version`).
    """

    items: list[Recommendation] = field(default_factory=list)
    unknown_items: int = 0
    model_version: str = ""

    @property
    def item_ids(self) -> list[str]:
        """The recommended item ids, best first."""
        return [r.item_id for r in self.items]


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
