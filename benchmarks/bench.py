"""The quantization benchmark: size × accuracy × latency for every compression recipe.

`pocketrec bench --data PATH --out OUT` (or `python benchmarks/bench.py ...`, the same
command) trains or loads the float model, builds every recipe's bundle, and measures each
one with the on-device runtime in one run on one machine. Writes `results.json`,
`results.md` and `pareto.png` into OUT. With several seeds (`--seeds 0,1,2`) it trains,
compresses and evaluates once per seed and adds the mean ± std over seeds; the baselines
are deterministic and run once. Every change from float32 carries its standard error over
users (paired: the same users score both bundles), so a budget can be read against what
the data resolves.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pocketrec import _log
from pocketrec.errors import PocketrecError

if TYPE_CHECKING:
    from pocketrec.evaluation import BaselineResult, Split
    from pocketrec.training import TrainedModel

QUICK_USERS = 200
# The bundle every change is measured against.
REFERENCE = "float32"


@dataclass
class BenchConfig:
    """What to benchmark and how hard.

    Attributes:
        out: the output folder.
        recipes: recipe names; None for every recipe.
        model_dir: a saved training run to reuse instead of training.
        quick: a small user sample, few epochs and calls (for CI).
        calls: timed calls per latency figure (after warm-up).
        epochs: training epochs (None: the training default, or 2 in quick mode).
        seeds: one training run per seed; the first also seeds the quick sample, and its
            bundles are the ones whose latency is measured.
        baselines: tune and measure the baselines too (rows of kind "baseline").
    """

    out: Path
    recipes: Sequence[str] | None = None
    model_dir: Path | None = None
    quick: bool = False
    calls: int = 1000
    epochs: int | None = None
    seeds: Sequence[int] = (0,)
    baselines: bool = True

    def validate(self) -> None:
        """Raises ValueError on seeds that cannot make a run."""
        seeds = list(self.seeds)
        if not seeds:
            raise ValueError("seeds is empty; give at least one seed, e.g. seeds=(0,)")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds {seeds} repeat a seed; give each seed once")
        if self.model_dir is not None and len(seeds) > 1:
            raise ValueError(
                f"a saved model ({self.model_dir}) is one training run, but {len(seeds)} "
                "seeds were given; give one seed, or drop the model to train one per seed"
            )


# What the summary averages over seeds: test metrics, then validation ones.
SUMMARY_METRICS = (
    "ndcg_at_10",
    "hr_at_10",
    "mrr",
    "valid_ndcg_at_10",
    "valid_hr_at_10",
    "valid_mrr",
)
# The metrics whose change from the reference gets a paired standard error, by split.
PAIRED_METRICS = {"test": "ndcg_at_10", "valid": "valid_ndcg_at_10"}
# Each evaluated user's NDCG@10 by (variant, seed) and split: what the paired errors read.
UserScores = dict[tuple[str, int], dict[str, np.ndarray]]


def dataset_name(source: str) -> str:
    """``source`` with each path cut to its last part ("MovieLens 100K at ml-100k").

    Results are shared: they must not carry the directory layout of the machine that made
    them, absolute (``/work/...``) or relative (``../shared/...``).
    """
    return re.sub(r"[^\s,;()]*/[^\s,;()]+", lambda m: Path(m.group()).name or m.group(), source)


def machine_info() -> dict[str, Any]:
    """CPU model, cores and library versions of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in (
        "numpy",
        "ai-edge-litert",
        "tensorflow",
        "tf-keras",
        "tensorflow-model-optimization",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def sample_users(split, count: int, seed: int):
    """The split restricted to `count` users drawn with `seed` (same item universe)."""
    from pocketrec.evaluation import Split

    rng = np.random.default_rng(seed)
    users = np.sort(rng.choice(split.num_users, size=min(count, split.num_users), replace=False))
    return Split(
        item_ids=split.item_ids,
        users=split.users[users],
        train=[split.train[u] for u in users],
        valid=split.valid[users],
        test=split.test[users],
        item_genres=split.item_genres,
        genre_names=split.genre_names,
        titles=split.titles,
        stats={**split.stats, "sampled_users": len(users)},
    )


def _measure_in_subprocess(bundle: Path, histories: list[list[str]], calls: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
        json.dump(histories, file)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pocketrec.benchmarks._measure",
                str(bundle),
                file.name,
                str(calls),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        os.unlink(file.name)
    if done.returncode != 0:
        raise PocketrecError(f"measuring {bundle} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_benchmark(interactions, config: BenchConfig) -> dict[str, Any]:
    """Runs the benchmark on an interaction log; returns what `results.json` holds."""
    from pocketrec.compression import RECIPES
    from pocketrec.evaluation import leave_last_out, run_baselines
    from pocketrec.training import ModelConfig, TrainConfig, TrainedModel, run_training

    started = time.perf_counter()
    config.validate()
    seeds = [int(seed) for seed in config.seeds]
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    split = leave_last_out(interactions)
    if config.quick:
        split = sample_users(split, QUICK_USERS, seeds[0])
    names = list(config.recipes) if config.recipes is not None else list(RECIPES)
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        raise ValueError(f"unknown recipes {unknown}; choose from {sorted(RECIPES)}")
    if REFERENCE in names:
        names.remove(REFERENCE)
    names.insert(0, REFERENCE)

    baselines: dict[str, BaselineResult] = {}
    baselines_seconds = None
    if config.baselines:
        _log.LOGGER.info("baselines (tuned on validation) ...")
        clock = time.perf_counter()
        baselines = run_baselines(split)
        baselines_seconds = time.perf_counter() - clock
    default_epochs = 2 if config.quick else TrainConfig.epochs
    epochs = config.epochs if config.epochs is not None else default_epochs
    calls = config.calls if not config.quick else min(config.calls, 200)
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    user_scores: UserScores = {}
    for index, seed in enumerate(seeds):
        # One seed keeps the plain layout (OUT/model, OUT/bundles); several get a folder each.
        seed_dir = Path() if len(seeds) == 1 else Path(f"seed-{seed}")
        train_seconds = None
        if config.model_dir is not None:
            trained = TrainedModel.load(config.model_dir)
        else:
            _log.LOGGER.info("seed %d: training ...", seed)
            clock = time.perf_counter()
            run = run_training(
                split,
                ModelConfig(),
                TrainConfig(seed=seed, epochs=epochs),
                out / seed_dir,
                baselines=False,
            )
            train_seconds = time.perf_counter() - clock
            trained = run.trained
        runs.append({"seed": seed, "train_seconds": train_seconds})
        rows += _bundle_rows(
            trained,
            names,
            split,
            out,
            seed_dir,
            seed,
            user_scores,
            calls=calls if index == 0 else None,
        )
    rows += [baseline_row(result) for result in baselines.values()]
    results = {
        "rows": rows,
        "summary": summarize(rows, user_scores),
        "runs": runs,
        "machine": machine_info(),
        "data": {
            "source": dataset_name(interactions.source),
            "users": split.num_users,
            "items": split.num_items,
            "quick": config.quick,
        },
        "seeds": seeds,
        "latency_seed": seeds[0],
        "calls": calls,
        "baselines_seconds": baselines_seconds,
        "seconds": time.perf_counter() - started,
    }
    write_outputs(results, out)
    return results


def _bundle_rows(
    trained: TrainedModel,
    names: Sequence[str],
    split: Split,
    out: Path,
    seed_dir: Path,
    seed: int,
    user_scores: UserScores,
    *,
    calls: int | None,
) -> list[dict[str, Any]]:
    """One row per recipe of one seed's model; latency only when `calls` is given.

    Each bundle's per-user NDCG@10 goes into ``user_scores`` for the summary's errors.
    """
    from pocketrec.compression import compress
    from pocketrec.evaluation import paired_change

    # The latest L test-time events of each user: what a device holds when it recommends.
    recent = trained.config.history_length
    histories = [[str(split.item_ids[i]) for i in h[-recent:]] for h in split.histories("test")]
    rows: list[dict[str, Any]] = []
    # A line per recipe, not a bar: a pruned recipe takes minutes, and a log file (or a
    # terminal) should say which ones are done and what they scored.
    for name in names:
        bundle_dir = seed_dir / "bundles" / name  # recorded relative to OUT
        result = compress(trained, name, out / bundle_dir, split=split)
        size, test, valid = result.sizes, result.metrics["test"], result.metrics["valid"]
        user_scores[name, seed] = {"test": test.user_ndcg(10), "valid": valid.user_ndcg(10)}
        _log.LOGGER.info(
            "seed %d, %s: valid ndcg@10 %.4f, test %.4f, %s B gzip (%.0f s)",
            seed,
            name,
            valid.ndcg_at_10,
            test.ndcg_at_10,
            f"{result.payload('gzip'):,}",
            result.seconds,
        )
        timing = _measure_in_subprocess(result.bundle, histories, calls) if calls else None
        rows.append(
            {
                "variant": name,
                "kind": "bundle",
                "seed": seed,
                "model_bytes": size["model"]["raw"],
                "table_bytes": size["table"]["raw"],
                "bundle_bytes": result.payload("raw"),
                "gzip_bytes": result.payload("gzip"),
                "hr_at_10": test.hr_at_10,
                "ndcg_at_10": test.ndcg_at_10,
                "mrr": test.mrr,
                "valid_ndcg_at_10": valid.ndcg_at_10,
                "valid_hr_at_10": valid.hr_at_10,
                "valid_mrr": valid.mrr,
                "p50_us": timing["recommend"]["p50_us"] if timing else None,
                "p99_us": timing["recommend"]["p99_us"] if timing else None,
                "user_tower_p50_us": timing["user_tower"]["p50_us"] if timing else None,
                "user_tower_p99_us": timing["user_tower"]["p99_us"] if timing else None,
                "load_ms": timing["load_ms"] if timing else None,
                "peak_rss_mb": timing["peak_rss_mb"] if timing else None,
                "tensorflow_loaded_on_device": timing["tensorflow_loaded"] if timing else None,
                "sparsity": result.sparsity,
                "gpu_fully_accelerated": result.accelerators.gpu_fully_accelerated,
                "gpu_source": result.accelerators.gpu_source,
                "bundle": bundle_dir.as_posix(),
            }
        )
    reference = rows[0]
    for row in rows:
        for metric in ("hr_at_10", "mrr"):
            row[f"{metric}_change"] = (row[metric] - reference[metric]) / reference[metric]
        for stage, metric in PAIRED_METRICS.items():
            row[f"{metric}_change"], row[f"{metric}_change_se"] = paired_change(
                user_scores[REFERENCE, seed][stage], user_scores[row["variant"], seed][stage]
            )
        row["size_ratio"] = reference["bundle_bytes"] / row["bundle_bytes"]
        row["gzip_ratio"] = reference["gzip_bytes"] / row["gzip_bytes"]
    return rows


def baseline_row(result: BaselineResult) -> dict[str, Any]:
    """A baseline's row; a skipped baseline is a row too, with the reason and no metrics."""
    row: dict[str, Any] = {
        "variant": result.name,
        "kind": "baseline",
        "seed": None,
        "model_bytes": None,
        "table_bytes": None,
        "bundle_bytes": None,
        "gzip_bytes": None,
        "p50_us": None,
        "p99_us": None,
    }
    if result.skipped is not None:
        return {**row, "skipped": result.skipped}
    assert result.valid is not None and result.test is not None
    return {
        **row,
        "hr_at_10": result.test.hr_at_10,
        "ndcg_at_10": result.test.ndcg_at_10,
        "mrr": result.test.mrr,
        "valid_ndcg_at_10": result.valid.ndcg_at_10,
        "valid_hr_at_10": result.valid.hr_at_10,
        "valid_mrr": result.valid.mrr,
        "params": result.params,
    }


def summarize(
    rows: Sequence[dict[str, Any]], user_scores: UserScores | None = None
) -> list[dict[str, Any]]:
    """Mean and sample std over seeds of `SUMMARY_METRICS`, one entry per variant.

    A deterministic baseline has one row: its std is None. A skipped baseline keeps its
    reason. With ``user_scores``, each bundle but the reference also gets the change of its
    seed-mean NDCG@10 from the reference's (``ndcg_at_10_change``,
    ``valid_ndcg_at_10_change``: ``mean`` and ``se``): each user's NDCG@10 averaged over the
    seeds, the error taken over users, paired.
    """
    from pocketrec.evaluation import paired_change

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["kind"], row["variant"]), []).append(row)
    summary = []
    for (kind, variant), group in groups.items():
        entry: dict[str, Any] = {"variant": variant, "kind": kind, "seeds": len(group)}
        if "skipped" in group[0]:
            summary.append({**entry, "skipped": group[0]["skipped"]})
            continue
        for metric in SUMMARY_METRICS:
            values = np.array([row[metric] for row in group], dtype=np.float64)
            entry[metric] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else None,
            }
        if user_scores is not None and kind == "bundle" and variant != REFERENCE:
            seeds = [row["seed"] for row in group]
            for stage, metric in PAIRED_METRICS.items():
                change, error = paired_change(
                    np.mean([user_scores[REFERENCE, seed][stage] for seed in seeds], axis=0),
                    np.mean([user_scores[variant, seed][stage] for seed in seeds], axis=0),
                )
                entry[f"{metric}_change"] = {"mean": change, "se": error}
        summary.append(entry)
    return summary


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def _change(change: float, error: float | None) -> str:
    return f"{100 * change:+.1f}%" + ("" if error is None else f" ± {100 * error:.1f}%")


