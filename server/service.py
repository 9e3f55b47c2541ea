"""The gRPC side of the sync server: `CatalogSync` over a `SyncStore`, health, reflection.

The servicer is thin: it validates a request, reads the store and cuts what it read into
chunks. Everything around a call lives in one interceptor: the device's bearer token is
checked (UNAUTHENTICATED), the request is parsed (INVALID_ARGUMENT for garbage), a refusal
becomes its status with a message, an unexpected exception becomes INTERNAL (logged, never
a crash), and every call ends in one log line: method, family, peer, status, milliseconds.

WatchManifest streams share one thread that polls the store's change counters
(`SyncStore.change_counters`, a single small query every `WATCH_POLL_S`) and wakes the
streams of a family whose counter moved; each then recomputes its device's versions. So a
publish by another process on the same store reaches connected devices within about one
poll interval, and no stream queries the store while nothing changes.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from datetime import datetime, timezone
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pocketrec._log import LOGGER
from pocketrec.proto import sync_pb2, sync_pb2_grpc
from pocketrec.sdk.catalog import FAMILY_PATTERN, Rows, encode_batch
from pocketrec.server.events import MAX_EVENTS_PER_UPLOAD, MAX_ID_CHARS, event_problem
from pocketrec.server.rollout import device_bucket, served_catalog
from pocketrec.server.store import CatalogVersion, Device, Event, ModelPart, SyncStore
from pocketrec.server.tokens import authenticate

SERVICE_NAME = sync_pb2.DESCRIPTOR.services_by_name["CatalogSync"].full_name
# Upper bound of one ItemChunk's batch bytes and of one ModelChunk's data: far below gRPC's
# 4 MB default message limit, large enough that per-message costs vanish.
CHUNK_BYTES = 1 << 20
# Streams kept encoded for the next device that asks (versions never change): bytes.
STREAM_CACHE_BYTES = 64 << 20
# WatchManifest: the default most milliseconds between two messages of a stream, how often
# the store is polled for changes, and how often a long stream refreshes its device's
# last-seen time.
HEARTBEAT_MS = 5000
WATCH_POLL_S = 0.1
SEEN_EVERY_S = 60.0
# DownloadModelRequest.file: the model part each ModelFile names.
_MODEL_PARTS: dict[int, ModelPart] = {
    sync_pb2.MODEL_FILE_USER_TOWER: "user_tower",
    sync_pb2.MODEL_FILE_SEARCH_TOWER: "search_tower",
}
# The largest version a store's signed 64-bit integers hold.
_MAX_VERSION = 2**63 - 1


class _Refused(Exception):
    """A request the service answers with ``code`` and a message a person can act on."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class CatalogSyncServicer(sync_pb2_grpc.CatalogSyncServicer):
    """The `CatalogSync` service of sync.proto, reading ``store``.

    Needs the interceptor `serve` installs: it hands every call the authenticated device.
    Item streams are kept encoded for the next device (versions never change), up to
    `STREAM_CACHE_BYTES`.
    """

    def __init__(
        self,
        store: SyncStore,
        *,
        chunk_bytes: int = CHUNK_BYTES,
        heartbeat_ms: int = HEARTBEAT_MS,
        max_watchers: int = 8,
    ) -> None:
        """``chunk_bytes``: most batch bytes per `ItemChunk` and model bytes per `ModelChunk`
        (at most `CHUNK_BYTES`, which the contract promises; smaller in tests).
        ``heartbeat_ms``: most milliseconds between two WatchManifest messages.
        ``max_watchers``: WatchManifest streams held at once (each holds a worker thread);
        one more is refused with RESOURCE_EXHAUSTED, and its device polls instead."""
        if not 1 <= chunk_bytes <= CHUNK_BYTES:
            raise ValueError(f"chunk_bytes must be in [1, {CHUNK_BYTES}], got {chunk_bytes}")
        if not 1 <= heartbeat_ms <= 3_600_000:
            raise ValueError(f"heartbeat_ms must be in [1, 3600000], got {heartbeat_ms}")
        if max_watchers < 0:
            raise ValueError(f"max_watchers must be >= 0, got {max_watchers}")
        self._store = store
        self._chunk_bytes = chunk_bytes
        self._heartbeat_ms = heartbeat_ms
        self._max_watchers = max_watchers
        self._streams = _StreamCache(STREAM_CACHE_BYTES)
        self._watch = _ManifestWatch(store, WATCH_POLL_S)

    def close(self) -> None:
        """Ends every WatchManifest stream (cleanly, status OK) and the thread polling the
        store for them; new streams end after their first message."""
        self._watch.close()

    def GetManifest(
        self, request: sync_pb2.GetManifestRequest, context: grpc.ServicerContext
    ) -> sync_pb2.GetManifestResponse:
        family = _allowed_family(request.family, context)
        device = _device(context).name
        self._store.record_seen(family, device, _now(), _running(request))
        catalog = self._served(family, device)
        model = self._store.model(family, catalog.model_version)
        assert model is not None  # a catalog version always has its model version
        return sync_pb2.GetManifestResponse(
            family=family,
            model_version=model.model_version,
            model_record=model.record.to_proto(),
            catalog_version=catalog.catalog_version,
            catalog_record=catalog.record.to_proto(),
        )

    def SyncItems(
        self, request: sync_pb2.SyncItemsRequest, context: grpc.ServicerContext
    ) -> Iterator[sync_pb2.ItemChunk]:
        family = _allowed_family(request.family, context)
        chunks = self._item_chunks(family, request)
        if request.resume_from_chunk >= len(chunks):
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"resume_from_chunk is {request.resume_from_chunk}, but the stream to catalog "
                f"version {chunks[0].target_catalog_version} has {len(chunks)} chunks "
                f"(0 to {len(chunks) - 1}); resume from the first chunk not yet applied",
            )
        for chunk in chunks[request.resume_from_chunk :]:
            if not context.is_active():  # deadline passed or client gone
                return
            yield chunk

    def DownloadModel(
        self, request: sync_pb2.DownloadModelRequest, context: grpc.ServicerContext
    ) -> Iterator[sync_pb2.ModelChunk]:
        family = _allowed_family(request.family, context)
        digest = bytes(request.model_sha256)
        if len(digest) != hashlib.sha256().digest_size:
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"model_sha256 must be the 32 raw bytes of a SHA-256 digest, got {len(digest)} "
                "bytes; take it from the model record (hex-decoded)",
            )
        part = _MODEL_PARTS.get(request.file)
        if part is None:
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"file {request.file} is not a ModelFile this server knows "
                f"({', '.join(sync_pb2.ModelFile.keys())}); upgrade the server or ask for "
                "the user tower",
            )
        name = part.replace("_", " ")
        model = self._store.model_by_sha256(family, digest.hex(), part)
        if model is None:
            raise _Refused(
                grpc.StatusCode.NOT_FOUND,
                f"family {family!r} has no {name} with sha256 {digest.hex()}; ask GetManifest "
                "for the current model record",
            )
        size, position = model.size_of(part), request.offset_bytes
        if position > size:
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"offset_bytes {position} is beyond the {name}'s {size} bytes; resume from the "
                "number of bytes already held",
            )
        while True:
            data = self._store.read_model(
                family, model.model_version, position, self._chunk_bytes, part
            )
            yield sync_pb2.ModelChunk(offset_bytes=position, size_bytes=size, data=data)
            position += len(data)
            if position >= size or not context.is_active():
                return

    def WatchManifest(
        self, request: sync_pb2.WatchManifestRequest, context: grpc.ServicerContext
    ) -> Iterator[sync_pb2.ManifestUpdate]:
        family = _allowed_family(request.family, context)
        device = _device(context).name
        self._store.record_seen(family, device, _now(), _running(request))
        watcher = self._watch.subscribe(family, self._max_watchers)
        try:
            if not context.add_callback(watcher.wake):  # a cancel then stops the wait at once
                return  # the call has ended already
            period = self._heartbeat_ms / 1000
            versions = self._versions(family, device)
            yield self._update(versions, heartbeat=False)
            beat = seen = time.monotonic()
            while True:
                woken = watcher.wait(max(0.0, beat + period - time.monotonic()))
                if self._watch.closed or not context.is_active():
                    return
                if woken:
                    watcher.clear()
                    latest = self._versions(family, device)
                    if latest == versions:
                        continue  # another device's pin, or a version not rolled out to it
                    versions = latest
                yield self._update(versions, heartbeat=not woken)
                beat = time.monotonic()
                if beat - seen >= SEEN_EVERY_S:
                    self._store.record_seen(family, device, _now())
                    seen = beat
        finally:
            self._watch.unsubscribe(watcher)

    def UploadEvents(
        self, request: sync_pb2.UploadEventsRequest, context: grpc.ServicerContext
    ) -> sync_pb2.UploadEventsResponse:
        family = _allowed_family(request.family, context)
        if len(request.events) > MAX_EVENTS_PER_UPLOAD:
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{len(request.events)} events in one call; at most {MAX_EVENTS_PER_UPLOAD}: "
                "upload them in batches",
            )
        latest = self._store.latest_catalog(family)
        model_version, catalog_version = (
            (0, 0) if latest is None else (latest.model_version, latest.catalog_version)
        )
        valid: dict[bytes, Event] = {}
        rejected = []
        for sent in request.events:
            event = Event(
                bytes(sent.event_id),
                sent.user,
                sent.item_id,
                sent.timestamp_s,
                sent.model_version,
                sent.catalog_version,
            )
            problem = event_problem(event, model_version, catalog_version)
            if problem is None:
                valid.setdefault(event.event_id, event)
            else:
                rejected.append(sync_pb2.RejectedEvent(event_id=event.event_id, reason=problem))
        stored_new = (
            self._store.add_events(family, _device(context).name, list(valid.values()), _now())
            if valid
            else 0
        )
        return sync_pb2.UploadEventsResponse(
            acknowledged_event_ids=list(valid), stored_new=stored_new, rejected=rejected
        )

    def DeleteUserEvents(
        self, request: sync_pb2.DeleteUserEventsRequest, context: grpc.ServicerContext
    ) -> sync_pb2.DeleteUserEventsResponse:
        family = _allowed_family(request.family, context)
        if not 1 <= len(request.user) <= MAX_ID_CHARS:
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"user must be 1 to {MAX_ID_CHARS} characters, got {len(request.user)}: send "
                "the user as the events name it",
            )
        deleted = self._store.delete_events(family, request.user, _device(context).name)
        return sync_pb2.DeleteUserEventsResponse(deleted=deleted)

    # -- versions ----------------------------------------------------------------------------

    def _served(self, family: str, device: str) -> CatalogVersion:
        """The catalog version ``device`` should run (see `pocketrec.server.rollout`)."""
        latest = self._latest(family)
        catalog = served_catalog(self._store, family, device)
        if catalog is None:
            raise _Refused(
                grpc.StatusCode.NOT_FOUND,
                f"no catalog version of family {family!r} is rolled out to this device yet "
                f"(catalog version {latest.catalog_version} reaches {latest.fraction:.0%} of "
                f"devices; this one is at {device_bucket(family, device):.0%}); ask again "
                "later, or widen the rollout (pocketrec rollout)",
            )
        return catalog

    def _versions(self, family: str, device: str) -> tuple[int, int]:
        """(model, catalog) versions ``device`` should run; (0, 0) while none is."""
        catalog = served_catalog(self._store, family, device)
        return (0, 0) if catalog is None else (catalog.model_version, catalog.catalog_version)

    def _update(self, versions: tuple[int, int], *, heartbeat: bool) -> sync_pb2.ManifestUpdate:
        return sync_pb2.ManifestUpdate(
            model_version=versions[0],
            catalog_version=versions[1],
            heartbeat=heartbeat,
            heartbeat_ms=self._heartbeat_ms,
        )

    # -- item chunks -------------------------------------------------------------------------

    def _latest(self, family: str) -> CatalogVersion:
        catalog = self._store.latest_catalog(family)
        if catalog is None:
            raise _Refused(
                grpc.StatusCode.NOT_FOUND,
                f"family {family!r} has nothing published; publish a bundle first",
            )
        return catalog

    def _item_chunks(
        self, family: str, request: sync_pb2.SyncItemsRequest
    ) -> list[sync_pb2.ItemChunk]:
        """The whole stream a request asks for; the same request always yields the same."""
        latest = self._latest(family)
        model_version = request.model_version
        if model_version == 0:
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                "model_version is 0; pass the model version GetManifest names",
            )
        if model_version > latest.model_version:
            raise _Refused(
                grpc.StatusCode.NOT_FOUND,
                f"family {family!r} has model versions 1 to {latest.model_version}, not "
                f"{model_version}; ask GetManifest for the current one",
            )
        wanted = request.target_catalog_version
        if wanted == 0:
            target = self._store.latest_catalog(family, model_version)
        else:
            target = (
                None if wanted > latest.catalog_version else self._store.catalog(family, wanted)
            )
        if target is None:
            raise _Refused(
                grpc.StatusCode.NOT_FOUND,
                f"family {family!r} has catalog versions 1 to {latest.catalog_version}; "
                f"there is no catalog version {wanted} of model "
                f"version {model_version}. Ask GetManifest for the current one",
            )
        if target.model_version != model_version:
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"catalog version {target.catalog_version} belongs to model version "
                f"{target.model_version}, not {model_version}: embedding spaces never mix",
            )
        since = request.since_catalog_version
        base = self._store.catalog(family, since) if 0 < since <= target.catalog_version else None
        if base is None or base.model_version != model_version:
            since = 0  # unknown, of another model, or ahead of the target: a snapshot
        key = (family, since, target.catalog_version)
        chunks = self._streams.get(key)
        if chunks is None:
            chunks = self._stream(family, since, target)
            self._streams.put(key, chunks)
        return chunks

    def _stream(self, family: str, since: int, target: CatalogVersion) -> list[sync_pb2.ItemChunk]:
        if since:
            upserts, deleted = self._store.changes(family, since, target.catalog_version)
            changed = len(upserts) + len(deleted)
            # A delta as large as the table costs more than a snapshot and saves nothing.
            if changed == 0 or changed < target.item_count:
                return self._chunked(target, since, upserts, deleted)
        return self._chunked(target, 0, self._store.rows(family, target.catalog_version), [])

    def _chunked(
        self, target: CatalogVersion, base: int, upserts: Rows, deleted: Sequence[str]
    ) -> list[sync_pb2.ItemChunk]:
        batches = _batches(upserts, deleted, self._chunk_bytes)
        chunks = [
            sync_pb2.ItemChunk(
                index=index,
                chunk_count=len(batches),
                target_catalog_version=target.catalog_version,
                base_catalog_version=base,
                snapshot=base == 0,
                batch=batch,
                batch_sha256=hashlib.sha256(batch).digest(),
            )
            for index, batch in enumerate(batches)
        ]
        chunks[-1].catalog_record.CopyFrom(target.record.to_proto())
        return chunks


