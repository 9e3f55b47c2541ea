"""The sync server: publishing, the SQLite store and CatalogSync over a real gRPC server.

Every test talks to a server on 127.0.0.1 (port 0) through the generated stubs, with a
real SQLite store in tmp_path and bundles of the tiny tower.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from _sdk_fixtures import item_ids, item_vectors, items_metadata, write_tiny_bundle
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pocketrec import cli
from pocketrec.proto import sync_pb2, sync_pb2_grpc
from pocketrec.sdk import Bundle, ItemTable
from pocketrec.sdk.catalog import (
    CATALOG_KIND,
    MODEL_KIND,
    Rows,
    SignatureError,
    SignedRecord,
    bundle_of,
    decode_batch,
    generate_key,
    load_private_key,
)
from pocketrec.server import (
    SERVICE_NAME,
    Publication,
    SQLiteStore,
    StoreError,
    SyncServer,
    issue_token,
    publish,
    publish_items,
    revoke_token,
    serve,
)

FAMILY = "movies"
# Small enough that the tiny catalog (40 int8 rows of 8 dims) takes several chunks.
CHUNK_BYTES = 300


@pytest.fixture(scope="module")
def key():
    return generate_key()


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> Bundle:
    """Catalog 1: the tiny tower with an int8 table of m0..m39 (not in id order)."""
    return Bundle.open(write_tiny_bundle(tmp_path_factory.mktemp("b1") / "bundle", dtype="int8"))


@pytest.fixture(scope="module")
def second(first) -> Bundle:
    """Catalog 2, same model: m3 and m5 deleted, m7 and m8 moved, m9 retitled, n1 added."""
    ids = [i for i in item_ids() if i not in ("m3", "m5")] + ["n1"]
    vectors = dict(zip(item_ids(), item_vectors(), strict=True))
    vectors["m7"], vectors["m8"] = -vectors["m7"], vectors["m8"] * 2
    vectors["n1"] = np.linspace(-1, 1, vectors["m0"].size, dtype=np.float32)
    metadata = dict(zip(item_ids(), items_metadata(), strict=True))
    metadata["m9"] = {"title": "Movie 9, director's cut", "genres": ["Drama"]}
    metadata["n1"] = {"title": "New movie", "genres": []}
    table = ItemTable.quantize(np.stack([vectors[i] for i in ids]), "int8")
    return first.with_items(table, ids, [metadata[i] for i in ids])


@pytest.fixture
def store(tmp_path) -> Iterator[SQLiteStore]:
    with SQLiteStore(tmp_path / "sync.sqlite") as opened:
        yield opened


@pytest.fixture
def server(store) -> Iterator[SyncServer]:
    with serve(store, chunk_bytes=CHUNK_BYTES) as running:
        yield running


@pytest.fixture
def channel(server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as opened:
        yield opened


@pytest.fixture
def stub(channel) -> sync_pb2_grpc.CatalogSyncStub:
    return sync_pb2_grpc.CatalogSyncStub(channel)


@pytest.fixture
def auth(store) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {issue_token(store, FAMILY, 'phone-1')}"),)


def sync_items(stub, auth, **request) -> list[sync_pb2.ItemChunk]:
    return list(stub.SyncItems(sync_pb2.SyncItemsRequest(family=FAMILY, **request), metadata=auth))


def applied(chunks: list[sync_pb2.ItemChunk], rows: Rows, key) -> tuple[Rows, dict]:
    """What a device does: check each chunk, apply its batch, verify the final record."""
    record = SignedRecord.from_proto(chunks[-1].catalog_record).verified(
        key.public_key(), CATALOG_KIND
    )
    table = record["manifest"]["table"]
    if chunks[0].snapshot:
        rows = Rows.empty(rows.dtype, rows.dim, record["scale_dtype"])
    for index, chunk in enumerate(chunks):
        assert (chunk.index, chunk.chunk_count) == (index, len(chunks))
        assert hashlib.sha256(chunk.batch).digest() == chunk.batch_sha256
        assert chunk.HasField("catalog_record") == (index == len(chunks) - 1)
        upserts, deleted = decode_batch(
            chunk.batch,
            dtype=table["dtype"],
            dim=table["shape"][1],
            scale_dtype=record["scale_dtype"],
        )
        rows = rows.applied(upserts, deleted)
    return rows, record


def canonical_files(bundle: Bundle) -> dict[str, bytes]:
    """The files of ``bundle`` with its rows in the sync's id order (extra aside)."""
    rows = Rows.of_bundle(bundle)
    return bundle.with_items(rows.table(), rows.item_ids, rows.metadata).files()


