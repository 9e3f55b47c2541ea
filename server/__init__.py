"""The sync server: a store of signed model and catalog versions, served over gRPC.

Needs the ``server`` extra (gRPC health checking and reflection). See
``proto/pocketrec/sync/v1/sync.proto`` for what devices receive and send.
"""

from pocketrec.server.events import (
    EXPORT_HEADER,
    MAX_EVENTS_PER_UPLOAD,
    delete_user_events,
    event_problem,
    export_events,
)
from pocketrec.server.publish import PublishResult, publish, publish_items, rollback
from pocketrec.server.rollout import (
    chosen_version,
    device_bucket,
    devices,
    pin,
    served_catalog,
    set_rollout,
)
from pocketrec.server.service import (
    CHUNK_BYTES,
    HEARTBEAT_MS,
    SERVICE_NAME,
    CatalogSyncServicer,
    SyncServer,
    serve,
)
from pocketrec.server.store import (
    CatalogVersion,
    Device,
    DeviceStatus,
    Event,
    ModelVersion,
    Publication,
    SQLiteStore,
    StoredEvent,
    StoreError,
    SyncStore,
    TableForm,
)
from pocketrec.server.tokens import authenticate, issue_token, revoke_token, token_sha256

__all__ = [
    "CHUNK_BYTES",
    "EXPORT_HEADER",
    "HEARTBEAT_MS",
    "MAX_EVENTS_PER_UPLOAD",
    "SERVICE_NAME",
    "CatalogSyncServicer",
    "CatalogVersion",
    "Device",
    "DeviceStatus",
    "Event",
    "ModelVersion",
    "Publication",
    "PublishResult",
    "SQLiteStore",
    "StoreError",
    "StoredEvent",
    "SyncServer",
    "SyncStore",
    "TableForm",
    "authenticate",
    "chosen_version",
    "delete_user_events",
    "device_bucket",
    "devices",
    "event_problem",
    "export_events",
    "issue_token",
    "pin",
    "publish",
    "publish_items",
    "revoke_token",
    "rollback",
    "serve",
    "served_catalog",
    "set_rollout",
    "token_sha256",
]