def _per_seed_cells(row: dict[str, Any]) -> list[str]:
    if row["kind"] == "baseline":
        label = f"baseline: {row['variant']}"
        if "skipped" in row:
            return [label, "", f"skipped: {row['skipped']}", *[""] * 12]
        return [
            label, "", "", "", "", "",
            f"{row['hr_at_10']:.4f}", f"{row['ndcg_at_10']:.4f}", "", f"{row['mrr']:.4f}",
            f"{row['valid_ndcg_at_10']:.4f}", "", "", "", "",
        ]  # fmt: skip
    timed = row["p50_us"] is not None
    # The reference's error is zero by construction: no point printing it.
    errors = {
        metric: None if row["variant"] == REFERENCE else row[f"{metric}_change_se"]
        for metric in PAIRED_METRICS.values()
    }
    return [
        row["variant"],
        str(row["seed"]),
        f"{row['model_bytes'] / 1024:.1f}",
        f"{row['table_bytes'] / 1024:.1f}",
        f"{row['gzip_bytes'] / 1024:.1f}",
        f"{row['size_ratio']:.2f} / {row['gzip_ratio']:.2f}",
        f"{row['hr_at_10']:.4f}",
        f"{row['ndcg_at_10']:.4f}",
        _change(row["ndcg_at_10_change"], errors["ndcg_at_10"]),
        f"{row['mrr']:.4f}",
        f"{row['valid_ndcg_at_10']:.4f} "
        f"({_change(row['valid_ndcg_at_10_change'], errors['valid_ndcg_at_10'])})",
        f"{row['user_tower_p50_us']:.0f}" if timed else "",
        f"{row['p50_us']:.0f} / {row['p99_us']:.0f}" if timed else "",
        f"{row['load_ms']:.1f}" if timed else "",
        f"{row['peak_rss_mb']:.0f}" if timed else "",
    ]


