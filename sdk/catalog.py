"""What the sync moves, in one place: catalog rows, signed records and item batches.

`proto/pocketrec/sync/v1/sync.proto` defines the wire format; this module is its Python
side for both ends. The server builds and signs records and encodes batches with it; the
device verifies records, decodes batches, applies them to its rows and rebuilds the bundle
whose digests the signed record names.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pocketrec.errors import BundleError, DataError, PocketrecError
from pocketrec.proto import sync_pb2
from pocketrec.sdk.bundle import Bundle
from pocketrec.sdk.table import ItemTable, stored_columns, stored_dtype

MODEL_KIND = "pocketrec.model"
CATALOG_KIND = "pocketrec.catalog"
FAMILY_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
# The model record's keys for its search tower, present only when the model has one.
SEARCH_TOWER_SHA256 = "search_tower_sha256"
SEARCH_TOWER_SIZE = "search_tower_size_bytes"
# One encoder for every row's metadata: json.dumps would build one per call.
_METADATA_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class SignatureError(PocketrecError):
    """A record that is unsigned, wrongly signed, malformed, or older than what is held."""


def check_family(family: object) -> str:
    """``family`` if it is a valid family name ([A-Za-z0-9._-], 1 to 64 characters).

    Raises:
        ValueError: naming the rule and what came.
    """
    if not isinstance(family, str) or not FAMILY_PATTERN.match(family):
        raise ValueError(
            f"a family is 1 to 64 characters of letters, digits, '.', '_' or '-'; got {family!r}"
        )
    return family


# -- keys and signatures ------------------------------------------------------------------


def generate_key() -> Ed25519PrivateKey:
    """A new Ed25519 publisher key."""
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM (keep it off devices, readable by the publisher)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The 32-byte raw public key as 64 hex digits: what a device is given."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def load_private_key(data: bytes | str | Path) -> Ed25519PrivateKey:
    """A publisher key from PKCS#8 PEM bytes or a file holding them.

    Raises:
        ValueError: if it is not an Ed25519 private key.
    """
    pem = Path(data).read_bytes() if isinstance(data, str | Path) else bytes(data)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM private key ({exc}); make one with `pocketrec keys`") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"the publisher key must be Ed25519, got {type(key).__name__}")
    return key


def load_public_key(data: bytes | str | Path | Ed25519PublicKey) -> Ed25519PublicKey:
    """A publisher public key: 64 hex digits, 32 raw bytes, PEM, or a file holding one.

    Raises:
        ValueError: if it is none of these.
    """
    if isinstance(data, Ed25519PublicKey):
        return data
    if isinstance(data, Path) or (isinstance(data, str) and Path(data).is_file()):
        data = Path(data).read_bytes()
    raw = data.encode() if isinstance(data, str) else bytes(data)
    text = raw.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(text)
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError(f"expected an Ed25519 key, got {type(key).__name__}")
            return key
        if len(text) == 64:
            return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text.decode("ascii")))
        if len(raw) == 32:
            return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not an Ed25519 public key: {exc}") from exc
    raise ValueError(
        "an Ed25519 public key is 64 hex digits, 32 raw bytes or PEM; got "
        f"{len(raw)} bytes. `pocketrec keys` prints the publisher's"
    )


@dataclass(frozen=True)
class SignedRecord:
    """A record's exact bytes and the publisher's Ed25519 signature of them."""

    record: bytes
    signature: bytes

    @classmethod
    def sign(cls, document: Mapping[str, Any], key: Ed25519PrivateKey) -> SignedRecord:
        """Serialises ``document`` as UTF-8 JSON and signs those bytes."""
        record = json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")
        return cls(record, key.sign(record))

    def verified(self, public_key: Ed25519PublicKey, kind: str) -> dict[str, Any]:
        """The record's document once its signature and kind are checked.

        Raises:
            SignatureError: unsigned, wrongly signed, not JSON, or not a ``kind`` record.
        """
        if not self.signature:
            raise SignatureError(f"the {kind} record is unsigned; refusing it")
        try:
            public_key.verify(self.signature, self.record)
        except InvalidSignature:
            raise SignatureError(
                f"the {kind} record's signature does not verify with the publisher's public "
                "key: it was changed, or signed by another key; refusing it"
            ) from None
        try:
            document = json.loads(self.record.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SignatureError(f"the signed {kind} record is not JSON: {exc}") from exc
        if not isinstance(document, dict) or document.get("kind") != kind:
            raise SignatureError(f"expected a {kind!r} record, got {str(document)[:80]!r}")
        return document

    def to_proto(self) -> sync_pb2.SignedRecord:
        return sync_pb2.SignedRecord(record=self.record, signature=self.signature)

    @classmethod
    def from_proto(cls, message: sync_pb2.SignedRecord) -> SignedRecord:
        return cls(bytes(message.record), bytes(message.signature))

    def to_json(self) -> dict[str, str]:
        """For storing beside an installed bundle: the record as text, the signature as hex."""
        return {"record": self.record.decode("utf-8"), "signature": self.signature.hex()}


def model_document(
    family: str, model_version: int, model: bytes, search_tower: bytes | None = None
) -> dict[str, Any]:
    """The model record of the proto's header for ``model`` as version ``model_version``.

    A ``search_tower`` is part of the model: the record then names its sha256 and size too,
    so a device trusts no search tower the publisher did not sign.
    """
    document: dict[str, Any] = {
        "kind": MODEL_KIND,
        "family": check_family(family),
        "model_version": int(model_version),
        "model_sha256": hashlib.sha256(model).hexdigest(),
        "model_size_bytes": len(model),
        "published_at": _now(),
    }
    if search_tower is not None:
        document[SEARCH_TOWER_SHA256] = hashlib.sha256(search_tower).hexdigest()
        document[SEARCH_TOWER_SIZE] = len(search_tower)
    return document


def catalog_document(
    family: str, model_version: int, catalog_version: int, bundle: Bundle
) -> dict[str, Any]:
    """The catalog record of the proto's header: ``bundle`` (in row order) as this version."""
    scales = bundle.table.scales
    return {
        "kind": CATALOG_KIND,
        "family": check_family(family),
        "model_version": int(model_version),
        "catalog_version": int(catalog_version),
        "model_sha256": bundle.model_sha256,
        "item_count": bundle.table.num_items,
        "scale_dtype": None if scales is None else np.dtype(scales.dtype).name,
        "published_at": _now(),
        "manifest": bundle.manifest,
    }


