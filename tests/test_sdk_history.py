"""HistoryStore on real SQLite: order, bounds, durability, failures, threads."""

from __future__ import annotations

import datetime
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _sdk_fixtures import run_in_threads

from pocketrec.errors import HistoryStoreError
from pocketrec.sdk import HistoryStore
from pocketrec.sdk._history import _RECENT, BUSY_TIMEOUT_S


def _stored_count(path: Path, user: str) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM events WHERE user = ?", (user,)).fetchone()[0]


def test_recent_returns_the_last_items_oldest_first() -> None:
    with HistoryStore() as store:
        for i, item in enumerate(["a", "b", "c", "d"]):
            store.append("u1", item, ts=100.0 + i)
        store.append("u2", "x")
        assert store.recent("u1", 3) == ["b", "c", "d"]
        assert store.recent("u1", 10) == ["a", "b", "c", "d"]
        assert store.recent("u2", 10) == ["x"]
        assert store.recent("nobody", 5) == []
        assert store.recent("u1", 0) == []


def test_order_is_insertion_order_not_timestamp_order() -> None:
    with HistoryStore() as store:
        store.append("u", "late", ts=200.0)
        store.append("u", "early", ts=100.0)
        assert store.recent("u", 2) == ["late", "early"]


def test_int_ids_are_stored_as_their_str() -> None:
    with HistoryStore() as store:
        store.append(7, 257)
        assert store.recent("7", 5) == ["257"]
        assert store.recent(7, 5) == ["257"]
        assert store.seen(7) == {"257"}


def test_recent_is_one_index_walk_without_a_sort(tmp_path) -> None:
    path = tmp_path / "history.db"
    HistoryStore(path).close()
    with sqlite3.connect(path) as db:
        plan = " ".join(row[-1] for row in db.execute("EXPLAIN QUERY PLAN " + _RECENT, ("u", 5)))
    assert "USING INDEX events_user_id (user=?)" in plan
    assert "TEMP B-TREE" not in plan


def test_trimming_keeps_at_most_max_events_per_user_visible(tmp_path) -> None:
    path = tmp_path / "history.db"
    with HistoryStore(path, max_events=3) as store:
        for i in range(100):
            store.append("u", f"i{i}")
            store.append("v", f"j{i}")
        assert store.recent("u", 100) == ["i97", "i98", "i99"]
        assert store.recent("v", 100) == ["j97", "j98", "j99"]
        assert store.seen("u") == {"i97", "i98", "i99"}
        # Old events are deleted in batches: the file holds a bounded slack, not all 100.
        assert 3 <= _stored_count(path, "u") <= 3 + 16
    # Closing trims to max_events: old events are deleted, not merely hidden.
    assert _stored_count(path, "u") == _stored_count(path, "v") == 3
    with HistoryStore(path, max_events=10) as reopened:
        assert reopened.recent("u", 100) == ["i97", "i98", "i99"]


def test_a_killed_app_leaves_a_bounded_slack_that_the_next_append_trims(tmp_path) -> None:
    path = tmp_path / "history.db"
    store = HistoryStore(path, max_events=3)
    for i in range(10):
        store.append("u", f"i{i}")
    # What a killed app leaves behind: a second connection sees the committed events.
    assert 3 < _stored_count(path, "u") <= 3 + 16
    with HistoryStore(path, max_events=3) as reopened:
        assert reopened.recent("u", 100) == ["i7", "i8", "i9"]
        reopened.append("u", "i10")  # a user's first append after opening trims it
        assert _stored_count(path, "u") == 3
        assert reopened.recent("u", 100) == ["i8", "i9", "i10"]
    store.close()


def test_seen_is_every_item_of_the_user_without_repeats() -> None:
    with HistoryStore() as store:
        for item in ["a", "b", "a", "c"]:
            store.append("u", item)
        store.append("v", "z")
        assert store.seen("u") == {"a", "b", "c"}
        assert store.seen("nobody") == set()


def test_forget_deletes_one_users_events_for_good(tmp_path) -> None:
    path = tmp_path / "history.db"
    with HistoryStore(path) as store:
        for item in ["a", "b", "c"]:
            store.append("u", item)
        store.append("v", "x")
        assert store.forget("u") == 3
        assert store.forget("u") == 0
        assert store.recent("u", 10) == []
        store.append("u", "d")
        assert store.recent("u", 10) == ["d"]
    with HistoryStore(path) as reopened:
        assert reopened.recent("u", 10) == ["d"]
        assert reopened.recent("v", 10) == ["x"]