def _summary_cells(entry: dict[str, Any]) -> list[str]:
    label = entry["variant"] if entry["kind"] == "bundle" else f"baseline: {entry['variant']}"
    width = len(SUMMARY_METRICS) + len(PAIRED_METRICS)
    if "skipped" in entry:
        return [label, "", f"skipped: {entry['skipped']}", *[""] * (width - 1)]
    cells = [label, str(entry["seeds"]) if entry["kind"] == "bundle" else "deterministic"]
    for metric in SUMMARY_METRICS:
        mean, std = entry[metric]["mean"], entry[metric]["std"]
        cells.append(f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}")
    is_reference = entry["kind"] == "bundle" and entry["variant"] == REFERENCE
    for metric in PAIRED_METRICS.values():
        change = entry.get(f"{metric}_change")
        if change is not None:
            cells.append(_change(change["mean"], change["se"]))
        else:
            cells.append("reference" if is_reference else "")
    return cells


def results_markdown(results: dict[str, Any]) -> str:
    """The results as Markdown: a per-seed table, then (several seeds) mean ± std."""
    header = [
        "variant", "seed", "model KiB", "table KiB", "gzip KiB", "× smaller (raw/gzip)",
        "HR@10", "NDCG@10", "ΔNDCG", "MRR", "valid NDCG@10 (Δ)", "tower p50 µs",
        "recommend p50/p99 µs", "load ms", "RSS MB",
    ]  # fmt: skip
    lines = _markdown_table(header, [_per_seed_cells(row) for row in results["rows"]])
    machine = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    trained = [run for run in results["runs"] if run["train_seconds"] is not None]
    training = (
        "Training time: "
        + ", ".join(f"seed {run['seed']} {run['train_seconds']:.0f} s" for run in trained)
        + ". "
        if trained
        else "Model loaded, not trained. "
    )
    baselines = (
        f"Baselines (tuned once, deterministic): {results['baselines_seconds']:.0f} s. "
        if results["baselines_seconds"] is not None
        else ""
    )
    lines += [
        "",
        f"{results['data']['source']}: {results['data']['users']:,} users, "
        f"{results['data']['items']:,} items; test split of the temporal leave-last-out "
        f"protocol (validation where marked), full ranking; Δ is relative to {REFERENCE} of "
        f"the same seed, ± its standard error over users (paired). {training}{baselines}"
        f"Latency (seed {results['latency_seed']}'s bundles only): {results['calls']} calls "
        f"after warm-up, 1 thread, {machine['cpu']} ({machine['cores']} cores); {versions}.",
    ]
    if len(results["seeds"]) > 1:
        summary_header = [
            "variant", "seeds", "test NDCG@10", "test HR@10", "test MRR", "valid NDCG@10",
            "valid HR@10", "valid MRR", "test ΔNDCG@10", "valid ΔNDCG@10",
        ]  # fmt: skip
        lines += [
            "",
            f"Mean ± sample std over seeds {', '.join(map(str, results['seeds']))}; Δ is the "
            f"change of the mean NDCG@10 over those seeds from {REFERENCE}'s, ± its standard "
            "error over users (each user's NDCG@10 averaged over the seeds, paired):",
            "",
            *_markdown_table(summary_header, [_summary_cells(e) for e in results["summary"]]),
        ]
    return "\n".join(lines) + "\n"


def write_outputs(results: dict[str, Any], out: Path) -> None:
    from pocketrec.benchmarks._plot import pareto_plot

    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(results_markdown(results))
    # The latency panel needs the timed seed; skipped baselines have no accuracy to draw.
    plotted = [
        row
        for row in results["rows"]
        if row["seed"] == results["latency_seed"] or (row["seed"] is None and "skipped" not in row)
    ]
    pareto_plot(
        plotted,
        out / "pareto.png",
        title=f"pocketrec variants on {results['data']['source']}",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python benchmarks/bench.py ARGS` is `pocketrec bench ARGS`."""
    from pocketrec.cli import main as pocketrec

    return pocketrec(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