# -- publishing and the store ----------------------------------------------------------------


def test_a_first_bundle_becomes_model_and_catalog_version_one_in_id_order(store, first, key):
    result = publish(store, first, FAMILY, key)

    assert (result.published, result.new_model) == (True, True)
    assert (result.model_version, result.catalog_version, result.item_count) == (1, 1, 40)
    rows = store.rows(FAMILY, 1)
    assert list(rows.item_ids) == sorted(first.item_ids) != list(first.item_ids)
    expected = Rows.of_bundle(first)
    assert np.array_equal(rows.values, expected.values)
    assert np.array_equal(rows.scales, expected.scales) and rows.scales.dtype == np.float16
    assert rows.metadata == expected.metadata
    model = store.model_by_sha256(FAMILY, first.model_sha256)
    assert model is not None and model.size_bytes == len(first.model)
    assert store.read_model(FAMILY, 1, 0, model.size_bytes) == first.model


def test_publishing_the_latest_catalog_again_adds_nothing(store, first, key):
    publish(store, first, FAMILY, key)

    again = publish(store, first, FAMILY, key)

    assert not again.published
    assert (again.model_version, again.catalog_version) == (1, 1)
    assert "nothing new" in again.summary()
    assert store.latest_catalog(FAMILY).catalog_version == 1


def test_a_changed_catalog_of_the_same_model_stores_only_changed_rows(store, first, second, key):
    publish(store, first, FAMILY, key)

    result = publish(store, second, FAMILY, key)

    assert (result.new_model, result.model_version, result.catalog_version) == (False, 1, 2)
    assert (result.upserted, result.deleted, result.item_count) == (4, 2, 39)
    upserts, deleted = store.changes(FAMILY, 1, 2)
    assert upserts.item_ids == ("m7", "m8", "m9", "n1")
    assert deleted == ["m3", "m5"]
    # Version 1 is immutable: its rows read as they were published.
    assert store.rows(FAMILY, 1).item_ids == tuple(sorted(first.item_ids))
    assert store.rows(FAMILY, 2).item_ids == tuple(sorted(second.item_ids))


def test_another_table_form_starts_a_new_model_version_with_every_row(store, first, key):
    publish(store, first, FAMILY, key)
    float16 = first.with_items(
        ItemTable.quantize(item_vectors(), "float16"), item_ids(), items_metadata()
    )

    result = publish(store, float16, FAMILY, key)

    assert (result.new_model, result.model_version, result.catalog_version) == (True, 2, 2)
    assert result.upserted == 40
    assert store.rows(FAMILY, 2).dtype == "float16" and store.rows(FAMILY, 1).dtype == "int8"
    with pytest.raises(ValueError, match="within one model version"):
        store.changes(FAMILY, 1, 2)


def test_versions_only_move_forward(store, first, second, key):
    publish(store, first, FAMILY, key)
    stale = store.latest_catalog(FAMILY)
    publish(store, second, FAMILY, key)
    upserts, deleted = store.changes(FAMILY, 1, 2)

    with pytest.raises(StoreError, match="published meanwhile"):
        store.commit(Publication(stale, upserts, tuple(deleted)))

    assert store.latest_catalog(FAMILY).catalog_version == 2
    assert store.rows(FAMILY, 2).item_ids == tuple(sorted(second.item_ids))


def test_a_family_is_published_with_one_key_only(store, first, second, key):
    publish(store, first, FAMILY, key)

    with pytest.raises(SignatureError, match="another key"):
        publish(store, second, FAMILY, generate_key())

    assert store.latest_catalog(FAMILY).catalog_version == 1


