from __future__ import annotations

import json
import logging
import struct

import numpy as np
import pytest

from pocketrec._log import LOGGER
from pocketrec.benchmarks.bench import (
    SUMMARY_METRICS,
    BenchConfig,
    baseline_row,
    dataset_name,
    results_markdown,
    run_benchmark,
    summarize,
)
from pocketrec.data import synthetic

ROW_FIELDS = {
    "variant": str,
    "model_bytes": int,
    "table_bytes": int,
    "gzip_bytes": int,
    "hr_at_10": float,
    "ndcg_at_10": float,
    "valid_ndcg_at_10": float,
    "p50_us": float,
    "p99_us": float,
}


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    log = synthetic(num_users=300, num_items=200, seed=2)
    lines, level = _Lines(), LOGGER.level
    LOGGER.addHandler(lines)
    LOGGER.setLevel(logging.INFO)
    try:
        results = run_benchmark(
            log,
            BenchConfig(
                out=out,
                recipes=["int8+int8-table", "int8+int4-table"],
                quick=True,
                calls=50,
                epochs=1,
                seeds=(0, 1),
            ),
        )
    finally:
        LOGGER.removeHandler(lines)
        LOGGER.setLevel(level)
    return out, results, lines.lines


def seed_rows(results, seed):
    return [r for r in results["rows"] if r["kind"] == "bundle" and r["seed"] == seed]


