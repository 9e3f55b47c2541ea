"""Where the sync server keeps what it serves: model and catalog versions, rows, devices.

`SyncStore` is the one interface the service and the publisher use; `SQLiteStore` is the
embedded implementation (one file, WAL), and a PostgreSQL store can implement the same
protocol later. Versions are immutable and only move forward, per family; a publication
(a new catalog version, with a new model version or not) is one transaction.

Rows are kept as row *versions*: a row is added in one catalog version and removed in a
later one (replaced or deleted), or still live. The rows of any catalog version, and the
changes between two catalog versions of one model, are read from them without storing a
copy of the table per version.

Beside the versions: each catalog version's rollout fraction, per-device pins and the
versions each device last said it runs, and the interaction events devices upload (kept
until deleted: nothing else about a device or its users is stored).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from pocketrec.errors import PocketrecError
from pocketrec.sdk.catalog import Rows, SignedRecord
from pocketrec.server.rollout import device_bucket

# 1: versions, rows and tokens (sync part 1a). 2: rollout fractions, pins, what devices
# run, events. 3: a model version's search tower. An older file gains what it lacks when
# opened.
SCHEMA_VERSION = 3
# The files of a model version (sync.proto's ModelFile).
ModelPart = Literal["user_tower", "search_tower"]
# Per part, the models columns of its digest and of its bytes.
_PART_COLUMNS: dict[str, tuple[str, str]] = {
    "user_tower": ("sha256", "model"),
    "search_tower": ("search_tower_sha256", "search_tower"),
}


class StoreError(PocketrecError):
    """The store cannot be read or written as asked (not a store, a version conflict)."""


@dataclass(frozen=True)
class TableForm:
    """How a catalog's item table is stored: its rows are only comparable within one form."""

    dtype: str
    dim: int
    columns: int
    scale_dtype: str | None

    @classmethod
    def of(cls, rows: Rows) -> TableForm:
        scale_dtype = None if rows.scales is None else np.dtype(rows.scales.dtype).name
        return cls(rows.dtype, rows.dim, int(rows.values.shape[1]), scale_dtype)

    def empty_rows(self) -> Rows:
        return Rows.empty(self.dtype, self.dim, self.scale_dtype)


@dataclass(frozen=True)
class ModelVersion:
    """A published model: its version, the user tower's digest and size, the signed model
    record, and the search tower's digest and size when the model has one."""

    family: str
    model_version: int
    sha256: str
    size_bytes: int
    record: SignedRecord
    search_tower_sha256: str | None = None
    search_tower_size_bytes: int = 0

    def size_of(self, part: ModelPart) -> int:
        """The bytes of ``part`` (0 for a search tower the model lacks).

        Raises:
            ValueError: for a part that is not a `ModelPart`.
        """
        _part_columns(part)
        return self.search_tower_size_bytes if part == "search_tower" else self.size_bytes


@dataclass(frozen=True)
class CatalogVersion:
    """A published catalog: the model version it belongs to, its table form and record."""

    family: str
    catalog_version: int
    model_version: int
    item_count: int
    form: TableForm
    record: SignedRecord
    fraction: float = 1.0
    """The share of the family's devices it is served to (1.0: all; see `device_bucket`)."""


@dataclass(frozen=True)
class Publication:
    """What one publish adds, committed together or not at all.

    Attributes:
        catalog: the new catalog version.
        upserts: its new or changed rows (all rows when it starts a new model version).
        deleted: ids of the previous catalog version that it no longer holds.
        model: the new model version it belongs to, or None for the latest model.
        model_bytes: that model's user tower ``.tflite`` bytes (with ``model`` only).
        search_tower: that model's search tower ``.tflite`` bytes, when it has one.
    """

    catalog: CatalogVersion
    upserts: Rows
    deleted: tuple[str, ...] = ()
    model: ModelVersion | None = None
    model_bytes: bytes = b""
    search_tower: bytes | None = None


@dataclass(frozen=True)
class Device:
    """A device allowed to sync one family. Only the sha256 of its token is stored."""

    family: str
    name: str
    created_at: str
    revoked_at: str | None = None


