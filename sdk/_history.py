"""Per-user event history on the device, and the queue of events to upload, in SQLite."""

from __future__ import annotations

import contextlib
import datetime
import math
import numbers
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pocketrec.errors import HistoryStoreError
from pocketrec.sdk._ids import item_id, user_id

BUSY_TIMEOUT_S = 0.25
"""How long a write waits for another process's lock before `HistoryStoreError`.

Writers on a WAL database hold the lock only for the few microseconds of a commit, so a
quarter second absorbs every honest contention, and a file held by a stuck or foreign
writer fails fast instead of freezing the app (SQLite's Python default is 5 s).
"""

TIMESTAMP_END = 253_402_300_800.0
"""Timestamps are seconds since the epoch in ``[0, TIMESTAMP_END)``: years 1970 to 9999.

Anything larger is most likely milliseconds or nanoseconds, which would silently sort as
the far future.
"""

# No AUTOINCREMENT: its extra sqlite_sequence write per insert buys nothing, since a new id
# is max(id) + 1, larger than every kept id, which is all insertion order needs.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    user TEXT NOT NULL,
    item TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user_id ON events (user, id);
CREATE TABLE IF NOT EXISTS upload_queue (
    seq INTEGER PRIMARY KEY,
    event_id BLOB NOT NULL UNIQUE,
    user TEXT NOT NULL,
    upload_user TEXT NOT NULL,
    item TEXT NOT NULL,
    ts REAL NOT NULL,
    model_version INTEGER NOT NULL,
    catalog_version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS device_secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""
_QUEUE = (
    "INSERT INTO upload_queue (event_id, user, upload_user, item, ts, model_version, "
    "catalog_version) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# Drops the oldest queued events beyond the cap (an app that queues and never uploads).
_TRIM_QUEUE = (
    "DELETE FROM upload_queue WHERE seq <= ("
    "SELECT seq FROM upload_queue ORDER BY seq DESC LIMIT 1 OFFSET ?)"
)
_QUEUED = (
    "SELECT event_id, upload_user, item, ts, model_version, catalog_version FROM upload_queue "
    "ORDER BY seq LIMIT ?"
)
_COLUMNS = {"id", "user", "item", "ts"}
_INSERT = "INSERT INTO events (user, item, ts) VALUES (?, ?, ?)"
# Walks the (user, id) index backwards: one seek, then n rows; no sort.
_RECENT = "SELECT item FROM events WHERE user = ? ORDER BY id DESC LIMIT ?"
_TRIM = (
    "DELETE FROM events WHERE user = ? AND id <= ("
    "SELECT id FROM events WHERE user = ? ORDER BY id DESC LIMIT 1 OFFSET ?)"
)


@dataclass(frozen=True)
class Upload:
    """How an appended event goes into the upload queue.

    Attributes:
        user: the user as uploaded (a pseudonym, or the app's own id).
        model_version, catalog_version: the bundle that served when it happened.
    """

    user: str
    model_version: int = 0
    catalog_version: int = 0


@dataclass(frozen=True)
class QueuedEvent:
    """An event waiting in the upload queue (what `UploadEvents` sends)."""

    event_id: bytes
    user: str
    item: str
    timestamp: float
    model_version: int
    catalog_version: int


class HistoryStore:
    """Events ``(user, item, ts)`` per user, ordered by insertion; the last ``max_events`` count.

    Order is insertion order (not ``ts``): the device appends events as they happen. Ids
    follow `pocketrec.sdk._ids` (``str``, or ``int`` converted with ``str()``). Safe to
    share between threads (one connection behind a lock).

    Durability: a file store is in WAL mode with ``synchronous=NORMAL``. When `append`
    returns, its event is committed to the write-ahead log in the OS page cache, so it
    survives the app being killed (``kill -9``, a crash, the OOM killer) and is there on
    reopen. The log is fsynced only at checkpoints (every 1000 log pages, a few hundred
    events), so an OS crash or power loss can lose the events appended since the last
    checkpoint, but never corrupts the file. ``":memory:"`` keeps nothing after `close`.

    Trimming: older events are deleted in batches rather than on every append: on a user's
    first append after opening, every ``max_events // 8`` (at least 16) appends of a user,
    and at `close`. So an open store (or one whose app was killed) holds at most
    ``max_events`` plus that batch per user, a closed one ``max_events``; `recent` and `seen`
    never look further back than ``max_events``.

    Upload queue: an event appended with an `Upload` also goes, in the same transaction,
    into a queue of its own that trimming never touches, with a random 16-byte event id.
    It stays there until `acknowledge` (after the server stored it), so nothing is lost to
    a restart or a kill -9, and a retried upload carries the same ids, which the server
    stores once.
    """

    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        max_events: int = 1000,
        max_queued_events: int = 100_000,
    ) -> None:
        """Opens (creating if needed) the history database at ``path``, or ``":memory:"``.

        Args:
            max_events: events per user that count; older ones are deleted.
            max_queued_events: most events waiting for upload; when an app queues events
                and never uploads, the oldest beyond this are dropped (checked with the
                amortized trimming, so the queue may briefly hold a batch more).

        Raises:
            ValueError: if ``max_events`` or ``max_queued_events`` is not an int >= 1.
            HistoryStoreError: if ``path`` cannot be opened or created, is not an SQLite
                history database or is corrupt, or is locked by another process.
        """
        if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 1:
            raise ValueError(f"max_events must be an int >= 1, got {max_events!r}")
        if (
            isinstance(max_queued_events, bool)
            or not isinstance(max_queued_events, int)
            or max_queued_events < 1
        ):
            raise ValueError(f"max_queued_events must be an int >= 1, got {max_queued_events!r}")
        self._path = str(path)
        self._max_events = max_events
        self._max_queued = max_queued_events
        self._trim_every = max(16, max_events // 8)
        # Appends per user since that user was last trimmed, in this process.
        self._untrimmed: dict[str, int] = {}
        self._lock = threading.Lock()
        try:
            db = sqlite3.connect(
                self._path,
                timeout=BUSY_TIMEOUT_S,
                check_same_thread=False,  # shared by all threads, serialized by the lock
                isolation_level=None,  # autocommit: one INSERT is one transaction
            )
        except sqlite3.Error as exc:
            raise _store_error(exc, self._path, "open") from exc
        try:
            _prepare(db, self._path)
        except BaseException as exc:
            db.close()
            if isinstance(exc, sqlite3.Error):
                raise _store_error(exc, self._path, "open") from exc
            raise
        self._db: sqlite3.Connection | None = db

    @property
    def max_events(self) -> int:
        """Most events per user that `recent` and `seen` look at; older ones are deleted."""
        return self._max_events

    def append(
        self,
        user: str | int,
        item: str | int,
        ts: float | None = None,
        *,
        upload: Upload | None = None,
    ) -> None:
        """Records that ``user`` interacted with ``item`` at ``ts`` (default: now).

        Committed when it returns (see the class docstring for what survives what). A
        failed append stores nothing and leaves the store usable.

        Args:
            user: the user id.
            item: the item id.
            ts: seconds since the epoch (an int or float in ``[0, TIMESTAMP_END)``); for a
                `datetime.datetime`, pass ``dt.timestamp()``.
            upload: also queue the event for upload, as this says.

        Raises:
            TypeError: if an id is neither ``str`` nor ``int``, or ``ts`` is not a number.
            ValueError: if an id is empty or holds a lone surrogate, or ``ts`` is NaN,
                infinite or out of range.
            HistoryStoreError: if the file is locked by another process, corrupt, full or
                not writable, or the store is closed.
        """
        user = user_id(user)
        item = item_id(item)
        stamp = time.time() if ts is None else _timestamp(ts)
        queued = None
        if upload is not None:
            queued = (
                _event_id(),
                user,
                user_id(upload.user),
                item,
                stamp,
                _version(upload.model_version),
                _version(upload.catalog_version),
            )
        with self._lock:
            db = self._connection()
            untrimmed = self._untrimmed.get(user, self._trim_every)
            trim = untrimmed >= self._trim_every
            try:
                if not trim and queued is None:
                    db.execute(_INSERT, (user, item, stamp))
                else:
                    db.execute("BEGIN IMMEDIATE")
                    db.execute(_INSERT, (user, item, stamp))
                    if queued is not None:
                        db.execute(_QUEUE, queued)
                    if trim:
                        db.execute(_TRIM, (user, user, self._max_events))
                        db.execute(_TRIM_QUEUE, (self._max_queued,))
                        untrimmed = 0
                    db.execute("COMMIT")
            except BaseException as exc:
                _roll_back(db)
                if isinstance(exc, sqlite3.Error):
                    raise _store_error(exc, self._path, "append to") from exc
                raise
            self._untrimmed[user] = untrimmed + 1

    def recent(self, user: str | int, n: int) -> list[str]:
        """The last ``min(n, max_events)`` items of ``user``, oldest first (``[]`` if unknown).

        Raises:
            TypeError: if ``user`` is neither ``str`` nor ``int``.
            ValueError: if ``user`` is empty or holds a lone surrogate, or ``n`` is not an
                int >= 0.
            HistoryStoreError: if the file cannot be read or the store is closed.
        """
        user = user_id(user)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        rows = self._read(_RECENT, (user, min(n, self._max_events)))
        return [item for (item,) in reversed(rows)]

    def seen(self, user: str | int) -> set[str]:
        """Every item among the last ``max_events`` events of ``user`` (empty if unknown).

        Raises:
            TypeError: if ``user`` is neither ``str`` nor ``int``.
            ValueError: if ``user`` is empty or holds a lone surrogate.
            HistoryStoreError: if the file cannot be read or the store is closed.
        """
        return {item for (item,) in self._read(_RECENT, (user_id(user), self._max_events))}

    def queued(self, limit: int = 1000) -> list[QueuedEvent]:
        """The oldest ``limit`` events waiting for upload, oldest first.

        Raises:
            ValueError: if ``limit`` is not an int >= 1.
            HistoryStoreError: if the file cannot be read or the store is closed.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an int >= 1, got {limit!r}")
        return [QueuedEvent(*row) for row in self._read(_QUEUED, (limit,))]

    def queue_length(self) -> int:
        """How many events wait for upload."""
        return int(self._read("SELECT COUNT(*) FROM upload_queue", ())[0][0])

    def acknowledge(self, event_ids: Iterable[bytes]) -> int:
        """Removes uploaded events (the server acknowledged them) from the queue.

        Returns:
            How many were removed (ids not queued are ignored: acknowledged before).

        Raises:
            HistoryStoreError: if the file cannot be written or the store is closed.
        """
        ids = [(bytes(event_id),) for event_id in event_ids]
        with self._lock:
            db = self._connection()
            try:
                db.execute("BEGIN IMMEDIATE")
                before = db.total_changes
                db.executemany("DELETE FROM upload_queue WHERE event_id = ?", ids)
                removed = db.total_changes - before
                db.execute("COMMIT")
            except BaseException as exc:
                _roll_back(db)
                if isinstance(exc, sqlite3.Error):
                    raise _store_error(exc, self._path, "write") from exc
                raise
        return removed

    def secret(self, name: str, size: int = 32) -> bytes:
        """A random secret of ``size`` bytes kept in this store under ``name``, made on
        first use (e.g. the key of the device's user pseudonyms; it never leaves the file).

        Raises:
            HistoryStoreError: if the file cannot be read or written.
        """
        with self._lock:
            db = self._connection()
            try:
                row = db.execute(
                    "SELECT value FROM device_secrets WHERE name = ?", (name,)
                ).fetchone()
                if row is None:
                    db.execute(
                        "INSERT OR IGNORE INTO device_secrets (name, value) VALUES (?, ?)",
                        (name, secrets.token_bytes(size)),
                    )
                    row = db.execute(
                        "SELECT value FROM device_secrets WHERE name = ?", (name,)
                    ).fetchone()
            except sqlite3.Error as exc:
                raise _store_error(exc, self._path, "read") from exc
        return bytes(row[0])

    def forget(self, user: str | int) -> int:
        """Deletes every stored event of ``user``, and its queued uploads; returns how many
        history events it deleted.

        Raises:
            TypeError: if ``user`` is neither ``str`` nor ``int``.
            ValueError: if ``user`` is empty or holds a lone surrogate.
            HistoryStoreError: if the file is locked by another process, cannot be
                written, or the store is closed.
        """
        user = user_id(user)
        with self._lock:
            db = self._connection()
            try:
                db.execute("BEGIN IMMEDIATE")
                deleted = db.execute("DELETE FROM events WHERE user = ?", (user,)).rowcount
                db.execute("DELETE FROM upload_queue WHERE user = ?", (user,))
                db.execute("COMMIT")
            except BaseException as exc:
                _roll_back(db)
                if isinstance(exc, sqlite3.Error):
                    raise _store_error(exc, self._path, "delete from") from exc
                raise
            self._untrimmed.pop(user, None)
        return deleted

    def close(self) -> None:
        """Trims the users appended since opening to ``max_events``, then closes; safe to
        call twice.

        If the trim fails (the file is locked, say), the store still closes and nothing is
        lost: the extra events stay hidden and the next first append of each user trims it.
        """
        with self._lock:
            db, self._db = self._db, None
            if db is None:
                return
            try:
                db.execute("BEGIN IMMEDIATE")
                for user, untrimmed in self._untrimmed.items():
                    if untrimmed > 1:  # 1: its last append trimmed it
                        db.execute(_TRIM, (user, user, self._max_events))
                db.execute("COMMIT")
            except sqlite3.Error:
                _roll_back(db)
            finally:
                db.close()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _read(self, sql: str, parameters: tuple[object, ...]) -> list[tuple]:
        with self._lock:
            db = self._connection()
            try:
                return db.execute(sql, parameters).fetchall()
            except sqlite3.Error as exc:
                raise _store_error(exc, self._path, "read") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise HistoryStoreError(
                f"the history store {self._path} is closed; open a new HistoryStore"
            )
        return self._db


def _prepare(db: sqlite3.Connection, path: str) -> None:
    """Checks that ``db`` is a history (or empty), then sets it up for fast, safe appends."""
    # Checked before anything is written, so another app's database stays untouched.
    columns = {row[1] for row in db.execute("PRAGMA table_info(events)")}
    if columns and not columns >= _COLUMNS:
        raise HistoryStoreError(
            f"{path} is an SQLite database but not a pocketrec history: its table 'events' "
            f"has columns {sorted(columns)}, expected {sorted(_COLUMNS)}; pass another "
            "history path"
        )
    if path != ":memory:":
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)


def _timestamp(ts: object) -> float:
    if isinstance(ts, datetime.datetime):
        raise TypeError(
            f"ts must be seconds since the epoch, got datetime {ts!r}; pass ts.timestamp() "
            "(a naive datetime is read as local time)"
        )
    if isinstance(ts, bool) or not isinstance(ts, numbers.Real):
        raise TypeError(
            f"ts must be seconds since the epoch (an int or float), got {type(ts).__name__} {ts!r}"
        )
    stamp = float(ts)
    if not 0.0 <= stamp < TIMESTAMP_END:  # also false for NaN
        hint = "; milliseconds? divide by 1000" if math.isfinite(stamp) and stamp > 0 else ""
        raise ValueError(
            f"ts must be seconds since the epoch in [0, {TIMESTAMP_END:.0f}) (years 1970 to "
            f"9999), got {ts!r}{hint}"
        )
    return stamp


def _event_id() -> bytes:
    """16 bytes unique per event, time-ordered like a UUID version 7 (48-bit Unix ms, the
    version, then random bits): the queue's unique index grows at its end, not at random."""
    raw = bytearray((time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10))
    raw[6] = 0x70 | raw[6] & 0x0F  # version 7
    raw[8] = 0x80 | raw[8] & 0x3F  # RFC 9562 variant
    return bytes(raw)


def _version(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"versions are ints >= 0, got {value!r}")
    return value


def _roll_back(db: sqlite3.Connection) -> None:
    """Ends a failed transaction so the next call starts clean; a rollback that fails too
    leaves nothing more to undo (SQLite then rolls back on its own)."""
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


_PROBLEMS = {
    sqlite3.SQLITE_BUSY: (
        "it is locked by another process (waited {timeout} s)",
        "close the other program or store that writes it, or give each its own history path",
    ),
    sqlite3.SQLITE_CORRUPT: (
        "it is corrupt",
        "move the file aside (or delete it, losing the history) and open the store again",
    ),
    sqlite3.SQLITE_FULL: ("the disk is full", "free some space and retry"),
    sqlite3.SQLITE_READONLY: ("it is read-only", "pass a writable history path"),
    sqlite3.SQLITE_CANTOPEN: (
        "the file cannot be opened or created",
        "pass a path in an existing, writable folder",
    ),
    sqlite3.SQLITE_PERM: ("access is denied", "pass a writable history path"),
    sqlite3.SQLITE_IOERR: ("the disk failed to read or write", "check the storage and retry"),
}
_PROBLEMS[sqlite3.SQLITE_LOCKED] = _PROBLEMS[sqlite3.SQLITE_BUSY]
_PROBLEMS[sqlite3.SQLITE_NOTADB] = (
    "it is not an SQLite database, or is corrupt",
    _PROBLEMS[sqlite3.SQLITE_CORRUPT][1],
)


def _store_error(exc: sqlite3.Error, path: str, doing: str) -> HistoryStoreError:
    """The `HistoryStoreError` for ``exc``, naming the file, the problem and the fix."""
    primary_code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    problem, fix = _PROBLEMS.get(
        primary_code, ("SQLite failed", "check the file, or move it aside and start over")
    )
    return HistoryStoreError(
        f"cannot {doing} the history database {path}: "
        f"{problem.format(timeout=BUSY_TIMEOUT_S)} ({exc}); {fix}"
    )
