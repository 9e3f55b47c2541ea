"""Why each result came back, from the vectors that ranked it: cheap enough to leave on.

A result's history reasons are the history items whose item vectors have the largest dot
product with the result's item vector: the user tower builds the user vector from those
same vectors, so the items most aligned with a result are the ones that pulled it up
(tests/test_sdk_search.py measures it: dropping the top reason from the history lowers the
result's score more than dropping a random history item). For ``k`` results and ``L``
history items it is one ``[k, D] x [D, L]`` product.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pocketrec.sdk._ranking import Reason, Recommendation
from pocketrec.sdk.table import ItemTable

# History reasons per result.
MAX_REASONS = 3


def explained(
    table: ItemTable,
    item_ids: Sequence[str],
    titles: Sequence[str | None],
    rows: np.ndarray,
    scores: np.ndarray,
    history_rows: Sequence[int],
    matched: Sequence[Sequence[str]] | None = None,
) -> list[Recommendation]:
    """``Recommendation`` per result row, with its reasons.

    Args:
        rows, scores: the results, best first.
        history_rows: the table rows the user tower read (the last ``L`` known ones).
        matched: per result, the query words it matched (search only).
    """
    history = np.unique(np.asarray(history_rows, dtype=np.int64))
    result_rows = np.asarray(rows, dtype=np.int64)
    similar: list[list[Reason]] = [[] for _ in range(len(result_rows))]
    if history.size and result_rows.size:
        similarity = table.vectors(result_rows) @ table.vectors(history).T
        best = np.argsort(-similarity, axis=1, kind="stable")[:, :MAX_REASONS]
        best_rows = history[best].tolist()
        best_similarity = np.take_along_axis(similarity, best, axis=1).tolist()
        for i, (rows_i, similarity_i) in enumerate(zip(best_rows, best_similarity, strict=True)):
            similar[i] = [
                Reason("history", item_ids[h], titles[h], s)
                for h, s in zip(rows_i, similarity_i, strict=True)
                if s > 0
            ]
    results = []
    pairs = zip(result_rows.tolist(), np.asarray(scores).tolist(), strict=True)
    for i, (row, score) in enumerate(pairs):
        words = () if matched is None else tuple(Reason("query", w) for w in matched[i])
        results.append(
            Recommendation(item_ids[row], float(score), titles[row], (*words, *similar[i]))
        )
    return results
