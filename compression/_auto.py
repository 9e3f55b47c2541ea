"""Accuracy-aware selection: the smallest bundle whose NDCG@10 drop stays within budget."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pocketrec.compression._compress import CompressionResult, checked_parts, compress
from pocketrec.compression._parts import ModelParts
from pocketrec.compression._recipes import RECIPES, Recipe, get_recipe
from pocketrec.errors import CompressionError, ConversionError, PocketrecError
from pocketrec.evaluation import Split, paired_change

if TYPE_CHECKING:
    from pocketrec.training import TrainedModel

BASELINE = "float32"
SIZE_METRICS = ("raw", "gzip")
REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"
# A candidate's relative NDCG@10 drops: validation, its standard error, test, its error.
Drops = tuple[float, float, float, float]


@dataclass(frozen=True)
class Candidate:
    """One recipe tried by `auto_compress`.

    Attributes:
        name: the recipe name.
        result: the bundle and its measurements; None when the recipe failed.
        ndcg_drop: relative NDCG@10 drop on validation vs the float32 bundle
            (``(base - candidate) / base``; negative when the candidate is better).
        ndcg_drop_se: standard error of ``ndcg_drop`` over users (paired: the same users
            scored by both bundles); a drop within about two of these is noise.
        test_ndcg_drop, test_ndcg_drop_se: the same on the test stage. Selection reads
            validation only, where the float32 model is the epoch early stopping chose:
            a recipe that fine-tunes also loses that choice's luck there, so its test
            drop, on which nothing is chosen, is the unbiased figure.
        kept: whether this candidate is the selected one.
        reason: why it was kept or rejected.
    """

    name: str
    result: CompressionResult | None
    ndcg_drop: float | None
    ndcg_drop_se: float | None
    test_ndcg_drop: float | None
    test_ndcg_drop_se: float | None
    kept: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kept": self.kept,
            "reason": self.reason,
            "ndcg_drop": self.ndcg_drop,
            "ndcg_drop_se": self.ndcg_drop_se,
            "test_ndcg_drop": self.test_ndcg_drop,
            "test_ndcg_drop_se": self.test_ndcg_drop_se,
            **({"result": self.result.to_dict()} if self.result is not None else {}),
        }


@dataclass(frozen=True)
class AutoReport:
    """What `auto_compress` built, measured and chose.

    Attributes:
        baseline: the float32 bundle every drop is measured from.
        candidates: every other recipe tried, in the order given.
        selected: name of the kept recipe (``"float32"`` when no candidate fits).
        max_ndcg_drop: the budget (relative NDCG@10 drop on validation).
        size_metric: ``"gzip"`` or ``"raw"``: the bytes of model + table compared.
    """

    baseline: CompressionResult
    candidates: list[Candidate]
    selected: str
    max_ndcg_drop: float
    size_metric: str

    @property
    def selected_result(self) -> CompressionResult:
        """The kept bundle's result."""
        for candidate in self.candidates:
            if candidate.kept and candidate.result is not None:
                return candidate.result
        return self.baseline

    def to_dict(self) -> dict[str, Any]:
        return {
            "selected": self.selected,
            "selected_bundle": str(self.selected_result.bundle),
            "max_ndcg_drop": self.max_ndcg_drop,
            "size_metric": self.size_metric,
            "baseline": self.baseline.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
        }

    def to_markdown(self) -> str:
        """The report as a Markdown document (sizes in KiB, metrics via the SDK)."""
        base = self.baseline
        lines = [
            "# Compression report",
            "",
            f"Selected: **{self.selected}** — the smallest bundle ({self.size_metric} bytes of "
            "model + table; the manifest and items.json are the same for every recipe) "
            f"whose relative NDCG@10 drop on validation vs float32 is at most "
            f"{self.max_ndcg_drop:.2%}. Metrics are measured with the on-device runtime "
            "(LiteRT through `pocketrec.sdk.Recommender`). A drop is shown ± its standard "
            "error over users (paired); drops within about two standard errors are noise. "
            "The float32 model is the epoch that scored best on validation, so a recipe "
            "that fine-tunes (pruned, clustered, qat) also loses that choice's luck there; "
            "its test drop, on which nothing is chosen, is the unbiased figure.",
            "",
            "| recipe | model raw | model gzip | table raw | table gzip | model+table raw | "
            "model+table gzip | x raw | x gzip | valid HR@10 | valid NDCG@10 | test HR@10 | "
            "test NDCG@10 | valid NDCG drop | test NDCG drop | kept | why |",
            "|" + "---|" * 17,
        ]
        rows: list[tuple[str, CompressionResult | None, list[str], str, str]] = [
            (BASELINE, base, ["-", "-"], "reference", "the float32 reference")
        ]
        rows += [
            (
                c.name,
                c.result,
                [
                    _drop_cell(c.ndcg_drop, c.ndcg_drop_se),
                    _drop_cell(c.test_ndcg_drop, c.test_ndcg_drop_se),
                ],
                "yes" if c.kept else "no",
                c.reason,
            )
            for c in self.candidates
        ]
        for name, result, drops, kept, reason in rows:
            lines.append(_markdown_row(name, result, base, drops, kept, reason))
        lines += ["", "## Accelerator coverage", ""]
        lines += [
            "CPU/XNNPACK figures are measured (execution plans with and without the "
            "delegate); GPU figures are measured with LiteRT's `CompiledModel` where a GPU "
            "is present, otherwise static (per-op support table), as labelled.",
            "",
            "| recipe | ops | XNNPACK | GPU |",
            "|---|---|---|---|",
        ]
        for name, result, *_ in rows:
            if result is not None:
                cover = result.accelerators
                lines.append(
                    f"| {name} | {cover.num_ops} | {cover.xnnpack_delegated}/{cover.num_ops} "
                    f"(measured) | {_gpu_cell(result)} |"
                )
        lines += ["", f"NPU: {base.accelerators.npu}.", ""]
        return "\n".join(lines)

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Writes `REPORT_JSON` and `REPORT_MARKDOWN` into ``out_dir``; returns their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        json_path, md_path = out / REPORT_JSON, out / REPORT_MARKDOWN
        json_path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        md_path.write_text(self.to_markdown(), encoding="utf-8")
        return json_path, md_path