# -- rows -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """A catalog's rows in the sync's order (ids sorted by their UTF-8 bytes).

    Attributes:
        item_ids: the ids, sorted.
        metadata: per item its metadata without ``"id"``.
        values: the item table's stored values ``[N, C]`` (see `pocketrec.sdk.table`).
        scales: per-row scales ``[N]`` of int8/int4 tables, else None.
        dtype, dim: the table's stored form and vector dimension.
        metadata_json: each ``metadata`` entry as JSON text, when a store already holds
            it that way (a batch then sends it without encoding it again).
    """

    item_ids: tuple[str, ...]
    metadata: tuple[dict[str, Any], ...]
    values: np.ndarray
    scales: np.ndarray | None
    dtype: str
    dim: int
    metadata_json: tuple[str, ...] | None = None

    @classmethod
    def of_bundle(cls, bundle: Bundle) -> Rows:
        """The bundle's rows, reordered by id."""
        ids = bundle.item_ids
        order = np.argsort(np.asarray(ids, dtype=str), kind="stable")
        table = bundle.table
        items = bundle.items
        scales = table.scales
        return cls(
            item_ids=tuple(ids[r] for r in order),
            metadata=tuple({k: v for k, v in items[r].items() if k != "id"} for r in order),
            values=np.ascontiguousarray(table.values[order]),
            scales=None if scales is None else np.ascontiguousarray(scales[order]),
            dtype=table.dtype,
            dim=table.dim,
        )

    @classmethod
    def empty(cls, dtype: str, dim: int, scale_dtype: str | None) -> Rows:
        return cls(
            (),
            (),
            np.zeros((0, stored_columns(dtype, dim)), dtype=stored_dtype(dtype)),
            None if scale_dtype is None else np.zeros(0, dtype=scale_dtype),
            dtype,
            dim,
        )

    def __len__(self) -> int:
        return len(self.item_ids)

    def concatenated(self, parts: Sequence[Rows]) -> Rows:
        """These rows followed by ``parts`` (each in id order, no id twice), e.g. chunks."""
        every = [self, *parts]
        scales = None
        if self.scales is not None:
            scales = np.concatenate([part.scales for part in every if part.scales is not None])
        return Rows(
            tuple(i for part in every for i in part.item_ids),
            tuple(m for part in every for m in part.metadata),
            np.concatenate([part.values for part in every]),
            scales,
            self.dtype,
            self.dim,
        )

    def table(self) -> ItemTable:
        """The rows as an `ItemTable` (values in their stored form, not requantized)."""
        return ItemTable(self.values, dtype=self.dtype, dim=self.dim, scales=self.scales)

    def items(self) -> list[dict[str, Any]]:
        """``items.json``'s entries: ``{"id": ..., **metadata}`` per row."""
        return [{"id": i, **m} for i, m in zip(self.item_ids, self.metadata, strict=True)]

    def take(self, rows: Sequence[int]) -> Rows:
        """The rows at positions ``rows`` (which must keep the id order)."""
        index = np.asarray(rows, dtype=np.int64)
        texts = self.metadata_json
        return Rows(
            tuple(self.item_ids[r] for r in rows),
            tuple(self.metadata[r] for r in rows),
            self.values[index],
            None if self.scales is None else self.scales[index],
            self.dtype,
            self.dim,
            None if texts is None else tuple(texts[r] for r in rows),
        )

    def changed_since(self, base: Rows) -> tuple[Rows, list[str]]:
        """What takes ``base`` to these rows: the new or changed rows, and the deleted ids."""
        old = {item_id: row for row, item_id in enumerate(base.item_ids)}
        here = [row for row, item_id in enumerate(self.item_ids) if item_id in old]
        there = np.asarray([old[self.item_ids[row]] for row in here], dtype=np.int64)
        mine = np.asarray(here, dtype=np.int64)
        same = np.ones(len(here), dtype=bool)
        if len(here) and self.values.shape[1:] == base.values.shape[1:]:
            same &= (self.values[mine] == base.values[there]).all(axis=1)
            if self.scales is not None and base.scales is not None:
                same &= self.scales[mine] == base.scales[there]
            elif (self.scales is None) != (base.scales is None):
                same[:] = False
        else:
            same[:] = False
        unchanged = {
            int(row)
            for row, other, kept in zip(mine, there, same, strict=True)
            if kept and self.metadata[row] == base.metadata[other]
        }
        changed = [row for row in range(len(self.item_ids)) if row not in unchanged]
        kept_ids = set(self.item_ids)
        deleted = [item_id for item_id in base.item_ids if item_id not in kept_ids]
        return self.take(changed), deleted

    def applied(self, upserts: Rows, deleted: Iterable[str]) -> Rows:
        """These rows with ``deleted`` removed and ``upserts`` added or replacing.

        Raises:
            ValueError: if the upserts are of another table form, or an id is both
                upserted and deleted.
        """
        if (upserts.dtype, upserts.dim) != (self.dtype, self.dim) or (
            upserts.values.shape[1:] != self.values.shape[1:]
        ):
            raise ValueError(
                f"rows of a {upserts.dtype} [*, {upserts.dim}] table cannot update a "
                f"{self.dtype} [*, {self.dim}] one: embedding spaces never mix"
            )
        gone = set(deleted)
        clash = gone.intersection(upserts.item_ids)
        if clash:
            raise ValueError(f"ids {sorted(clash)[:5]} are both upserted and deleted")
        replaced = gone.union(upserts.item_ids)
        kept = [row for row, item_id in enumerate(self.item_ids) if item_id not in replaced]
        ids = [self.item_ids[r] for r in kept] + list(upserts.item_ids)
        # numpy sorts str by code point, the order of the ids' UTF-8 bytes.
        order = np.argsort(np.asarray(ids, dtype=str), kind="stable") if ids else []
        values = np.concatenate([self.values[kept], upserts.values])[order]
        scales = None
        if self.scales is not None and upserts.scales is not None:
            scales = np.concatenate([self.scales[kept], upserts.scales.astype(self.scales.dtype)])
            scales = scales[order]
        metadata = [self.metadata[r] for r in kept] + list(upserts.metadata)
        return Rows(
            tuple(ids[i] for i in order),
            tuple(metadata[i] for i in order),
            np.ascontiguousarray(values),
            None if scales is None else np.ascontiguousarray(scales),
            self.dtype,
            self.dim,
        )


