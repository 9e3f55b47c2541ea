"""The shared evaluation protocol: split, full-ranking metrics, baselines, and queries."""

from pocketrec.evaluation._baselines import (
    DEFAULT_GRIDS,
    EASE,
    BaselineResult,
    BaselineSkipped,
    ItemKNN,
    LastItem,
    Popularity,
    available_memory_bytes,
    indicator_matrix,
    run_baselines,
    tune,
)
from pocketrec.evaluation._metrics import (
    Metrics,
    ScoreFn,
    evaluate,
    paired_change,
    target_ranks,
)
from pocketrec.evaluation._queries import QUERY_KINDS, STOP_WORDS, content_words, typo
from pocketrec.evaluation._report import TableRow, metrics_table
from pocketrec.evaluation._split import Split, leave_last_out

__all__ = [
    "DEFAULT_GRIDS",
    "EASE",
    "QUERY_KINDS",
    "STOP_WORDS",
    "BaselineResult",
    "BaselineSkipped",
    "ItemKNN",
    "LastItem",
    "Metrics",
    "Popularity",
    "ScoreFn",
    "Split",
    "TableRow",
    "available_memory_bytes",
    "content_words",
    "evaluate",
    "indicator_matrix",
    "leave_last_out",
    "metrics_table",
    "paired_change",
    "run_baselines",
    "target_ranks",
    "tune",
    "typo",
]
