"""The on-device recommender: a bundle, a pool of interpreters and a history store."""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from pocketrec.sdk._encoding import encode_histories
from pocketrec.sdk._history import HistoryStore
from pocketrec.sdk._ranking import top_k
from pocketrec.sdk._runtime import UserTower
from pocketrec.sdk.bundle import _check_golden, _load_bundle
from pocketrec.sdk.table import ItemTable

# Histories scored per interpreter call in the batch API: bounds the [B, L, D] input.
_BATCH = 256


@dataclass(frozen=True)
class RecommenderOptions:
    """How to open a `Recommender`.

    Attributes:
        bundle_dir: the bundle directory (see docs/bundle-format.md).
        num_threads: CPU threads per interpreter.
        history_path: SQLite file of the user histories; None keeps them in memory.
        max_history_events: events kept per user; older ones are deleted.
        verify: check checksums and the golden outputs on open (recommended).
        interpreter_pool_size: interpreters, i.e. how many calls can run the model at once.
    """

    bundle_dir: str | Path
    num_threads: int = 1
    history_path: str | Path | None = None
    max_history_events: int = 1000
    verify: bool = True
    interpreter_pool_size: int = 2


@dataclass(frozen=True)
class Recommendation:
    """One recommended item; ``title`` is None when the bundle has no metadata for it."""

    item_id: str
    score: float
    title: str | None = None


@dataclass(frozen=True)
class Recommendations:
    """Result of `Recommender.recommend`, best item first.

    Attributes:
        items: at most ``k`` recommendations.
        unknown_items: history ids not in the bundle's item table; they were ignored.
    """

    items: list[Recommendation] = field(default_factory=list)
    unknown_items: int = 0

    @property
    def item_ids(self) -> list[str]:
        """The recommended item ids, best first."""
        return [r.item_id for r in self.items]


