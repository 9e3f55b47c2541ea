"""The Pareto plot of a benchmark: size and latency against NDCG@10."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def pareto_plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Writes a two-panel PNG: bundle bytes vs NDCG@10, recommend p50 vs NDCG@10.

    Baseline rows (no bytes) are drawn as horizontal reference lines.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [r for r in rows if r.get("model_bytes") is not None]
    baselines = [r for r in rows if r.get("model_bytes") is None]
    figure, (size_axis, latency_axis) = plt.subplots(1, 2, figsize=(13, 5.5))
    for axis, key, label in (
        (size_axis, "bundle_bytes", "bundle size, model + item table (KiB, raw)"),
        (latency_axis, "p50_us", "recommend(k=10) latency p50 (µs, 1 thread)"),
    ):
        scale = 1 / 1024 if key == "bundle_bytes" else 1.0
        xs = [r[key] * scale for r in variants]
        ys = [r["ndcg_at_10"] for r in variants]
        axis.scatter(xs, ys, s=60, c="tab:blue", zorder=3)
        for i, (x, y, row) in enumerate(zip(xs, ys, variants, strict=True)):
            # Alternate above/below: variants of equal accuracy sit side by side.
            axis.annotate(
                row["variant"],
                (x, y),
                textcoords="offset points",
                xytext=(5, 5 if i % 2 == 0 else -12),
                fontsize=8,
                rotation=20,
            )
        for row in baselines:
            axis.axhline(row["ndcg_at_10"], color="grey", linestyle="--", linewidth=0.8)
            axis.annotate(
                f"baseline: {row['variant']}",
                (0.01, row["ndcg_at_10"]),
                xycoords=("axes fraction", "data"),
                fontsize=7,
                color="grey",
                va="bottom",
            )
        axis.set_xscale("log")
        axis.set_xlabel(label)
        axis.set_ylabel("test NDCG@10 (full ranking)")
        axis.grid(True, which="both", alpha=0.3)
    size_axis.set_title("size vs accuracy")
    latency_axis.set_title("latency vs accuracy")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