def test_item_vectors_update_the_latest_catalog(store, first, key):
    publish(store, first, FAMILY, key)
    vector = np.full(first.embedding_dim, 0.5, dtype=np.float32)

    result = publish_items(
        store,
        FAMILY,
        [
            {"id": "m1", "vector": vector.tolist(), "title": "Movie 1", "genres": ["Comedy"]},
            {"id": "zz", "vector": (-vector).tolist(), "title": "Brand new"},
        ],
        key,
        delete=["m2"],
    )

    assert (result.new_model, result.catalog_version, result.upserted, result.deleted) == (
        False,
        2,
        2,
        1,
    )
    rows = store.rows(FAMILY, 2)
    assert "m2" not in rows.item_ids and rows.item_ids[-1] == "zz"
    assert rows.metadata[-1] == {"title": "Brand new"}
    table = rows.table()
    assert np.allclose(table.vectors([rows.item_ids.index("m1")])[0], vector, atol=1e-2)
    with pytest.raises(ValueError, match="does not hold them"):
        publish_items(store, FAMILY, [], key, delete=["nope"])
    with pytest.raises(ValueError, match="8 numbers"):
        publish_items(store, FAMILY, [{"id": "x", "vector": [1.0]}], key)


def test_a_store_file_that_is_not_a_store_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a database " * 100)

    with pytest.raises(StoreError, match="not a pocketrec sync store"):
        SQLiteStore(path)


# -- CatalogSync -----------------------------------------------------------------------------


def test_get_manifest_sends_records_that_verify_with_the_publishers_key(
    store, stub, auth, first, key
):
    publish(store, first, FAMILY, key)

    response = stub.GetManifest(sync_pb2.GetManifestRequest(family=FAMILY), metadata=auth)

    model = SignedRecord.from_proto(response.model_record).verified(key.public_key(), MODEL_KIND)
    catalog = SignedRecord.from_proto(response.catalog_record).verified(
        key.public_key(), CATALOG_KIND
    )
    assert (response.model_version, response.catalog_version) == (1, 1)
    assert model["model_sha256"] == first.model_sha256 == catalog["model_sha256"]
    assert model["model_size_bytes"] == len(first.model)
    assert catalog["manifest"]["extra"]["sync"] == {
        "family": FAMILY,
        "model_version": 1,
        "catalog_version": 1,
    }
    assert (catalog["item_count"], catalog["scale_dtype"]) == (40, "float16")
    with pytest.raises(SignatureError):
        SignedRecord.from_proto(response.catalog_record).verified(
            generate_key().public_key(), CATALOG_KIND
        )


def test_a_snapshot_rebuilds_the_canonical_bundle_byte_for_byte(store, stub, auth, first, key):
    publish(store, first, FAMILY, key)

    chunks = sync_items(stub, auth, model_version=1)
    rows, record = applied(chunks, Rows.of_bundle(first), key)
    rebuilt = bundle_of(record, first.model, rows)

    assert len(chunks) > 3 and all(c.snapshot and c.base_catalog_version == 0 for c in chunks)
    assert all(len(c.batch) <= CHUNK_BYTES for c in chunks)
    files = rebuilt.files()
    expected = canonical_files(first)
    for name in ("item_table.values.npy", "item_table.scales.npy", "items.json"):
        assert files[name] == expected[name], name
    assert files["user_tower.tflite"] == first.model
    assert json.loads(files["manifest.json"]) == record["manifest"]
    assert rebuilt.item_ids == tuple(sorted(first.item_ids))


def test_a_delta_takes_version_one_to_version_two(store, stub, auth, first, second, key):
    publish(store, first, FAMILY, key)
    publish(store, second, FAMILY, key)
    version_one, _ = applied(
        sync_items(stub, auth, model_version=1, target_catalog_version=1),
        Rows.of_bundle(first),
        key,
    )

    chunks = sync_items(stub, auth, model_version=1, since_catalog_version=1)
    rows, record = applied(chunks, version_one, key)

    assert not chunks[0].snapshot
    assert (chunks[0].base_catalog_version, chunks[0].target_catalog_version) == (1, 2)
    batches = [decode_batch(c.batch, dtype="int8", dim=8, scale_dtype="float16") for c in chunks]
    assert [i for upserts, _ in batches for i in upserts.item_ids] == ["m7", "m8", "m9", "n1"]
    assert [i for _, deleted in batches for i in deleted] == ["m3", "m5"]
    expected = Rows.of_bundle(second)
    assert rows.item_ids == expected.item_ids and rows.metadata == expected.metadata
    assert np.array_equal(rows.values, expected.values)
    assert np.array_equal(rows.scales, expected.scales)
    rebuilt = bundle_of(record, first.model, rows)
    assert (
        rebuilt.files()["item_table.values.npy"] == canonical_files(second)["item_table.values.npy"]
    )