def _batches(upserts: Rows, deleted: Sequence[str], limit: int) -> list[bytes]:
    """The upserted rows, then the deleted ids, as consecutive batches of at most ``limit``
    bytes each (one entry larger than that goes alone); at least one batch.

    Each batch takes as many entries as the previous batch's bytes per entry say fit, less
    a sixteenth, and fewer when it comes out too large: a function of the rows alone, so
    the same rows always give the same batches.
    """
    rows = len(upserts)
    entries = rows + len(deleted)

    def encoded(start: int, stop: int) -> bytes:
        taken = upserts.take(range(min(start, rows), min(stop, rows)))
        return encode_batch(taken, deleted[max(start, rows) - rows : max(stop, rows) - rows])

    batches = []
    start, count = 0, 4096
    while True:
        stop = min(start + count, entries)
        batch = encoded(start, stop)
        while len(batch) > limit and stop - start > 1:
            stop = start + max(1, (stop - start) * limit // len(batch) * 15 // 16)
            batch = encoded(start, stop)
        batches.append(batch)
        if stop >= entries:
            return batches
        count = max(1, (stop - start) * limit // max(len(batch), 1) * 15 // 16)
        start = stop


class _StreamCache:
    """The most recently asked item streams, up to ``max_bytes`` of batches in all."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._streams: OrderedDict[tuple[str, int, int], list[sync_pb2.ItemChunk]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int, int]) -> list[sync_pb2.ItemChunk] | None:
        with self._lock:
            chunks = self._streams.get(key)
            if chunks is not None:
                self._streams.move_to_end(key)
            return chunks

    def put(self, key: tuple[str, int, int], chunks: list[sync_pb2.ItemChunk]) -> None:
        size = sum(len(chunk.batch) for chunk in chunks)
        with self._lock:
            if key in self._streams or size > self._max_bytes:
                return
            self._streams[key] = chunks
            self._bytes += size
            while self._bytes > self._max_bytes:
                _, dropped = self._streams.popitem(last=False)
                self._bytes -= sum(len(chunk.batch) for chunk in dropped)


class _Watcher:
    """One WatchManifest stream's wake-up call."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._woken = threading.Event()

    def wake(self) -> None:
        self._woken.set()

    def wait(self, timeout: float) -> bool:
        """Whether it was woken (a change, a cancel, a stop) before ``timeout`` seconds."""
        return self._woken.wait(timeout)

    def clear(self) -> None:
        self._woken.clear()


class _ManifestWatch:
    """Wakes the watchers of a family when its change counter moves; one polling thread
    for all of them, running only while there are any."""

    def __init__(self, store: SyncStore, poll_s: float) -> None:
        self._store = store
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._watchers: set[_Watcher] = set()
        # The counters of the last poll; None while nobody watches (not polled then).
        self._counters: dict[str, int] | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False  # logged once until a poll succeeds again

    @property
    def closed(self) -> bool:
        return self._stopped.is_set()

    def subscribe(self, family: str, limit: int) -> _Watcher:
        """A watcher woken on every change of ``family`` from now on.

        Raises:
            _Refused: RESOURCE_EXHAUSTED when ``limit`` watchers exist already.
        """
        watcher = _Watcher(family)
        with self._lock:
            if len(self._watchers) >= limit:
                raise _Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this server holds {len(self._watchers)} WatchManifest streams, its "
                    "limit (serve(max_watchers=...)); poll GetManifest and watch again later",
                )
            if self._counters is None:
                # Read before the stream computes its versions: a change after that read
                # is then seen by the next poll.
                self._counters = self._store.change_counters()
            self._watchers.add(watcher)
            if self._thread is None and not self.closed:
                self._thread = threading.Thread(
                    target=self._poll, name="pocketrec-sync-watch", daemon=True
                )
                self._thread.start()
        if self.closed:
            watcher.wake()
        return watcher

    def unsubscribe(self, watcher: _Watcher) -> None:
        with self._lock:
            self._watchers.discard(watcher)
            if not self._watchers:
                self._counters = None

    def close(self) -> None:
        """Wakes every watcher for good and ends the polling thread."""
        self._stopped.set()
        with self._lock:
            watchers, thread = list(self._watchers), self._thread
        for watcher in watchers:
            watcher.wake()
        if thread is not None:
            thread.join()

    def _poll(self) -> None:
        while not self._stopped.wait(self._poll_s):
            with self._lock:
                if self._counters is None:
                    continue
                try:
                    counters = self._store.change_counters()
                except Exception as error:  # a locked or busy store: try again next time
                    if not self._failing:
                        LOGGER.warning("WatchManifest cannot poll the store: %s", error)
                    self._failing = True
                    continue
                self._failing = False
                changed = {
                    family
                    for family, counter in counters.items()
                    if self._counters.get(family) != counter
                }
                self._counters = counters
                woken = [w for w in self._watchers if w.family in changed]
            for watcher in woken:
                watcher.wake()


def _running(
    request: sync_pb2.GetManifestRequest | sync_pb2.WatchManifestRequest,
) -> tuple[int, int]:
    """The (model, catalog) versions a device says it runs."""
    running = (request.running_model_version, request.running_catalog_version)
    if max(running) > _MAX_VERSION:
        raise _Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"running versions {running} are beyond any published version; send the "
            "versions of the installed bundle (0 when there is none)",
        )
    return running


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _allowed_family(family: str, context: grpc.ServicerContext) -> str:
    if not FAMILY_PATTERN.match(family):
        raise _Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"a family is 1 to 64 characters of letters, digits, '.', '_' or '-'; got "
            f"{family[:80]!r}",
        )
    device = _device(context)
    if device.family != family:
        raise _Refused(
            grpc.StatusCode.PERMISSION_DENIED,
            f"this device's token is for family {device.family!r}, not {family!r}",
        )
    return family


