"""Interaction events devices upload: the checks each one passes, export and erasure.

An event is stored as the device sent it, plus the device's name and when it arrived;
the server keeps nothing else about devices or users. Events stay until deleted (a user's
erasure, `delete_user_events`).
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
from pathlib import Path

from pocketrec.sdk.catalog import check_family
from pocketrec.server.store import Event, SyncStore

# The most events one UploadEvents call may carry (sync.proto).
MAX_EVENTS_PER_UPLOAD = 1000
EVENT_ID_BYTES = 16
MAX_ID_CHARS = 256
# Seconds since the epoch of 10000-01-01T00:00:00Z: timestamps lie in years 1970 to 9999.
_END_OF_9999 = 253402300800.0
# What `export_events` writes; `pocketrec train --data FILE --string-ids --time-col
# timestamp` reads it (the versions are extra columns for measuring a model's effect).
EXPORT_HEADER = ("user", "item", "timestamp", "model_version", "catalog_version")


def event_problem(
    event: Event, latest_model_version: int, latest_catalog_version: int
) -> str | None:
    """Why ``event`` can never be stored, or None when it can.

    ``latest_*``: the family's latest versions; an event names versions up to those (0
    when the device ran none).
    """
    if len(event.event_id) != EVENT_ID_BYTES:
        return (
            f"event_id must be {EVENT_ID_BYTES} bytes (a UUID version 4), got {len(event.event_id)}"
        )
    for what, text in (("user", event.user), ("item_id", event.item_id)):
        if not 1 <= len(text) <= MAX_ID_CHARS:
            return f"{what} must be 1 to {MAX_ID_CHARS} characters, got {len(text)}"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"{what} holds a lone surrogate at index {exc.start}"
    if not (math.isfinite(event.timestamp_s) and 0.0 <= event.timestamp_s < _END_OF_9999):
        return (
            "timestamp_s must be finite seconds since the Unix epoch in the years 1970 to "
            f"9999, got {event.timestamp_s}"
        )
    for what, version, latest in (
        ("model_version", event.model_version, latest_model_version),
        ("catalog_version", event.catalog_version, latest_catalog_version),
    ):
        if not 0 <= version <= latest:
            return f"{what} {version} was never published (0 to {latest}: the latest or none)"
    return None


def export_events(store: SyncStore, family: str, out_path: str | Path) -> int:
    """Writes the family's events to ``out_path`` as CSV (`EXPORT_HEADER`, one row per
    event, by timestamp) for ``pocketrec train --data FILE --string-ids --time-col
    timestamp``; how many rows. The file is replaced whole, or left as it was on failure.

    The delimited loader trims whitespace around fields: an id that starts or ends with
    whitespace reads back without it.
    """
    check_family(family)
    out = Path(out_path)
    descriptor, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    count = 0
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as file:
            writer = csv.writer(file, lineterminator="\n")
            writer.writerow(EXPORT_HEADER)
            for stored in store.events(family):
                event = stored.event
                writer.writerow(
                    (
                        event.user,
                        event.item_id,
                        repr(event.timestamp_s),
                        event.model_version,
                        event.catalog_version,
                    )
                )
                count += 1
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return count


def delete_user_events(store: SyncStore, family: str, user: str) -> int:
    """Deletes every event of ``user`` in the family, from every device; how many.

    Raises:
        ValueError: for a bad family or an empty user.
    """
    check_family(family)
    if not user:
        raise ValueError("user must be the non-empty id the events name (the device's pseudonym)")
    return store.delete_events(family, user)