def default_candidates() -> list[str]:
    """Every named recipe except the float32 reference."""
    return [name for name in RECIPES if name != BASELINE]


def auto_compress(
    source: TrainedModel | ModelParts | str | Path,
    out_dir: str | Path,
    *,
    split: Split,
    max_ndcg_drop: float = 0.01,
    candidates: Sequence[str | Recipe] | None = None,
    size_metric: str = "gzip",
    probe_gpu: bool = True,
) -> AutoReport:
    """Builds the float32 bundle and every candidate, keeps the smallest within budget.

    Each bundle is written to ``out_dir/<recipe name>`` and evaluated on the validation
    and test stages through the SDK. A candidate is rejected when its relative NDCG@10
    drop on validation exceeds ``max_ndcg_drop``, or when it fails (the error is the
    reason). Among the others the smallest ``size_metric`` bytes of model + table win;
    float32 is kept when none fits or is smaller. The report is written to ``out_dir``
    (`REPORT_JSON`, `REPORT_MARKDOWN`).
    """
    if not max_ndcg_drop >= 0:
        raise ValueError(f"expected max_ndcg_drop >= 0, got {max_ndcg_drop}")
    if size_metric not in SIZE_METRICS:
        raise ValueError(f"expected size_metric in {SIZE_METRICS}, got {size_metric!r}")
    recipes = [get_recipe(c) for c in (default_candidates() if candidates is None else candidates)]
    names = [r.name for r in recipes]
    if BASELINE in names or len(set(names)) != len(names):
        raise ValueError(
            f"candidates must be distinct recipes other than {BASELINE!r} (the reference), "
            f"got {names}"
        )
    out = Path(out_dir)
    parts = checked_parts(source, split)
    baseline = compress(parts, BASELINE, out / BASELINE, split=split, probe_gpu=probe_gpu)
    tried: list[tuple[Recipe, CompressionResult | None, Drops | None, str]] = []
    for recipe in recipes:
        try:
            result = compress(parts, recipe, out / recipe.name, split=split, probe_gpu=probe_gpu)
        except (CompressionError, ConversionError) as error:
            tried.append((recipe, None, None, f"failed: {error}"))
            continue
        drops = _paired_drop(baseline, result, "valid") + _paired_drop(baseline, result, "test")
        drop, se = drops[:2]
        verdict = "exceeds" if drop > max_ndcg_drop else "within"
        reason = f"NDCG@10 drop {drop:.2%} ± {se:.2%} {verdict} the budget {max_ndcg_drop:.2%}"
        tried.append((recipe, result, drops, reason))

    fitting = [
        (recipe, result)
        for recipe, result, drops, _ in tried
        if result is not None and drops is not None and drops[0] <= max_ndcg_drop
    ]
    base_size = baseline.payload(size_metric)
    fitting = [(r, res) for r, res in fitting if res.payload(size_metric) < base_size]
    selected = (
        min(fitting, key=lambda pair: pair[1].payload(size_metric))[0].name if fitting else BASELINE
    )
    selected_size = (
        base_size
        if selected == BASELINE
        else next(res for r, res in fitting if r.name == selected).payload(size_metric)
    )
    report_candidates = []
    for recipe, result, drops, reason in tried:
        kept = recipe.name == selected
        if result is not None and drops is not None and drops[0] <= max_ndcg_drop and not kept:
            size = result.payload(size_metric)
            reason += f"; larger ({size:,} B {size_metric}) than {selected} ({selected_size:,} B)"
        elif kept:
            reason += f"; smallest within budget ({selected_size:,} B {size_metric})"
        figures = drops if drops is not None else (None, None, None, None)
        report_candidates.append(Candidate(recipe.name, result, *figures, kept, reason))
    report = AutoReport(baseline, report_candidates, selected, max_ndcg_drop, size_metric)
    report.write(out)
    return report


