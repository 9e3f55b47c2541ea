"""The on-device recommender: a bundle, a pool of interpreters and a history store."""

from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from pocketrec.errors import AcceleratorError, BundleError
from pocketrec.sdk._ann import ApproximateIndex
from pocketrec.sdk._encoding import encode_histories
from pocketrec.sdk._explain import explained
from pocketrec.sdk._history import HistoryStore, Upload
from pocketrec.sdk._ids import item_ids, user_id
from pocketrec.sdk._ranking import Reason, Recommendation, Recommendations
from pocketrec.sdk._runtime import UserTower
from pocketrec.sdk._scorer import Scorer, median_us
from pocketrec.sdk._text import words
from pocketrec.sdk.accelerators import ACCELERATOR_CHOICES, Placement, choose, golden_tolerance
from pocketrec.sdk.bundle import Bundle, check_golden
from pocketrec.sdk.contract import COLD_START_VECTOR, check_choice
from pocketrec.sdk.search import Searcher, SearchTower, user_scores
from pocketrec.sdk.table import ItemTable

# The result types live beside the ranking code that search shares; exported from here.
__all__ = [
    "Filters",
    "Reason",
    "Recommendation",
    "Recommendations",
    "Recommender",
    "RecommenderOptions",
]

# Histories scored per interpreter call in the batch API: bounds the [B, L, D] input.
_BATCH = 256
# The history store's secret that keys user pseudonyms.
_PSEUDONYM_KEY = "user-pseudonym-key"
# Calls of one history that `accelerator='auto'` times on the GPU and on the CPU.
_TIMED_CALLS = 20
LOGGER = logging.getLogger("pocketrec.sdk")


@dataclass(frozen=True)
class RecommenderOptions:
    """How to open a `Recommender`.

    Attributes:
        bundle: a `Bundle`, or the path of a bundle directory (see docs/bundle-format.md).
        num_threads: CPU threads per interpreter.
        history_path: SQLite file of the user histories; None keeps them in memory.
        max_history_events: events kept per user; older ones are deleted.
        verify: check checksums and the golden outputs on open (recommended).
        interpreter_pool_size: interpreters, i.e. how many calls can run the model at once.
        queue_events: `observe` also queues each event for upload by
            `pocketrec.sdk.sync.SyncClient` (in the history file, so a restart keeps it).
            False: nothing is queued, nothing leaves the device.
        pseudonymous_users: queued events name the user by a per-device pseudonym (an
            HMAC-SHA-256 of the id under a key that never leaves the history file) instead
            of the app's user id.
        max_queued_events: most events waiting for upload (the oldest beyond are dropped).
        accelerator: where the user tower runs: ``"cpu"`` (the LiteRT interpreter with
            XNNPACK), ``"gpu"`` or ``"npu"`` (LiteRT ``CompiledModel``; absent ones raise
            `pocketrec.errors.AcceleratorError` naming what is missing, and an int8 bundle
            is refused on the GPU), or ``"auto"``: the GPU when one is present, the model
            is not int8 and the GPU runs its user tower faster than the CPU (both timed on
            one history when the model loads), else the CPU (logged once, with why). The
            golden self-check runs where the model serves, with
            `pocketrec.sdk.accelerators.golden_tolerance`. With ``"gpu"``/``"auto"`` large
            float tables are scored on the GPU too (see `pocketrec.sdk._scorer`).
            `pocketrec.sdk.accelerators.detect_all` says what is present here.
    """

    bundle: Bundle | str | Path
    num_threads: int = 1
    history_path: str | Path | None = None
    max_history_events: int = 1000
    verify: bool = True
    interpreter_pool_size: int = 2
    queue_events: bool = True
    pseudonymous_users: bool = True
    max_queued_events: int = 100_000
    accelerator: str = "cpu"