# -- item batches (ItemBatch in sync.proto) ------------------------------------------------


def encode_batch(upserts: Rows, deleted: Sequence[str] = ()) -> bytes:
    """``upserts`` and ``deleted`` as a serialised `ItemBatch`."""
    batch = sync_pb2.ItemBatch(
        item_ids=list(upserts.item_ids),
        metadata_json=list(upserts.metadata_json)
        if upserts.metadata_json is not None
        else [_METADATA_ENCODER.encode(m) for m in upserts.metadata],
        values=_little_endian(upserts.values).tobytes(),
        scales=b"" if upserts.scales is None else _little_endian(upserts.scales).tobytes(),
        deleted_ids=list(deleted),
    )
    return batch.SerializeToString()


def _little_endian(array: np.ndarray) -> np.ndarray:
    """``array`` laid out as the wire says: C order, little-endian."""
    return np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<")))


def decode_batch(
    data: bytes, *, dtype: str, dim: int, scale_dtype: str | None
) -> tuple[Rows, list[str]]:
    """A serialised `ItemBatch` as upserted rows and deleted ids (not yet sorted together).

    Raises:
        BundleError: if the batch does not parse or its columns disagree.
    """
    batch = sync_pb2.ItemBatch()
    try:
        batch.ParseFromString(bytes(data))
    except Exception as exc:  # protobuf raises its own DecodeError
        raise BundleError(f"an item batch does not parse: {exc}") from exc
    count = len(batch.item_ids)
    columns = stored_columns(dtype, dim)
    row_dtype = stored_dtype(dtype).newbyteorder("<")
    if (
        len(batch.metadata_json) != count
        or len(batch.values) != count * columns * row_dtype.itemsize
    ):
        raise BundleError(
            f"an item batch holds {count} ids, {len(batch.metadata_json)} metadata entries and "
            f"{len(batch.values)} value bytes; expected {count * columns * row_dtype.itemsize}"
        )
    values = np.frombuffer(batch.values, dtype=row_dtype).reshape(count, columns)
    scales = None
    if scale_dtype is not None:
        wanted = np.dtype(scale_dtype).newbyteorder("<")
        if len(batch.scales) != count * wanted.itemsize:
            raise BundleError(
                f"an item batch holds {len(batch.scales)} scale bytes for {count} rows of "
                f"{scale_dtype} scales"
            )
        scales = np.frombuffer(batch.scales, dtype=wanted).astype(scale_dtype)
    # One parse for the whole batch: a JSON array of the entries.
    try:
        metadata = json.loads("[" + ",".join(batch.metadata_json) + "]") if count else []
    except json.JSONDecodeError as exc:
        raise BundleError(f"an item batch's metadata is not JSON objects: {exc}") from exc
    if len(metadata) != count or not all(isinstance(m, dict) and "id" not in m for m in metadata):
        raise BundleError("an item batch's metadata must be one JSON object without 'id' per item")
    native = values.astype(values.dtype.newbyteorder("="))  # the table's in-memory form
    rows = Rows(tuple(batch.item_ids), tuple(metadata), native, scales, dtype, dim)
    return rows, list(batch.deleted_ids)


