"""Where the sync server keeps what it serves: model and catalog versions, rows, devices.

`SyncStore` is the one interface the service and the publisher use; `SQLiteStore` is the
embedded implementation (one file, WAL), and a PostgreSQL store can implement the same
protocol later. Versions are immutable and only move forward, per family; a publication
(a new catalog version, with a new model version or not) is one transaction.

Rows are kept as row *versions*: a row is added in one catalog version and removed in a
later one (replaced or deleted), or still live. The rows of any catalog version, and the
changes between two catalog versions of one model, are read from them without storing a
copy of the table per version.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pocketrec.errors import PocketrecError
from pocketrec.sdk.catalog import Rows, SignedRecord

SCHEMA_VERSION = 1


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
        return Rows.empty(self.dtype, self.dim, self.columns, self.scale_dtype)


@dataclass(frozen=True)
class ModelVersion:
    """A published user tower: its version, digest, size and signed model record."""

    family: str
    model_version: int
    sha256: str
    size_bytes: int
    record: SignedRecord


@dataclass(frozen=True)
class CatalogVersion:
    """A published catalog: the model version it belongs to, its table form and record."""

    family: str
    catalog_version: int
    model_version: int
    item_count: int
    form: TableForm
    record: SignedRecord


@dataclass(frozen=True)
class Publication:
    """What one publish adds, committed together or not at all.

    Attributes:
        catalog: the new catalog version.
        upserts: its new or changed rows (all rows when it starts a new model version).
        deleted: ids of the previous catalog version that it no longer holds.
        model: the new model version it belongs to, or None for the latest model.
        model_bytes: that model's ``.tflite`` bytes (with ``model`` only).
    """

    catalog: CatalogVersion
    upserts: Rows
    deleted: tuple[str, ...] = ()
    model: ModelVersion | None = None
    model_bytes: bytes = b""


@dataclass(frozen=True)
class Device:
    """A device allowed to sync one family. Only the sha256 of its token is stored."""

    family: str
    name: str
    created_at: str
    revoked_at: str | None = None


class SyncStore(Protocol):
    """The storage the sync server needs; implementations must be safe across threads."""

    def latest_catalog(
        self, family: str, model_version: int | None = None
    ) -> CatalogVersion | None:
        """The family's latest catalog version (of ``model_version`` if given), or None."""

    def catalog(self, family: str, catalog_version: int) -> CatalogVersion | None: ...

    def model(self, family: str, model_version: int) -> ModelVersion | None: ...

    def model_by_sha256(self, family: str, sha256: str) -> ModelVersion | None:
        """The latest model version of the family whose bytes have this hex digest."""

    def read_model(self, family: str, model_version: int, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of the model from ``offset`` on."""

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
_CATALOG_COLUMNS = (
    "family, catalog_version, model_version, item_count, dtype, dim, columns, scale_dtype, "
    "record, signature"
)
_MODEL_COLUMNS = "family, model_version, sha256, size_bytes, record, signature"
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
                if version not in (0, SCHEMA_VERSION):
                    raise StoreError(
                        f"{self._path} has store schema {version}; this pocketrec reads "
                        f"schema {SCHEMA_VERSION}. Upgrade pocketrec"
                    )
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
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

    def model_by_sha256(self, family: str, sha256: str) -> ModelVersion | None:
        row = (
            self._connection()
            .execute(
                f"SELECT {_MODEL_COLUMNS} FROM models WHERE family = ? AND sha256 = ? "
                "ORDER BY model_version DESC LIMIT 1",
                (family, sha256),
            )
            .fetchone()
        )
        return None if row is None else _model(row)

    def read_model(self, family: str, model_version: int, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise ValueError(f"offset and size must be >= 0, got {offset} and {size}")
        row = (
            self._connection()
            .execute(
                # substr counts from 1 on blobs.
                "SELECT substr(model, ?, ?) FROM models WHERE family = ? AND model_version = ?",
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
                db.execute(
                    f"INSERT INTO models ({_MODEL_COLUMNS}, model) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        family,
                        model.model_version,
                        model.sha256,
                        model.size_bytes,
                        model.record.record,
                        model.record.signature,
                        publication.model_bytes,
                    ),
                )
            form = catalog.form
            db.execute(
                f"INSERT INTO catalogs ({_CATALOG_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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


def _catalog(row: Sequence[Any]) -> CatalogVersion:
    family, version, model, count, dtype, dim, columns, scale_dtype, record, signature = row
    return CatalogVersion(
        family=family,
        catalog_version=version,
        model_version=model,
        item_count=count,
        form=TableForm(dtype, dim, columns, scale_dtype),
        record=SignedRecord(bytes(record), bytes(signature)),
    )


def _model(row: Sequence[Any]) -> ModelVersion:
    family, version, sha256, size, record, signature = row
    signed = SignedRecord(bytes(record), bytes(signature))
    return ModelVersion(family, version, sha256, size, signed)


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
    )