@dataclass(frozen=True)
class Filters:
    """Which items a call may return, beyond its exclusions (shared by `recommend`).

    Attributes:
        allow: only these item ids may come back (ids unknown to the bundle are ignored);
            None allows every item.
        where: only items for which ``where(item)`` is true may come back; ``item`` is the
            row's metadata ``{"id": ..., **metadata}`` (do not modify it), e.g.
            ``lambda item: "Comedy" in item.get("genres", ())``. It runs once per item
            per call, so at large catalogs prefer ``allow`` with a precomputed id set.
    """

    allow: Iterable[str | int] | None = None
    where: Callable[[dict[str, Any]], bool] | None = None


class _Serving:
    """One bundle ready to serve: its row lookup, titles, interpreters and scorer.

    Never changed once built; `Recommender.swap` replaces the whole object, so a call
    that picked one up finishes with it.
    """

    def __init__(
        self,
        bundle: Bundle,
        towers: queue.Queue[UserTower],
        scorer: Scorer,
        placement: Placement,
    ) -> None:
        self.bundle = bundle
        self.placement = placement
        self.table = bundle.table
        self.item_ids = bundle.item_ids
        self.row_of = {item_id: row for row, item_id in enumerate(bundle.item_ids)}
        self.items = bundle.items
        self.titles = [_title(item) for item in self.items]
        self.history_length = bundle.history_length
        self.cold_start = _cold_start_vector(bundle)
        self.towers = towers
        self.scorer = scorer
        self._index: ApproximateIndex | None = None
        self._index_lock = threading.Lock()
        self._searcher: Searcher | None = None

    def approximate_index(self, num_threads: int) -> ApproximateIndex:
        """The HNSW index of this table, built on the first call that asks for it."""
        with self._index_lock:
            if self._index is None:
                self._index = ApproximateIndex(self.table, num_threads=num_threads)
            return self._index

    def searcher(self) -> Searcher:
        """The text index of these items, read from the bundle or built on first use."""
        with self._index_lock:
            if self._searcher is None:
                bundle = self.bundle
                tower = bundle.search_tower_settings
                search_tower = None
                if tower is not None and bundle.search_tower is not None:
                    search_tower = SearchTower(
                        bundle.search_tower, tower.encoding, bundle.embedding_dim
                    )
                self._searcher = Searcher.of(
                    self.items, bundle.search_settings, bundle.text_index, search_tower
                )
            return self._searcher

    @contextmanager
    def tower(self) -> Iterator[UserTower]:
        tower = self.towers.get()
        try:
            yield tower
        finally:
            self.towers.put(tower)


