from __future__ import annotations

import json
import struct

import pytest

from pocketrec.benchmarks.bench import BenchConfig, dataset_name, run_benchmark
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


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    log = synthetic(num_users=300, num_items=200, seed=2)
    results = run_benchmark(
        log,
        BenchConfig(
            out=out, recipes=["int8+int8-table", "int8+int4-table"], quick=True, calls=50, epochs=1
        ),
    )
    return out, results


def test_quick_benchmark_writes_json_markdown_and_plot(quick_run):
    out, results = quick_run
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    png = (out / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 800 and height > 400
    markdown = (out / "results.md").read_text()
    for row in results["rows"]:
        assert row["variant"] in markdown


def test_every_variant_row_has_the_documented_fields_and_sane_values(quick_run):
    _, results = quick_run
    bundles = [r for r in results["rows"] if r["kind"] == "bundle"]
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
    _, results = quick_run
    baselines = {r["variant"] for r in results["rows"] if r["kind"] == "baseline"}
    assert baselines == {"popularity", "last-item", "itemknn", "ease"}
    machine = results["machine"]
    assert machine["cores"] >= 1 and machine["cpu"]
    assert machine["versions"]["ai-edge-litert"] and machine["versions"]["numpy"]
    assert results["data"]["quick"] is True and results["data"]["users"] <= 200


def test_unknown_recipe_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown recipes"):
        run_benchmark(synthetic(50, 40), BenchConfig(out=tmp_path, recipes=["int3"]))


def test_results_carry_no_path_of_the_machine_that_made_them(quick_run):
    out, results = quick_run
    for name in ("results.json", "results.md"):
        assert str(out) not in (out / name).read_text()
    for row in results["rows"]:
        if row["kind"] == "bundle":
            assert (out / row["bundle"] / "manifest.json").is_file()
    assert (out / "model" / "model.json").is_file() and (out / "metrics.json").is_file()


def test_dataset_name_keeps_the_last_part_of_each_path():
    source = "MovieLens 100K at /work/shared/data/ml-100k"
    assert dataset_name(source) == "MovieLens 100K at ml-100k"
    assert dataset_name("/data/logs/events.csv") == "events.csv"
    assert dataset_name("MovieLens 100K at ../shared/data/ml-100k") == "MovieLens 100K at ml-100k"
    synthetic_source = "synthetic(num_users=10, num_items=5, seed=0)"
    assert dataset_name(synthetic_source) == synthetic_source