def test_quick_benchmark_writes_json_markdown_and_plot(quick_run):
    out, results, _ = quick_run
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    png = (out / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 800 and height > 400
    markdown = (out / "results.md").read_text()
    for row in results["rows"]:
        assert row["variant"] in markdown


def test_every_variant_row_has_the_documented_fields_and_sane_values(quick_run):
    _, results, _ = quick_run
    bundles = seed_rows(results, 0)
    assert [r["variant"] for r in bundles] == ["float32", "int8+int8-table", "int8+int4-table"]
    for row in bundles:
        for field, kind in ROW_FIELDS.items():
            assert isinstance(row[field], kind), (row["variant"], field, row[field])
        assert 0 <= row["hr_at_10"] <= 1 and 0 <= row["ndcg_at_10"] <= row["hr_at_10"]
        assert 0 < row["p50_us"] <= row["p99_us"]
        assert row["tensorflow_loaded_on_device"] is False
    float32, int8, int4 = bundles
    assert float32["ndcg_at_10_change"] == 0.0
    assert float32["valid_ndcg_at_10_change"] == 0.0
    assert int8["table_bytes"] < float32["table_bytes"] / 3
    assert int4["table_bytes"] < int8["table_bytes"]


def test_baselines_are_rows_and_machine_block_names_the_libraries(quick_run):
    _, results, _ = quick_run
    baselines = [r["variant"] for r in results["rows"] if r["kind"] == "baseline"]
    assert sorted(baselines) == ["ease", "itemknn", "last-item", "popularity"], "each once"
    machine = results["machine"]
    assert machine["cores"] >= 1 and machine["cpu"]
    assert machine["versions"]["ai-edge-litert"] and machine["versions"]["numpy"]
    assert results["data"]["quick"] is True and results["data"]["users"] <= 200


def test_unknown_recipe_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown recipes"):
        run_benchmark(synthetic(50, 40), BenchConfig(out=tmp_path, recipes=["int3"]))


def test_results_carry_no_path_of_the_machine_that_made_them(quick_run):
    out, results, _ = quick_run
    for name in ("results.json", "results.md"):
        assert str(out) not in (out / name).read_text()
    for row in results["rows"]:
        if row["kind"] == "bundle":
            assert (out / row["bundle"] / "manifest.json").is_file()
    for seed in (0, 1):
        assert (out / f"seed-{seed}" / "model" / "model.json").is_file()
        assert (out / f"seed-{seed}" / "metrics.json").is_file()


def test_each_seed_trains_its_own_model_and_only_the_first_is_timed(quick_run):
    out, results, _ = quick_run
    assert results["seeds"] == [0, 1] and results["latency_seed"] == 0
    assert [run["seed"] for run in results["runs"]] == [0, 1]
    assert all(run["train_seconds"] > 0 for run in results["runs"])
    first, second = seed_rows(results, 0), seed_rows(results, 1)
    assert [r["variant"] for r in second] == [r["variant"] for r in first]
    assert all(r["p50_us"] is None and r["load_ms"] is None for r in second)
    assert all(r["bundle"].startswith("seed-1/") for r in second)
    weights = [(out / f"seed-{seed}" / "model" / "weights.npz").read_bytes() for seed in (0, 1)]
    assert weights[0] != weights[1], "the seeds trained different models"


def test_each_recipe_logs_one_line_with_its_scores_as_it_finishes(quick_run):
    # Off a terminal a bench run shows no bar: these lines are its progress.
    _, results, lines = quick_run
    recipe_lines = [line for line in lines if "B gzip" in line]
    rows = [r for r in results["rows"] if r["kind"] == "bundle"]
    assert len(recipe_lines) == len(rows) == 2 * 3  # float32 and the two recipes, per seed
    for line, row in zip(recipe_lines, rows, strict=True):
        assert line.startswith(f"seed {row['seed']}, {row['variant']}: ")
        assert f"valid ndcg@10 {row['valid_ndcg_at_10']:.4f}" in line
        assert f"test {row['ndcg_at_10']:.4f}" in line
        assert f"{row['gzip_bytes']:,} B gzip" in line


def test_summary_is_the_mean_and_std_over_seeds_with_baselines_listed_once(quick_run):
    out, results, _ = quick_run
    summary = {(e["kind"], e["variant"]): e for e in results["summary"]}
    float32 = summary["bundle", "float32"]
    assert float32["seeds"] == 2
    for metric in SUMMARY_METRICS:
        values = [seed_rows(results, seed)[0][metric] for seed in (0, 1)]
        assert float32[metric]["mean"] == pytest.approx(np.mean(values))
        assert float32[metric]["std"] == pytest.approx(np.std(values, ddof=1))
    ease = summary["baseline", "ease"]
    assert ease["seeds"] == 1 and ease["ndcg_at_10"]["std"] is None
    markdown = (out / "results.md").read_text()
    assert "Mean ± sample std over seeds 0, 1" in markdown
    assert f"{float32['ndcg_at_10']['mean']:.4f} ± {float32['ndcg_at_10']['std']:.4f}" in markdown
    for run in results["runs"]:
        assert f"seed {run['seed']} {run['train_seconds']:.0f} s" in markdown
    assert "Latency (seed 0's bundles only)" in markdown


def test_each_change_from_float32_carries_its_paired_error_per_seed_and_over_seeds(quick_run):
    out, results, _ = quick_run
    markdown = (out / "results.md").read_text()
    for seed in (0, 1):
        float32, *others = seed_rows(results, seed)
        assert float32["variant"] == "float32"
        assert float32["ndcg_at_10_change"] == float32["ndcg_at_10_change_se"] == 0.0
        for row in others:
            for metric in ("ndcg_at_10", "valid_ndcg_at_10"):
                change, error = row[f"{metric}_change"], row[f"{metric}_change_se"]
                assert change == pytest.approx(row[metric] / float32[metric] - 1)
                # A change needs users whose NDCG@10 moved, and then they move unequally.
                assert (error > 0) == (change != 0)
            cell = (
                f"{100 * row['ndcg_at_10_change']:+.1f}% ± {100 * row['ndcg_at_10_change_se']:.1f}%"
            )
            assert cell in markdown
    summary = {(e["kind"], e["variant"]): e for e in results["summary"]}
    assert "ndcg_at_10_change" not in summary["bundle", "float32"]
    summary_line = next(
        line for line in markdown.splitlines() if line.startswith("| float32 | 2 |")
    )
    assert summary_line.endswith("| reference | reference |")
    assert "ndcg_at_10_change" not in summary["baseline", "ease"]
    for variant in ("int8+int8-table", "int8+int4-table"):
        for metric in ("ndcg_at_10", "valid_ndcg_at_10"):
            pairs = [
                (seed_rows(results, s)[0], row) for s in (0, 1) for row in seed_rows(results, s)
            ]
            pairs = [(f, row) for f, row in pairs if row["variant"] == variant]
            change = summary["bundle", variant][f"{metric}_change"]
            # The seed-mean NDCG@10 against float32's seed mean.
            expected = sum(row[metric] for _, row in pairs) / sum(f[metric] for f, _ in pairs) - 1
            assert change["mean"] == pytest.approx(expected)
            assert change["se"] >= 0
            assert f"{100 * change['mean']:+.1f}% ± {100 * change['se']:.1f}%" in markdown


def test_a_skipped_baseline_is_a_row_with_its_reason_in_json_and_markdown():
    from pocketrec.evaluation import leave_last_out, run_baselines

    split = leave_last_out(synthetic(60, 40, seed=1))
    ease = run_baselines(split, ["ease"], progress=False, memory_budget=1)["ease"]
    rows = [baseline_row(ease)]
    assert json.loads(json.dumps(rows))[0]["skipped"] == ease.skipped
    assert "memory budget" in ease.skipped
    results = {
        "rows": rows,
        "summary": summarize(rows),
        "runs": [{"seed": 0, "train_seconds": 3.0}, {"seed": 1, "train_seconds": 4.0}],
        "machine": {"cpu": "cpu", "cores": 2, "versions": {}},
        "data": {"source": "synthetic", "users": 10, "items": 5, "quick": True},
        "seeds": [0, 1],
        "latency_seed": 0,
        "calls": 10,
        "baselines_seconds": 1.0,
    }
    tables = [line for line in results_markdown(results).splitlines() if "ease" in line]
    assert len(tables) == 2, "a per-seed row and a summary row"
    assert all(f"skipped: {ease.skipped}" in line for line in tables)


def test_dataset_name_keeps_the_last_part_of_each_path():
    source = "MovieLens 100K at /work/shared/data/ml-100k"
    assert dataset_name(source) == "MovieLens 100K at ml-100k"
    assert dataset_name("/data/logs/events.csv") == "events.csv"
    assert dataset_name("MovieLens 100K at ../shared/data/ml-100k") == "MovieLens 100K at ml-100k"
    synthetic_source = "synthetic(num_users=10, num_items=5, seed=0)"
    assert dataset_name(synthetic_source) == synthetic_source


def test_seeds_option_takes_a_comma_list_and_refuses_anything_else(tmp_path, capsys):
    from pocketrec.cli import build_parser

    parser = build_parser()
    base = ["bench", "--synthetic", "30", "--out", str(tmp_path)]
    assert parser.parse_args([*base, "--seeds", "0,1,2"]).seeds == (0, 1, 2)
    assert parser.parse_args([*base, "--seed", "4"]).seeds is None
    for bad in ("0,a", "1,1"):
        with pytest.raises(SystemExit):
            parser.parse_args([*base, "--seeds", bad])
    assert "give each seed once" in capsys.readouterr().err


def test_a_saved_model_with_several_seeds_is_refused_before_any_work(tmp_path):
    config = BenchConfig(out=tmp_path / "out", model_dir=tmp_path, seeds=(0, 1))
    with pytest.raises(ValueError, match="one training run"):
        run_benchmark(synthetic(50, 40), config)
    assert not (tmp_path / "out").exists()