class Recommender:
    """Recommends items from a bundle with LiteRT, entirely on the device.

    Model contract: `pocketrec.sdk.contract` (the user tower maps the item vectors of the
    last ``L`` history items and their mask to a user vector); an item's score is the dot
    product of the user vector with its row of the (possibly quantized) item table.

    Build with `Recommender.open` or `Recommender.create_from_options`. Methods are safe
    to call from many threads, and `swap` replaces the bundle while they run. `close`
    releases everything; ``with`` closes on exit.
    Errors: ``ValueError`` for bad options or arguments (and use after `close`),
    ``TypeError`` for ids of the wrong type (ids are ``str``; an ``int`` is converted),
    `pocketrec.errors.BundleError` for a missing, corrupt or inconsistent bundle,
    `pocketrec.errors.HistoryStoreError` when the history store fails.
    """

    def __init__(self, options: RecommenderOptions) -> None:
        """Same as `create_from_options`, which is the documented way in."""
        _check_options(options)
        self._options = options
        self._swap_lock = threading.Lock()
        self._fallback_logged: str | None = None
        self._serving = self._prepare(options.bundle, verify=options.verify)
        history_path = ":memory:" if options.history_path is None else options.history_path
        self._store: HistoryStore | None = HistoryStore(
            history_path,
            max_events=options.max_history_events,
            max_queued_events=options.max_queued_events,
        )
        self._closed = False
        self._pseudonym_key: bytes | None = None  # read from the history store on first use

    @classmethod
    def create_from_options(cls, options: RecommenderOptions) -> Recommender:
        """Opens the bundle of ``options``; verifies it first unless ``options.verify`` is off.

        Raises:
            ValueError: for invalid options.
            BundleError: if the bundle is missing, corrupt or fails its golden self-check.
            HistoryStoreError: if the history store cannot be opened.
        """
        return cls(options)

    @classmethod
    def open(cls, bundle: Bundle | str | Path, **kwargs: Any) -> Recommender:
        """Shortcut for ``create_from_options(RecommenderOptions(bundle, **kwargs))``."""
        return cls.create_from_options(RecommenderOptions(bundle, **kwargs))

    @property
    def bundle(self) -> Bundle:
        """The bundle serving now."""
        return self._serving.bundle

    @property
    def item_ids(self) -> list[str]:
        """External item ids; row ``i`` of the table and of `score_rows` is ``item_ids[i]``."""
        return list(self._serving.item_ids)

    @property
    def manifest(self) -> dict[str, Any]:
        """The serving bundle's manifest (a copy)."""
        return self._serving.bundle.manifest

    @property
    def table(self) -> ItemTable:
        """The serving bundle's item table as stored (read-only; scores come from it)."""
        return self._serving.table

    @property
    def history_length(self) -> int:
        """``L``, how many of the most recent history items the model sees."""
        return self._serving.history_length

    @property
    def accelerator(self) -> str:
        """Where the user tower runs now: ``"cpu"``, ``"gpu"`` or ``"npu"``."""
        return self._serving.placement.accelerator

    @property
    def fully_delegated(self) -> bool:
        """Whether the accelerator's delegate runs the whole user tower (on the CPU:
        XNNPACK; otherwise some ops fall back to LiteRT's CPU kernels)."""
        with self._current().tower() as tower:
            return tower.fully_delegated

    @property
    def scoring_accelerator(self) -> str:
        """Where the item table is scored: ``"cpu"`` or ``"gpu"``."""
        return self._serving.scorer.accelerator

    def swap(self, bundle: Bundle | str | Path, *, verify: bool | None = None) -> None:
        """Serves ``bundle`` from now on, atomically, while other threads keep recommending.

        The new bundle is opened, its interpreters built and (with ``verify``, default the
        options' ``verify``) its golden self-check run before anything changes; then one
        reference is replaced. Calls already running finish on the bundle they started
        with; every later call uses the new one. A new catalog for the same model (see
        `Bundle.with_items`) reuses the model's interpreters.

        Raises:
            BundleError: if the new bundle fails its checks; the old one keeps serving.
            ValueError: after `close`.
        """
        self._check_open()
        check = self._options.verify if verify is None else verify
        with self._swap_lock:
            serving = self._prepare(bundle, verify=check, current=self._serving)
            self._check_open()
            self._serving = serving

    def recommend(
        self,
        history: Sequence[str | int] | None = None,
        *,
        user: str | int | None = None,
        k: int = 10,
        exclude: Iterable[str | int] = (),
        exclude_seen: bool = True,
        filters: Filters | None = None,
        approximate: bool = False,
        explain: bool = True,
    ) -> Recommendations:
        """The top ``k`` items for a history of external item ids (oldest first).

        With ``user``, the history is the user's last ``L`` stored events followed by
        ``history`` (treated as newer, and not stored: use `observe` to record events).
        With neither, the history is empty and the model sees an all-zero mask. Ids not in
        the table are counted in ``unknown_items`` and skipped; the model sees the last
        ``L`` known ones.

        Args:
            history: item ids (``str``; an ``int`` is converted), oldest first.
            user: whose stored history to prepend.
            k: how many items to return (fewer if too few remain after exclusions).
            exclude: item ids never to return.
            exclude_seen: also never return items of the history, nor any item the user's
                stored events name.
            filters: an allow-list and/or a metadata predicate (see `Filters`).
            approximate: rank by an HNSW index (``pip install 'pocketrec[ann]'``) instead
                of scoring every item: faster at large catalogs, but a true top-``k`` item
                may be missed. The index is built on the first such call for a table
                (seconds to minutes at 1M items) and scores with float32 dot products.
            explain: measure each result's history reasons (one more user-tower call on
                at most 3 histories: about 0.37 ms with the ML-100K demo bundle, where
                `recommend` takes 0.17 ms without); False skips them for callers that
                never show them (a search's matched query words stay).

        Each result's ``because`` names up to 3 history items whose removal from the
        history lowers its score most, with that drop as the weight (`Reason`; measured by
        one more user-tower call, see `pocketrec.sdk._explain`).

        Scores come from the serving table's scorer: on catalogs large enough, a LiteRT
        graph built from the table, whose int8/int4 kernels also quantize the user vector
        to int8 (scores within about 1% of `ItemTable.scores`; near-ties may swap).
        `score_rows` gives the same kernel's scores.

        Raises:
            ValueError: for a bad ``k``, after `close`, or ``approximate`` without
                hnswlib installed.
            TypeError: for a history, exclude or user that is not made of ids (e.g. one
                ``str``, ``bytes`` or None where a sequence belongs), or ``filters`` that
                is not a `Filters`.
            BundleError: if the model fails.
            HistoryStoreError: if the history store fails.
        """
        request = self._request(history, user, k, exclude, exclude_seen, filters)
        serving = request.serving
        if approximate:
            ranker: Scorer | ApproximateIndex = serving.approximate_index(self._options.num_threads)
        else:
            ranker = serving.scorer
        top_rows, top_scores = ranker.top_k(
            request.user_vector, k, banned=request.banned, allowed=request.allowed
        )
        return request.results(top_rows, top_scores, explain=explain)

    def search(
        self,
        query: str,
        *,
        user: str | int | None = None,
        history: Sequence[str | int] | None = None,
        k: int = 10,
        exclude: Iterable[str | int] = (),
        exclude_seen: bool = True,
        filters: Filters | None = None,
        explain: bool = True,
    ) -> Recommendations:
        """The top ``k`` items whose text matches ``query``, ordered for this user.

        The bundle's text index (titles, genres, every text field of items.json) finds
        the items matching the query's words, typos included; the best lexical matches
        are re-ranked by the user vector (or, when the bundle ships a search tower, by
        the search vector it makes of the query and the user vector), as
        `pocketrec.sdk.search` describes, with the bundle's `SearchSettings`. ``score`` is
        that mixed score. A query without a word (empty, blanks, punctuation) is exactly
        `recommend`. Each result's ``because`` lists the query words it matched, then the
        history items whose removal lowers its score most (as `recommend`'s).

        Arguments other than ``query`` are `recommend`'s.

        Raises:
            TypeError: for a ``query`` that is not a ``str``; else as `recommend`.
            ValueError, BundleError, HistoryStoreError: as `recommend`.
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        query_words = words(query)
        if not query_words:
            return self.recommend(
                history,
                user=user,
                k=k,
                exclude=exclude,
                exclude_seen=exclude_seen,
                filters=filters,
                explain=explain,
            )
        request = self._request(history, user, k, exclude, exclude_seen, filters)
        serving = request.serving
        searcher = serving.searcher()
        hits = searcher.search(
            query_words,
            user_scores(serving.scorer, searcher.personal_vector(query_words, request.user_vector)),
            k,
            banned=request.banned,
            allowed=request.allowed,
        )
        return request.results(hits.rows, hits.scores, hits.matched, explain=explain)

    def observe(self, user: str | int, item: str | int, timestamp: float | None = None) -> None:
        """Appends ``item`` to ``user``'s history (``timestamp`` in seconds; default now).

        Committed when it returns: it survives a crash of the app. The next
        ``recommend(user=user)`` sees it. Ids unknown to the bundle are stored too, so a
        later bundle that knows them can use them. With ``queue_events`` the event is also
        queued for upload, attributed to the versions of the bundle serving now.

        Raises:
            TypeError, ValueError: for a bad id or timestamp.
            HistoryStoreError: if the history store fails; nothing was stored.
        """
        store = self._history_store()
        upload = None
        if self._options.queue_events:
            model_version, catalog_version = self.versions
            upload = Upload(self.upload_user(user), model_version, catalog_version)
        store.append(user, item, timestamp, upload=upload)

    def forget(self, user: str | int) -> None:
        """Deletes ``user``'s history and queued uploads on this device.

        `pocketrec.sdk.sync.SyncClient.forget_user` also deletes what was uploaded.
        """
        self._history_store().forget(user_id(user))

    def upload_user(self, user: str | int) -> str:
        """How uploads name ``user``: its pseudonym on this device, or the id itself."""
        name = user_id(user)
        if not self._options.pseudonymous_users:
            return name
        if self._pseudonym_key is None:
            self._pseudonym_key = self._history_store().secret(_PSEUDONYM_KEY)
        return hmac.new(self._pseudonym_key, name.encode("utf-8"), hashlib.sha256).hexdigest()

    @property
    def versions(self) -> tuple[int, int]:
        """``(model_version, catalog_version)`` of the serving bundle as the sync numbered it;
        ``(0, 0)`` for a bundle that did not come from a sync server."""
        return self._serving.bundle.sync_versions

    @property
    def history(self) -> HistoryStore:
        """The history store (and upload queue) this recommender writes."""
        return self._history_store()

    def user_vectors(self, histories_rows: Sequence[Sequence[int]]) -> np.ndarray:
        """User vectors float32 ``[B, D]`` for histories of table rows (oldest first)."""
        return _user_vectors(self._current(), histories_rows)

    def score_rows(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """Scores float32 ``[B, N]`` of every item for histories of table rows.

        The ``score_fn`` of `pocketrec.evaluation.evaluate`, so bundles are evaluated with
        the same protocol as the models they came from. Scored by the same kernel as
        `recommend` (`Scorer.score_batch`), so evaluation measures what users are served.
        """
        return _scores(self._current(), histories)

    def close(self) -> None:
        """Releases the interpreters and the history store; safe to call twice."""
        with self._swap_lock:
            if self._closed:
                return
            self._closed = True
            store, self._store = self._store, None
        if store is not None:
            store.close()

    def __enter__(self) -> Recommender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _prepare(
        self, source: Bundle | str | Path, *, verify: bool, current: _Serving | None = None
    ) -> _Serving:
        asked_to_verify = verify
        if isinstance(source, Bundle):
            bundle = source
            # A bundle already serving was checked when it started.
            verify = verify and (current is None or source is not current.bundle)
        elif isinstance(source, str | Path):
            bundle = Bundle.open(source, verify=verify)
            verify = False  # checksums and golden outputs were checked by open
        else:
            raise TypeError(f"bundle must be a Bundle or a bundle directory path, got {source!r}")
        placement = choose(self._options.accelerator, bundle.quantization)
        auto = self._options.accelerator == "auto"
        if (
            current is not None
            and current.bundle.model_sha256 == bundle.model_sha256
            and (auto or current.placement.accelerator == placement.accelerator)
        ):
            towers, placement = current.towers, current.placement
        else:
            towers = queue.Queue()
            if auto and placement.accelerator == "gpu":
                placement, timed = _timed_placement(bundle, self._options.num_threads)
                if timed is not None:  # compiled and warmed already: the pool's first
                    towers.put(timed)
            for _ in range(self._options.interpreter_pool_size - towers.qsize()):
                towers.put(
                    UserTower(
                        bundle.model,
                        num_threads=self._options.num_threads,
                        history_length=bundle.history_length,
                        dim=bundle.embedding_dim,
                        accelerator=placement.accelerator,
                    )
                )
        if current is not None and current.table is bundle.table:
            scorer = current.scorer
        else:
            scorer = Scorer(
                bundle.table,
                num_threads=self._options.num_threads,
                accelerator=_scoring_accelerator(self._options.accelerator),
            )
        serving = _Serving(bundle, towers, scorer, placement)
        # Bundle.open checked the CPU; a bundle served elsewhere is checked there as well.
        on_accelerator = (
            asked_to_verify
            and placement.accelerator != "cpu"
            and (current is None or bundle is not current.bundle)
        )
        if verify or on_accelerator:
            tolerance = golden_tolerance(placement.accelerator, bundle.quantization)
            with serving.tower() as tower:
                check_golden(bundle, tower, tolerance=tolerance)
        if placement.fallback is not None and placement.fallback != self._fallback_logged:
            LOGGER.info("accelerator='auto' runs the user tower on the CPU: %s", placement.fallback)
            self._fallback_logged = placement.fallback
        return serving

    def _current(self) -> _Serving:
        self._check_open()
        return self._serving

    def _request(
        self,
        history: Sequence[str | int] | None,
        user: str | int | None,
        k: int,
        exclude: Iterable[str | int],
        exclude_seen: bool,
        filters: Filters | None,
    ) -> _Request:
        """Checks a `recommend` or `search` call's arguments; its user vector and exclusions."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        ids = [] if history is None else item_ids(history, "history")
        excluded = item_ids(exclude, "exclude")
        if filters is not None and not isinstance(filters, Filters):
            raise TypeError(f"filters must be a Filters, got {type(filters).__name__}")
        serving = self._current()
        seen: Iterable[str] = ()
        if user is not None:
            store = self._history_store()
            name = user_id(user)
            ids = store.recent(name, serving.history_length) + ids
            if exclude_seen:
                seen = store.seen(name)
        row_of = serving.row_of
        rows = [row_of[i] for i in ids if i in row_of]
        banned = {row_of[i] for i in excluded if i in row_of}
        if exclude_seen:
            banned.update(rows)
            banned.update(row_of[i] for i in seen if i in row_of)
        return _Request(
            serving=serving,
            rows=rows,
            unknown_items=len(ids) - len(rows),
            user_vector=_user_vectors(serving, [rows])[0],
            banned=banned,
            allowed=None if filters is None else _allowed_rows(serving, filters),
        )

    def _history_store(self) -> HistoryStore:
        store = self._store
        if store is None:
            raise ValueError("the Recommender is closed; open it again")
        return store

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the Recommender is closed; open it again")