@dataclass(frozen=True)
class DeviceStatus:
    """What the store knows of one device of a family, for an operator.

    Attributes:
        revoked: whether every token of the device is revoked.
        running_model_version, running_catalog_version: what the device last said it runs
            (0: nothing, or it never asked).
        last_seen_at: ISO-8601 UTC time of its last GetManifest or WatchManifest, or None.
        pinned_catalog_version: the version an operator pinned it to, or None.
    """

    family: str
    name: str
    revoked: bool
    running_model_version: int
    running_catalog_version: int
    last_seen_at: str | None
    pinned_catalog_version: int | None

    @property
    def bucket(self) -> float:
        """Its place in staged rollouts: served a version when below that version's fraction."""
        return device_bucket(self.family, self.name)


@dataclass(frozen=True)
class Event:
    """One interaction a device uploaded (sync.proto's ``Event``)."""

    event_id: bytes
    user: str
    item_id: str
    timestamp_s: float
    model_version: int = 0
    catalog_version: int = 0


@dataclass(frozen=True)
class StoredEvent:
    """An event as stored: which device uploaded it, and when it arrived (ISO-8601 UTC)."""

    family: str
    device: str
    received_at: str
    event: Event


class SyncStore(Protocol):
    """The storage the sync server needs; implementations must be safe across threads."""

    def latest_catalog(
        self, family: str, model_version: int | None = None
    ) -> CatalogVersion | None:
        """The family's latest catalog version (of ``model_version`` if given), or None."""

    def catalog(self, family: str, catalog_version: int) -> CatalogVersion | None: ...

    def model(self, family: str, model_version: int) -> ModelVersion | None: ...

    def model_by_sha256(
        self, family: str, sha256: str, part: ModelPart = "user_tower"
    ) -> ModelVersion | None:
        """The latest model version of the family whose ``part`` has this hex digest."""

    def read_model(
        self,
        family: str,
        model_version: int,
        offset: int,
        size: int,
        part: ModelPart = "user_tower",
    ) -> bytes:
        """Up to ``size`` bytes of the model's ``part`` from ``offset`` on (b"" for a
        search tower the model lacks)."""

    def rows(self, family: str, catalog_version: int) -> Rows:
        """Every row of a catalog version, in the sync's id order."""

    def changes(self, family: str, base: int, target: int) -> tuple[Rows, list[str]]:
        """Rows added or replaced after ``base`` up to ``target`` (same model), and the
        ids deleted meanwhile, both in id order."""

    def commit(self, publication: Publication) -> None:
        """Adds a publication in one transaction.

        Raises:
            StoreError: if its versions are not the next ones (published meanwhile).
        """

    def add_device(self, device: Device, token_sha256: str) -> None: ...

    def device(self, token_sha256: str) -> Device | None: ...

    def revoke_devices(self, family: str, name: str) -> int:
        """Revokes every token of the device; how many were still valid."""

    # -- rollout and pins

    def rollout(self, family: str) -> list[tuple[int, float]]:
        """(catalog version, fraction) from the newest version with fraction 1 up, newest
        first: the versions a device without a pin may be served."""

    def catalog_fractions(self, family: str) -> list[tuple[int, float]]:
        """(catalog version, fraction) of every catalog version of the family, oldest first."""

    def set_fraction(self, family: str, catalog_version: int, fraction: float) -> None:
        """Raises:
        StoreError: if the family has no such catalog version."""

    def pinned(self, family: str, device: str) -> int | None:
        """The catalog version ``device`` is pinned to, or None."""

    def set_pin(self, family: str, device: str, catalog_version: int | None) -> None:
        """Pins ``device`` to a catalog version, or removes its pin (None)."""

    def record_seen(
        self, family: str, device: str, seen_at: str, running: tuple[int, int] | None = None
    ) -> None:
        """Records that ``device`` called at ``seen_at`` and, unless None, the (model,
        catalog) versions it runs."""

    def device_statuses(self, family: str) -> list[DeviceStatus]:
        """Every device with a token for the family (revoked ones too), by name."""

    def change_counters(self) -> dict[str, int]:
        """Per family, a number that changes whenever the versions its devices should run
        may change (a publish, a rollout fraction, a pin), whoever wrote the change: the
        server polls it to wake WatchManifest streams."""

    # -- events

    def add_events(
        self, family: str, device: str, events: Sequence[Event], received_at: str
    ) -> int:
        """Stores the events in one transaction; an event id the family already holds is
        kept as it is. How many were stored for the first time."""

    def events(
        self, family: str, *, user: str | None = None, device: str | None = None
    ) -> Iterator[StoredEvent]:
        """The family's events (of ``user``, uploaded by ``device``, when given), ordered by
        timestamp then event id."""

    def delete_events(self, family: str, user: str, device: str | None = None) -> int:
        """Deletes the events of ``user`` (uploaded by ``device`` only, when given); how
        many."""

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    family TEXT NOT NULL,
    model_version INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    model BLOB NOT NULL,
    record BLOB NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (family, model_version)
);
CREATE INDEX IF NOT EXISTS models_by_sha256 ON models (family, sha256);
CREATE TABLE IF NOT EXISTS catalogs (
    family TEXT NOT NULL,
    catalog_version INTEGER NOT NULL,
    model_version INTEGER NOT NULL,
    item_count INTEGER NOT NULL,
    dtype TEXT NOT NULL,
    dim INTEGER NOT NULL,
    columns INTEGER NOT NULL,
    scale_dtype TEXT,
    record BLOB NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (family, catalog_version),
    FOREIGN KEY (family, model_version) REFERENCES models (family, model_version)
);
CREATE TABLE IF NOT EXISTS item_rows (
    family TEXT NOT NULL,
    model_version INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    added_in INTEGER NOT NULL,
    removed_in INTEGER,
    vector BLOB NOT NULL,
    scale BLOB,
    metadata TEXT NOT NULL,
    FOREIGN KEY (family, model_version) REFERENCES models (family, model_version)
);
CREATE INDEX IF NOT EXISTS item_rows_by_id ON item_rows (family, model_version, item_id);
CREATE INDEX IF NOT EXISTS item_rows_by_added ON item_rows (family, model_version, added_in);
CREATE UNIQUE INDEX IF NOT EXISTS item_rows_live
    ON item_rows (family, model_version, item_id) WHERE removed_in IS NULL;
