"""An approximate top-K index (HNSW, by the optional ``hnswlib``) over an item table.

Exact scoring stays the default: at 1M items it costs milliseconds per call, and HNSW
trades recall for less. The index is built from the table's dequantized vectors with the
inner product as similarity, so its scores are float32 dot products like `ItemTable.scores`
(without the int8 kernel's rounding of the user vector). Building it takes seconds to
minutes at 1M items and holds a float32 copy of the table, so `Recommender` builds it on
the first ``approximate=True`` call for a table, not on open.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Collection

import numpy as np

from pocketrec.sdk.table import ItemTable

# HNSW graph degree and construction beam: hnswlib's suggested defaults. On random Gaussian
# 100k x 64 int8 tables (close to a worst case) they gave recall@10 0.70 at ef 100.
M = 16
EF_CONSTRUCTION = 200


class ApproximateIndex:
    """HNSW top-K over one `ItemTable`; thread-safe (queries with filters are serialized)."""

    def __init__(self, table: ItemTable, *, ef: int = 100, num_threads: int = 1) -> None:
        """Builds the index (``ef``: the query beam; larger is slower and more exact).

        Raises:
            ValueError: when ``hnswlib`` is not installed, or ``ef`` < 1.
        """
        if ef < 1:
            raise ValueError(f"ef must be >= 1, got {ef}")
        try:
            hnswlib = importlib.import_module("hnswlib")
        except ImportError:
            raise ValueError(
                "approximate top-K needs hnswlib, which is not installed; "
                "pip install 'pocketrec[ann]', or call with approximate=False"
            ) from None
        self.table = table
        self.ef = ef
        self._lock = threading.Lock()
        vectors = table.dequantized()
        self._index = hnswlib.Index(space="ip", dim=table.dim)
        self._index.init_index(max_elements=table.num_items, ef_construction=EF_CONSTRUCTION, M=M)
        self._index.set_num_threads(num_threads)
        self._index.add_items(vectors, np.arange(table.num_items))
        self._index.set_ef(ef)

    def top_k(
        self,
        user_vector: np.ndarray,
        k: int,
        *,
        banned: Collection[int] = (),
        allowed: Collection[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows of about the ``k`` best-scoring items and their scores, best first.

        The same contract as `Scorer.top_k`, but approximate: a true top-K row may be
        missed. ``banned`` and ``allowed`` are applied inside the graph search, so up to
        ``k`` rows still come back when many are excluded.
        """
        remaining = self.table.num_items if allowed is None else len(allowed)
        wanted = min(k, remaining)
        if wanted < 1:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        banned_set = banned if isinstance(banned, set | frozenset) else set(banned)
        if allowed is None:
            allowed_set = None
        else:
            allowed_set = allowed if isinstance(allowed, set | frozenset) else set(allowed)

        def admit(row: int) -> bool:
            return row not in banned_set and (allowed_set is None or row in allowed_set)

        query = np.asarray(user_vector, dtype=np.float32).reshape(1, -1)
        if allowed_set is None and wanted + len(banned_set) <= self.table.num_items:
            # A few banned rows (the history): over-fetch and drop them, no per-row callback.
            with self._lock:
                self._index.set_ef(max(self.ef, wanted + len(banned_set)))
                rows, distances = self._index.knn_query(query, k=wanted + len(banned_set))
            kept = [i for i, r in enumerate(rows[0].tolist()) if r not in banned_set][:wanted]
            return _ranked(rows[0, kept], distances[0, kept])
        with self._lock:
            self._index.set_ef(max(self.ef, wanted))
            try:
                rows, distances = self._index.knn_query(
                    query, k=wanted, filter=admit if banned_set or allowed_set is not None else None
                )
            except RuntimeError:  # fewer admissible rows than asked for
                rows, distances = self._fewer(query, wanted, admit)
        return _ranked(rows[0], distances[0])

    def _fewer(self, query: np.ndarray, wanted: int, admit: object) -> tuple[np.ndarray, ...]:
        # hnswlib raises when it finds fewer than k rows; ask for fewer until it answers.
        for k in range(wanted - 1, 0, -1):
            try:
                return self._index.knn_query(query, k=k, filter=admit)
            except RuntimeError:
                continue
        return np.empty((1, 0), dtype=np.uint64), np.empty((1, 0), dtype=np.float32)


def _ranked(rows: np.ndarray, distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """hnswlib's labels and ``1 - dot`` distances as rows and scores, best (then lower) first."""
    scores = (1.0 - distances).astype(np.float32)
    rows = rows.astype(np.int64)
    order = np.lexsort((rows, -scores))
    return rows[order], scores[order]
