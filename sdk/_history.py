"""Per-user event history on the device, in SQLite."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from types import TracebackType

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL,
    item TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user_id ON events (user, id);
"""


class HistoryStore:
    """Events ``(user, item, ts)`` per user, ordered by insertion, at most ``max_events`` each.

    Order is insertion order (not ``ts``): the device appends events as they happen.
    Safe to share between threads; every append is committed, so reopening the same
    path gives the same history.
    """

    def __init__(self, path: str | Path = ":memory:", *, max_events: int = 1000) -> None:
        """Opens (creating if needed) the database at ``path``, or ``":memory:"``.

        Raises:
            ValueError: if ``max_events < 1`` or ``path`` cannot be opened as a database.
        """
        if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 1:
            raise ValueError(f"max_events must be an int >= 1, got {max_events!r}")
        self._max_events = max_events
        self._lock = threading.Lock()
        db = None
        try:
            # One connection shared by all threads, serialized by the lock.
            db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            if str(path) != ":memory:":
                db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            if db is not None:
                db.close()
            raise ValueError(
                f"cannot open the history database {path} ({exc}); pass a writable file path "
                "or ':memory:'"
            ) from exc
        self._db: sqlite3.Connection | None = db

    @property
    def max_events(self) -> int:
        """Most events kept per user; older ones are deleted on append."""
        return self._max_events

    def append(self, user: str, item: str, ts: float | None = None) -> None:
        """Records that ``user`` interacted with ``item`` at ``ts`` (default: now, in seconds)."""
        _check_text(user, "user")
        _check_text(item, "item")
        stamp = time.time() if ts is None else float(ts)
        with self._lock:
            db = self._connection()
            with db:
                db.execute("BEGIN")
                db.execute(
                    "INSERT INTO events (user, item, ts) VALUES (?, ?, ?)", (user, item, stamp)
                )
                db.execute(
                    "DELETE FROM events WHERE user = ? AND id <= ("
                    "SELECT id FROM events WHERE user = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (user, user, self._max_events),
                )

    def recent(self, user: str, n: int) -> list[str]:
        """The last ``n`` items of ``user``, oldest first (empty for an unknown user)."""
        _check_text(user, "user")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    "SELECT item FROM events WHERE user = ? ORDER BY id DESC LIMIT ?", (user, n)
                )
                .fetchall()
            )
        return [item for (item,) in reversed(rows)]

    def close(self) -> None:
        """Closes the database; safe to call twice."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise ValueError("the HistoryStore is closed")
        return self._db


def _check_text(value: object, name: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty str, got {value!r}")