CREATE TABLE IF NOT EXISTS devices (
    token_sha256 TEXT PRIMARY KEY,
    family TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
"""
# Schema 2, one statement each (trigger bodies hold semicolons).
_SCHEMA_2 = (
    """CREATE TABLE IF NOT EXISTS device_status (
    family TEXT NOT NULL,
    name TEXT NOT NULL,
    running_model_version INTEGER NOT NULL DEFAULT 0,
    running_catalog_version INTEGER NOT NULL DEFAULT 0,
    last_seen_at TEXT,
    PRIMARY KEY (family, name)
)""",
    """CREATE TABLE IF NOT EXISTS pins (
    family TEXT NOT NULL,
    name TEXT NOT NULL,
    catalog_version INTEGER NOT NULL,
    PRIMARY KEY (family, name),
    FOREIGN KEY (family, catalog_version) REFERENCES catalogs (family, catalog_version)
)""",
    """CREATE TABLE IF NOT EXISTS events (
    family TEXT NOT NULL,
    event_id BLOB NOT NULL,
    device TEXT NOT NULL,
    user TEXT NOT NULL,
    item_id TEXT NOT NULL,
    timestamp_s REAL NOT NULL,
    model_version INTEGER NOT NULL,
    catalog_version INTEGER NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (family, event_id)
)""",
    "CREATE INDEX IF NOT EXISTS events_by_time ON events (family, timestamp_s, event_id)",
    "CREATE INDEX IF NOT EXISTS events_by_user ON events (family, user, device)",
    # One counter per family, bumped by the database itself on whatever changes the
    # versions devices should run, so a publish from another process is noticed too.
    "CREATE TABLE IF NOT EXISTS changes (family TEXT PRIMARY KEY, counter INTEGER NOT NULL)",
    *(
        f"""CREATE TRIGGER IF NOT EXISTS {table}_{action.lower()}_changes
    AFTER {action} ON {table} BEGIN
    INSERT INTO changes (family, counter) VALUES ({row}.family, 1)
    ON CONFLICT (family) DO UPDATE SET counter = counter + 1;
END"""
        for table, action, row in (
            ("catalogs", "INSERT", "NEW"),
            ("catalogs", "UPDATE", "NEW"),
            ("pins", "INSERT", "NEW"),
            ("pins", "UPDATE", "NEW"),
            ("pins", "DELETE", "OLD"),
        )
    ),
)
_CATALOG_COLUMNS = (
    "family, catalog_version, model_version, item_count, dtype, dim, columns, scale_dtype, "
    "record, signature, fraction"
)
_EVENT_COLUMNS = (
    "family, device, received_at, event_id, user, item_id, timestamp_s, model_version, "
    "catalog_version"
)
_MODEL_COLUMNS = (
    "family, model_version, sha256, size_bytes, record, signature, search_tower_sha256, "
    "search_tower_size_bytes"
)
# A row version is live in catalog version :c when it was added by :c and not removed by it.
_LIVE_AT = "added_in <= :{0} AND (removed_in IS NULL OR removed_in > :{0})"


class SQLiteStore:
    """`SyncStore` in one SQLite file in WAL mode: one connection per thread.

    Readers never wait for a publish (WAL); publishes are serialised by SQLite's write
    lock. Safe for the gRPC server's thread pool.
    """

    def __init__(self, path: str | Path) -> None:
        """Opens the store at ``path``, creating it (and its tables) when missing.

        Raises:
            StoreError: if ``path`` is not a pocketrec sync store.
        """
        self._path = Path(path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            with self._write() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self._path} has store schema {version}; this pocketrec reads "
                        f"schema {SCHEMA_VERSION}. Upgrade pocketrec"
                    )
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                _migrate_to_2(db)
                _migrate_to_3(db)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StoreError(
                f"{self._path} is not a pocketrec sync store ({exc}); pass another --store"
            ) from exc

    @property
    def path(self) -> Path:
        return self._path

    # -- connections and transactions ------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            return db
        with self._lock:
            if self._closed:
                raise StoreError(f"the store {self._path} is closed")
            db = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._connections.append(db)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        self._local.db = db
        return db

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One consistent snapshot for several statements."""
        db = self._connection()
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("COMMIT")

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        """Closes every thread's connection; the store cannot be used afterwards."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for db in connections:
            db.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- versions ----------------------------------------------------------------------------

    def latest_catalog(
        self, family: str, model_version: int | None = None
    ) -> CatalogVersion | None:
        query = f"SELECT {_CATALOG_COLUMNS} FROM catalogs WHERE family = ?"
        arguments: list[Any] = [family]
        if model_version is not None:
            query += " AND model_version = ?"
            arguments.append(model_version)
        row = (
            self._connection()
            .execute(query + " ORDER BY catalog_version DESC LIMIT 1", arguments)
            .fetchone()
        )
        return None if row is None else _catalog(row)

    def catalog(self, family: str, catalog_version: int) -> CatalogVersion | None:
        row = (
            self._connection()
            .execute(
                f"SELECT {_CATALOG_COLUMNS} FROM catalogs WHERE family = ? AND catalog_version = ?",
                (family, catalog_version),
            )
            .fetchone()
        )
        return None if row is None else _catalog(row)

    def model(self, family: str, model_version: int) -> ModelVersion | None:
        row = (
            self._connection()
            .execute(
                f"SELECT {_MODEL_COLUMNS} FROM models WHERE family = ? AND model_version = ?",
                (family, model_version),
            )
            .fetchone()
        )
        return None if row is None else _model(row)

    def model_by_sha256(
        self, family: str, sha256: str, part: ModelPart = "user_tower"
    ) -> ModelVersion | None:
        digest_column = _part_columns(part)[0]
        row = (
            self._connection()
            .execute(
                f"SELECT {_MODEL_COLUMNS} FROM models WHERE family = ? AND {digest_column} = ? "
                "ORDER BY model_version DESC LIMIT 1",
                (family, sha256),
            )
            .fetchone()
        )
        return None if row is None else _model(row)

    def read_model(
        self,
        family: str,
        model_version: int,
        offset: int,
        size: int,
        part: ModelPart = "user_tower",
    ) -> bytes:
        if offset < 0 or size < 0:
            raise ValueError(f"offset and size must be >= 0, got {offset} and {size}")
        bytes_column = _part_columns(part)[1]
        row = (
            self._connection()
            .execute(
                # substr counts from 1 on blobs.
                f"SELECT substr({bytes_column}, ?, ?) FROM models "
                "WHERE family = ? AND model_version = ?",
                (offset + 1, size, family, model_version),
            )
            .fetchone()
        )
        if row is None:
            raise StoreError(f"family {family!r} has no model version {model_version}")
        return bytes(row[0] or b"")

    # -- rows --------------------------------------------------------------------------------

    def rows(self, family: str, catalog_version: int) -> Rows:
        with self._read() as db:
            catalog = self._required_catalog(db, family, catalog_version)
            records = db.execute(
                "SELECT item_id, vector, scale, metadata FROM item_rows "
                "WHERE family = :family AND model_version = :model AND "
                + _LIVE_AT.format("version")
                + " ORDER BY item_id",
                {"family": family, "model": catalog.model_version, "version": catalog_version},
            ).fetchall()
        return _rows(catalog.form, records)

    def changes(self, family: str, base: int, target: int) -> tuple[Rows, list[str]]:
        with self._read() as db:
            before = self._required_catalog(db, family, base)
            after = self._required_catalog(db, family, target)
            if before.model_version != after.model_version or base > target:
                raise ValueError(
                    f"changes run forward within one model version; catalog versions {base} "
                    f"(model {before.model_version}) and {target} (model {after.model_version})"
                    " are not"
                )
            names = {"family": family, "model": after.model_version, "base": base, "target": target}
            upserts = db.execute(
                "SELECT item_id, vector, scale, metadata FROM item_rows "
                "WHERE family = :family AND model_version = :model AND added_in > :base AND "
                + _LIVE_AT.format("target")
                + " ORDER BY item_id",
                names,
            ).fetchall()
            # Rows live at base and removed by target were deleted or replaced; a replaced
            # one has a row added after base that is live at target: one of the upserts.
            removed = db.execute(
                "SELECT item_id FROM item_rows WHERE family = :family AND model_version = :model "
                "AND added_in <= :base AND removed_in > :base AND removed_in <= :target",
                names,
            ).fetchall()
        kept = {row[0] for row in upserts}
        deleted = sorted(item_id for (item_id,) in removed if item_id not in kept)
        return _rows(after.form, upserts), deleted

    def _required_catalog(
        self, db: sqlite3.Connection, family: str, catalog_version: int
    ) -> CatalogVersion:
        row = db.execute(
            f"SELECT {_CATALOG_COLUMNS} FROM catalogs WHERE family = ? AND catalog_version = ?",
            (family, catalog_version),
        ).fetchone()
        if row is None:
            raise StoreError(f"family {family!r} has no catalog version {catalog_version}")
        return _catalog(row)

    # -- publishing --------------------------------------------------------------------------

    def commit(self, publication: Publication) -> None:
        catalog = publication.catalog
        family, version = catalog.family, catalog.catalog_version
        with self._write() as db:
            latest = db.execute(
                "SELECT max(catalog_version), max(model_version) FROM catalogs WHERE family = ?",
                (family,),
            ).fetchone()
            latest_catalog, latest_model = latest[0] or 0, latest[1] or 0
            expected_model = latest_model + 1 if publication.model else latest_model
            if version != latest_catalog + 1 or catalog.model_version != expected_model:
                raise StoreError(
                    f"family {family!r} is at catalog version {latest_catalog} of model "
                    f"{latest_model}; catalog version {version} of model "
                    f"{catalog.model_version} does not follow it (published meanwhile?). "
                    "Publish again"
                )
            if publication.model is not None:
                model = publication.model
                tower = publication.search_tower
                tower_sha256 = None if tower is None else hashlib.sha256(tower).hexdigest()
                if (tower_sha256, len(tower or b"")) != (
                    model.search_tower_sha256,
                    model.search_tower_size_bytes,
                ):
                    raise ValueError(
                        f"model version {model.model_version} names search tower "
                        f"{model.search_tower_sha256} of {model.search_tower_size_bytes} bytes; "
                        f"the publication holds {tower_sha256} of {len(tower or b'')} bytes"
                    )
                db.execute(
                    f"INSERT INTO models ({_MODEL_COLUMNS}, model, search_tower) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        family,
                        model.model_version,
                        model.sha256,
                        model.size_bytes,
                        model.record.record,
                        model.record.signature,
                        model.search_tower_sha256,
                        model.search_tower_size_bytes,
                        publication.model_bytes,
                        tower,
                    ),
                )
            form = catalog.form
            db.execute(
                f"INSERT INTO catalogs ({_CATALOG_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    family,
                    version,
                    catalog.model_version,
                    catalog.item_count,
                    form.dtype,
                    form.dim,
                    form.columns,
                    form.scale_dtype,
                    catalog.record.record,
                    catalog.record.signature,
                    checked_fraction(catalog.fraction),
                ),
            )
            upserts = publication.upserts
            if TableForm.of(upserts) != form:
                raise ValueError(
                    f"the upserted rows are stored as {TableForm.of(upserts)}, the catalog as "
                    f"{form}"
                )
            # Replaced and deleted rows end here; their row versions stay for older catalogs.
            db.executemany(
                "UPDATE item_rows SET removed_in = ? WHERE family = ? AND model_version = ? "
                "AND item_id = ? AND removed_in IS NULL",
                [
                    (version, family, catalog.model_version, item_id)
                    for item_id in (*publication.deleted, *upserts.item_ids)
                ],
            )
            db.executemany(
                "INSERT INTO item_rows (family, model_version, item_id, added_in, vector, scale, "
                "metadata) VALUES (?, ?, ?, ?, ?, ?, ?)",
                _row_records(family, catalog.model_version, version, upserts),
            )
            live = db.execute(
                "SELECT count(*) FROM item_rows WHERE family = :family AND model_version = :model "
                "AND removed_in IS NULL",
                {"family": family, "model": catalog.model_version},
            ).fetchone()[0]
            if live != catalog.item_count:
                raise ValueError(
                    f"catalog version {version} says {catalog.item_count} items; the previous "
                    f"rows with these upserts and deletions make {live}"
                )

    # -- devices -----------------------------------------------------------------------------

    def add_device(self, device: Device, token_sha256: str) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO devices (token_sha256, family, name, created_at, revoked_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (token_sha256, device.family, device.name, device.created_at, device.revoked_at),
            )

    def device(self, token_sha256: str) -> Device | None:
        row = (
            self._connection()
            .execute(
                "SELECT family, name, created_at, revoked_at FROM devices WHERE token_sha256 = ?",
                (token_sha256,),
            )
            .fetchone()
        )
        return None if row is None else Device(*row)

    def revoke_devices(self, family: str, name: str) -> int:
        with self._write() as db:
            cursor = db.execute(
                "UPDATE devices SET revoked_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now') "
                "WHERE family = ? AND name = ? AND revoked_at IS NULL",
                (family, name),
            )
            return cursor.rowcount

    # -- rollout and pins --------------------------------------------------------------------

    def rollout(self, family: str) -> list[tuple[int, float]]:
        rows = (
            self._connection()
            .execute(
                "SELECT catalog_version, fraction FROM catalogs WHERE family = :family AND "
                "catalog_version >= coalesce((SELECT max(catalog_version) FROM catalogs "
                "WHERE family = :family AND fraction >= 1.0), 0) ORDER BY catalog_version DESC",
                {"family": family},
            )
            .fetchall()
        )
        return [(version, fraction) for version, fraction in rows]

    def catalog_fractions(self, family: str) -> list[tuple[int, float]]:
        rows = (
            self._connection()
            .execute(
                "SELECT catalog_version, fraction FROM catalogs WHERE family = ? "
                "ORDER BY catalog_version",
                (family,),
            )
            .fetchall()
        )
        return [(version, fraction) for version, fraction in rows]

    def set_fraction(self, family: str, catalog_version: int, fraction: float) -> None:
        with self._write() as db:
            cursor = db.execute(
                "UPDATE catalogs SET fraction = ? WHERE family = ? AND catalog_version = ?",
                (checked_fraction(fraction), family, catalog_version),
            )
            if cursor.rowcount == 0:
                raise StoreError(f"family {family!r} has no catalog version {catalog_version}")

    def pinned(self, family: str, device: str) -> int | None:
        row = (
            self._connection()
            .execute(
                "SELECT catalog_version FROM pins WHERE family = ? AND name = ?", (family, device)
            )
            .fetchone()
        )
        return None if row is None else int(row[0])

    def set_pin(self, family: str, device: str, catalog_version: int | None) -> None:
        with self._write() as db:
            if catalog_version is None:
                db.execute("DELETE FROM pins WHERE family = ? AND name = ?", (family, device))
                return
            try:
                db.execute(
                    "INSERT INTO pins (family, name, catalog_version) VALUES (?, ?, ?) "
                    "ON CONFLICT (family, name) "
                    "DO UPDATE SET catalog_version = excluded.catalog_version",
                    (family, device, catalog_version),
                )
            except sqlite3.IntegrityError:
                raise StoreError(
                    f"family {family!r} has no catalog version {catalog_version} to pin to"
                ) from None

    def record_seen(
        self, family: str, device: str, seen_at: str, running: tuple[int, int] | None = None
    ) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO device_status (family, name, last_seen_at) VALUES (?, ?, ?) "
                "ON CONFLICT (family, name) DO UPDATE SET last_seen_at = excluded.last_seen_at",
                (family, device, seen_at),
            )
            if running is not None:
                db.execute(
                    "UPDATE device_status SET running_model_version = ?, "
                    "running_catalog_version = ? WHERE family = ? AND name = ?",
                    (*running, family, device),
                )

    def device_statuses(self, family: str) -> list[DeviceStatus]:
        rows = (
            self._connection()
            .execute(
                "SELECT d.name, min(d.revoked_at IS NOT NULL), "
                "coalesce(s.running_model_version, 0), coalesce(s.running_catalog_version, 0), "
                "s.last_seen_at, p.catalog_version FROM devices d "
                "LEFT JOIN device_status s ON s.family = d.family AND s.name = d.name "
                "LEFT JOIN pins p ON p.family = d.family AND p.name = d.name "
                "WHERE d.family = ? GROUP BY d.name ORDER BY d.name",
                (family,),
            )
            .fetchall()
        )
        return [
            DeviceStatus(family, name, bool(revoked), model, catalog, seen, pin)
            for name, revoked, model, catalog, seen, pin in rows
        ]

    def change_counters(self) -> dict[str, int]:
        rows = self._connection().execute("SELECT family, counter FROM changes").fetchall()
        return dict(rows)

    # -- events ------------------------------------------------------------------------------

    def add_events(
        self, family: str, device: str, events: Sequence[Event], received_at: str
    ) -> int:
        with self._write() as db:
            before = db.total_changes
            db.executemany(
                f"INSERT OR IGNORE INTO events ({_EVENT_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (
                        family,
                        device,
                        received_at,
                        event.event_id,
                        event.user,
                        event.item_id,
                        event.timestamp_s,
                        event.model_version,
                        event.catalog_version,
                    )
                    for event in events
                ),
            )
            return db.total_changes - before

    def events(
        self, family: str, *, user: str | None = None, device: str | None = None
    ) -> Iterator[StoredEvent]:
        query = f"SELECT {_EVENT_COLUMNS} FROM events WHERE family = ?"
        arguments: list[Any] = [family]
        for column, value in (("user", user), ("device", device)):
            if value is not None:
                query += f" AND {column} = ?"
                arguments.append(value)
        if self._closed:
            raise StoreError(f"the store {self._path} is closed")
        # A connection of its own, one snapshot: the caller may use the store meanwhile.
        with contextlib.closing(sqlite3.connect(self._path, isolation_level=None)) as db:
            db.execute("BEGIN")
            cursor = db.execute(query + " ORDER BY timestamp_s, event_id", arguments)
            while batch := cursor.fetchmany(1000):
                yield from _stored_events(batch)

    def delete_events(self, family: str, user: str, device: str | None = None) -> int:
        query, arguments = "DELETE FROM events WHERE family = ? AND user = ?", [family, user]
        if device is not None:
            query += " AND device = ?"
            arguments.append(device)
        with self._write() as db:
            return db.execute(query, arguments).rowcount


def _migrate_to_2(db: sqlite3.Connection) -> None:
    """Adds what schema 2 has to a schema 1 (or new) store; a no-op on schema 2."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(catalogs)")}
    if "fraction" not in columns:
        db.execute("ALTER TABLE catalogs ADD COLUMN fraction REAL NOT NULL DEFAULT 1.0")
    for statement in _SCHEMA_2:
        db.execute(statement)


