"""Events back, fresh within seconds, users in control: the device against a real server."""

from __future__ import annotations

import csv
import hashlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _sync_fixtures import (
    FAMILY,
    World,
    catalog,
    changed_catalog,
    free_port,
    running_world,
    server_process,
)

from pocketrec.sdk import Bundle, Recommender
from pocketrec.sdk.catalog import generate_key, public_key_hex
from pocketrec.sdk.sync import SyncClient
from pocketrec.server.events import export_events
from pocketrec.server.publish import publish
from pocketrec.server.service import serve
from pocketrec.server.store import SQLiteStore
from pocketrec.server.tokens import issue_token


@pytest.fixture
def world(tmp_path) -> Iterator[World]:
    yield from running_world(tmp_path)


def _uploaded(world: World, path: Path) -> list[dict[str, str]]:
    export_events(world.store, FAMILY, path)
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _synced_recommender(world: World, client: SyncClient, history: Path, **options) -> Recommender:
    client.sync()
    return Recommender.open(client.bundle_path, history_path=history, **options)


def _wait_for(condition: Callable[[], bool], seconds: float) -> float:
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > seconds:
            raise AssertionError(f"not within {seconds} s")
        time.sleep(0.01)
    return time.perf_counter() - started


def test_a_restarted_device_keeps_its_queue_and_the_server_stores_it_once(world, tmp_path):
    world.publish(catalog(tmp_path, "v1"))
    history = tmp_path / "history.db"
    with world.client() as client:
        with _synced_recommender(world, client, history) as recommender:
            for i in range(30):
                recommender.observe(f"user-{i % 3}", f"m{i % 20}", timestamp=1_700_000_000 + i)
        with Recommender.open(client.bundle_path, history_path=history) as recommender:
            assert recommender.history.queue_length() == 30
            first = client.upload_events(recommender)
            assert (first.acknowledged, first.stored_new, first.rejected) == (30, 30, 0)
            assert recommender.history.queue_length() == 0
            assert client.upload_events(recommender).acknowledged == 0
    rows = _uploaded(world, tmp_path / "events.csv")
    assert len(rows) == 30
    assert {row["model_version"] for row in rows} == {"1"}
    assert {row["catalog_version"] for row in rows} == {"1"}


