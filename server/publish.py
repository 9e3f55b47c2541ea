"""Publishing: a bundle or new item vectors become the next signed versions of a family.

A bundle whose model (its user tower and search tower, if any) or table form is new
starts a new model version with its whole table; a bundle of the family's latest model
becomes a new catalog version holding only the rows that changed. Before signing, the
bundle is put in the sync's canonical form (rows in id order, golden outputs recorded for
that order, ``extra["sync"]`` naming the versions), which is exactly what a device
rebuilds from the model and the rows.

A version may be published to a share of the family's devices first (``fraction``, see
`pocketrec.server.rollout`). Versions only move forward and devices refuse older signed
versions, so `rollback` publishes an earlier version's content again as the next version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pocketrec.sdk.bundle import Bundle
from pocketrec.sdk.catalog import (
    CATALOG_KIND,
    Rows,
    SignatureError,
    SignedRecord,
    bundle_of,
    catalog_document,
    check_family,
    model_document,
)
from pocketrec.sdk.table import ItemTable
from pocketrec.server.store import (
    CatalogVersion,
    ModelVersion,
    Publication,
    SyncStore,
    TableForm,
    checked_fraction,
)


@dataclass(frozen=True)
class PublishResult:
    """What a publish did.

    Attributes:
        published: False when the bundle equals the latest catalog: nothing was added.
        new_model: whether it started a new model version.
        model_version, catalog_version: the family's latest versions afterwards.
        item_count: items in that catalog version.
        upserted, deleted: rows added or replaced, and ids removed, by this publish.
    """

    family: str
    published: bool
    new_model: bool
    model_version: int
    catalog_version: int
    item_count: int
    upserted: int
    deleted: int

    def summary(self) -> str:
        """One line for a person."""
        where = f"family {self.family}: model version {self.model_version}"
        if not self.published:
            return (
                f"nothing new: {where}, catalog version {self.catalog_version} already holds "
                f"these {self.item_count} items"
            )
        model = " (new model)" if self.new_model else ""
        return (
            f"published {where}{model}, catalog version {self.catalog_version}: "
            f"{self.item_count} items, {self.upserted} upserted, {self.deleted} deleted"
        )


def publish(
    store: SyncStore,
    bundle: Bundle,
    family: str,
    key: Ed25519PrivateKey,
    *,
    fraction: float = 1.0,
) -> PublishResult:
    """Publishes ``bundle`` as the family's next catalog version (and model version).

    The same model as the latest (the same user tower and search tower, or none), with
    the same table form (dtype, dimension, scale dtype), makes a catalog version diffed
    against the latest one; anything else makes a new model version with every row: the
    search tower is part of the model, stored and signed with it. Records are signed with
    ``key``, which must be the key the family was published with so far (devices hold its
    public half).
    ``fraction`` (0 < fraction <= 1): the share of the family's devices served the new
    version at first; `pocketrec.server.rollout.set_rollout` widens it later.

    Raises:
        ValueError: for a bad family name or fraction.
        SignatureError: if the family's latest catalog was signed by another key.
        StoreError: if another publish of the family committed meanwhile.
    """
    check_family(family)
    checked_fraction(fraction)
    rows = Rows.of_bundle(bundle)
    form = TableForm.of(rows)
    tower = bundle.search_tower
    tower_sha256 = None if tower is None else hashlib.sha256(tower).hexdigest()
    latest = store.latest_catalog(family)
    same_model = False
    if latest is not None:
        _check_signer(latest, key)
        latest_model = store.model(family, latest.model_version)
        same_model = (
            latest_model is not None
            and latest_model.sha256 == bundle.model_sha256
            and latest_model.search_tower_sha256 == tower_sha256
            and latest.form == form
        )
    if latest is not None and same_model:
        upserts, deleted = rows.changed_since(store.rows(family, latest.catalog_version))
        if not len(upserts) and not deleted:
            return PublishResult(
                family,
                published=False,
                new_model=False,
                model_version=latest.model_version,
                catalog_version=latest.catalog_version,
                item_count=latest.item_count,
                upserted=0,
                deleted=0,
            )
        model_version = latest.model_version
    else:
        upserts, deleted = rows, []
        model_version = 1 if latest is None else latest.model_version + 1
    catalog_version = 1 if latest is None else latest.catalog_version + 1
    # Rows in id order are the sync's canonical form; reorder only a bundle not in it.
    ordered = (
        bundle
        if rows.item_ids == bundle.item_ids
        else bundle.with_items(rows.table(), rows.item_ids, rows.metadata)
    )
    canonical = ordered.with_extra(
        {
            **bundle.manifest["extra"],
            "sync": {
                "family": family,
                "model_version": model_version,
                "catalog_version": catalog_version,
            },
        }
    )
    model = None
    if not same_model:
        model = ModelVersion(
            family,
            model_version,
            bundle.model_sha256,
            len(bundle.model),
            SignedRecord.sign(model_document(family, model_version, bundle.model, tower), key),
            tower_sha256,
            0 if tower is None else len(tower),
        )
    catalog = CatalogVersion(
        family,
        catalog_version,
        model_version,
        len(rows),
        form,
        SignedRecord.sign(catalog_document(family, model_version, catalog_version, canonical), key),
        fraction,
    )
    store.commit(
        Publication(
            catalog,
            upserts,
            tuple(deleted),
            model,
            bundle.model if model is not None else b"",
            tower if model is not None else None,
        )
    )
    return PublishResult(
        family,
        published=True,
        new_model=model is not None,
        model_version=model_version,
        catalog_version=catalog_version,
        item_count=len(rows),
        upserted=len(upserts),
        deleted=len(deleted),
    )


def publish_items(
    store: SyncStore,
    family: str,
    items: Iterable[Mapping[str, Any]],
    key: Ed25519PrivateKey,
    delete: Iterable[str] = (),
    *,
    fraction: float = 1.0,
) -> PublishResult:
    """Adds or replaces items of the family's latest catalog, and deletes ids, as the next
    catalog version served to ``fraction`` of the devices (see `publish`).

    Args:
        items: per item ``{"id": str, "vector": [D floats], **metadata}``: float32
            vectors of the latest model's embedding space (what ``pocketrec embed-items``
            writes), stored in the catalog's table form.
        delete: ids to remove; each must be in the latest catalog.

    Raises:
        ValueError: for a family with nothing published, malformed items, unknown or
            clashing ids, or vectors the table form cannot store.
        SignatureError: if the family's latest catalog was signed by another key.
    """
    check_family(family)
    latest = store.latest_catalog(family)
    if latest is None:
        raise ValueError(
            f"family {family!r} has nothing published yet; publish a bundle first "
            "(pocketrec publish BUNDLE)"
        )
    _check_signer(latest, key)
    model = store.model(family, latest.model_version)
    assert model is not None  # a catalog version always has its model version
    base = store.rows(family, latest.catalog_version)
    upserts = _item_rows(items, latest.form)
    deleted = list(dict.fromkeys(delete))
    unknown = sorted(set(deleted).difference(base.item_ids))
    if unknown:
        raise ValueError(
            f"cannot delete ids {unknown[:5]}: catalog version {latest.catalog_version} of "
            f"family {family!r} does not hold them"
        )
    rows = base.applied(upserts, deleted)
    document = json.loads(latest.record.record)
    user_tower, search_tower = _model_files(store, model)
    current = bundle_of(document, user_tower, base, search_tower)
    updated = current.with_items(rows.table(), rows.item_ids, rows.metadata)
    return publish(store, updated, family, key, fraction=fraction)


def rollback(
    store: SyncStore,
    family: str,
    key: Ed25519PrivateKey,
    to_catalog_version: int | None = None,
) -> PublishResult:
    """Publishes the content of an earlier catalog version again, as the family's next
    signed version (with its model as a new model version when that differs from the
    latest model), served to every device.

    Versions only move forward and devices refuse older signed versions, so going back
    means publishing the old rows anew. ``to_catalog_version`` defaults to the newest
    version before the latest one that was rolled out to every device (fraction 1).

    Raises:
        ValueError: for a family with nothing to roll back to, or a version that is not
            before the latest.
        SignatureError: if the family's latest catalog was signed by another key.
    """
    fractions = store.catalog_fractions(check_family(family))
    if len(fractions) < 2:
        raise ValueError(
            f"family {family!r} has {len(fractions)} catalog versions: nothing earlier to "
            "roll back to"
        )
    latest = fractions[-1][0]
    if to_catalog_version is None:
        full = [version for version, fraction in fractions[:-1] if fraction >= 1.0]
        if not full:
            raise ValueError(
                f"family {family!r} has no catalog version before {latest} that every device "
                "was served; name the version to go back to (--to V)"
            )
        to_catalog_version = full[-1]
    target = store.catalog(family, to_catalog_version)
    if target is None or to_catalog_version >= latest:
        raise ValueError(
            f"family {family!r} can roll back to catalog versions 1 to {latest - 1}, not "
            f"{to_catalog_version}"
        )
    model = store.model(family, target.model_version)
    assert model is not None  # a catalog version always has its model version
    rows = store.rows(family, target.catalog_version)
    user_tower, search_tower = _model_files(store, model)
    earlier = bundle_of(json.loads(target.record.record), user_tower, rows, search_tower)
    return publish(store, earlier, family, key)


def _model_files(store: SyncStore, model: ModelVersion) -> tuple[bytes, bytes | None]:
    """The model's user tower and its search tower (None when it has none)."""
    family, version = model.family, model.model_version
    user_tower = store.read_model(family, version, 0, model.size_bytes)
    if model.search_tower_sha256 is None:
        return user_tower, None
    size = model.search_tower_size_bytes
    return user_tower, store.read_model(family, version, 0, size, "search_tower")


