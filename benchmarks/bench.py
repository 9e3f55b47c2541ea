"""The quantization benchmark: size × accuracy × latency for every compression recipe.

`pocketrec bench --data PATH --out OUT` (or `python benchmarks/bench.py ...`, the same
command) trains or loads the float model, builds every recipe's bundle, and measures each
one with the on-device runtime in one run on one machine. Writes `results.json`,
`results.md` and `pareto.png` into OUT.
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
from typing import Any

import numpy as np

from pocketrec import _log
from pocketrec.errors import PocketrecError

QUICK_USERS = 200


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
        seed: seeds the sample, the training and the recipes.
        baselines: tune and measure the baselines too (rows of kind "baseline").
    """

    out: Path
    recipes: Sequence[str] | None = None
    model_dir: Path | None = None
    quick: bool = False
    calls: int = 1000
    epochs: int | None = None
    seed: int = 0
    baselines: bool = True


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
    from pocketrec.compression import RECIPES, compress
    from pocketrec.evaluation import BaselineResult, leave_last_out, run_baselines
    from pocketrec.training import ModelConfig, TrainConfig, TrainedModel, run_training

    started = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    split = leave_last_out(interactions)
    if config.quick:
        split = sample_users(split, QUICK_USERS, config.seed)
    names = list(config.recipes) if config.recipes is not None else list(RECIPES)
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        raise ValueError(f"unknown recipes {unknown}; choose from {sorted(RECIPES)}")
    if "float32" in names:
        names.remove("float32")
    names.insert(0, "float32")

    baselines: dict[str, BaselineResult] = {}
    if config.model_dir is not None:
        trained = TrainedModel.load(config.model_dir)
        if config.baselines:
            baselines = run_baselines(split)
    else:
        default_epochs = 2 if config.quick else TrainConfig.epochs
        epochs = config.epochs if config.epochs is not None else default_epochs
        train_config = TrainConfig(seed=config.seed, epochs=epochs)
        run = run_training(split, ModelConfig(), train_config, out, baselines=config.baselines)
        trained, baselines = run.trained, run.baselines

    # The latest L test-time events of each user: what a device holds when it recommends.
    recent = trained.config.history_length
    histories = [[str(split.item_ids[i]) for i in h[-recent:]] for h in split.histories("test")]
    calls = config.calls if not config.quick else min(config.calls, 200)
    rows: list[dict[str, Any]] = []
    for name in _log.progress(names, "recipes"):
        bundle_dir = Path("bundles", name)  # recorded relative to OUT
        result = compress(trained, name, out / bundle_dir, split=split)
        bundle, size, test = result.bundle, result.sizes, result.metrics["test"]
        timing = _measure_in_subprocess(bundle, histories, calls)
        rows.append(
            {
                "variant": name,
                "kind": "bundle",
                "model_bytes": size["model"]["raw"],
                "table_bytes": size["table"]["raw"],
                "bundle_bytes": size["model"]["raw"] + size["table"]["raw"],
                "gzip_bytes": size["model"]["gzip"] + size["table"]["gzip"],
                "hr_at_10": test.hr_at_10,
                "ndcg_at_10": test.ndcg_at_10,
                "mrr": test.mrr,
                "valid_ndcg_at_10": result.metrics["valid"].ndcg_at_10,
                "p50_us": timing["recommend"]["p50_us"],
                "p99_us": timing["recommend"]["p99_us"],
                "user_tower_p50_us": timing["user_tower"]["p50_us"],
                "user_tower_p99_us": timing["user_tower"]["p99_us"],
                "load_ms": timing["load_ms"],
                "peak_rss_mb": timing["peak_rss_mb"],
                "tensorflow_loaded_on_device": timing["tensorflow_loaded"],
                "sparsity": result.sparsity,
                "gpu_fully_accelerated": result.accelerators.gpu_fully_accelerated,
                "gpu_source": result.accelerators.gpu_source,
                "bundle": bundle_dir.as_posix(),
            }
        )
    reference = rows[0]
    for row in rows:
        for metric in ("hr_at_10", "ndcg_at_10", "mrr", "valid_ndcg_at_10"):
            row[f"{metric}_change"] = (row[metric] - reference[metric]) / reference[metric]
        row["size_ratio"] = reference["bundle_bytes"] / row["bundle_bytes"]
        row["gzip_ratio"] = reference["gzip_bytes"] / row["gzip_bytes"]

    for name, result in baselines.items():
        rows.append(
            {
                "variant": name,
                "kind": "baseline",
                "model_bytes": None,
                "table_bytes": None,
                "bundle_bytes": None,
                "gzip_bytes": None,
                "hr_at_10": result.test.hr_at_10,
                "ndcg_at_10": result.test.ndcg_at_10,
                "mrr": result.test.mrr,
                "valid_ndcg_at_10": result.valid.ndcg_at_10,
                "p50_us": None,
                "p99_us": None,
                "params": result.params,
            }
        )
    results = {
        "rows": rows,
        "machine": machine_info(),
        "data": {
            "source": dataset_name(interactions.source),
            "users": split.num_users,
            "items": split.num_items,
            "quick": config.quick,
        },
        "seed": config.seed,
        "calls": calls,
        "seconds": time.perf_counter() - started,
    }
    write_outputs(results, out)
    return results