def _device(context: grpc.ServicerContext) -> Device:
    """The device the interceptor authenticated for this call."""
    device: Device | None = getattr(context, "device", None)
    if device is None:  # fail closed if the servicer is ever served without the interceptor
        raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "no authenticated device")
    return device


# -- around every call ---------------------------------------------------------------------


class _DeviceContext:
    """The call's context with the authenticated ``device`` beside it."""

    def __init__(self, context: grpc.ServicerContext, device: Device) -> None:
        self._context = context
        self.device = device

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class _Call:
    """One call's bookkeeping: the family asked for, the status reached, one log line."""

    def __init__(self, method: str, context: grpc.ServicerContext) -> None:
        self.method = method
        self.context = context
        self.family = "-"
        self.status = "OK"
        self.started = time.perf_counter()

    def refuse(self, code: grpc.StatusCode, message: str) -> None:
        self.status = code.name
        self.context.abort(code, message)

    def failed(self, error: Exception) -> None:
        """Maps an exception raised by the service to its status (and aborts)."""
        if isinstance(error, _Refused):
            self.refuse(error.code, error.message)  # abort raises
        code = self.context.code()
        if code is not None:  # the servicer aborted by itself
            self.status = code.name
            raise error
        LOGGER.error("%s failed for family %s", self.method, self.family, exc_info=error)
        self.refuse(
            grpc.StatusCode.INTERNAL,
            f"the server failed on this request ({type(error).__name__}); see its log",
        )

    def log(self, finished: bool = True) -> None:
        if not finished and self.status == "OK":
            remaining = self.context.time_remaining()
            self.status = (
                "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else ("CANCELLED")
            )
        LOGGER.info(
            "%s family=%s peer=%s %s %.1f ms",
            self.method,
            self.family,
            self.context.peer(),
            self.status,
            (time.perf_counter() - self.started) * 1000,
        )