@dataclass(frozen=True)
class _Request:
    """One `recommend` or `search` call, checked: its history rows, user vector and limits."""

    serving: _Serving
    rows: list[int]
    unknown_items: int
    user_vector: np.ndarray
    banned: set[int]
    allowed: set[int] | None

    def results(
        self,
        rows: np.ndarray,
        scores: np.ndarray,
        matched: Sequence[Sequence[str]] | None = None,
        *,
        explain: bool,
    ) -> Recommendations:
        """The ranked rows as `Recommendations`, each with its reasons (history reasons
        only when ``explain``)."""
        serving = self.serving
        # What the user tower read: an item removed leaves a gap, no older item slides in.
        history = self.rows[-serving.history_length :] if explain else []

        def without(removed: Sequence[int]) -> np.ndarray:
            return _user_vectors(serving, [[r for r in history if r != x] for x in removed])

        items = explained(
            serving.table,
            serving.item_ids,
            serving.titles,
            rows,
            scores,
            history,
            self.user_vector,
            without,
            matched,
        )
        return Recommendations(
            items=items,
            unknown_items=self.unknown_items,
            model_version=serving.bundle.model_version,
        )


def _user_vectors(serving: _Serving, histories_rows: Sequence[Sequence[int]]) -> np.ndarray:
    out = np.empty((len(histories_rows), serving.table.dim), dtype=np.float32)
    for start in range(0, len(histories_rows), _BATCH):
        chunk = histories_rows[start : start + _BATCH]
        history, mask = encode_histories(serving.table, chunk, serving.history_length)
        with serving.tower() as tower:
            out[start : start + len(chunk)] = tower.run(history, mask)
    if serving.cold_start is not None:
        for row, rows in enumerate(histories_rows):
            if len(rows) == 0:
                out[row] = serving.cold_start
    return out