def test_an_up_to_date_device_gets_one_empty_chunk_with_the_record(store, stub, auth, first, key):
    publish(store, first, FAMILY, key)

    chunks = sync_items(stub, auth, model_version=1, since_catalog_version=1)

    assert len(chunks) == 1 and not chunks[0].snapshot
    assert (
        decode_batch(chunks[0].batch, dtype="int8", dim=8, scale_dtype="float16")[0].item_ids == ()
    )
    assert chunks[0].catalog_record.signature


@pytest.mark.parametrize(
    "since", [2**64 - 1, 7], ids=["a version the server never made", "a version of another model"]
)
def test_an_unknown_base_version_gets_a_snapshot(store, stub, auth, first, key, since):
    publish(store, first, FAMILY, key)

    chunks = sync_items(stub, auth, model_version=1, since_catalog_version=since)

    assert chunks[0].snapshot and chunks[0].base_catalog_version == 0
    rows, _ = applied(chunks, Rows.of_bundle(first), key)
    assert len(rows) == 40


def test_a_resumed_stream_is_the_tail_of_the_full_stream(store, stub, auth, first, key):
    publish(store, first, FAMILY, key)
    full = sync_items(stub, auth, model_version=1)

    resumed = sync_items(stub, auth, model_version=1, target_catalog_version=1, resume_from_chunk=2)

    assert [c.SerializeToString() for c in resumed] == [c.SerializeToString() for c in full[2:]]