class _SyncInterceptor(grpc.ServerInterceptor):
    """Authenticates, parses, maps errors and logs every `CatalogSync` call.

    Health and reflection pass through untouched: probes need no token and are not logged.
    """

    def __init__(self, store: SyncStore) -> None:
        self._store = store

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(f"/{SERVICE_NAME}/"):
            return handler
        name = method.rsplit("/", 1)[1]
        token = _bearer_token(handler_call_details.invocation_metadata)
        parse = handler.request_deserializer
        if handler.unary_unary is not None:
            behavior = handler.unary_unary

            def unary(request: bytes, context: grpc.ServicerContext) -> Any:
                call = _Call(name, context)
                try:
                    parsed, device = self._admit(call, parse, request, token)
                    return behavior(parsed, _DeviceContext(context, device))
                except Exception as error:
                    call.failed(error)
                finally:
                    call.log()

            return grpc.unary_unary_rpc_method_handler(
                unary, response_serializer=handler.response_serializer
            )
        assert handler.unary_stream is not None  # CatalogSync has no other kind
        streaming = handler.unary_stream

        def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[Any]:
            call = _Call(name, context)
            finished = False
            try:
                parsed, device = self._admit(call, parse, request, token)
                yield from streaming(parsed, _DeviceContext(context, device))
                finished = context.is_active()
            except Exception as error:
                finished = True
                call.failed(error)
            finally:
                call.log(finished)

        return grpc.unary_stream_rpc_method_handler(
            stream, response_serializer=handler.response_serializer
        )

    def _admit(
        self, call: _Call, parse: Callable[[bytes], Any], request: bytes, token: str | None
    ) -> tuple[Any, Device]:
        """The parsed request and the token's device, or a refusal."""
        try:
            parsed = parse(request)
        except Exception:  # protobuf raises its own DecodeError
            parsed = None
        family = getattr(parsed, "family", "")
        call.family = family if FAMILY_PATTERN.match(family) else "-"
        device = None if token is None else authenticate(self._store, token)
        if device is None:
            raise _Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing, unknown or revoked token: send the metadata 'authorization: Bearer "
                "<token>' with a token from `pocketrec token issue`",
            )
        if parsed is None:
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request to {call.method} is not a serialised {call.method}Request",
            )
        return parsed, device