def test_reopening_the_same_path_gives_the_same_history(tmp_path) -> None:
    path = tmp_path / "history.db"
    store = HistoryStore(path)
    store.append("u", "a", ts=1.0)
    store.append("u", "b")
    store.close()
    store.close()  # idempotent
    with HistoryStore(path) as reopened:
        assert reopened.recent("u", 5) == ["a", "b"]
        reopened.append("u", "c")
        assert reopened.recent("u", 5) == ["a", "b", "c"]


_APPENDER = textwrap.dedent(
    """
    import sys
    from pocketrec.sdk import HistoryStore

    store = HistoryStore(sys.argv[1], max_events=1_000_000)
    i = 0
    while True:
        store.append("u", f"i{i}", ts=1_700_000_000.0 + i)
        print(f"appended {i}", flush=True)
        i += 1
    """
)


def test_observe_survives_kill_9_of_the_app(tmp_path) -> None:
    path = tmp_path / "history.db"
    app = subprocess.Popen(
        [sys.executable, "-c", _APPENDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    acknowledged = -1
    try:
        assert app.stdout is not None
        while acknowledged < 300:
            line = app.stdout.readline()
            assert line.startswith("appended "), f"the app stopped early: {line!r}"
            acknowledged = int(line.split()[1])
        os.kill(app.pid, signal.SIGKILL)  # while it keeps appending
    finally:
        app.kill()
        app.wait(timeout=30)
    assert app.returncode == -signal.SIGKILL
    with HistoryStore(path, max_events=1_000_000) as reopened:
        items = reopened.recent("u", 1_000_000)
    # Every acknowledged event is there, in order, once; at most the ones in flight follow.
    assert len(items) > acknowledged
    assert items == [f"i{i}" for i in range(len(items))]


def test_a_garbage_file_raises_history_store_error_on_open(tmp_path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not an SQLite file" * 100)
    with pytest.raises(HistoryStoreError, match="not an SQLite database, or is corrupt") as caught:
        HistoryStore(path)
    assert str(path) in str(caught.value)
    assert "move the file aside" in str(caught.value)
    assert path.read_bytes() == b"this is not an SQLite file" * 100  # left for the user


def test_a_corrupted_history_raises_history_store_error_when_read(tmp_path) -> None:
    path = tmp_path / "history.db"
    with HistoryStore(path, max_events=10_000) as store:
        for i in range(3000):
            store.append("u", f"item-{i}")
    with sqlite3.connect(path) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    data[page_size:] = b"\xa5" * (len(data) - page_size)  # every page but the schema
    path.write_bytes(bytes(data))
    with HistoryStore(path) as store:  # the schema page is intact
        with pytest.raises(HistoryStoreError, match="corrupt") as caught:
            store.recent("u", 10)
        assert str(path) in str(caught.value)
        with pytest.raises(HistoryStoreError, match="corrupt"):
            store.append("u", "one more")


def test_an_sqlite_file_of_another_app_is_refused(tmp_path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE events (name TEXT, at TEXT)")
    with pytest.raises(HistoryStoreError, match="not a pocketrec history: its table 'events'"):
        HistoryStore(path)


def test_a_missing_folder_raises_history_store_error_naming_the_path(tmp_path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "history.db"
    with pytest.raises(HistoryStoreError, match="cannot be opened or created") as caught:
        HistoryStore(path)
    assert str(path) in str(caught.value)


def test_a_file_locked_by_another_process_fails_fast_and_the_store_recovers(tmp_path) -> None:
    path = tmp_path / "history.db"
    with HistoryStore(path) as store:
        store.append("u", "a")
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        other.execute("INSERT INTO events (user, item, ts) VALUES ('w', 'z', 0)")
        for user in ("u", "new user"):  # a plain append, and one that also trims
            start = time.monotonic()
            with pytest.raises(HistoryStoreError, match="locked by another process") as caught:
                store.append(user, "b")
            assert time.monotonic() - start < BUSY_TIMEOUT_S + 2.5  # not the 5 s sqlite3 default
            assert str(path) in str(caught.value)
        assert store.recent("u", 10) == ["a"]  # readers are not blocked
        other.execute("COMMIT")
        other.close()
        store.append("u", "c")
        store.append("new user", "d")
        assert store.recent("u", 10) == ["a", "c"]
        assert store.recent("new user", 10) == ["d"]
        assert store.recent("w", 10) == ["z"]


def test_opening_a_file_another_process_holds_exclusively_fails_fast(tmp_path) -> None:
    path = tmp_path / "history.db"
    other = sqlite3.connect(path, isolation_level=None)  # rollback journal: locks readers out
    other.execute("CREATE TABLE t (x)")
    other.execute("BEGIN EXCLUSIVE")
    other.execute("INSERT INTO t VALUES (1)")
    start = time.monotonic()
    with pytest.raises(HistoryStoreError, match="locked by another process"):
        HistoryStore(path)
    assert time.monotonic() - start < BUSY_TIMEOUT_S + 2.5  # not the 5 s sqlite3 default
    other.execute("ROLLBACK")
    other.close()
    with HistoryStore(path) as store:
        store.append("u", "a")
        assert store.recent("u", 1) == ["a"]


def test_close_still_closes_when_the_file_is_locked_and_loses_nothing(tmp_path) -> None:
    path = tmp_path / "history.db"
    store = HistoryStore(path, max_events=3)
    for i in range(10):
        store.append("u", f"i{i}")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    store.close()  # its trim fails on the lock; closing does not
    with pytest.raises(HistoryStoreError, match="is closed"):
        store.recent("u", 1)
    other.execute("ROLLBACK")
    other.close()
    assert _stored_count(path, "u") == 10
    with HistoryStore(path, max_events=3) as reopened:
        assert reopened.recent("u", 100) == ["i7", "i8", "i9"]


@pytest.mark.parametrize(
    ("ts", "error", "match"),
    [
        (math.nan, ValueError, "got nan"),
        (math.inf, ValueError, "got inf"),
        (-1.0, ValueError, r"in \[0, 253402300800\)"),
        (1_700_000_000_000, ValueError, "milliseconds"),
        (datetime.datetime(2024, 1, 1), TypeError, r"pass ts.timestamp\(\)"),
        (True, TypeError, "got bool True"),
        ("1700000000", TypeError, "got str '1700000000'"),
    ],
)
def test_a_bad_timestamp_is_refused_and_stores_nothing(ts, error, match) -> None:
    with HistoryStore() as store:
        store.append("u", "a", ts=5.0)
        with pytest.raises(error, match=match):
            store.append("u", "bad", ts=ts)
        store.append("u", "b", ts=1_700_000_000)
        assert store.recent("u", 10) == ["a", "b"]


def test_a_lone_surrogate_id_is_a_value_error_and_stores_nothing() -> None:
    with HistoryStore() as store:
        with pytest.raises(ValueError, match=r"item id 'x\\ud800' holds a lone surrogate"):
            store.append("u", "x\ud800")
        with pytest.raises(ValueError, match=r"user id '\\ud800' holds a lone surrogate"):
            store.append("\ud800", "a")
        with pytest.raises(TypeError, match="item id must be a str"):
            store.append("u", b"a")
        store.append("u", "a")
        assert store.recent("u", 10) == ["a"]


def test_concurrent_appends_from_many_threads_are_all_kept(tmp_path) -> None:
    store = HistoryStore(tmp_path / "history.db", max_events=10_000)

    def worker(t: int) -> None:
        for i in range(50):
            store.append(f"user{t % 2}", f"t{t}-{i}")
            store.recent(f"user{t % 2}", 5)

    assert run_in_threads(worker, 8) == []
    for user in ("user0", "user1"):
        items = store.recent(user, 10_000)
        assert len(items) == 200
        # Each thread's own events stay in the order it appended them.
        for t in range(user == "user1", 8, 2):
            mine = [item for item in items if item.startswith(f"t{t}-")]
            assert mine == [f"t{t}-{i}" for i in range(50)]
    store.close()


def test_bad_arguments_raise_value_error_and_use_after_close_history_store_error() -> None:
    with pytest.raises(ValueError, match="max_events"):
        HistoryStore(max_events=0)
    store = HistoryStore()
    with pytest.raises(ValueError, match="user id must be a non-empty str"):
        store.append("", "a")
    with pytest.raises(ValueError, match="n must be"):
        store.recent("u", -1)
    store.close()
    for call in (
        lambda: store.append("u", "a"),
        lambda: store.recent("u", 1),
        lambda: store.seen("u"),
        lambda: store.forget("u"),
    ):
        with pytest.raises(HistoryStoreError, match="is closed; open a new HistoryStore"):
            call()