class Recommender:
    """Recommends items from a bundle with LiteRT, entirely on the device.

    Model contract: the bundle's ``user_tower.tflite`` has signature ``user_vector`` with
    inputs ``history`` float32 ``[B, L, D]`` (item vectors, right-aligned) and ``mask``
    float32 ``[B, L]``, output ``user_vector`` float32 ``[B, D]``; an item's score is the
    dot product of the user vector with its row of the (possibly quantized) item table.

    Build with `Recommender.open` or `Recommender.create_from_options`. Methods are safe
    to call from many threads. `close` releases everything; ``with`` closes on exit.
    Errors: ``ValueError`` for bad options or arguments (and use after `close`),
    `pocketrec.errors.BundleError` for a missing, corrupt or inconsistent bundle.
    """

    def __init__(self, options: RecommenderOptions) -> None:
        """Same as `create_from_options`, which is the documented way in."""
        _check_options(options)
        loaded = _load_bundle(options.bundle_dir, verify_checksums=options.verify)
        manifest = loaded.manifest
        towers = [
            UserTower(
                loaded.model,
                num_threads=options.num_threads,
                history_length=manifest["history_length"],
                dim=manifest["embedding_dim"],
            )
            for _ in range(options.interpreter_pool_size)
        ]
        if options.verify:
            _check_golden(loaded, towers[0])
        self._options = options
        self._manifest = manifest
        self._table: ItemTable = loaded.table
        self._item_ids = list(loaded.item_ids)
        self._row_of = {item_id: row for row, item_id in enumerate(self._item_ids)}
        self._titles = [item.get("title") for item in loaded.items]
        self._history_length: int = manifest["history_length"]
        self._pool: queue.Queue[UserTower] = queue.Queue()
        for tower in towers:
            self._pool.put(tower)
        history_path = ":memory:" if options.history_path is None else options.history_path
        self._store: HistoryStore | None = HistoryStore(
            history_path, max_events=options.max_history_events
        )
        self._closed = False
        self._close_lock = threading.Lock()

    @classmethod
    def create_from_options(cls, options: RecommenderOptions) -> Recommender:
        """Opens the bundle of ``options``; verifies it first unless ``options.verify`` is off.

        Raises:
            ValueError: for invalid options.
            BundleError: if the bundle is missing, corrupt or fails its golden self-check.
        """
        return cls(options)

    @classmethod
    def open(cls, bundle_dir: str | Path, **kwargs: Any) -> Recommender:
        """Shortcut for ``create_from_options(RecommenderOptions(bundle_dir, **kwargs))``."""
        return cls.create_from_options(RecommenderOptions(bundle_dir, **kwargs))

    @property
    def item_ids(self) -> list[str]:
        """External item ids; row ``i`` of the table and of `score_rows` is ``item_ids[i]``."""
        return list(self._item_ids)

    @property
    def manifest(self) -> dict[str, Any]:
        """The bundle's manifest (a copy)."""
        return copy.deepcopy(self._manifest)

    @property
    def table(self) -> ItemTable:
        """The bundle's item table as stored (read-only; scores come from it)."""
        return self._table

    @property
    def history_length(self) -> int:
        """``L``, how many of the most recent history items the model sees."""
        return self._history_length

    def recommend(
        self,
        history: Sequence[str] | None = None,
        *,
        user: str | None = None,
        k: int = 10,
        exclude: Iterable[str] = (),
        exclude_seen: bool = True,
    ) -> Recommendations:
        """The top ``k`` items for a history of external item ids (oldest first).

        With ``user``, the history is the user's stored events followed by ``history``
        (treated as newer, and not stored: use `observe` to record events). With neither,
        the history is empty and the model sees an all-zero mask. Ids not in the table are
        counted in ``unknown_items`` and skipped; the model sees the last ``L`` known ones.

        Args:
            k: how many items to return (fewer if too few remain after exclusions).
            exclude: item ids never to return.
            exclude_seen: also never return items of the history.

        Raises:
            ValueError: for a bad ``k``, ``user`` or ``history``, or after `close`.
            BundleError: if the model fails.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        if isinstance(history, str) or isinstance(exclude, str):
            raise ValueError("history and exclude must be sequences of item ids, not one str")
        ids = [] if history is None else [str(i) for i in history]
        if user is not None:
            ids = self._history_store().recent(user, self._options.max_history_events) + ids
        else:
            self._check_open()
        rows = [self._row_of[i] for i in ids if i in self._row_of]
        scores = self.score_rows([np.asarray(rows, dtype=np.int64)])[0]
        banned = [self._row_of[i] for i in exclude if i in self._row_of]
        if exclude_seen:
            banned.extend(rows)
        scores[banned] = -np.inf
        items = [
            Recommendation(self._item_ids[r], float(scores[r]), self._titles[r])
            for r in top_k(scores, k)
        ]
        return Recommendations(items=items, unknown_items=len(ids) - len(rows))

    def observe(self, user: str, item: str, timestamp: float | None = None) -> None:
        """Appends ``item`` to ``user``'s history (``timestamp`` in seconds; default now).

        The next ``recommend(user=user)`` sees it. Ids unknown to the bundle are stored too,
        so a later bundle that knows them can use them.
        """
        self._history_store().append(user, item, timestamp)

    def user_vectors(self, histories_rows: Sequence[Sequence[int]]) -> np.ndarray:
        """User vectors float32 ``[B, D]`` for histories of table rows (oldest first)."""
        self._check_open()
        out = np.empty((len(histories_rows), self._table.dim), dtype=np.float32)
        for start in range(0, len(histories_rows), _BATCH):
            chunk = histories_rows[start : start + _BATCH]
            history, mask = encode_histories(self._table, chunk, self._history_length)
            with self._tower() as tower:
                out[start : start + len(chunk)] = tower.run(history, mask)
        return out

    def score_rows(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """Scores float32 ``[B, N]`` of every item for histories of table rows.

        The ``score_fn`` of `pocketrec.evaluation.evaluate`, so bundles are evaluated with
        the same protocol as the models they came from.
        """
        return self._table.scores(self.user_vectors(histories))

    def close(self) -> None:
        """Releases the interpreters and the history store; safe to call twice."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            store, self._store = self._store, None
        if store is not None:
            store.close()
        while True:
            try:
                self._pool.get_nowait()
            except queue.Empty:
                break

    def __enter__(self) -> Recommender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _tower(self) -> Iterator[UserTower]:
        self._check_open()
        tower = self._pool.get()
        try:
            yield tower
        finally:
            self._pool.put(tower)

    def _history_store(self) -> HistoryStore:
        store = self._store
        if store is None:
            raise ValueError("the Recommender is closed; open it again")
        return store

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the Recommender is closed; open it again")


def _check_options(options: RecommenderOptions) -> None:
    if not isinstance(options, RecommenderOptions):
        raise ValueError(f"options must be RecommenderOptions, got {type(options).__name__}")
    for name in ("num_threads", "max_history_events", "interpreter_pool_size"):
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