def _check_signer(latest: CatalogVersion, key: Ed25519PrivateKey) -> None:
    try:
        latest.record.verified(key.public_key(), CATALOG_KIND)
    except SignatureError as exc:
        raise SignatureError(
            f"family {latest.family!r} was published with another key (catalog version "
            f"{latest.catalog_version} does not verify with this one: {exc}). Its devices "
            "hold that key's public half: publish with that key"
        ) from exc


def _item_rows(items: Iterable[Mapping[str, Any]], form: TableForm) -> Rows:
    """``items`` as rows of the table form ``form``, in id order."""
    ids: list[str] = []
    vectors: list[Any] = []
    metadata: list[dict[str, Any]] = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, Mapping):
            raise ValueError(f"item {number} must be a mapping, got {type(item).__name__}")
        item_id = item.get("id")
        if not isinstance(item_id, str) or not item_id:
            raise ValueError(f"item {number} needs a non-empty string 'id', got {item_id!r}")
        vector = item.get("vector")
        if (
            not isinstance(vector, list | tuple | np.ndarray)
            or len(vector) != form.dim
            or not all(isinstance(v, int | float | np.number) for v in vector)
        ):
            raise ValueError(
                f"item {item_id!r} needs a 'vector' of {form.dim} numbers (the model's "
                f"dimension), got {str(vector)[:60]}"
            )
        ids.append(item_id)
        vectors.append(vector)
        metadata.append({k: v for k, v in item.items() if k not in ("id", "vector")})
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"ids {repeated[:5]} are given more than once")
    if not ids:
        return form.empty_rows()
    table = ItemTable.quantize(np.asarray(vectors, dtype=np.float32), form.dtype)
    scales = table.scales
    if form.scale_dtype is not None:
        assert scales is not None  # integer tables always have scales
        if np.dtype(form.scale_dtype).itemsize < scales.dtype.itemsize:
            raise ValueError(
                f"some vectors need row scales outside float16's range; the catalog stores "
                f"{form.scale_dtype} scales. Publish a new bundle whose table keeps float32 "
                "scales instead"
            )
        scales = scales.astype(form.scale_dtype)
    order = sorted(range(len(ids)), key=lambda row: ids[row])
    return Rows(
        tuple(ids[r] for r in order),
        tuple(metadata[r] for r in order),
        np.ascontiguousarray(table.values[order]),
        None if scales is None else np.ascontiguousarray(scales[order]),
        form.dtype,
        form.dim,
    )
