"""Plain-text tables of metrics, for the console and Markdown reports."""

from __future__ import annotations

from collections.abc import Mapping

from pocketrec.evaluation._metrics import Metrics

_COLUMNS = ("hr@10", "ndcg@10", "mrr", "hr@50")

TableRow = tuple[Metrics | None, Metrics] | str
"""(validation or None, test) metrics, or the reason the row's model was skipped."""


def metrics_table(rows: Mapping[str, TableRow]) -> str:
    """A Markdown table: one row per name with (validation, test) metrics or a skip reason.

    A skipped row says so in its cells, so that a reader sees the model was not forgotten.
    """
    header = "| model | valid ndcg@10 | " + " | ".join(f"test {c}" for c in _COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(_COLUMNS) + 2)]
    for name, row in rows.items():
        if isinstance(row, str):
            lines.append(f"| {name} | skipped: {row} |" + " |" * len(_COLUMNS))
            continue
        valid, test = row
        values = test.as_dict()
        valid_text = f"{valid.ndcg_at_10:.4f}" if valid is not None else "-"
        cells = " | ".join(f"{values[c]:.4f}" for c in _COLUMNS)
        lines.append(f"| {name} | {valid_text} | {cells} |")
    return "\n".join(lines)