def _migrate_to_3(db: sqlite3.Connection) -> None:
    """Adds what schema 3 has to an older (or new) store: models gain their search tower,
    none for the model versions already there."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(models)")}
    for column, kind in (
        ("search_tower_sha256", "TEXT"),
        ("search_tower_size_bytes", "INTEGER NOT NULL DEFAULT 0"),
        ("search_tower", "BLOB"),
    ):
        if column not in columns:
            db.execute(f"ALTER TABLE models ADD COLUMN {column} {kind}")
    db.execute(
        "CREATE INDEX IF NOT EXISTS models_by_search_tower ON models (family, search_tower_sha256)"
    )


def _part_columns(part: str) -> tuple[str, str]:
    """The models columns of ``part``'s digest and bytes.

    Raises:
        ValueError: for a part that is not a `ModelPart`.
    """
    if part not in _PART_COLUMNS:
        raise ValueError(f"a model part is one of {sorted(_PART_COLUMNS)}, got {part!r}")
    return _PART_COLUMNS[part]


def checked_fraction(fraction: float) -> float:
    """``fraction`` as a float when it is a rollout fraction, in (0, 1].

    Raises:
        ValueError: otherwise (NaN included).
    """
    if not 0.0 < fraction <= 1.0:  # also refuses NaN
        raise ValueError(
            f"a rollout fraction is in (0, 1]: the share of devices served the version; got "
            f"{fraction}"
        )
    return float(fraction)


def _stored_events(rows: Iterable[Sequence[Any]]) -> Iterator[StoredEvent]:
    for family, device, received, event_id, user, item_id, timestamp, model, catalog in rows:
        event = Event(bytes(event_id), user, item_id, timestamp, model, catalog)
        yield StoredEvent(family, device, received, event)


def _catalog(row: Sequence[Any]) -> CatalogVersion:
    family, version, model, count, dtype, dim, columns, scale_dtype, record, signature = row[:10]
    return CatalogVersion(
        family=family,
        catalog_version=version,
        model_version=model,
        item_count=count,
        form=TableForm(dtype, dim, columns, scale_dtype),
        record=SignedRecord(bytes(record), bytes(signature)),
        fraction=row[10],
    )


def _model(row: Sequence[Any]) -> ModelVersion:
    family, version, sha256, size, record, signature, tower_sha256, tower_size = row
    signed = SignedRecord(bytes(record), bytes(signature))
    return ModelVersion(family, version, sha256, size, signed, tower_sha256, tower_size)


def _little_endian(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("<") if dtype.byteorder in "=<>" else dtype


def _row_records(family: str, model: int, version: int, rows: Rows) -> Iterator[tuple[Any, ...]]:
    values = np.ascontiguousarray(rows.values.astype(_little_endian(rows.values.dtype)))
    scales = (
        None
        if rows.scales is None
        else np.ascontiguousarray(rows.scales.astype(_little_endian(rows.scales.dtype)))
    )
    for row, item_id in enumerate(rows.item_ids):
        yield (
            family,
            model,
            item_id,
            version,
            values[row].tobytes(),
            None if scales is None else scales[row].tobytes(),
            json.dumps(rows.metadata[row], ensure_ascii=False, separators=(",", ":")),
        )


def _rows(form: TableForm, records: Sequence[Sequence[Any]]) -> Rows:
    empty = form.empty_rows()
    count = len(records)
    stored = empty.values.dtype
    values = (
        np.frombuffer(b"".join(r[1] for r in records), dtype=_little_endian(stored))
        .reshape(count, form.columns)
        .astype(stored)
    )
    scales = None
    if empty.scales is not None:
        scales = np.frombuffer(
            b"".join(r[2] for r in records), dtype=_little_endian(empty.scales.dtype)
        ).astype(empty.scales.dtype)
    return Rows(
        item_ids=tuple(r[0] for r in records),
        # One parse for every row: a call per row would cost more than the rest together.
        metadata=tuple(json.loads("[" + ",".join(r[3] for r in records) + "]")),
        values=values,
        scales=scales,
        dtype=form.dtype,
        dim=form.dim,
        metadata_json=tuple(r[3] for r in records),
    )