def _cold_start_vector(bundle: Bundle) -> np.ndarray | None:
    """The bundle's user vector for an empty history, if it has one."""
    values = bundle.manifest["extra"].get(COLD_START_VECTOR)
    if values is None:
        return None
    try:
        vector = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        vector = np.zeros(0, np.float32)
    if vector.shape != (bundle.embedding_dim,) or not np.isfinite(vector).all():
        raise BundleError(
            f"the manifest's extra.{COLD_START_VECTOR} must be {bundle.embedding_dim} finite "
            f"numbers (the user vector of an empty history); rebuild the bundle"
        )
    return vector


def _scores(serving: _Serving, histories_rows: Sequence[Sequence[int]]) -> np.ndarray:
    return serving.scorer.score_batch(_user_vectors(serving, histories_rows))


def _allowed_rows(serving: _Serving, filters: Filters) -> set[int] | None:
    """Rows ``filters`` lets through; None when it restricts nothing."""
    allowed: set[int] | None = None
    if filters.allow is not None:
        row_of = serving.row_of
        allowed = {row_of[i] for i in item_ids(filters.allow, "filters.allow") if i in row_of}
    if filters.where is not None:
        where = filters.where
        rows = allowed if allowed is not None else range(len(serving.items))
        allowed = {r for r in rows if where(serving.items[r])}
    return allowed