def results_markdown(results: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| variant | model KiB | table KiB | gzip KiB | × smaller (raw/gzip) | HR@10 | NDCG@10 "
        "| ΔNDCG | MRR | valid NDCG@10 (Δ) | tower p50 µs | recommend p50/p99 µs | load ms "
        "| RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        if row["kind"] == "baseline":
            lines.append(
                f"| baseline: {row['variant']} | | | | | {row['hr_at_10']:.4f} | "
                f"{row['ndcg_at_10']:.4f} | | {row['mrr']:.4f} | "
                f"{row['valid_ndcg_at_10']:.4f} | | | | |"
            )
            continue
        lines.append(
            f"| {row['variant']} | {row['model_bytes'] / 1024:.1f} | "
            f"{row['table_bytes'] / 1024:.1f} | {row['gzip_bytes'] / 1024:.1f} | "
            f"{row['size_ratio']:.2f} / {row['gzip_ratio']:.2f} | {row['hr_at_10']:.4f} | "
            f"{row['ndcg_at_10']:.4f} | {100 * row['ndcg_at_10_change']:+.1f}% | "
            f"{row['mrr']:.4f} | {row['valid_ndcg_at_10']:.4f} "
            f"({100 * row['valid_ndcg_at_10_change']:+.1f}%) | {row['user_tower_p50_us']:.0f} | "
            f"{row['p50_us']:.0f} / {row['p99_us']:.0f} | {row['load_ms']:.1f} | "
            f"{row['peak_rss_mb']:.0f} |"
        )
    machine = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    lines += [
        "",
        f"{results['data']['source']}: {results['data']['users']:,} users, "
        f"{results['data']['items']:,} items; test split of the temporal leave-last-out "
        f"protocol (validation where marked), full ranking; Δ is relative to float32. "
        f"Latency: {results['calls']} calls after warm-up, 1 thread, "
        f"{machine['cpu']} ({machine['cores']} cores); {versions}.",
    ]
    return "\n".join(lines) + "\n"


def write_outputs(results: dict[str, Any], out: Path) -> None:
    from pocketrec.benchmarks._plot import pareto_plot

    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(results_markdown(results))
    pareto_plot(
        results["rows"],
        out / "pareto.png",
        title=f"pocketrec variants on {results['data']['source']}",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python benchmarks/bench.py ARGS` is `pocketrec bench ARGS`."""
    from pocketrec.cli import main as pocketrec

    return pocketrec(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
