"""The device side of the sync: bring a local bundle up to the server's signed versions.

`SyncClient.sync` asks the server for the latest model and catalog versions, downloads
what changed (a new model, with its search tower when the signed model record names one,
and its full table, or the rows of a newer catalog), rebuilds
the bundle the signed catalog record describes, checks it (signatures, every sha256, the
golden self-check), then makes it current with `Bundle.save`'s atomic swap and, when given
one, swaps it into a running `Recommender`. Until that swap nothing the device uses
changes, so a failure or a kill -9 at any point leaves a valid bundle in use.

Events go the other way: `Recommender.observe` queues each event in the history file, and
`upload_events` (called by `sync`) sends the queue in batches, forgetting exactly what the
server acknowledged. `start` runs all of it in the background: a `WatchManifest` stream
tells the device the moment a new version is published, and the client syncs at once.

Device directory::

    DEVICE_DIR/bundle            the bundle in use (a link to its version, see Bundle.save)
    DEVICE_DIR/state.json        the highest versions accepted, and their signed records
    DEVICE_DIR/downloads/        partial model (and search tower) downloads, resumed from
                                 their size
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pocketrec.errors import BundleError, PocketrecError
from pocketrec.proto import sync_pb2, sync_pb2_grpc
from pocketrec.sdk._history import HistoryStore
from pocketrec.sdk.bundle import Bundle
from pocketrec.sdk.catalog import (
    CATALOG_KIND,
    MODEL_KIND,
    SEARCH_TOWER_SHA256,
    SEARCH_TOWER_SIZE,
    Rows,
    SignatureError,
    SignedRecord,
    bundle_of,
    check_family,
    decode_batch,
    load_public_key,
)
from pocketrec.sdk.recommender import Recommender
from pocketrec.sdk.search import SEARCH_TOWER_FILE

LOGGER = logging.getLogger("pocketrec.sync")
BUNDLE_DIR = "bundle"
STATE_FILE = "state.json"
DOWNLOADS_DIR = "downloads"
MAX_UPLOAD_BATCH = 1000
# What the device calls each ModelFile in its messages.
_FILE_NAMES = {
    sync_pb2.MODEL_FILE_USER_TOWER: "model",
    sync_pb2.MODEL_FILE_SEARCH_TOWER: "search tower",
}
# Failures worth another try: the server restarting, a broken connection, a busy server.
_RETRIABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)


class SyncError(PocketrecError):
    """A sync that could not complete; the bundle in use is unchanged."""


@dataclass(frozen=True)
class SyncResult:
    """What one `SyncClient.sync` did.

    Attributes:
        model_version, catalog_version: the versions in use afterwards.
        changed: whether a new bundle was installed.
        snapshot: whether the rows came as a full snapshot (None when nothing changed).
        rows: rows received (upserted) in the item stream.
        deleted: ids the delta deleted.
        model_bytes: model bytes downloaded (0 when the model was already here; less than
            its size when a partial download was resumed).
        batch_bytes: item batch bytes received, chunks refetched included.
        resumed_from: chunk indices the item stream was resumed from after a failure.
        seconds: wall time.
        bundle: the bundle in use.
        events_uploaded: queued events the server acknowledged in this sync.
        search_tower_bytes: search tower bytes downloaded (0 when the model has none or
            it was already here).
    """

    model_version: int
    catalog_version: int
    changed: bool
    snapshot: bool | None
    rows: int
    deleted: int
    model_bytes: int
    batch_bytes: int
    resumed_from: tuple[int, ...]
    seconds: float
    bundle: Path
    events_uploaded: int = 0
    search_tower_bytes: int = 0


@dataclass(frozen=True)
class UploadResult:
    """What `SyncClient.upload_events` sent.

    Attributes:
        acknowledged: events the server holds now (and the device forgot).
        stored_new: of those, how many it had not stored before (a retry stores once).
        rejected: malformed events the server refused; the device dropped them too.
        request_bytes: serialized request bytes sent.
        seconds: wall time.
    """

    acknowledged: int
    stored_new: int
    rejected: int
    request_bytes: int
    seconds: float


@dataclass(frozen=True)
class _Held:
    """The installed bundle and the versions it is."""

    bundle: Bundle
    model_version: int
    catalog_version: int
    rows: Rows | None = None  # the bundle's rows in sync order, when already at hand


class SyncClient:
    """Syncs one device directory with a pocketrec sync server.

    Every call has a deadline; failures that a retry can cure (the server restarting, a
    broken stream, a damaged chunk) are retried with exponential backoff and jitter, and
    a broken item stream resumes from its first missing chunk. Anything unsigned, wrongly
    signed or older than what the device holds is refused (unless ``allow_rollback``).
    """

    def __init__(
        self,
        target: str,
        *,
        token: str,
        public_key: bytes | str | Path | Ed25519PublicKey,
        family: str,
        device_dir: str | Path,
        deadline_s: float = 30.0,
        retries: int = 6,
        backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        allow_rollback: bool = False,
        on_chunk: Callable[[int, int], None] | None = None,
        upload_batch: int = 500,
        upload_every_s: float = 10.0,
        watch_s: float = 300.0,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """Prepares a client; nothing is sent until `sync`.

        Args:
            target: the server, ``HOST:PORT``.
            token: this device's bearer token (``pocketrec token issue``).
            public_key: the publisher's Ed25519 public key (hex, raw, PEM or a file).
            family: the model family to follow.
            device_dir: where the bundle and the sync state live (created if needed).
            deadline_s: deadline of each call, a whole stream included.
            retries: further tries of a call that failed in a way a retry can cure.
            backoff_s, max_backoff_s: the first wait between tries and its cap; each wait
                doubles, with random jitter of up to half of it.
            allow_rollback: accept signed versions older than those held (an explicit
                roll back by the app).
            on_chunk: called with (index, count) after each item chunk is applied.
            upload_batch: events per `UploadEvents` call (at most 1000).
            upload_every_s: how often the background thread sends queued events (at each
                heartbeat of the watch stream that comes this long after the last upload).
            watch_s: how long one `WatchManifest` stream lasts before the background
                thread opens the next (a dead connection is noticed sooner, by heartbeats).
            channel_options: gRPC channel arguments, e.g. ``("grpc.http2.lookahead_bytes",
                65536)`` to bound how far a stream runs ahead of what the device applied.

        Raises:
            ValueError: for a bad family, key, token or setting.
        """
        if not isinstance(token, str) or not token:
            raise ValueError("token must be the non-empty str `pocketrec token issue` printed")
        if not 1 <= upload_batch <= MAX_UPLOAD_BATCH:
            raise ValueError(f"upload_batch must be in [1, {MAX_UPLOAD_BATCH}], got {upload_batch}")
        if not deadline_s > 0 or retries < 0 or not backoff_s > 0 or not watch_s > 0:
            raise ValueError(
                f"deadline_s and backoff_s must be > 0 and retries >= 0, got {deadline_s}, "
                f"{backoff_s} and {retries}"
            )
        self._family = check_family(family)
        self._public_key = load_public_key(public_key)
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._dir = Path(device_dir)
        self._deadline_s = float(deadline_s)
        self._retries = int(retries)
        self._backoff_s = float(backoff_s)
        self._max_backoff_s = float(max_backoff_s)
        self._allow_rollback = allow_rollback
        self._on_chunk = on_chunk
        self._upload_batch = upload_batch
        self._upload_every_s = float(upload_every_s)
        self._last_upload = 0.0
        self._watch_s = float(watch_s)
        self._channel = grpc.insecure_channel(target, options=list(channel_options))
        self._stub = sync_pb2_grpc.CatalogSyncStub(self._channel)
        # The bundle this client installed last, by its version directory: not re-read.
        self._installed: tuple[Path, _Held] | None = None
        # One sync at a time, whether the app or the background thread asks.
        self._sync_lock = threading.Lock()
        self._upload_lock = threading.Lock()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._watch: Any = None  # the WatchManifest call in flight, to cancel on stop

    @property
    def bundle_path(self) -> Path:
        """The device's bundle (which `Recommender.open` takes)."""
        return self._dir / BUNDLE_DIR

    def versions(self) -> tuple[int, int] | None:
        """``(model_version, catalog_version)`` of the bundle in use, or None before any sync."""
        held = self._held()
        return None if held is None else (held.model_version, held.catalog_version)

    def sync(self, recommender: Recommender | None = None) -> SyncResult:
        """Brings the device's bundle up to the server's latest signed versions.

        Args:
            recommender: also swapped to the new bundle, atomically for its callers.

        Returns:
            What changed.

        Raises:
            SyncError: naming what failed (the server, a signature, a digest, the golden
                self-check, a rollback); the bundle in use is unchanged.
        """
        started = time.perf_counter()
        with self._sync_lock:
            try:
                result = self._sync(recommender, started)
            except (SignatureError, BundleError) as exc:
                raise SyncError(f"sync of {self._family!r} refused: {exc}") from exc
            except grpc.RpcError as exc:
                raise SyncError(_describe(exc)) from exc
        if recommender is not None and recommender.history.queue_length():
            try:
                uploaded = self.upload_events(recommender).acknowledged
            except SyncError as exc:
                # The bundle is installed; the queue stays for the next sync to send.
                LOGGER.warning("%s; the events stay queued", exc)
            else:
                result = dataclasses.replace(result, events_uploaded=uploaded)
        return result

    def upload_events(self, recommender: Recommender) -> UploadResult:
        """Sends ``recommender``'s queued events until the queue is empty.

        Each batch is removed from the queue only once the server acknowledged it, so an
        upload cut short (a failure, a kill -9) sends the rest next time, and the server
        stores a retried event once.

        Raises:
            SyncError: if the server cannot be reached or refuses; what was acknowledged
                so far is forgotten, the rest stays queued.
        """
        started = time.perf_counter()
        store = recommender.history
        totals = {"acknowledged": 0, "stored_new": 0, "rejected": 0, "request_bytes": 0}
        with self._upload_lock:
            self._upload(store, totals)
            self._last_upload = time.monotonic()
        return UploadResult(**totals, seconds=time.perf_counter() - started)

    def _upload(self, store: HistoryStore, totals: dict[str, int]) -> None:
        while batch := store.queued(self._upload_batch):
            request = sync_pb2.UploadEventsRequest(
                family=self._family,
                events=[
                    sync_pb2.Event(
                        event_id=event.event_id,
                        user=event.user,
                        item_id=event.item,
                        timestamp_s=event.timestamp,
                        model_version=event.model_version,
                        catalog_version=event.catalog_version,
                    )
                    for event in batch
                ],
            )
            try:
                response = self._retrying(
                    lambda request=request: self._stub.UploadEvents(
                        request, timeout=self._deadline_s, metadata=self._metadata
                    ),
                    "UploadEvents",
                )
            except grpc.RpcError as exc:
                raise SyncError(_describe(exc)) from exc
            for rejected in response.rejected:
                LOGGER.warning(
                    "the server refused event %s: %s; dropped",
                    rejected.event_id.hex(),
                    rejected.reason,
                )
            done = [*response.acknowledged_event_ids, *(r.event_id for r in response.rejected)]
            store.acknowledge(done)
            totals["acknowledged"] += len(response.acknowledged_event_ids)
            totals["stored_new"] += response.stored_new
            totals["rejected"] += len(response.rejected)
            totals["request_bytes"] += request.ByteSize()
            if not done:
                raise SyncError("the server acknowledged none of a batch of events; retry later")

    def forget_user(self, recommender: Recommender, user: str | int) -> int:
        """Deletes everything of ``user`` on the device, then what it uploaded to the server.

        Uploads wait meanwhile, so no queued event of the user reaches the server after.

        Returns:
            How many uploaded events the server deleted.

        Raises:
            SyncError: if the server cannot be reached or refuses; the device's part is
                done, and calling again deletes the server's part (the pseudonym stays).
        """
        request = sync_pb2.DeleteUserEventsRequest(
            family=self._family, user=recommender.upload_user(user)
        )
        with self._upload_lock:
            recommender.forget(user)
            try:
                response = self._retrying(
                    lambda: self._stub.DeleteUserEvents(
                        request, timeout=self._deadline_s, metadata=self._metadata
                    ),
                    "DeleteUserEvents",
                )
            except grpc.RpcError as exc:
                raise SyncError(_describe(exc)) from exc
        return int(response.deleted)

    def start(self, recommender: Recommender | None = None) -> None:
        """Keeps the device fresh in a background thread until `stop` (or `close`).

        The thread syncs (and uploads ``recommender``'s events), then holds a
        `WatchManifest` stream open and syncs the moment the server names other versions.
        When the stream breaks it reconnects with backoff and jitter, syncing at each try
        meanwhile (polling). Failures are logged, never raised.

        Raises:
            ValueError: if it is already running.
        """
        if self._worker is not None and self._worker.is_alive():
            raise ValueError("the background sync is already running; stop() it first")
        self._stop.clear()
        self._worker = threading.Thread(
            target=self._run, args=(recommender,), name="pocketrec-sync", daemon=True
        )
        self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the background thread and waits for it; safe to call when not running."""
        self._stop.set()
        watch = self._watch
        if watch is not None:
            watch.cancel()
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.join(timeout)

    def close(self) -> None:
        """Stops the background thread, then closes the channel; safe to call twice."""
        self.stop()
        self._channel.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the steps ----------------------------------------------------------------------------

    def _sync(self, recommender: Recommender | None, started: float) -> SyncResult:
        self._dir.mkdir(parents=True, exist_ok=True)
        held = self._held()
        running = (0, 0) if held is None else (held.model_version, held.catalog_version)
        response = self._retrying(
            lambda: self._stub.GetManifest(
                sync_pb2.GetManifestRequest(
                    family=self._family,
                    running_model_version=running[0],
                    running_catalog_version=running[1],
                ),
                timeout=self._deadline_s,
                metadata=self._metadata,
            ),
            "GetManifest",
        )
        model_record = SignedRecord.from_proto(response.model_record)
        model_doc = self._verified(model_record, MODEL_KIND, response.model_version)
        catalog_doc = self._verified(
            SignedRecord.from_proto(response.catalog_record),
            CATALOG_KIND,
            response.catalog_version,
        )
        if catalog_doc["model_version"] != model_doc["model_version"] or (
            catalog_doc["model_sha256"] != model_doc["model_sha256"]
        ):
            raise SignatureError(
                f"catalog version {catalog_doc['catalog_version']} belongs to model version "
                f"{catalog_doc['model_version']}, not to the model version "
                f"{model_doc['model_version']} the server names"
            )
        _check_search_tower(model_doc, catalog_doc)
        self._check_forward(held, model_doc["model_version"], catalog_doc["catalog_version"])
        if held is not None and (held.model_version, held.catalog_version) == (
            model_doc["model_version"],
            catalog_doc["catalog_version"],
        ):
            return self._result(held, False, None, 0, 0, 0, 0, (), started)

        same_model = held is not None and held.bundle.model_sha256 == model_doc["model_sha256"]
        if same_model:
            assert held is not None
            model, model_bytes = held.bundle.model, 0
        else:
            model, model_bytes = self._download(
                sync_pb2.MODEL_FILE_USER_TOWER,
                model_doc["model_sha256"],
                model_doc["model_size_bytes"],
            )
        search_tower, tower_bytes = self._search_tower(held, model_doc)
        since = held.catalog_version if same_model and held is not None else 0
        base = None
        if same_model and held is not None:
            base = held.rows if held.rows is not None else Rows.of_bundle(held.bundle)
        stream = self._stream_items(model_doc["model_version"], since, catalog_doc, base)
        final_record, rows, snapshot, counts = stream
        final_doc = self._verified(final_record, CATALOG_KIND, catalog_doc["catalog_version"])
        _check_search_tower(model_doc, final_doc)
        bundle = bundle_of(final_doc, model, rows, search_tower)
        path = self._install(bundle, model_record, final_record, final_doc)
        if recommender is not None:
            recommender.swap(bundle, verify=False)  # checked above on this CPU
        installed = _Held(bundle, final_doc["model_version"], final_doc["catalog_version"], rows)
        self._installed = (path.resolve(), installed)
        LOGGER.info(
            "sync %s: model %d, catalog %d (%s, %d rows, %d deleted)",
            self._family,
            installed.model_version,
            installed.catalog_version,
            "snapshot" if snapshot else "delta",
            counts["rows"],
            counts["deleted"],
        )
        return self._result(
            installed,
            True,
            snapshot,
            counts["rows"],
            counts["deleted"],
            model_bytes,
            counts["batch_bytes"],
            tuple(counts["resumed_from"]),
            started,
            path,
            tower_bytes,
        )

    def _search_tower(
        self, held: _Held | None, model_doc: dict[str, Any]
    ) -> tuple[bytes | None, int]:
        """The search tower the model record names (None when it names none), and the
        bytes fetched: the installed bundle's when it has that one, else downloaded."""
        if SEARCH_TOWER_SHA256 not in model_doc:
            return None, 0
        digest = str(model_doc[SEARCH_TOWER_SHA256])
        installed = None if held is None else held.bundle.search_tower
        if installed is not None and hashlib.sha256(installed).hexdigest() == digest:
            return installed, 0
        size = model_doc[SEARCH_TOWER_SIZE]
        return self._download(sync_pb2.MODEL_FILE_SEARCH_TOWER, digest, size)

    def _download(self, file: int, digest: str, size: int) -> tuple[bytes, int]:
        """The ``file`` (a ``ModelFile``) of the digest and size the signed model record
        names, and the bytes fetched: a partial download resumes.

        Raises:
            SignatureError: if the bytes received are not the ones the record names.
        """
        digest, size, what = str(digest), int(size), _FILE_NAMES[file]
        downloads = self._dir / DOWNLOADS_DIR
        downloads.mkdir(exist_ok=True)
        part = downloads / f"{digest}.part"
        tries = fetched = 0
        while True:
            have = part.stat().st_size if part.exists() else 0
            if have > size:
                part.unlink()  # longer than the model: not ours to resume
                have = 0
            if have == size:
                break
            request = sync_pb2.DownloadModelRequest(
                family=self._family,
                model_sha256=bytes.fromhex(digest),
                offset_bytes=have,
                file=file,
            )
            try:
                with part.open("ab") as out:
                    for chunk in self._stub.DownloadModel(
                        request, timeout=self._deadline_s, metadata=self._metadata
                    ):
                        if chunk.offset_bytes != out.tell() or chunk.size_bytes != size:
                            raise SyncError(
                                f"{what} chunk at offset {chunk.offset_bytes} of "
                                f"{chunk.size_bytes} bytes does not continue the "
                                f"{out.tell()} of {size} held"
                            )
                        out.write(chunk.data)
                        out.flush()
                        fetched += len(chunk.data)
            except grpc.RpcError as exc:
                tries = self._after_failure(exc, tries, "DownloadModel")
        data = part.read_bytes()
        received = hashlib.sha256(data).hexdigest()
        if received != digest:
            part.unlink()
            raise SignatureError(
                f"the downloaded {what}'s sha256 is {received}, not the {digest} the signed "
                f"model record names: damaged or tampered with on the server; it was "
                "discarded and the bundle in use kept. Publish the model again"
            )
        return data, fetched

    def _stream_items(
        self,
        model_version: int,
        since: int,
        catalog_doc: dict[str, Any],
        base: Rows | None,
    ) -> tuple[SignedRecord, Rows, bool, dict[str, Any]]:
        """Receives every chunk of the item stream, resuming after failures."""
        target = int(catalog_doc["catalog_version"])
        manifest_table = catalog_doc["manifest"]["table"]
        dtype, (_, dim) = manifest_table["dtype"], manifest_table["shape"]
        scale_dtype = catalog_doc["scale_dtype"]
        upserts: list[Rows] = []
        deleted: list[str] = []
        counts: dict[str, Any] = {"rows": 0, "deleted": 0, "batch_bytes": 0, "resumed_from": []}
        next_index, count, snapshot, record = 0, None, None, None
        tries = attempts = 0
        while count is None or next_index < count:
            if attempts:
                counts["resumed_from"].append(next_index)
            attempts += 1
            request = sync_pb2.SyncItemsRequest(
                family=self._family,
                model_version=model_version,
                since_catalog_version=since,
                target_catalog_version=target,
                resume_from_chunk=next_index,
            )
            stream = self._stub.SyncItems(
                request, timeout=self._deadline_s, metadata=self._metadata
            )
            try:
                for chunk in stream:
                    counts["batch_bytes"] += len(chunk.batch)
                    if chunk.index != next_index or chunk.target_catalog_version != target:
                        raise SyncError(
                            f"the server sent chunk {chunk.index} of catalog version "
                            f"{chunk.target_catalog_version}; expected chunk {next_index} of "
                            f"version {target}"
                        )
                    if hashlib.sha256(chunk.batch).digest() != chunk.batch_sha256:
                        LOGGER.warning("item chunk %d is damaged; fetching it again", chunk.index)
                        stream.cancel()
                        tries = self._after_damage(tries, chunk.index)
                        break
                    snapshot, count = chunk.snapshot, chunk.chunk_count
                    rows, gone = decode_batch(
                        chunk.batch, dtype=dtype, dim=dim, scale_dtype=scale_dtype
                    )
                    upserts.append(rows)
                    deleted.extend(gone)
                    next_index += 1
                    if chunk.HasField("catalog_record"):
                        record = SignedRecord.from_proto(chunk.catalog_record)
                    if self._on_chunk is not None:
                        self._on_chunk(chunk.index, chunk.chunk_count)
                else:
                    if count is None or next_index < count:
                        tries = self._after_damage(tries, next_index)  # the stream ended early
            except grpc.RpcError as exc:
                tries = self._after_failure(exc, tries, "SyncItems")
        if record is None or snapshot is None:
            raise SyncError(f"the item stream of catalog version {target} ended unsigned")
        empty = Rows.empty(dtype, dim, scale_dtype)
        if snapshot or base is None:
            base = empty
        received = empty.concatenated(upserts)
        counts["rows"], counts["deleted"] = len(received), len(deleted)
        return record, base.applied(received, deleted), snapshot, counts

    def _install(
        self,
        bundle: Bundle,
        model_record: SignedRecord,
        catalog_record: SignedRecord,
        catalog_doc: dict[str, Any],
    ) -> Path:
        """Records the signed versions, then swaps the bundle in (each step atomic)."""
        state = {
            "family": self._family,
            "model_version": catalog_doc["model_version"],
            "catalog_version": catalog_doc["catalog_version"],
            "model_record": model_record.to_json(),
            "catalog_record": catalog_record.to_json(),
        }
        # The state goes first: a kill before the swap leaves a high-water mark ahead of
        # the bundle in use, which only refuses older versions, as it should.
        _write_atomically(self._dir / STATE_FILE, json.dumps(state, indent=2).encode())
        path = bundle.save(self.bundle_path)
        for stale in (self._dir / DOWNLOADS_DIR).glob("*.part"):
            stale.unlink(missing_ok=True)
        return path

    # -- checks -------------------------------------------------------------------------------

    def _verified(self, record: SignedRecord, kind: str, version: int) -> dict[str, Any]:
        document = record.verified(self._public_key, kind)
        key = "model_version" if kind == MODEL_KIND else "catalog_version"
        if document.get("family") != self._family or document.get(key) != version:
            raise SignatureError(
                f"the signed {kind} record is for family {document.get('family')!r} version "
                f"{document.get(key)!r}; expected {self._family!r} version {version}"
            )
        return document

    def _check_forward(self, held: _Held | None, model_version: int, catalog_version: int) -> None:
        high_model, high_catalog = self._high_water()
        if held is not None:
            high_model = max(high_model, held.model_version)
            high_catalog = max(high_catalog, held.catalog_version)
        if self._allow_rollback or (
            model_version >= high_model and catalog_version >= high_catalog
        ):
            return
        raise SignatureError(
            f"the server offers model {model_version}, catalog {catalog_version}, older than "
            f"model {high_model}, catalog {high_catalog} held: a replay or rollback; refused "
            "(pass allow_rollback=True to roll back on purpose)"
        )

    def _held(self) -> _Held | None:
        if not (self.bundle_path / "manifest.json").is_file():
            return None
        if self._installed is not None and self._installed[0] == self.bundle_path.resolve():
            return self._installed[1]
        try:
            bundle = Bundle.open(self.bundle_path, verify=True)
        except BundleError as exc:
            raise SyncError(
                f"the bundle in use at {self.bundle_path} does not verify ({exc}); remove it "
                "to sync from scratch"
            ) from exc
        if bundle.sync_family != self._family:
            raise SyncError(
                f"{self.bundle_path} holds family {bundle.sync_family!r}, not {self._family!r}"
            )
        return _Held(bundle, *bundle.sync_versions)

    def _high_water(self) -> tuple[int, int]:
        path = self._dir / STATE_FILE
        if not path.is_file():
            return (0, 0)
        state = json.loads(path.read_text(encoding="utf-8"))
        return (int(state["model_version"]), int(state["catalog_version"]))

    # -- retries ------------------------------------------------------------------------------

    def _retrying(self, call: Callable[[], Any], method: str) -> Any:
        tries = 0
        while True:
            try:
                return call()
            except grpc.RpcError as exc:
                tries = self._after_failure(exc, tries, method)

    # -- the background thread ----------------------------------------------------------------

    def _run(self, recommender: Recommender | None) -> None:
        failures = 0
        while not self._stop.is_set():
            self._sync_logged(recommender)  # at start, and as the poll while reconnecting
            try:
                self._watch_until_broken(recommender)
                failures = 0
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    break
                failures += 1
                delay = min(self._max_backoff_s, self._backoff_s * 2 ** min(failures, 16))
                delay += random.uniform(0, delay / 2)
                LOGGER.info(
                    "watch stream broke (%s); reconnecting in %.2f s", _describe(exc), delay
                )
                self._stop.wait(delay)

    def _watch_until_broken(self, recommender: Recommender | None) -> None:
        """Follows one WatchManifest stream; returns when it ends by its deadline."""
        running = self.versions() or (0, 0)
        call = self._stub.WatchManifest(
            sync_pb2.WatchManifestRequest(
                family=self._family,
                running_model_version=running[0],
                running_catalog_version=running[1],
            ),
            timeout=self._watch_s,
            metadata=self._metadata,
        )
        self._watch = call
        watchdog = _Watchdog(call)
        try:
            if self._stop.is_set():
                call.cancel()
            for update in call:
                watchdog.heard(update.heartbeat_ms)
                if (update.model_version, update.catalog_version) != self.versions():
                    self._sync_logged(recommender)
                elif recommender is not None and self._upload_due():
                    self._upload_logged(recommender)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED or watchdog.fired:
                raise
        finally:
            watchdog.close()
            self._watch = None

    def _sync_logged(self, recommender: Recommender | None) -> None:
        try:
            self.sync(recommender)
        except SyncError as exc:
            LOGGER.warning("background sync failed: %s", exc)

    def _upload_due(self) -> bool:
        return time.monotonic() - self._last_upload >= self._upload_every_s

    def _upload_logged(self, recommender: Recommender) -> None:
        if not recommender.history.queue_length():
            return
        try:
            self.upload_events(recommender)
        except SyncError as exc:
            LOGGER.warning("background upload failed: %s; the events stay queued", exc)

    def _after_failure(self, exc: grpc.RpcError, tries: int, method: str) -> int:
        """Waits before the next try of a retriable failure; raises otherwise."""
        code = exc.code() if hasattr(exc, "code") else None
        if code not in _RETRIABLE or tries >= self._retries:
            raise exc
        delay = min(self._max_backoff_s, self._backoff_s * 2**tries)
        delay += random.uniform(0, delay / 2)
        LOGGER.info("%s failed (%s); retrying in %.2f s", method, _describe(exc), delay)
        time.sleep(delay)
        return tries + 1

    def _after_damage(self, tries: int, index: int) -> int:
        if tries >= self._retries:
            raise SyncError(f"item chunk {index} arrived damaged {tries + 1} times; giving up")
        time.sleep(min(self._max_backoff_s, self._backoff_s * 2**tries))
        return tries + 1

    def _result(
        self,
        held: _Held,
        changed: bool,
        snapshot: bool | None,
        rows: int,
        deleted: int,
        model_bytes: int,
        batch_bytes: int,
        resumed_from: tuple[int, ...],
        started: float,
        path: Path | None = None,
        search_tower_bytes: int = 0,
    ) -> SyncResult:
        return SyncResult(
            model_version=held.model_version,
            catalog_version=held.catalog_version,
            changed=changed,
            snapshot=snapshot,
            rows=rows,
            deleted=deleted,
            model_bytes=model_bytes,
            batch_bytes=batch_bytes,
            resumed_from=resumed_from,
            seconds=time.perf_counter() - started,
            bundle=path if path is not None else self.bundle_path,
            search_tower_bytes=search_tower_bytes,
        )