def _title(item: dict[str, Any]) -> str | None:
    title = item.get("title")
    return title if isinstance(title, str) else None


def _timed_placement(bundle: Bundle, num_threads: int) -> tuple[Placement, UserTower | None]:
    """``accelerator='auto'`` with a GPU present: the GPU only where it compiles ``bundle``'s
    user tower and runs one history faster than the CPU; with the timed tower of the
    accelerator chosen (None when the GPU could not compile it).

    A discrete GPU pays a dispatch per call: on an NVIDIA H200 (WebGPU over Vulkan) one
    history of the ML-100K tower took 1.2 ms, against 0.16 ms on one CPU thread.
    """
    towers = {}
    for accelerator in ("gpu", "cpu"):
        try:
            towers[accelerator] = UserTower(
                bundle.model,
                num_threads=num_threads,
                history_length=bundle.history_length,
                dim=bundle.embedding_dim,
                accelerator=accelerator,
            )
        except AcceleratorError as exc:
            return Placement("cpu", f"the GPU could not compile its user tower: {exc}"), None
    history = np.zeros((1, bundle.history_length, bundle.embedding_dim), dtype=np.float32)
    mask = np.ones((1, bundle.history_length), dtype=np.float32)
    took = {
        name: median_us(lambda tower=tower: tower.run(history, mask), _TIMED_CALLS)
        for name, tower in towers.items()
    }
    if took["gpu"] < took["cpu"]:
        return Placement("gpu"), towers["gpu"]
    why = f"one history took {took['gpu']:,.0f} µs on the GPU and {took['cpu']:,.0f} µs on the CPU"
    return Placement("cpu", why), towers["cpu"]


def _scoring_accelerator(requested: str) -> str:
    """Where a `Scorer` may score: the GPU only when the GPU was asked for, or ``auto``."""
    return requested if requested in ("gpu", "auto") else "cpu"


def _check_options(options: RecommenderOptions) -> None:
    if not isinstance(options, RecommenderOptions):
        raise ValueError(f"options must be RecommenderOptions, got {type(options).__name__}")
    check_choice(options.accelerator, ACCELERATOR_CHOICES, "accelerator")
    for name in ("num_threads", "max_history_events", "interpreter_pool_size"):
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
