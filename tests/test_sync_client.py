"""The device side of the sync against a real server on 127.0.0.1, real SQLite, real LiteRT."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from _sdk_fixtures import NUM_ITEMS, item_ids, run_in_threads, write_tiny_bundle
from _sync_fixtures import (
    FAMILY,
    World,
    assert_same_rows,
    catalog,
    changed_catalog,
    free_port,
    other_model,
    rows_of,
    running_world,
    server_process,
)

from pocketrec.sdk import Bundle, Recommender
from pocketrec.sdk.catalog import Rows, generate_key, public_key_hex
from pocketrec.sdk.sync import SyncClient, SyncError
from pocketrec.server.publish import publish
from pocketrec.server.service import serve
from pocketrec.server.store import SQLiteStore
from pocketrec.server.tokens import issue_token


@pytest.fixture
def world(tmp_path) -> Iterator[World]:
    yield from running_world(tmp_path)


def test_a_full_sync_installs_the_published_catalog_byte_for_byte(world, tmp_path) -> None:
    world.publish(catalog(tmp_path, "v1"))
    with world.client() as client:
        result = client.sync()
        assert result.changed and result.snapshot and result.rows == NUM_ITEMS
        assert (result.model_version, result.catalog_version) == (1, 1)
        installed = Bundle.open(client.bundle_path)
    assert_same_rows(Rows.of_bundle(installed), rows_of(tmp_path / "v1"))
    served = world.store.rows(FAMILY, 1)
    assert (
        installed.files()["item_table.values.npy"]
        == served.table().to_files()[1]["item_table.values.npy"]
    )
    with world.client() as again:
        assert not again.sync().changed


def test_a_delta_brings_only_the_changed_rows_and_ends_identical(world, tmp_path) -> None:
    world.publish(catalog(tmp_path, "v1"))
    with world.client() as client:
        client.sync()
        world.publish(changed_catalog(tmp_path))
        result = client.sync()
        assert (result.snapshot, result.rows, result.deleted) == (False, 4, 2)
        assert result.model_bytes == 0
        assert result.catalog_version == 2
        installed = Bundle.open(client.bundle_path)
    assert_same_rows(Rows.of_bundle(installed), Rows.of_bundle(changed_catalog(tmp_path)))


def test_a_new_model_comes_with_its_full_table(world, tmp_path) -> None:
    world.publish(catalog(tmp_path, "v1"))
    with world.client() as client:
        client.sync()
        other = write_tiny_bundle(tmp_path / "other", dtype="float16", model=other_model())
        world.publish(other)
        result = client.sync()
    assert result.snapshot and result.model_bytes > 0 and result.model_version == 2
    assert_same_rows(rows_of(client.bundle_path), rows_of(other))


def test_a_partial_model_download_is_resumed_from_its_size(world, tmp_path) -> None:
    published = Bundle.open(catalog(tmp_path, "v1"))
    world.publish(published)
    model = published.model
    downloads = world.root / "device" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / f"{published.model_sha256}.part").write_bytes(model[:1000])
    with world.client() as client:
        result = client.sync()
    assert result.model_bytes == len(model) - 1000
    assert Bundle.open(client.bundle_path).model == model
    assert list(downloads.iterdir()) == []


def test_a_recommender_swaps_during_sync_and_never_sees_a_mix(world, tmp_path) -> None:
    world.publish(catalog(tmp_path, "v1"))
    with world.client() as client:
        client.sync()
        with Recommender.open(client.bundle_path) as recommender:
            history = ["m1", "m2", "m3"]
            before = recommender.recommend(history, k=5)
            world.publish(changed_catalog(tmp_path))
            after_bundle = changed_catalog(tmp_path)
            with Recommender.open(after_bundle) as reference:
                after = reference.recommend(history, k=5)
            seen: list[object] = []
            done = threading.Event()

            def work(t: int) -> None:
                if t == 0:
                    client.sync(recommender)
                    done.set()
                    return
                while not done.is_set():
                    seen.append(recommender.recommend(history, k=5).item_ids)

            assert run_in_threads(work, 3) == []
            assert {tuple(s) for s in seen} <= {tuple(before.item_ids), tuple(after.item_ids)}
            assert recommender.recommend(history, k=5).item_ids == after.item_ids


def test_a_damaged_chunk_is_detected_and_fetched_again(tmp_path) -> None:
    from pocketrec.server.service import CatalogSyncServicer

    store = SQLiteStore(tmp_path / "server.db")
    key = generate_key()
    token = issue_token(store, FAMILY, "device-1")
    publish(store, Bundle.open(catalog(tmp_path, "v1")), FAMILY, key)
    damaged: list[int] = []

    class Damaging(CatalogSyncServicer):
        def SyncItems(self, request, context):
            for chunk in super().SyncItems(request, context):
                if chunk.index == 1 and not damaged:
                    damaged.append(chunk.index)
                    copy = type(chunk)()
                    copy.CopyFrom(chunk)  # the server caches its chunks: damage a copy
                    copy.batch = chunk.batch[:-1] + bytes([chunk.batch[-1] ^ 0xFF])
                    chunk = copy
                yield chunk

    with serve(store, port=0, chunk_bytes=512, servicer=Damaging) as server:
        client = SyncClient(
            f"127.0.0.1:{server.port}",
            token=token,
            public_key=public_key_hex(key),
            family=FAMILY,
            device_dir=tmp_path / "device",
            backoff_s=0.01,
        )
        with client:
            result = client.sync()
    assert damaged == [1] and result.resumed_from == (1,)
    assert_same_rows(rows_of(client.bundle_path), rows_of(tmp_path / "v1"))


def test_the_server_killed_mid_stream_is_resumed_from_the_last_chunk(tmp_path) -> None:
    db = tmp_path / "server.db"
    store = SQLiteStore(db)
    key = generate_key()
    token = issue_token(store, FAMILY, "device-1")
    publish(store, Bundle.open(catalog(tmp_path, "v1")), FAMILY, key)
    port = free_port()
    server = server_process(db, port)
    restarted: list[subprocess.Popen] = []

    def kill_after_first(index: int, count: int) -> None:
        if index == 0 and not restarted:
            assert count > 2
            server.send_signal(signal.SIGKILL)
            server.wait()
            restarted.append(server_process(db, port))

    try:
        with SyncClient(
            f"127.0.0.1:{port}",
            token=token,
            public_key=public_key_hex(key),
            family=FAMILY,
            device_dir=tmp_path / "device",
            backoff_s=0.2,
            retries=8,
            on_chunk=kill_after_first,
            # The server may run only ~1 KB ahead of the device: the kill breaks the stream.
            channel_options=[("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)],
        ) as client:
            result = client.sync()
    finally:
        for process in [server, *restarted]:
            process.kill()
            process.wait()
    assert result.resumed_from and result.resumed_from[0] == 1
    assert_same_rows(rows_of(client.bundle_path), rows_of(tmp_path / "v1"))


@pytest.mark.parametrize("tamper", ["unsigned", "wrongly signed", "changed after signing"])
def test_a_bad_signature_is_refused_and_the_old_version_kept(world, tmp_path, tamper) -> None:
    world.publish(catalog(tmp_path, "v1"))
    with world.client() as client:
        client.sync()
        world.publish(changed_catalog(tmp_path))
        _tamper_latest_catalog(world.root / "server.db", tamper)
        with pytest.raises(SyncError, match="refused"):
            client.sync()
        assert client.versions() == (1, 1)
    assert_same_rows(rows_of(client.bundle_path), rows_of(tmp_path / "v1"))


def test_an_older_signed_version_is_a_rollback_and_refused(world, tmp_path) -> None:
    world.publish(catalog(tmp_path, "v1"))
    old_server = tmp_path / "old.db"
    with sqlite3.connect(world.root / "server.db") as live, sqlite3.connect(old_server) as copy:
        live.backup(copy)  # the store as it was at catalog version 1, WAL included
    world.publish(changed_catalog(tmp_path))
    with world.client() as client:
        assert client.sync().catalog_version == 2
    replay = SQLiteStore(old_server)
    with serve(replay, port=0) as server:
        options = {"token": world.token, "public_key": public_key_hex(world.key)}
        replayed = SyncClient(
            f"127.0.0.1:{server.port}", family=FAMILY, device_dir=world.root / "device", **options
        )
        with replayed, pytest.raises(SyncError, match="rollback"):
            replayed.sync()
        rolled = SyncClient(
            f"127.0.0.1:{server.port}",
            family=FAMILY,
            device_dir=world.root / "device",
            allow_rollback=True,
            **options,
        )
        with rolled:
            assert rolled.sync().catalog_version == 1


def test_a_wrong_token_is_reported_and_nothing_changes(world, tmp_path) -> None:
    world.publish(catalog(tmp_path, "v1"))
    client = SyncClient(
        world.target,
        token="not-a-token",
        public_key=public_key_hex(world.key),
        family=FAMILY,
        device_dir=tmp_path / "device",
    )
    with client, pytest.raises(SyncError, match="UNAUTHENTICATED"):
        client.sync()
    assert not client.bundle_path.exists()


def test_kill_9_of_the_device_mid_sync_leaves_a_valid_bundle_in_use(world, tmp_path) -> None:
    world.publish(catalog(tmp_path, "v1"))
    with world.client() as client:
        client.sync()
    world.publish(changed_catalog(tmp_path))
    script = (
        "import os, signal, sys\n"
        "from pocketrec.sdk.sync import SyncClient\n"
        "def die(index, count):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        f"client = SyncClient({world.target!r}, token={world.token!r}, "
        f"public_key={public_key_hex(world.key)!r}, family={FAMILY!r}, "
        f"device_dir={str(world.root / 'device')!r}, on_chunk=die)\n"
        "client.sync()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL
    assert Bundle.open(world.root / "device" / "bundle").item_ids == tuple(sorted(item_ids()))
    with world.client() as client:
        assert client.sync().catalog_version == 2


def _tamper_latest_catalog(db: Path, how: str) -> None:
    with sqlite3.connect(db) as connection:
        table, column, signature = "catalogs", "record", "signature"
        latest = connection.execute(f"SELECT MAX(catalog_version) FROM {table}").fetchone()[0]
        record, sig = connection.execute(
            f"SELECT {column}, {signature} FROM {table} WHERE catalog_version = ?", (latest,)
        ).fetchone()
        if how == "unsigned":
            sig = b""
        elif how == "wrongly signed":
            sig = generate_key().sign(bytes(record))
        else:
            document = json.loads(bytes(record))
            document["item_count"] += 0
            document["published_at"] = "2000-01-01T00:00:00+00:00"
            record = json.dumps(document).encode()
        connection.execute(
            f"UPDATE {table} SET {column} = ?, {signature} = ? WHERE catalog_version = ?",
            (record, sig, latest),
        )


def test_the_command_line_runs_the_whole_loop(tmp_path, capsys) -> None:
    from pocketrec.cli import main

    keys, db, device = tmp_path / "keys", tmp_path / "server.db", tmp_path / "device"
    assert main(["keys", "generate", "--out", str(keys)]) == 0
    public_key = (keys / "publisher.pub").read_text().strip()
    assert public_key in capsys.readouterr().out
    bundle = str(catalog(tmp_path, "v1"))
    store_args = ["--store", str(db), "--family", FAMILY]
    assert main(["publish", bundle, *store_args, "--key", str(keys / "publisher.key")]) == 0
    assert main(["token", "issue", *store_args, "--device", "phone"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    assert token.startswith("prt_")
    port = free_port()
    server = server_process(db, port)
    try:
        sync = [
            "sync",
            str(device),
            "--server",
            f"127.0.0.1:{port}",
            "--token",
            token,
            "--public-key",
            str(keys / "publisher.pub"),
            "--family",
            FAMILY,
        ]
        assert main(sync) == 0
        assert "updated to model 1, catalog 1" in capsys.readouterr().out
        assert main(sync) == 0
        assert "already at model 1, catalog 1" in capsys.readouterr().out
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert server.returncode == 0
    assert main(["recommend", str(device / "bundle"), "--history", "m1", "m2", "--k", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
