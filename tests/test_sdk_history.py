"""HistoryStore on real SQLite: order, bounds, persistence, threads."""

from __future__ import annotations

import sqlite3

import pytest
from _sdk_fixtures import run_in_threads

from pocketrec.sdk import HistoryStore


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


def test_each_user_keeps_at_most_max_events(tmp_path) -> None:
    path = tmp_path / "history.db"
    with HistoryStore(path, max_events=3) as store:
        for i in range(10):
            store.append("u", f"i{i}")
            store.append("v", f"j{i}")
        assert store.recent("u", 100) == ["i7", "i8", "i9"]
        assert store.recent("v", 100) == ["j7", "j8", "j9"]
    # Old events are deleted, not merely hidden.
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 6


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


def test_bad_arguments_and_use_after_close_raise_value_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="max_events"):
        HistoryStore(max_events=0)
    with pytest.raises(ValueError, match="cannot open the history database"):
        HistoryStore(tmp_path / "no" / "such" / "dir" / "history.db")
    (tmp_path / "garbage.db").write_bytes(b"this is not an SQLite file" * 100)
    with pytest.raises(ValueError, match="cannot open the history database"):
        HistoryStore(tmp_path / "garbage.db")
    store = HistoryStore()
    with pytest.raises(ValueError, match="user"):
        store.append("", "a")
    with pytest.raises(ValueError, match="n must be"):
        store.recent("u", -1)
    store.close()
    with pytest.raises(ValueError, match="closed"):
        store.append("u", "a")
