"""Which versions a device should run: staged rollouts and pins.

A device of a family runs the newest catalog version rolled out to it: one with fraction 1,
or one whose fraction exceeds the device's bucket, a stable number in [0, 1) hashed from
the family and the device name. The same devices come first at any fraction, so widening
a rollout only adds devices. An operator's pin overrides the rule, even with an older
version (the device's client refuses a version older than its own unless the app allows
rollback). The model version is the one of that catalog version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pocketrec.sdk.catalog import check_family

if TYPE_CHECKING:
    from pocketrec.server.store import CatalogVersion, DeviceStatus, SyncStore


def device_bucket(family: str, device: str) -> float:
    """The first 8 bytes of sha256(family NUL device), big-endian, divided by 2**64."""
    digest = hashlib.sha256(f"{family}\0{device}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def chosen_version(
    rollout: Sequence[tuple[int, float]], bucket: float, pinned: int | None = None
) -> int | None:
    """The catalog version a device in ``bucket`` runs, from ``(version, fraction)`` pairs
    (any order); None when no version is rolled out to it yet."""
    if pinned is not None:
        return pinned
    served = [version for version, fraction in rollout if fraction >= 1.0 or bucket < fraction]
    return max(served, default=None)


def served_catalog(store: SyncStore, family: str, device: str) -> CatalogVersion | None:
    """The catalog version ``device`` should run now, or None when none is rolled out to it."""
    version = chosen_version(
        store.rollout(family), device_bucket(family, device), store.pinned(family, device)
    )
    return None if version is None else store.catalog(family, version)


def set_rollout(store: SyncStore, family: str, catalog_version: int, fraction: float) -> None:
    """Serves ``catalog_version`` to ``fraction`` (0 < fraction <= 1) of the family's devices:
    widening adds devices, narrowing moves the excluded ones back to the newest version
    still rolled out to them.

    Raises:
        ValueError: for a bad family or fraction.
        StoreError: if the family has no such catalog version.
    """
    store.set_fraction(check_family(family), catalog_version, fraction)


def pin(store: SyncStore, family: str, device: str, catalog_version: int | None) -> None:
    """Holds ``device`` at ``catalog_version`` whatever is published; None removes the pin.

    A pin older than what the device runs is refused by the device's client unless its app
    allows rollback.

    Raises:
        ValueError: for a bad family, or a device the family never issued a token to.
        StoreError: if the family has no such catalog version.
    """
    check_family(family)
    if not any(status.name == device for status in store.device_statuses(family)):
        raise ValueError(
            f"family {family!r} has no device named {device!r}; `pocketrec devices` lists them"
        )
    store.set_pin(family, device, catalog_version)


def devices(store: SyncStore, family: str) -> list[DeviceStatus]:
    """The family's devices: what each runs, when it was last seen, its pin and bucket."""
    return store.device_statuses(check_family(family))