def test_download_model_resumes_from_any_offset(store, stub, auth, first, key):
    publish(store, first, FAMILY, key)
    digest = bytes.fromhex(first.model_sha256)
    size = len(first.model)

    for offset in (0, 1, size // 2, size - 1, size):
        chunks = list(
            stub.DownloadModel(
                sync_pb2.DownloadModelRequest(
                    family=FAMILY, model_sha256=digest, offset_bytes=offset
                ),
                metadata=auth,
            )
        )
        assert b"".join(c.data for c in chunks) == first.model[offset:]
        assert all(c.size_bytes == size and len(c.data) <= CHUNK_BYTES for c in chunks)
        assert [c.offset_bytes for c in chunks] == list(
            range(offset, max(size, offset + 1), CHUNK_BYTES)
        )


@pytest.mark.parametrize(
    ("request_name", "status"),
    [
        ("manifest of a bad family name", grpc.StatusCode.INVALID_ARGUMENT),
        ("manifest of another family", grpc.StatusCode.PERMISSION_DENIED),
        ("manifest of a family with nothing published", grpc.StatusCode.NOT_FOUND),
        ("manifest without a token", grpc.StatusCode.UNAUTHENTICATED),
        ("manifest with an unknown token", grpc.StatusCode.UNAUTHENTICATED),
        ("manifest with a revoked token", grpc.StatusCode.UNAUTHENTICATED),
        ("manifest with a malformed authorization", grpc.StatusCode.UNAUTHENTICATED),
        ("garbage instead of a request", grpc.StatusCode.INVALID_ARGUMENT),
        ("items of model version 0", grpc.StatusCode.INVALID_ARGUMENT),
        ("items of a huge model version", grpc.StatusCode.NOT_FOUND),
        ("items up to a huge catalog version", grpc.StatusCode.NOT_FOUND),
        ("items resumed beyond the last chunk", grpc.StatusCode.INVALID_ARGUMENT),
        ("items of another family", grpc.StatusCode.PERMISSION_DENIED),
        ("model with an unknown sha256", grpc.StatusCode.NOT_FOUND),
        ("model with a 31-byte sha256", grpc.StatusCode.INVALID_ARGUMENT),
        ("model from a huge offset", grpc.StatusCode.INVALID_ARGUMENT),
        ("model of another family", grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_every_malformed_request_is_refused_with_its_status(
    store, channel, stub, auth, first, key, request_name, status
):
    publish(store, first, FAMILY, key)
    books = (("authorization", f"Bearer {issue_token(store, 'books', 'reader')}"),)
    revoked = (("authorization", f"Bearer {issue_token(store, FAMILY, 'lost-phone')}"),)
    revoke_token(store, FAMILY, "lost-phone")
    digest = bytes.fromhex(first.model_sha256)
    manifest = sync_pb2.GetManifestRequest
    items = sync_pb2.SyncItemsRequest
    model = sync_pb2.DownloadModelRequest
    calls = {
        "manifest of a bad family name": (stub.GetManifest, manifest(family="../etc"), auth),
        "manifest of another family": (stub.GetManifest, manifest(family="books"), auth),
        "manifest of a family with nothing published": (
            stub.GetManifest,
            manifest(family="books"),
            books,
        ),
        "manifest without a token": (stub.GetManifest, manifest(family=FAMILY), ()),
        "manifest with an unknown token": (
            stub.GetManifest,
            manifest(family=FAMILY),
            (("authorization", "Bearer not-a-token"),),
        ),
        "manifest with a revoked token": (stub.GetManifest, manifest(family=FAMILY), revoked),
        "manifest with a malformed authorization": (
            stub.GetManifest,
            manifest(family=FAMILY),
            (("authorization", auth[0][1].removeprefix("Bearer ")),),
        ),
        "garbage instead of a request": (
            channel.unary_unary(f"/{SERVICE_NAME}/GetManifest"),
            b"\xff\xff\xff\xff",
            auth,
        ),
        "items of model version 0": (stub.SyncItems, items(family=FAMILY), auth),
        "items of a huge model version": (
            stub.SyncItems,
            items(family=FAMILY, model_version=2**64 - 1),
            auth,
        ),
        "items up to a huge catalog version": (
            stub.SyncItems,
            items(family=FAMILY, model_version=1, target_catalog_version=2**63),
            auth,
        ),
        "items resumed beyond the last chunk": (
            stub.SyncItems,
            items(family=FAMILY, model_version=1, resume_from_chunk=2**32 - 1),
            auth,
        ),
        "items of another family": (stub.SyncItems, items(family="books", model_version=1), auth),
        "model with an unknown sha256": (
            stub.DownloadModel,
            model(family=FAMILY, model_sha256=bytes(32)),
            auth,
        ),
        "model with a 31-byte sha256": (
            stub.DownloadModel,
            model(family=FAMILY, model_sha256=digest[:31]),
            auth,
        ),
        "model from a huge offset": (
            stub.DownloadModel,
            model(family=FAMILY, model_sha256=digest, offset_bytes=2**64 - 1),
            auth,
        ),
        "model of another family": (
            stub.DownloadModel,
            model(family="books", model_sha256=digest),
            auth,
        ),
    }
    method, request, metadata = calls[request_name]

    with pytest.raises(grpc.RpcError) as refused:
        response = method(request, metadata=metadata)
        if not isinstance(response, bytes | sync_pb2.GetManifestResponse):
            list(response)

    assert refused.value.code() == status, refused.value.details()
    assert len(refused.value.details()) > 20
    # The server is still there for the next, well-formed call.
    assert stub.GetManifest(manifest(family=FAMILY), metadata=auth).catalog_version == 1


def test_every_call_logs_one_line(store, stub, auth, first, key, caplog):
    publish(store, first, FAMILY, key)
    caplog.set_level(logging.INFO, logger="pocketrec")

    stub.GetManifest(sync_pb2.GetManifestRequest(family=FAMILY), metadata=auth)
    sync_items(stub, auth, model_version=1)
    with pytest.raises(grpc.RpcError):
        stub.GetManifest(sync_pb2.GetManifestRequest(family=FAMILY))

    lines = [r.getMessage() for r in caplog.records if r.name == "pocketrec"]
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"GetManifest family={FAMILY} peer=ipv")
    assert " OK " in lines[0] and lines[0].endswith(" ms")
    assert lines[1].startswith("SyncItems") and " OK " in lines[1]
    assert " UNAUTHENTICATED " in lines[2]


def test_a_stream_past_its_deadline_stops_on_the_server(store, stub, auth, first, key, caplog):
    count = 5000  # about 10 MB of titles: more than gRPC buffers ahead of a slow reader
    ids = [f"x{i:05d}" for i in range(count)]
    vectors = np.random.default_rng(1).standard_normal((count, 8)).astype(np.float32)
    titles = [{"title": f"{i} " + "t" * 2000} for i in range(count)]
    publish(store, first.with_items(ItemTable.quantize(vectors, "int8"), ids, titles), FAMILY, key)
    caplog.set_level(logging.INFO, logger="pocketrec")
    stream = stub.SyncItems(
        sync_pb2.SyncItemsRequest(family=FAMILY, model_version=1), metadata=auth, timeout=1.0
    )

    next(stream)
    time.sleep(1.5)
    with pytest.raises(grpc.RpcError) as late:
        list(stream)

    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    waited = time.monotonic() + 5
    while not any("SyncItems" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < waited, "the server kept streaming past the deadline"
        time.sleep(0.05)
    (line,) = [r.getMessage() for r in caplog.records if "SyncItems" in r.getMessage()]
    assert " DEADLINE_EXCEEDED " in line


def test_health_reports_serving_and_reflection_lists_the_service(channel):
    health = health_pb2_grpc.HealthStub(channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = list(reflection.ServerReflectionInfo(iter([request]), timeout=5))
    names = {service.name for service in response.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


def test_a_graceful_stop_finishes_running_streams_and_reports_not_serving(store, first, key):
    publish(store, first, FAMILY, key)
    token = (("authorization", f"Bearer {issue_token(store, FAMILY, 'phone')}"),)
    server = serve(store, chunk_bytes=CHUNK_BYTES)
    with grpc.insecure_channel(server.address) as channel:
        stub = sync_pb2_grpc.CatalogSyncStub(channel)
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stream = stub.SyncItems(
            sync_pb2.SyncItemsRequest(family=FAMILY, model_version=1), metadata=token
        )
        received = [next(stream)]
        stopping = threading.Thread(target=server.stop, kwargs={"grace": 1.0})
        stopping.start()

        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        received += list(stream)
        stopping.join()

    assert len(received) == received[0].chunk_count > 1
    assert received[-1].catalog_record.signature


# -- the command line ------------------------------------------------------------------------


def test_the_cli_generates_keys_publishes_and_issues_tokens(tmp_path, first, capsys):
    keys = tmp_path / "keys"
    assert cli.main(["keys", "generate", "--out", str(keys)]) == 0
    public = capsys.readouterr().out.strip().split()[-1]
    assert (keys / "publisher.pub").read_text().strip() == public
    assert stat.S_IMODE((keys / "publisher.key").stat().st_mode) == 0o600
    key = load_private_key(keys / "publisher.key")
    assert cli.main(["keys", "generate", "--out", str(keys)]) == 2  # never overwrites a key
    db = tmp_path / "sync.sqlite"
    common = ["--store", str(db), "--family", FAMILY]

    assert cli.main(["publish", first.source, *common, "--key", str(keys / "publisher.key")]) == 0
    assert "catalog version 1" in capsys.readouterr().out
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"id": "new", "vector": [0.25] * 8, "title": "New"}) + "\n")
    assert (
        cli.main(
            [
                "publish",
                "--items",
                str(items),
                "--delete",
                "m4",
                *common,
                "--key",
                str(keys / "publisher.key"),
            ]
        )
        == 0
    )
    assert "catalog version 2" in capsys.readouterr().out
    assert cli.main(["token", "issue", *common, "--device", "phone"]) == 0
    token = capsys.readouterr().out.strip()

    with (
        SQLiteStore(db) as store,
        serve(store) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        response = sync_pb2_grpc.CatalogSyncStub(channel).GetManifest(
            sync_pb2.GetManifestRequest(family=FAMILY),
            metadata=(("authorization", f"Bearer {token}"),),
        )
    record = SignedRecord.from_proto(response.catalog_record).verified(
        key.public_key(), CATALOG_KIND
    )
    assert (record["catalog_version"], record["item_count"]) == (2, 40)
    assert public == key.public_key().public_bytes_raw().hex()


def test_pocketrec_serve_stops_cleanly_on_sigterm(tmp_path, first):
    db = tmp_path / "sync.sqlite"
    with SQLiteStore(db) as store:
        publish(store, first, FAMILY, generate_key())
    process = subprocess.Popen(
        [sys.executable, "-m", "pocketrec.cli", "serve", "--store", str(db), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("serving on 127.0.0.1:"), line + process.stderr.read()
        with grpc.insecure_channel(line.split()[-1]) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5
            )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
