"""A bundle's search tower travels with its model: published, signed, stored, downloaded in
chunks, checked and rebuilt into the synced bundle; real gRPC on 127.0.0.1, real SQLite,
real LiteRT."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator

import grpc
import pytest
from _sdk_fixtures import write_tiny_bundle
from _sync_fixtures import (
    FAMILY,
    World,
    catalog,
    other_model,
    running_world,
    search_tower,
    with_search_tower,
)

from pocketrec.proto import sync_pb2, sync_pb2_grpc
from pocketrec.sdk import Bundle, Recommender
from pocketrec.sdk.catalog import SEARCH_TOWER_SHA256, SEARCH_TOWER_SIZE, SignedRecord, generate_key
from pocketrec.sdk.search import SearchSettings
from pocketrec.sdk.sync import DOWNLOADS_DIR, STATE_FILE, SyncError
from pocketrec.server import SQLiteStore, publish, publish_items, rollback
from pocketrec.server.store import SCHEMA_VERSION

HISTORY = ["m1", "m2", "m3"]
# Matches a third of the catalog: the tower's vector, not the words, orders them.
QUERY = "drama"


@pytest.fixture
def world(tmp_path) -> Iterator[World]:
    yield from running_world(tmp_path)


def towered(tmp_path, name: str = "v1") -> Bundle:
    """The tiny catalog with the tiny search tower; the dense score dominates its search."""
    return with_search_tower(catalog(tmp_path, name)).with_search(SearchSettings(alpha=1000.0))


def model_document(world: World, model_version: int) -> dict:
    model = world.store.model(FAMILY, model_version)
    assert model is not None
    return json.loads(model.record.record)


def searched(bundle: Bundle | str) -> tuple[str, ...]:
    with Recommender.open(bundle) as recommender:
        return recommender.search(QUERY, history=HISTORY, k=5).item_ids


def stub_and_auth(world: World) -> tuple[sync_pb2_grpc.CatalogSyncStub, tuple]:
    channel = grpc.insecure_channel(world.target)
    return sync_pb2_grpc.CatalogSyncStub(channel), (("authorization", f"Bearer {world.token}"),)


def test_a_synced_bundle_has_the_signed_search_tower_and_searches_as_published(
    world, tmp_path
) -> None:
    published = towered(tmp_path)
    world.publish(published)
    tower = published.search_tower
    assert tower is not None

    with world.client() as client:
        result = client.sync()
        installed = Bundle.open(client.bundle_path)
        state = json.loads((client.bundle_path.parent / STATE_FILE).read_text())

    assert result.search_tower_bytes == len(tower)
    assert result.model_bytes == len(published.model)
    assert installed.search_tower == tower
    settings, original = installed.search_tower_settings, published.search_tower_settings
    assert (settings.encoding, settings.quantization) == (original.encoding, original.quantization)
    signed = json.loads(state["model_record"]["record"])
    assert signed[SEARCH_TOWER_SHA256] == hashlib.sha256(tower).hexdigest()
    assert signed[SEARCH_TOWER_SIZE] == len(tower)
    assert searched(client.bundle_path) == searched(published)
    assert searched(client.bundle_path) != searched(published.with_search_tower(None))


def test_the_search_tower_downloads_in_chunks_and_only_by_its_own_digest(world, tmp_path) -> None:
    published = towered(tmp_path)
    world.publish(published)
    tower = published.search_tower
    stub, auth = stub_and_auth(world)

    def download(digest: bytes, file: int, offset: int = 0) -> list[sync_pb2.ModelChunk]:
        request = sync_pb2.DownloadModelRequest(
            family=FAMILY, model_sha256=digest, offset_bytes=offset, file=file
        )
        return list(stub.DownloadModel(request, metadata=auth, timeout=10))

    tower_digest = hashlib.sha256(tower).digest()
    chunks = download(tower_digest, sync_pb2.MODEL_FILE_SEARCH_TOWER)
    assert len(chunks) > 1 and all(len(c.data) <= 512 for c in chunks)
    assert b"".join(c.data for c in chunks) == tower
    assert {c.size_bytes for c in chunks} == {len(tower)}
    resumed = download(tower_digest, sync_pb2.MODEL_FILE_SEARCH_TOWER, offset=1000)
    assert b"".join(c.data for c in resumed) == tower[1000:]

    user_digest = bytes.fromhex(published.model_sha256)
    for digest, file in (
        (user_digest, sync_pb2.MODEL_FILE_SEARCH_TOWER),
        (tower_digest, sync_pb2.MODEL_FILE_USER_TOWER),
    ):
        with pytest.raises(grpc.RpcError) as missing:
            download(digest, file)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as unknown:
        download(tower_digest, 7)
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ModelFile" in unknown.value.details()


def test_a_tampered_search_tower_is_refused_and_the_old_bundle_keeps_serving(
    world, tmp_path
) -> None:
    world.publish(catalog(tmp_path, "v1"))
    with world.client() as client, Recommender.open(catalog(tmp_path, "v1")) as recommender:
        client.sync(recommender)
        before = recommender.recommend(HISTORY, k=5).item_ids
        published = towered(tmp_path, "v2")
        assert world.publish(published).new_model  # a tower makes a new model version
        tower = published.search_tower
        flipped = bytes([tower[0] ^ 0xFF]) + tower[1:]
        with sqlite3.connect(world.store.path) as db:
            db.execute("UPDATE models SET search_tower = ? WHERE model_version = 2", (flipped,))

        with pytest.raises(SyncError, match=r"search tower's sha256 .* not the .* signed model"):
            client.sync(recommender)

        assert client.versions() == (1, 1)
        assert recommender.recommend(HISTORY, k=5).item_ids == before
        assert Bundle.open(client.bundle_path).search_tower is None
        assert list((client.bundle_path.parent / DOWNLOADS_DIR).glob("*.part")) == []

        with sqlite3.connect(world.store.path) as db:  # the operator restores the bytes
            db.execute("UPDATE models SET search_tower = ? WHERE model_version = 2", (tower,))
        result = client.sync(recommender)
        assert (result.model_version, result.model_bytes) == (2, 0)  # user tower reused
        assert Bundle.open(client.bundle_path).search_tower == tower


def test_a_model_record_naming_another_tower_than_the_manifest_is_refused(world, tmp_path) -> None:
    world.publish(towered(tmp_path))
    document = model_document(world, 1)
    document[SEARCH_TOWER_SHA256] = hashlib.sha256(b"another tower").hexdigest()
    forged = SignedRecord.sign(document, world.key)  # signed, but disagreeing
    with sqlite3.connect(world.store.path) as db:
        db.execute(
            "UPDATE models SET record = ?, signature = ? WHERE model_version = 1",
            (forged.record, forged.signature),
        )
    with world.client() as client:
        with pytest.raises(SyncError, match=r"search tower .* must agree"):
            client.sync()
        assert client.versions() is None


def test_a_bundle_without_a_search_tower_still_syncs_and_its_record_names_none(
    world, tmp_path
) -> None:
    world.publish(catalog(tmp_path, "v1"))
    with world.client() as client:
        result = client.sync()
        installed = Bundle.open(client.bundle_path)
    assert result.changed and result.search_tower_bytes == 0
    assert installed.search_tower is None
    assert SEARCH_TOWER_SHA256 not in model_document(world, 1)
    assert world.store.model(FAMILY, 1).search_tower_sha256 is None


def test_new_items_of_a_towered_model_arrive_as_a_delta_that_keeps_the_tower(
    world, tmp_path
) -> None:
    published = towered(tmp_path)
    world.publish(published)
    with world.client() as client:
        client.sync()
        update = publish_items(
            world.store,
            FAMILY,
            [{"id": "m-new", "vector": [0.5] * published.embedding_dim, "title": "Drama Night"}],
            world.key,
        )
        assert (update.new_model, update.model_version, update.catalog_version) == (False, 1, 2)
        result = client.sync()
        installed = Bundle.open(client.bundle_path)
    assert (result.snapshot, result.rows, result.search_tower_bytes) == (False, 1, 0)
    assert installed.search_tower == published.search_tower
    assert "m-new" in installed.item_ids


def test_a_rollback_to_a_towered_version_publishes_its_tower_again(tmp_path) -> None:
    key = generate_key()
    with SQLiteStore(tmp_path / "server.db") as store:
        published = towered(tmp_path)
        publish(store, published, FAMILY, key)
        other = Bundle.open(write_tiny_bundle(tmp_path / "other", model=other_model()))
        publish(store, other, FAMILY, key)

        result = rollback(store, FAMILY, key)

        model = store.model(FAMILY, result.model_version)
        assert (result.new_model, result.model_version) == (True, 3)
        assert model.search_tower_sha256 == hashlib.sha256(published.search_tower).hexdigest()
        stored = store.read_model(FAMILY, 3, 0, model.search_tower_size_bytes, "search_tower")
        assert stored == published.search_tower


def test_a_schema_2_store_opens_and_gains_search_towers(tmp_path) -> None:
    key, path = generate_key(), tmp_path / "old.sqlite"
    with SQLiteStore(path) as store:
        publish(store, Bundle.open(catalog(tmp_path, "v1")), FAMILY, key)
    with sqlite3.connect(path) as db:  # back to schema 2
        db.execute("DROP INDEX models_by_search_tower")
        for column in ("search_tower_sha256", "search_tower_size_bytes", "search_tower"):
            db.execute(f"ALTER TABLE models DROP COLUMN {column}")
        db.execute("PRAGMA user_version = 2")

    with SQLiteStore(path) as store:
        assert store.model(FAMILY, 1).search_tower_sha256 is None
        assert store.read_model(FAMILY, 1, 0, 10, "search_tower") == b""
        published = towered(tmp_path, "v2")
        assert publish(store, published, FAMILY, key).model_version == 2
        model = store.model(FAMILY, 2)
        assert model.search_tower_size_bytes == len(search_tower())
        stored = store.read_model(FAMILY, 2, 0, model.search_tower_size_bytes, "search_tower")
        assert stored == published.search_tower
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