def _bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


# -- the server ------------------------------------------------------------------------------


class SyncServer:
    """A running sync server; `stop` (or leaving the ``with`` block) drains it."""

    def __init__(
        self,
        server: grpc.Server,
        executor: futures.ThreadPoolExecutor,
        servicer: CatalogSyncServicer,
        health_servicer: health.HealthServicer,
        host: str,
        port: int,
    ) -> None:
        self._server = server
        self._executor = executor
        self._servicer = servicer
        self._health = health_servicer
        self.host = host
        self.port = port

    @property
    def address(self) -> str:
        """``host:port`` for a client channel."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def stop(self, grace: float = 5.0) -> None:
        """Reports NOT_SERVING, refuses new calls, ends WatchManifest streams at once (they
        never finish by themselves), lets other running calls finish for ``grace`` seconds,
        then cancels what is left."""
        self._health.enter_graceful_shutdown()
        stopped = self._server.stop(grace)
        self._servicer.close()
        stopped.wait()
        self._executor.shutdown(wait=False)

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the server stops or ``timeout`` passes; whether it stopped."""
        return bool(self._server.wait_for_termination(timeout))

    def __enter__(self) -> SyncServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    store: SyncStore,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    max_workers: int = 16,
    chunk_bytes: int = CHUNK_BYTES,
    heartbeat_ms: int = HEARTBEAT_MS,
    max_watchers: int | None = None,
    servicer: type[CatalogSyncServicer] = CatalogSyncServicer,
) -> SyncServer:
    """Starts `CatalogSync`, grpc.health.v1 and reflection on ``host:port`` (0: any free).

    Plaintext: put TLS in front of it beyond a trusted network. ``max_workers`` bounds the
    calls served at once (each stream holds one worker while it runs); WatchManifest
    streams, which last, take at most ``max_watchers`` of them (default: half), so the
    other calls always find a worker. ``heartbeat_ms``: most milliseconds between two
    WatchManifest messages. ``servicer`` may be a subclass that adds behaviour (metrics,
    fault injection in tests).

    Raises:
        OSError: if the address cannot be bound.
    """
    if max_watchers is None:
        max_watchers = max_workers // 2
    if max_watchers >= max_workers:
        raise ValueError(
            f"max_watchers ({max_watchers}) must be below max_workers ({max_workers}): "
            "watch streams would hold every worker and starve the other calls"
        )
    sync_servicer = servicer(
        store, chunk_bytes=chunk_bytes, heartbeat_ms=heartbeat_ms, max_watchers=max_watchers
    )
    executor = futures.ThreadPoolExecutor(max_workers, thread_name_prefix="pocketrec-sync")
    server = grpc.server(
        executor,
        interceptors=[_SyncInterceptor(store)],
        options=[("grpc.so_reuseport", 0)],
    )
    sync_pb2_grpc.add_CatalogSyncServicer_to_server(sync_servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        bound = 0
        reason = str(exc)
    else:
        reason = "the port is taken or the host is not this machine's"
    if not bound:
        raise OSError(f"cannot listen on {address}: {reason}; pick another --host or --port")
    server.start()
    for service in (SERVICE_NAME, ""):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return SyncServer(server, executor, sync_servicer, health_servicer, host, bound)
