"""The sync server, part 1b: events, staged rollouts, pins, rollback and WatchManifest.

Every test talks to a server on 127.0.0.1 (port 0) through the generated stubs, with a
real SQLite store in tmp_path and bundles of the tiny tower.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from _sdk_fixtures import item_ids, item_vectors, items_metadata, write_tiny_bundle

from pocketrec import cli
from pocketrec.data import load_from_args
from pocketrec.proto import sync_pb2, sync_pb2_grpc
from pocketrec.sdk import Bundle, ItemTable
from pocketrec.sdk.catalog import CATALOG_KIND, SignedRecord, generate_key, private_key_pem
from pocketrec.server import (
    EXPORT_HEADER,
    MAX_EVENTS_PER_UPLOAD,
    Event,
    SQLiteStore,
    StoreError,
    SyncServer,
    chosen_version,
    delete_user_events,
    device_bucket,
    devices,
    event_problem,
    export_events,
    issue_token,
    pin,
    publish,
    rollback,
    serve,
    set_rollout,
)

FAMILY = "movies"


@pytest.fixture(scope="module")
def key():
    return generate_key()


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> Bundle:
    return Bundle.open(write_tiny_bundle(tmp_path_factory.mktemp("b1") / "bundle", dtype="int8"))


@pytest.fixture(scope="module")
def second(first, tmp_path_factory) -> Bundle:
    """The same model with m0 moved and a new item n1; saved, for the command line."""
    vectors = item_vectors()
    vectors[0] = -vectors[0]
    ids = [*item_ids(), "n1"]
    vectors = np.vstack([vectors, np.linspace(-1, 1, vectors.shape[1], dtype=np.float32)])
    metadata = [*items_metadata(), {"title": "New movie"}]
    bundle = first.with_items(ItemTable.quantize(vectors, "int8"), ids, metadata)
    return Bundle.open(bundle.save(tmp_path_factory.mktemp("b2") / "bundle"))


@pytest.fixture
def store(tmp_path) -> Iterator[SQLiteStore]:
    with SQLiteStore(tmp_path / "sync.sqlite") as opened:
        yield opened


@pytest.fixture
def server(store) -> Iterator[SyncServer]:
    with serve(store, heartbeat_ms=200) as running:
        yield running


@pytest.fixture
def stub(server) -> Iterator[sync_pb2_grpc.CatalogSyncStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield sync_pb2_grpc.CatalogSyncStub(channel)


def token(store, device: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {issue_token(store, FAMILY, device)}"),)


def event(user: str = "u1", item: str = "m1", at: float = 1_700_000_000.0, **fields):
    return sync_pb2.Event(
        event_id=fields.pop("event_id", uuid.uuid4().bytes),
        user=user,
        item_id=item,
        timestamp_s=at,
        **fields,
    )


def upload(stub, auth, events) -> sync_pb2.UploadEventsResponse:
    request = sync_pb2.UploadEventsRequest(family=FAMILY, events=events)
    return stub.UploadEvents(request, metadata=auth, timeout=10)


def manifest(stub, auth, **running) -> sync_pb2.GetManifestResponse:
    request = sync_pb2.GetManifestRequest(family=FAMILY, **running)
    return stub.GetManifest(request, metadata=auth, timeout=10)


def devices_straddling(fraction: float) -> tuple[str, str]:
    """A device name whose bucket is below ``fraction`` and one whose bucket is above."""
    names = [f"phone-{i}" for i in range(100)]
    inside = next(n for n in names if device_bucket(FAMILY, n) < fraction)
    outside = next(n for n in names if device_bucket(FAMILY, n) >= fraction)
    return inside, outside


# -- events ----------------------------------------------------------------------------------


def test_a_retried_upload_is_stored_once_and_acknowledged_both_times(store, stub, first, key):
    publish(store, first, FAMILY, key)
    auth = token(store, "phone")
    batch = [event(item=f"m{i}", at=1_700_000_000.0 + i, model_version=1) for i in range(5)]
    ids = [e.event_id for e in batch]

    sent = upload(stub, auth, batch)
    retried = upload(stub, auth, batch)

    assert list(sent.acknowledged_event_ids) == ids == list(retried.acknowledged_event_ids)
    assert (sent.stored_new, retried.stored_new) == (5, 0)
    stored = list(store.events(FAMILY))
    assert sorted(s.event.event_id for s in stored) == sorted(ids)
    assert {(s.device, s.event.model_version) for s in stored} == {("phone", 1)}


def test_malformed_events_are_rejected_with_reasons_while_the_rest_are_stored(
    store, stub, first, key
):
    publish(store, first, FAMILY, key)
    good = [event(item="m1"), event(item="m2", catalog_version=1)]
    bad = {
        "event_id": event(event_id=b"short"),
        "user": event(user=""),
        "item_id": event(item="x" * 257),
        "timestamp_s": event(at=math.nan),
        "before 1970": event(at=-1.0),
        "after 9999": event(at=253402300800.0),
        "model_version": event(model_version=2),
        "catalog_version": event(catalog_version=7),
    }

    response = upload(stub, (token(store, "phone")), [good[0], *bad.values(), good[1]])

    assert list(response.acknowledged_event_ids) == [e.event_id for e in good]
    assert response.stored_new == 2
    assert [r.event_id for r in response.rejected] == [e.event_id for e in bad.values()]
    for (what, _), rejected in zip(bad.items(), response.rejected, strict=True):
        assert what.split()[0] in rejected.reason or "years 1970 to 9999" in rejected.reason
    assert len(list(store.events(FAMILY))) == 2
    lone = Event(uuid.uuid4().bytes, "u1", "m\ud800", 0.0)
    assert "lone surrogate" in event_problem(lone, 1, 1)


def test_more_than_1000_events_in_one_call_are_refused(store, stub, first, key):
    publish(store, first, FAMILY, key)
    auth = token(store, "phone")

    with pytest.raises(grpc.RpcError) as refused:
        upload(stub, auth, [event() for _ in range(MAX_EVENTS_PER_UPLOAD + 1)])

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1000" in refused.value.details()
    assert list(store.events(FAMILY)) == []
    assert upload(stub, auth, [event() for _ in range(1000)]).stored_new == 1000


def test_deleting_a_users_events_removes_only_what_this_device_uploaded(store, stub, first, key):
    publish(store, first, FAMILY, key)
    phone, tablet = token(store, "phone"), token(store, "tablet")
    upload(stub, phone, [event("alice"), event("alice"), event("bob")])
    upload(stub, tablet, [event("alice")])

    deleted = stub.DeleteUserEvents(
        sync_pb2.DeleteUserEventsRequest(family=FAMILY, user="alice"), metadata=phone
    )

    assert deleted.deleted == 2
    assert list(store.events(FAMILY, user="alice", device="phone")) == []
    assert [s.device for s in store.events(FAMILY, user="alice")] == ["tablet"]
    assert len(list(store.events(FAMILY, user="bob", device="phone"))) == 1
    with pytest.raises(grpc.RpcError) as refused:
        stub.DeleteUserEvents(sync_pb2.DeleteUserEventsRequest(family=FAMILY), metadata=phone)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The operator's erasure takes the user's events from every device.
    assert delete_user_events(store, FAMILY, "alice") == 1
    assert list(store.events(FAMILY, user="alice")) == []


def test_exported_events_read_back_through_the_delimited_loader(store, tmp_path):
    issue_token(store, FAMILY, "phone")
    users = ["u1", "Ünïcode, with comma", 'quote "q"', "u1"]
    items = ["m1", "line\nbreak", "semi;colon", "tab\there"]
    times = [1_700_000_300.25, 1_700_000_100.0, 1_700_000_200.5, 0.0]
    events = [
        Event(uuid.uuid4().bytes, u, i, t, 1, 2)
        for u, i, t in zip(users, items, times, strict=True)
    ]
    store.add_events(FAMILY, "phone", events, "2024-01-01T00:00:00+00:00")
    out = tmp_path / "events.csv"

    assert export_events(store, FAMILY, out) == 4

    assert out.read_text().splitlines()[0] == ",".join(EXPORT_HEADER)
    # Exactly what `pocketrec train --data FILE --string-ids --time-col timestamp` loads.
    train = ["train", "--data", str(out), "--string-ids", "--time-col", "timestamp"]
    loaded = load_from_args(cli.build_parser().parse_args([*train, "--out", str(tmp_path)]))
    order = np.argsort(times, kind="stable")
    assert list(loaded.users) == [users[i] for i in order]
    assert list(loaded.items) == [items[i] for i in order]
    assert list(loaded.timestamps) == [times[i] for i in order]


# -- versions per device ---------------------------------------------------------------------


def test_a_device_outside_the_rollout_keeps_the_previous_version_until_it_widens(
    store, stub, first, second, key
):
    publish(store, first, FAMILY, key)
    inside, outside = devices_straddling(0.5)
    auth = {name: token(store, name) for name in (inside, outside)}

    publish(store, second, FAMILY, key, fraction=0.5)

    assert manifest(stub, auth[inside]).catalog_version == 2
    old = manifest(stub, auth[outside])
    assert old.catalog_version == 1
    assert (
        SignedRecord.from_proto(old.catalog_record).verified(key.public_key(), CATALOG_KIND)[
            "catalog_version"
        ]
        == 1
    )
    set_rollout(store, FAMILY, 2, 1.0)
    assert {manifest(stub, a).catalog_version for a in auth.values()} == {2}
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        set_rollout(store, FAMILY, 2, 0.0)
    with pytest.raises(StoreError, match="no catalog version 9"):
        set_rollout(store, FAMILY, 9, 0.5)


def test_widening_a_rollout_only_adds_devices():
    buckets = [device_bucket(FAMILY, f"device-{i}") for i in range(2000)]
    rollout = [(1, 1.0), (2, 0.1)]

    def served(fraction: float) -> set[int]:
        rollout[1] = (2, fraction)
        return {i for i, b in enumerate(buckets) if chosen_version(rollout, b) == 2}

    shares = [served(f) for f in (0.1, 0.3, 0.6, 1.0)]
    assert all(a < b for a, b in itertools.pairwise(shares))
    assert abs(len(shares[1]) / len(buckets) - 0.3) < 0.05
    assert chosen_version(rollout, 0.99, pinned=1) == 1


def test_rollback_publishes_the_earlier_rows_and_model_as_a_new_signed_version(
    store, stub, first, key
):
    publish(store, first, FAMILY, key)
    float16 = first.with_items(
        ItemTable.quantize(item_vectors(), "float16"), item_ids(), items_metadata()
    )
    publish(store, float16, FAMILY, key)  # another table form: model version 2

    result = rollback(store, FAMILY, key)

    assert (result.published, result.new_model) == (True, True)
    assert (result.model_version, result.catalog_version) == (3, 3)
    back, earlier = store.rows(FAMILY, 3), store.rows(FAMILY, 1)
    assert back.item_ids == earlier.item_ids and back.metadata == earlier.metadata
    assert np.array_equal(back.values, earlier.values) and back.dtype == "int8"
    assert np.array_equal(back.scales, earlier.scales)
    assert store.model(FAMILY, 3).sha256 == first.model_sha256
    answer = manifest(stub, token(store, "phone"))
    record = SignedRecord.from_proto(answer.catalog_record).verified(key.public_key(), CATALOG_KIND)
    assert (answer.model_version, record["catalog_version"], record["item_count"]) == (3, 3, 40)
    with pytest.raises(ValueError, match="roll back to catalog versions 1 to 2"):
        rollback(store, FAMILY, key, to_catalog_version=3)


def test_a_pin_holds_a_device_at_a_version_until_cleared(store, stub, first, second, key):
    publish(store, first, FAMILY, key)
    phone, tablet = token(store, "phone"), token(store, "tablet")
    pin(store, FAMILY, "phone", 1)

    publish(store, second, FAMILY, key)

    assert (manifest(stub, phone).catalog_version, manifest(stub, tablet).catalog_version) == (1, 2)
    pin(store, FAMILY, "phone", None)
    assert manifest(stub, phone).catalog_version == 2
    with pytest.raises(ValueError, match="no device named 'watch'"):
        pin(store, FAMILY, "watch", 1)
    with pytest.raises(StoreError, match="no catalog version 5"):
        pin(store, FAMILY, "phone", 5)


def test_get_manifest_records_the_versions_a_device_runs(store, stub, first, key):
    publish(store, first, FAMILY, key)
    phone = token(store, "phone")
    token(store, "tablet")

    manifest(stub, phone, running_model_version=1, running_catalog_version=1)

    listed = {status.name: status for status in devices(store, FAMILY)}
    assert (listed["phone"].running_model_version, listed["phone"].running_catalog_version) == (
        1,
        1,
    )
    assert listed["phone"].last_seen_at is not None and listed["tablet"].last_seen_at is None
    assert listed["phone"].bucket == device_bucket(FAMILY, "phone")
    with pytest.raises(grpc.RpcError) as refused:
        manifest(stub, phone, running_catalog_version=2**64 - 1)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_part_1a_store_opens_and_gains_rollouts_pins_and_events(tmp_path, first, key):
    path = tmp_path / "old.sqlite"
    with SQLiteStore(path) as store:
        publish(store, first, FAMILY, key)
    with sqlite3.connect(path) as db:  # back to schema 1, as part 1a wrote it
        for trigger in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            db.execute(f"DROP TRIGGER {trigger[0]}")
        for table in ("device_status", "pins", "events", "changes"):
            db.execute(f"DROP TABLE {table}")
        db.execute("ALTER TABLE catalogs DROP COLUMN fraction")
        db.execute("PRAGMA user_version = 1")

    with SQLiteStore(path) as store:
        assert store.latest_catalog(FAMILY).fraction == 1.0
        issue_token(store, FAMILY, "phone")
        pin(store, FAMILY, "phone", 1)
        assert store.add_events(FAMILY, "phone", [Event(bytes(16), "u", "m1", 1.0)], "now") == 1
        assert store.change_counters()[FAMILY] == 1


# -- WatchManifest ---------------------------------------------------------------------------


def watch(stub, auth, timeout: float = 20) -> Iterator[sync_pb2.ManifestUpdate]:
    request = sync_pb2.WatchManifestRequest(family=FAMILY)
    return stub.WatchManifest(request, metadata=auth, timeout=timeout)


def first_change(stream, after: tuple[int, int]) -> tuple[sync_pb2.ManifestUpdate, float]:
    """The first message naming other versions than ``after``, and when it came."""
    for update in stream:
        if (update.model_version, update.catalog_version) != after:
            return update, time.monotonic()
    raise AssertionError("the stream ended without a change")


def test_a_watch_stream_sends_the_versions_at_once_then_heartbeats(store, stub, first, key):
    publish(store, first, FAMILY, key)
    started = time.monotonic()
    stream = watch(stub, token(store, "phone"))

    now = next(stream)
    beat = next(stream)

    assert (now.model_version, now.catalog_version, now.heartbeat) == (1, 1, False)
    assert (beat.model_version, beat.catalog_version, beat.heartbeat) == (1, 1, True)
    assert now.heartbeat_ms == beat.heartbeat_ms == 200
    # The heartbeat follows its period (200 ms), not the next 5 s default.
    assert 0.15 < time.monotonic() - started < 4.0
    stream.cancel()


def test_a_publish_reaches_a_watching_device_before_the_next_heartbeat(
    store, stub, first, second, key
):
    publish(store, first, FAMILY, key)
    stream = watch(stub, token(store, "phone"))
    assert next(stream).catalog_version == 1

    published = time.monotonic()
    publish(store, second, FAMILY, key)
    update, arrived = first_change(stream, (1, 1))

    assert (update.model_version, update.catalog_version, update.heartbeat) == (1, 2, False)
    # Woken by the store's change counter, not by the next heartbeat (5 s away).
    assert arrived - published < 2.5
    stream.cancel()


def test_a_publish_from_another_process_reaches_a_watching_device(
    store, stub, first, second, key, tmp_path
):
    publish(store, first, FAMILY, key)
    stream = watch(stub, token(store, "phone"))
    assert next(stream).catalog_version == 1
    arrivals: list[tuple[sync_pb2.ManifestUpdate, float]] = []
    reader = threading.Thread(target=lambda: arrivals.append(first_change(stream, (1, 1))))
    reader.start()
    key_file = tmp_path / "publisher.key"
    key_file.write_bytes(private_key_pem(key))

    arguments = ["publish", second.source, "--store", str(store.path), "--family", FAMILY]
    done = subprocess.run(
        [sys.executable, "-m", "pocketrec.cli", "-q", *arguments, "--key", str(key_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    published = time.monotonic()
    reader.join(timeout=5)

    assert done.returncode == 0, done.stderr
    ((update, arrived),) = arrivals
    assert update.catalog_version == 2
    # Well before the next heartbeat (5 s); negative when it came before the process exited.
    assert arrived - published < 2.5
    stream.cancel()


def test_a_device_outside_a_widened_rollout_hears_of_it(store, stub, first, second, key):
    publish(store, first, FAMILY, key)
    _, outside = devices_straddling(0.5)
    publish(store, second, FAMILY, key, fraction=0.5)
    stream = watch(stub, token(store, outside))
    assert next(stream).catalog_version == 1

    set_rollout(store, FAMILY, 2, 1.0)

    update, _ = first_change(stream, (1, 1))
    assert update.catalog_version == 2
    stream.cancel()


def test_stop_ends_open_watch_streams_promptly(store, first, key):
    publish(store, first, FAMILY, key)
    server = serve(store)  # heartbeats every 5 s: the streams would wait that long
    with grpc.insecure_channel(server.address) as channel:
        stub = sync_pb2_grpc.CatalogSyncStub(channel)
        streams = [watch(stub, token(store, f"phone-{i}")) for i in range(3)]
        assert [next(s).catalog_version for s in streams] == [1, 1, 1]

        started = time.monotonic()
        server.stop(grace=10)
        stopped = time.monotonic() - started

        assert [list(s) for s in streams] == [[], [], []]  # ended with status OK
    assert stopped < 3.0  # not the 5 s heartbeat nor the 10 s grace


def test_watch_streams_beyond_the_limit_are_refused_and_a_cancelled_one_frees_its_place(
    store, first, key
):
    publish(store, first, FAMILY, key)
    auth = token(store, "phone")
    with (
        serve(store, max_workers=4, max_watchers=1) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = sync_pb2_grpc.CatalogSyncStub(channel)
        held = watch(stub, auth)
        next(held)

        with pytest.raises(grpc.RpcError) as refused:
            next(watch(stub, auth))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert manifest(stub, auth).catalog_version == 1  # other calls still find a worker

        held.cancel()
        deadline = time.monotonic() + 5
        while True:
            try:
                assert next(watch(stub, auth)).catalog_version == 1
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert time.monotonic() < deadline, "the cancelled stream kept its place"
                time.sleep(0.05)


# -- the command line ------------------------------------------------------------------------


def test_the_cli_rolls_out_pins_lists_devices_and_exports_and_deletes_events(
    tmp_path, first, second, key, capsys
):
    db = tmp_path / "sync.sqlite"
    key_file = tmp_path / "publisher.key"
    key_file.write_bytes(private_key_pem(key))
    common = ["--store", str(db), "--family", FAMILY]
    inside, outside = devices_straddling(0.5)
    with SQLiteStore(db) as store:
        publish(store, first, FAMILY, key)
        for name in (inside, outside):
            issue_token(store, FAMILY, name)
        store.add_events(FAMILY, inside, [Event(bytes(16), "u1", "m1", 5.0, 1, 1)], "now")

    assert (
        cli.main(["publish", second.source, *common, "--key", str(key_file), "--fraction", "0.5"])
        == 0
    )
    assert "served to 50% of devices" in capsys.readouterr().out
    assert cli.main(["pin", *common, "--device", outside, "--catalog-version", "1"]) == 0
    assert cli.main(["rollout", *common, "--catalog-version", "2", "--fraction", "1"]) == 0
    assert cli.main(["devices", *common]) == 0
    listing = capsys.readouterr().out
    assert f"{inside}" in listing and "never" in listing
    assert cli.main(["rollback", *common, "--key", str(key_file), "--to", "1"]) == 0
    assert "catalog version 3" in capsys.readouterr().out
    out = tmp_path / "events.csv"
    assert cli.main(["events", "export", *common, "--out", str(out)]) == 0
    assert out.read_text() == ",".join(EXPORT_HEADER) + "\nu1,m1,5.0,1,1\n"
    assert cli.main(["events", "delete", *common, "--user", "u1"]) == 0
    assert "deleted 1 events" in capsys.readouterr().out
    assert cli.main(["events", "delete", *common]) == 2  # --user is needed

    with SQLiteStore(db) as store:
        assert store.pinned(FAMILY, outside) == 1
        assert [v for v, f in store.catalog_fractions(FAMILY)] == [1, 2, 3]
        assert all(f == 1.0 for _, f in store.catalog_fractions(FAMILY))
        assert list(store.events(FAMILY)) == []
    assert cli.main(["devices", "--store", str(tmp_path / "none.sqlite"), "--family", FAMILY]) == 2