def test_kill_9_between_queueing_and_acknowledgement_loses_and_duplicates_nothing(world, tmp_path):
    world.publish(catalog(tmp_path, "v1"))
    history = tmp_path / "history.db"
    with world.client() as client:
        _synced_recommender(world, client, history).close()
    # The app queues 40 events, uploads them, and dies before it can forget them.
    script = (
        "import os, signal\n"
        "from pocketrec.sdk import HistoryStore, Recommender\n"
        "from pocketrec.sdk.sync import SyncClient\n"
        "HistoryStore.acknowledge = lambda self, ids: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"recommender = Recommender.open({str(tmp_path / 'device' / 'bundle')!r}, "
        f"history_path={str(history)!r})\n"
        "for i in range(40):\n"
        "    recommender.observe('ann', f'm{i % 20}', timestamp=1_700_000_000 + i)\n"
        f"client = SyncClient({world.target!r}, token={world.token!r}, "
        f"public_key={public_key_hex(world.key)!r}, family={FAMILY!r}, "
        f"device_dir={str(tmp_path / 'device')!r})\n"
        "client.upload_events(recommender)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert len(_uploaded(world, tmp_path / "before.csv")) == 40
    with (
        world.client() as client,
        Recommender.open(client.bundle_path, history_path=history) as recommender,
    ):
        assert recommender.history.queue_length() == 40
        again = client.upload_events(recommender)
        assert (again.acknowledged, again.stored_new) == (40, 0)
        assert recommender.history.queue_length() == 0
    assert len(_uploaded(world, tmp_path / "after.csv")) == 40


def test_forget_leaves_no_trace_of_the_user_on_either_side(world, tmp_path) -> None:
    world.publish(catalog(tmp_path, "v1"))
    with (
        world.client() as client,
        _synced_recommender(world, client, tmp_path / "h.db") as recommender,
    ):
        for i in range(6):
            recommender.observe("ann", f"m{i}")
            recommender.observe("bob", f"m{i + 6}")
        client.upload_events(recommender)
        recommender.observe("ann", "m19")  # queued, not yet uploaded
        recommender.observe("bob", "m19")
        ann = recommender.upload_user("ann")
        assert client.forget_user(recommender, "ann") == 6
        assert recommender.history.recent("ann", 100) == []
        queued = recommender.history.queued()
        assert len(queued) == 1 and queued[0].user != ann
        client.upload_events(recommender)
    rows = _uploaded(world, tmp_path / "events.csv")
    assert rows and all(row["user"] != ann for row in rows)
    assert len(rows) == 7


def test_uploads_name_users_by_a_stable_pseudonym_unless_the_app_says_otherwise(world, tmp_path):
    world.publish(catalog(tmp_path, "v1"))
    history = tmp_path / "h.db"
    with world.client() as client:
        with _synced_recommender(world, client, history) as recommender:
            pseudonym = recommender.upload_user("ann")
        with Recommender.open(client.bundle_path, history_path=history) as recommender:
            assert recommender.upload_user("ann") == pseudonym != "ann"
            assert len(pseudonym) == 64 and int(pseudonym, 16) >= 0
            recommender.observe("ann", "m1")
            client.upload_events(recommender)
        with Recommender.open(
            client.bundle_path, history_path=tmp_path / "raw.db", pseudonymous_users=False
        ) as recommender:
            recommender.observe("bob", "m2")
            client.upload_events(recommender)
        with Recommender.open(
            client.bundle_path, history_path=tmp_path / "off.db", queue_events=False
        ) as recommender:
            recommender.observe("cat", "m3")
            assert recommender.history.queue_length() == 0
    assert sorted(row["user"] for row in _uploaded(world, tmp_path / "e.csv")) == sorted(
        ["bob", pseudonym]
    )


def test_a_connected_device_learns_of_a_publish_through_the_watch_stream(world, tmp_path):
    world.publish(catalog(tmp_path, "v1"))
    with (
        world.client() as client,
        _synced_recommender(world, client, tmp_path / "h.db") as recommender,
    ):
        client.start(recommender)
        _wait_for(lambda: recommender.versions == (1, 1), 5)
        time.sleep(0.2)  # the watch stream is open
        world.publish(changed_catalog(tmp_path))
        # No poll would come for minutes (watch_s): only the stream can bring it this soon.
        _wait_for(lambda: "m-new" in recommender.recommend(k=50).item_ids, 5)
        client.stop()
        assert recommender.versions == (1, 2)


def test_the_watch_stream_reconnects_to_a_restarted_server(tmp_path) -> None:
    db = tmp_path / "server.db"
    store = SQLiteStore(db)
    key = generate_key()
    token = issue_token(store, FAMILY, "device-1")
    publish(store, Bundle.open(catalog(tmp_path, "v1")), FAMILY, key)
    port = free_port()
    server = server_process(db, port)
    client = SyncClient(
        f"127.0.0.1:{port}",
        token=token,
        public_key=public_key_hex(key),
        family=FAMILY,
        device_dir=tmp_path / "device",
        backoff_s=0.05,
        max_backoff_s=0.5,
    )
    try:
        client.sync()
        with Recommender.open(client.bundle_path) as recommender:
            client.start(recommender)
            time.sleep(0.3)
            server.kill()
            server.wait()
            publish(store, changed_catalog(tmp_path), FAMILY, key)
            server = server_process(db, port)
            _wait_for(lambda: recommender.versions == (1, 2), 10)
            client.stop()
    finally:
        client.close()
        server.kill()
        server.wait()


def _bucket(device: str) -> float:
    digest = hashlib.sha256(f"{FAMILY}\0{device}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def test_a_device_outside_the_rollout_fraction_keeps_the_old_version(world, tmp_path) -> None:
    names = [f"phone-{i}" for i in range(40)]
    inside = next(n for n in names if _bucket(n) < 0.5)
    outside = next(n for n in names if _bucket(n) >= 0.5)
    world.publish(catalog(tmp_path, "v1"))
    publish(world.store, changed_catalog(tmp_path), FAMILY, world.key, fraction=0.5)
    versions = {}
    for name in (inside, outside):
        client = SyncClient(
            world.target,
            token=issue_token(world.store, FAMILY, name),
            public_key=public_key_hex(world.key),
            family=FAMILY,
            device_dir=tmp_path / name,
        )
        with client:
            versions[name] = client.sync().catalog_version
    assert versions == {inside: 2, outside: 1}


def test_the_background_thread_uploads_new_events_on_its_own(tmp_path) -> None:
    store = SQLiteStore(tmp_path / "server.db")
    key = generate_key()
    token = issue_token(store, FAMILY, "device-1")
    publish(store, Bundle.open(catalog(tmp_path, "v1")), FAMILY, key)
    with serve(store, port=0, heartbeat_ms=100) as server:
        client = SyncClient(
            f"127.0.0.1:{server.port}",
            token=token,
            public_key=public_key_hex(key),
            family=FAMILY,
            device_dir=tmp_path / "device",
            upload_every_s=0.05,
        )
        with client:
            client.sync()
            with Recommender.open(client.bundle_path) as recommender:
                client.start(recommender)
                for i in range(5):
                    recommender.observe("ann", f"m{i}")
                _wait_for(lambda: recommender.history.queue_length() == 0, 5)
                client.stop()
    assert len(list(store.events(FAMILY))) == 5
