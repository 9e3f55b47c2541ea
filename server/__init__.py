"""The sync server: a store of signed model and catalog versions, served over gRPC.

Needs the ``server`` extra (gRPC health checking and reflection). See
``proto/pocketrec/sync/v1/sync.proto`` for what devices receive.
"""

from pocketrec.server.publish import PublishResult, publish, publish_items
from pocketrec.server.service import (
    CHUNK_BYTES,
    SERVICE_NAME,
    CatalogSyncServicer,
    SyncServer,
    serve,
)
from pocketrec.server.store import (
    CatalogVersion,
    Device,
    ModelVersion,
    Publication,
    SQLiteStore,
    StoreError,
    SyncStore,
    TableForm,
)
from pocketrec.server.tokens import authenticate, issue_token, revoke_token, token_sha256

__all__ = [
    "CHUNK_BYTES",
    "SERVICE_NAME",
    "CatalogSyncServicer",
    "CatalogVersion",
    "Device",
    "ModelVersion",
    "Publication",
    "PublishResult",
    "SQLiteStore",
    "StoreError",
    "SyncServer",
    "SyncStore",
    "TableForm",
    "authenticate",
    "issue_token",
    "publish",
    "publish_items",
    "revoke_token",
    "serve",
    "token_sha256",
]
