"""On-device SDK: bundles, item tables, the LiteRT user tower and the `Recommender`.

Needs only numpy, the LiteRT interpreter and sqlite3; never TensorFlow. The sync client
(`pocketrec.sdk.sync`, which adds grpc and cryptography) is imported on its own.
"""

from pocketrec.sdk._encoding import encode_histories
from pocketrec.sdk._history import HistoryStore, QueuedEvent
from pocketrec.sdk._runtime import UserTower, model_op_types
from pocketrec.sdk.bundle import (
    FORMAT_VERSION,
    GOLDEN_TOLERANCE,
    Bundle,
    bundle_size,
    read_manifest,
    verify_bundle,
    write_bundle,
)
from pocketrec.sdk.contract import QUANTIZATIONS, SIGNATURE_KEY, TABLE_DTYPES
from pocketrec.sdk.recommender import (
    Filters,
    Reason,
    Recommendation,
    Recommendations,
    Recommender,
    RecommenderOptions,
)
from pocketrec.sdk.search import SearchSettings
from pocketrec.sdk.table import ItemTable

__all__ = [
    "FORMAT_VERSION",
    "GOLDEN_TOLERANCE",
    "QUANTIZATIONS",
    "SIGNATURE_KEY",
    "TABLE_DTYPES",
    "Bundle",
    "Filters",
    "HistoryStore",
    "ItemTable",
    "QueuedEvent",
    "Reason",
    "Recommendation",
    "Recommendations",
    "Recommender",
    "RecommenderOptions",
    "SearchSettings",
    "UserTower",
    "bundle_size",
    "encode_histories",
    "model_op_types",
    "read_manifest",
    "verify_bundle",
    "write_bundle",
]