class _Watchdog:
    """Cancels a watch stream that stays silent for three heartbeats (a dead connection)."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._deadline = float("inf")
        self._lock = threading.Condition()
        self._closed = False
        self.fired = False
        threading.Thread(target=self._watch, name="pocketrec-watchdog", daemon=True).start()

    def heard(self, heartbeat_ms: int) -> None:
        with self._lock:
            quiet = 3 * max(heartbeat_ms, 100) / 1000 if heartbeat_ms else float("inf")
            self._deadline = time.monotonic() + quiet
            self._lock.notify()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()

    def _watch(self) -> None:
        with self._lock:
            while not self._closed:
                left = self._deadline - time.monotonic()
                if left <= 0:
                    self.fired = True
                    self._call.cancel()
                    return
                self._lock.wait(None if left == float("inf") else left)


def _check_search_tower(model_doc: dict[str, Any], catalog_doc: dict[str, Any]) -> None:
    """Refuses a catalog whose manifest names another search tower than its model record.

    A model record without one (a model published before the sync shipped search towers)
    leaves the manifest's tower out of the bundle instead (see `bundle_of`).

    Raises:
        SignatureError: if both name a search tower and the digests differ, or the model
            record names one the manifest lacks.
    """
    if SEARCH_TOWER_SHA256 not in model_doc:
        return
    signed = model_doc[SEARCH_TOWER_SHA256]
    listed = catalog_doc["manifest"]["files"].get(SEARCH_TOWER_FILE)
    if listed != signed:
        raise SignatureError(
            f"model version {model_doc['model_version']}'s record names search tower "
            f"{signed}; catalog version {catalog_doc['catalog_version']}'s manifest names "
            f"{listed}: they must agree. Publish the bundle again"
        )


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _describe(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "ERROR"
    return f"the sync server answered {name}: {details}"
