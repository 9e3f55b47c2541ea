"""Per-device bearer tokens: issued once, stored only as their sha256, revocable."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timezone

from pocketrec.sdk.catalog import check_family
from pocketrec.server.store import Device, SyncStore

_MAX_DEVICE_NAME = 128
# Marks a string as a pocketrec device token (secret scanners can match it) and keeps it
# from starting with "-", which a command line would read as an option.
TOKEN_PREFIX = "prt_"


def token_sha256(token: str) -> str:
    """What the store keeps of a token: its sha256 as hex (a leaked store leaks no token)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue_token(store: SyncStore, family: str, device: str) -> str:
    """A new token that lets ``device`` sync ``family``; shown once, never stored.

    Raises:
        ValueError: for a bad family or device name.
    """
    check_family(family)
    if not device or len(device) > _MAX_DEVICE_NAME or not device.isprintable():
        raise ValueError(
            f"a device name is 1 to {_MAX_DEVICE_NAME} printable characters, got {device!r}"
        )
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    store.add_device(Device(family, device, created), token_sha256(token))
    return token


def revoke_token(store: SyncStore, family: str, device: str) -> int:
    """Revokes every token issued to ``device`` for ``family``; how many were valid."""
    return store.revoke_devices(check_family(family), device)


def authenticate(store: SyncStore, token: str) -> Device | None:
    """The device a token belongs to, or None when it is unknown or revoked."""
    device = store.device(token_sha256(token))
    return None if device is None or device.revoked_at is not None else device
