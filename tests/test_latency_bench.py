"""`pocketrec bench-latency`: its rows, files, baselines and the issue's targets as checks."""

from __future__ import annotations

import json

import pytest

from pocketrec.benchmarks.latency_bench import LatencyResults, target_checks
from pocketrec.cli import main


def _row(num_items: int, dtype: str, recommend_us: float, p99_us: float, tower_us: float):
    return {
        "num_items": num_items,
        "dtype": dtype,
        "recommend": {"p50_us": recommend_us, "p99_us": p99_us},
        "tower": {"p50_us": tower_us, "p99_us": tower_us},
    }


def _baseline(num_items: int, name: str, p50_us: float):
    return {"num_items": num_items, "name": name, "p50_us": p50_us, "p99_us": p50_us}


def _checks(int8_us: float, int4_us: float, p99_us: float) -> dict[str, bool]:
    n = 1_000_000
    results = LatencyResults(machine="test")
    results.rows = [
        _row(n, "int8", int8_us, p99_us, 100.0),
        _row(n, "int4", int4_us, p99_us, 100.0),
        _row(n, "float32", 3000.0, p99_us, 100.0),
    ]
    results.baselines = [_baseline(n, "tflite-int8", 900.0), _baseline(n, "tflite-float32", 2000)]
    return {c["target"]: c["passed"] for c in target_checks(results)}


def test_targets_pass_within_the_issue_bounds_and_fail_beyond_them() -> None:
    # int8 bound: 1.1 x (900 + 100) = 1100 us; int4: 1.1 x int8; p99: 6 ms.
    within = _checks(int8_us=1090.0, int4_us=1190.0, p99_us=5900.0)
    beyond = _checks(int8_us=1110.0, int4_us=1230.0, p99_us=6100.0)
    assert set(within) == set(beyond) and len(within) == 4
    assert all(within.values())
    failed = {target for target, passed in beyond.items() if not passed}
    assert failed == {
        "1000000 int8 recommend p50 <= 1.1 x (tflite-int8 + tower)",
        "1000000 int4 recommend p50 <= 1.1 x int8's",
        "1000000 int8 recommend p99 <= 6 ms",
    }


def test_targets_skip_sizes_and_dtypes_not_measured() -> None:
    results = LatencyResults(machine="test", rows=[_row(10_000, "int8", 50.0, 60.0, 20.0)])
    results.baselines = [_baseline(10_000, "tflite-int8", 40.0)]
    assert target_checks(results) == []


def test_bench_latency_writes_rows_baselines_and_markdown(tmp_path, capsys) -> None:
    out = tmp_path / "latency"
    arguments = ["--sizes", "2000", "--dtypes", "int8", "--calls", "20", "--baselines", "numpy"]
    code = main(["bench-latency", *arguments, "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "OPENBLAS_CORETYPE=" in printed
    results = json.loads((out / "latency.json").read_text())
    (row,) = results["rows"]
    assert (row["num_items"], row["dtype"]) == (2000, "int8")
    assert 0 < row["recommend"]["p50_us"] <= row["recommend"]["p99_us"]
    assert row["top10_agreement"] > 5
    (baseline,) = results["baselines"]
    assert (baseline["name"], baseline["num_items"]) == ("numpy", 2000)
    markdown = (out / "latency.md").read_text()
    assert "| 2000 | int8 |" in markdown and "| 2000 | numpy |" in markdown


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--dtypes", "int3"], "unknown dtypes ['int3']"),
        (["--baselines", "faiss"], "unknown baselines ['faiss']"),
        (["--bundle", "/nonexistent"], "is not a bundle directory"),
    ],
)
def test_bench_latency_rejects_bad_arguments_before_measuring(arguments, message, capsys):
    assert main(["bench-latency", "--sizes", "2000", *arguments]) == 2
    assert message in capsys.readouterr().err
