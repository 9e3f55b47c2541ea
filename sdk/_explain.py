"""Why each result came back, measured on the model that ranked it: cheap enough to leave on.

A result's history reasons are the history items whose removal lowers its score most. For
each result the ``CANDIDATES`` history items whose item vectors have the largest dot
product with its own are tried: the user tower runs once, on one batch holding the history
without each item tried (the union over the results, at most ``L``), and each candidate's
reason weight is the drop of the result's score (user vector · item vector) without it. So
a reason is faithful by construction: the model, not a proxy, says the score falls without
it (tests/test_sdk_search.py measures it against removing a random history item). The
similarity pre-selection keeps the batch small; for ``k`` results and ``L`` history items
it costs a ``[k, D] x [D, L]`` product and one user-tower call of at most ``L`` histories.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pocketrec.sdk._ranking import Reason, Recommendation
from pocketrec.sdk.table import ItemTable

# History reasons per result.
MAX_REASONS = 3
# History items per result whose removal may be measured (the most similar by item vector),
# and the most measured per call: each is one history in the user-tower batch.
CANDIDATES = 3
MAX_TRIED = 3
# Table rows removed -> user vectors float32 [len, D] of the history without each of them.
Occlusion = Callable[[Sequence[int]], np.ndarray]


def explained(
    table: ItemTable,
    item_ids: Sequence[str],
    titles: Sequence[str | None],
    rows: np.ndarray,
    scores: np.ndarray,
    history_rows: Sequence[int],
    user_vector: np.ndarray,
    without: Occlusion,
    matched: Sequence[Sequence[str]] | None = None,
) -> list[Recommendation]:
    """``Recommendation`` per result row, with its reasons.

    Args:
        rows, scores: the results, best first.
        history_rows: the table rows the user tower read (the last ``L`` known ones).
        user_vector: the user tower's vector of the whole history.
        without: the user vectors of the history without each of some rows.
        matched: per result, the query words it matched (search only).
    """
    history = np.unique(np.asarray(history_rows, dtype=np.int64))
    result_rows = np.asarray(rows, dtype=np.int64)
    because: list[list[Reason]] = [[] for _ in range(len(result_rows))]
    if history.size and result_rows.size:
        vectors = table.vectors(result_rows)
        similarity = vectors @ table.vectors(history).T
        candidates = np.argsort(-similarity, axis=1, kind="stable")[:, :CANDIDATES]
        # Every result's most similar item first, then every result's second, ...: the
        # first MAX_TRIED distinct ones are measured, the others count as no drop.
        by_rank = candidates.T.ravel()
        tried = np.sort(by_rank[np.sort(np.unique(by_rank, return_index=True)[1])][:MAX_TRIED])
        occluded = np.asarray(without(history[tried].tolist()), dtype=np.float32)
        measured = (vectors @ user_vector)[:, None] - vectors @ occluded.T
        at = np.minimum(np.searchsorted(tried, candidates), len(tried) - 1)
        drops = np.where(tried[at] == candidates, np.take_along_axis(measured, at, axis=1), -np.inf)
        best = np.argsort(-drops, axis=1, kind="stable")[:, :MAX_REASONS]
        best_rows = history[np.take_along_axis(candidates, best, axis=1)].tolist()
        best_drops = np.take_along_axis(drops, best, axis=1).tolist()
        for i, (rows_i, drops_i) in enumerate(zip(best_rows, best_drops, strict=True)):
            because[i] = [
                Reason("history", item_ids[h], titles[h], d)
                for h, d in zip(rows_i, drops_i, strict=True)
                if d > 0
            ]
    results = []
    pairs = zip(result_rows.tolist(), np.asarray(scores).tolist(), strict=True)
    for i, (row, score) in enumerate(pairs):
        words = () if matched is None else tuple(Reason("query", w) for w in matched[i])
        results.append(
            Recommendation(item_ids[row], float(score), titles[row], (*words, *because[i]))
        )
    return results
