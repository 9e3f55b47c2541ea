"""On-device SDK: bundles, item tables, the LiteRT user tower and the `Recommender`.

Needs only numpy, the LiteRT interpreter and sqlite3; never TensorFlow.
"""

from pocketrec.sdk._encoding import encode_histories
from pocketrec.sdk._history import HistoryStore
from pocketrec.sdk._runtime import SIGNATURE_KEY, UserTower, model_op_types
from pocketrec.sdk.bundle import (
    FORMAT_VERSION,
    GOLDEN_TOLERANCE,
    bundle_size,
    read_manifest,
    verify_bundle,
    write_bundle,
)
from pocketrec.sdk.recommender import (
    Recommendation,
    Recommendations,
    Recommender,
    RecommenderOptions,
)
from pocketrec.sdk.table import DTYPES, ItemTable

__all__ = [
    "DTYPES",
    "FORMAT_VERSION",
    "GOLDEN_TOLERANCE",
    "SIGNATURE_KEY",
    "HistoryStore",
    "ItemTable",
    "Recommendation",
    "Recommendations",
    "Recommender",
    "RecommenderOptions",
    "UserTower",
    "bundle_size",
    "encode_histories",
    "model_op_types",
    "read_manifest",
    "verify_bundle",
    "write_bundle",
]