def read_items_jsonl(path: str | Path, *, vectors: bool = False) -> list[dict[str, Any]]:
    """Items from a JSON Lines file: one ``{"id": str, ...}`` object per line.

    The format ``pocketrec embed-items`` reads (ids and metadata) and writes (with
    ``"vector"``), and ``pocketrec publish --items`` reads.

    Args:
        vectors: require a ``"vector"`` of finite numbers, of one length for every item.

    Raises:
        DataError: naming the file and line of the first bad entry.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read items from {path}: {exc}") from exc
    items = []
    lengths = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not JSON ({exc})") from exc
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            raise DataError(f'{path}:{number}: expected an object with a string "id"')
        if vectors:
            vector = item.get("vector")
            if not isinstance(vector, list) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in vector
            ):
                raise DataError(f'{path}:{number}: expected a "vector" of finite numbers')
            lengths.add(len(vector))
        items.append(item)
    if not items:
        raise DataError(f"{path} holds no items: expected one JSON object per line")
    if len(lengths) > 1:
        raise DataError(f"{path}: vectors have lengths {sorted(lengths)}; expected one")
    return items


def bundle_of(
    record: Mapping[str, Any], model: bytes, rows: Rows, search_tower: bytes | None = None
) -> Bundle:
    """The bundle a verified catalog record describes, rebuilt from the model, the rows and
    the model's search tower (None: the model has none, or it was published without one).

    Every file's sha256 must match the record's manifest, and the golden self-check runs
    on this CPU (the search tower's too). Without ``search_tower`` a tower the manifest
    lists is left out, and search falls back to the user vector.

    Raises:
        BundleError: if a digest or the self-check fails.
    """
    if len(rows) != record["item_count"]:
        raise BundleError(
            f"catalog version {record['catalog_version']} has {record['item_count']} items; "
            f"the rows received make {len(rows)}"
        )
    return Bundle.from_parts(
        record["manifest"], model, rows.table(), rows.items(), search_tower=search_tower
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