def _paired_drop(
    baseline: CompressionResult, result: CompressionResult, stage: str
) -> tuple[float, float]:
    """Relative NDCG@10 drop on ``stage`` and its standard error over the same users."""
    # Per-user NDCG@10 from the ranks `evaluate` measured through the SDK: no re-scoring.
    try:
        change, error = paired_change(
            baseline.metrics[stage].user_ndcg(10), result.metrics[stage].user_ndcg(10)
        )
    except PocketrecError as undefined:
        raise CompressionError(
            f"the float32 bundle has NDCG@10 {baseline.ndcg_at_10(stage)} on {stage}; a "
            "relative drop is undefined. Train the model before compressing it"
        ) from undefined
    return -change, error


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB"


def _drop_cell(drop: float | None, se: float | None) -> str:
    if drop is None or se is None:
        return "-"
    return f"{drop:.2%} ± {se:.2%}"


def _markdown_row(
    name: str,
    result: CompressionResult | None,
    base: CompressionResult,
    drops: list[str],
    kept: str,
    reason: str,
) -> str:
    reason = reason.replace("|", "\\|").replace("\n", " ")
    if result is None:
        return f"| {name} |" + " - |" * 14 + f" {kept} | {reason} |"
    s = result.sizes
    valid, test = result.metrics["valid"], result.metrics["test"]
    cells = [
        _kib(s["model"]["raw"]),
        _kib(s["model"]["gzip"]),
        _kib(s["table"]["raw"]),
        _kib(s["table"]["gzip"]),
        _kib(result.payload("raw")),
        _kib(result.payload("gzip")),
        f"{base.payload('raw') / result.payload('raw'):.2f}",
        f"{base.payload('gzip') / result.payload('gzip'):.2f}",
        f"{valid.hr_at_10:.4f}",
        f"{valid.ndcg_at_10:.4f}",
        f"{test.hr_at_10:.4f}",
        f"{test.ndcg_at_10:.4f}",
        *drops,
    ]
    return f"| {name} | " + " | ".join(cells) + f" | {kept} | {reason} |"


def _gpu_cell(result: CompressionResult) -> str:
    cover = result.accelerators
    if cover.gpu_fully_accelerated:
        return f"whole graph ({cover.gpu_source})"
    rejected = ", ".join(sorted(cover.gpu_rejected)) or "partial"
    supported = "?" if cover.gpu_supported is None else str(cover.gpu_supported)
    return f"{supported}/{cover.num_ops}, rejects {rejected} ({cover.gpu_source})"
