"""`RecommenderOptions.accelerator`, accelerator detection, the GPU scoring path, the device suite.

This machine has no GPU and no NPU: the absent paths run for real, and the code that
serves on an accelerator (``CompiledModel``) runs here compiled for the CPU.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _sdk_fixtures import HISTORY_LENGTH, NUM_ITEMS, user_tower, write_tiny_bundle

from pocketrec.errors import AcceleratorError
from pocketrec.sdk import GOLDEN_TOLERANCE, ItemTable, Recommender, UserTower, encode_histories
from pocketrec.sdk._runtime import CompiledRunner
from pocketrec.sdk._scorer import (
    CompiledTopK,
    Scorer,
    crossover_cache_path,
    crossover_items,
    measure_crossover,
)
from pocketrec.sdk.accelerators import (
    ACCELERATOR_TOLERANCE,
    ACCELERATORS,
    choose,
    detect,
    detect_all,
    golden_tolerance,
)

GPU, NPU = detect("gpu"), detect("npu")
needs_no_gpu = pytest.mark.skipif(GPU.present, reason="a GPU is present here")
needs_no_npu = pytest.mark.skipif(NPU.present, reason="an NPU is present here")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return write_tiny_bundle(tmp_path_factory.mktemp("bundle") / "bundle")


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory) -> Path:
    # The tiny tower is float; the manifest's label is what placement reads.
    return write_tiny_bundle(tmp_path_factory.mktemp("int8") / "bundle", quantization="int8")


def test_cpu_accelerator_recommends_exactly_what_the_default_does(bundle) -> None:
    histories = [["m1", "m2"], ["m3"], [], ["m5", "m8", "m13", "m21", "m34", "m0"]]
    with Recommender.open(bundle) as default, Recommender.open(bundle, accelerator="cpu") as cpu:
        assert cpu.accelerator == default.accelerator == "cpu"
        assert cpu.scoring_accelerator == "cpu"
        for history in histories:
            assert cpu.recommend(history, k=7) == default.recommend(history, k=7)
        rows = [[1, 2], [3], []]
        np.testing.assert_array_equal(cpu.score_rows(rows), default.score_rows(rows))


def test_fully_delegated_says_whether_xnnpack_left_ops_to_the_builtin_kernels(bundle) -> None:
    tower = UserTower(user_tower().tflite)
    with Recommender.open(bundle) as recommender:
        assert recommender.fully_delegated is tower.fully_delegated
    # The tiny tower's dynamic batch leaves shape arithmetic to the built-in kernels.
    assert tower.fully_delegated == (not tower.undelegated_ops)


@needs_no_gpu
def test_gpu_where_there_is_none_raises_an_accelerator_error_naming_what_is_missing(
    bundle,
) -> None:
    with pytest.raises(AcceleratorError, match=r"accelerator='gpu'.*no GPU is usable here") as info:
        Recommender.open(bundle, accelerator="gpu")
    assert GPU.detail in str(info.value)
    assert "accelerator='cpu'" in str(info.value)


@needs_no_npu
def test_npu_where_there_is_none_raises_an_accelerator_error_naming_nnapi_and_dispatch(
    bundle,
) -> None:
    with pytest.raises(AcceleratorError, match=r"no NPU is usable here: NNAPI is Android-only"):
        Recommender.open(bundle, accelerator="npu")


@needs_no_gpu
def test_auto_falls_back_to_the_cpu_and_logs_it_once(bundle, caplog) -> None:
    caplog.set_level(logging.INFO, logger="pocketrec")
    with Recommender.open(bundle, accelerator="auto") as recommender:
        assert recommender.accelerator == "cpu"
        assert recommender.scoring_accelerator == "cpu"
        recommender.swap(bundle)  # same reason again: not logged twice
        recommender.recommend(["m1"])
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("pocketrec")]
    assert len([line for line in lines if "accelerator='auto'" in line]) == 1
    assert any(GPU.detail in line for line in lines)


def test_auto_times_the_tower_on_the_gpu_or_says_why_it_could_not(bundle) -> None:
    from pocketrec.sdk import Bundle
    from pocketrec.sdk.recommender import _timed_placement

    placement, tower = _timed_placement(Bundle.open(bundle), num_threads=1)
    if GPU.present:
        assert placement.accelerator == "gpu" or "µs on the GPU" in placement.fallback
        assert tower is not None and tower.accelerator == placement.accelerator
    else:  # compiled for a GPU that is not there: CPU, with the runtime's reason
        assert placement.accelerator == "cpu"
        assert "the GPU could not compile its user tower" in placement.fallback
        assert tower is None


def test_gpu_with_an_int8_bundle_is_refused_for_its_integer_kernels(int8_bundle) -> None:
    with pytest.raises(
        AcceleratorError, match=r"int8 bundle; int8 models stay on the CPU.*NVIDIA H200"
    ):
        Recommender.open(int8_bundle, accelerator="gpu")


def test_auto_keeps_an_int8_bundle_on_the_cpu_whatever_the_machine(int8_bundle, caplog) -> None:
    caplog.set_level(logging.INFO, logger="pocketrec")
    with Recommender.open(int8_bundle, accelerator="auto") as recommender:
        assert recommender.accelerator == "cpu"
    assert any("int8 models stay on the CPU" in r.getMessage() for r in caplog.records)


def test_unknown_accelerator_is_a_value_error_listing_the_choices(bundle) -> None:
    with pytest.raises(ValueError, match=r"accelerator must be one of cpu, auto, gpu, npu"):
        Recommender.open(bundle, accelerator="tpu")


def test_detection_finds_the_cpu_and_gives_a_reason_for_every_absent_accelerator() -> None:
    found = detect_all()
    assert list(found) == list(ACCELERATORS)
    assert found["cpu"].present
    for detection in found.values():
        assert detection.detail  # what runs it, or why it is absent
    assert detect("gpu") is detect("gpu")  # detected once per process


@needs_no_gpu
def test_probing_an_absent_gpu_prints_nothing_and_returns_litert_s_reason() -> None:
    code = (
        "from pocketrec.sdk import accelerators as a\n"
        "print(a._probe('gpu'))\n"
        "print(a.detect('gpu').detail)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stderr == ""
    probe, detail = done.stdout.splitlines()
    assert "Vulkan" in probe or "adapter" in probe
    assert detail == GPU.detail


def test_accelerators_get_the_float16_tolerance_and_the_cpu_keeps_the_golden_one() -> None:
    assert golden_tolerance("cpu", "float32") == GOLDEN_TOLERANCE["float32"]
    assert golden_tolerance("gpu", "float32") == ACCELERATOR_TOLERANCE["gpu"] == 1e-2
    assert golden_tolerance("gpu", "int8") == max(GOLDEN_TOLERANCE["int8"], 1e-2)
    assert choose("cpu", "int8").accelerator == "cpu"


def test_the_accelerator_code_path_compiled_for_the_cpu_matches_the_interpreter() -> None:
    model = user_tower().tflite
    runner = CompiledRunner(model, "cpu")
    interpreter = UserTower(model)
    table = ItemTable.quantize(np.random.default_rng(3).standard_normal((NUM_ITEMS, 8)), "float32")
    history, mask = encode_histories(table, [[1, 2, 3], [], [4]], HISTORY_LENGTH)
    expected = interpreter.run(history, mask)
    for b in range(len(history)):
        got = runner(history=history[b : b + 1], mask=mask[b : b + 1])["user_vector"]
        np.testing.assert_allclose(got[0], expected[b], atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_compiled_top_k_graph_ranks_like_the_cpu_scorer(dtype) -> None:
    rng = np.random.default_rng(1)
    table = ItemTable.quantize(rng.standard_normal((3000, 16)).astype(np.float32), dtype)
    compiled, scorer = CompiledTopK(table, "cpu"), Scorer(table, kernel="graph")
    user = rng.standard_normal(16).astype(np.float32)
    mask = np.zeros(table.num_items, dtype=np.float32)
    mask[[0, 5, 9]] = -np.inf
    values, rows = compiled.run(user, mask)
    want_rows, want_values = scorer.top_k(user, 20, banned={0, 5, 9})
    np.testing.assert_array_equal(rows[:20], want_rows)
    np.testing.assert_allclose(values[:20], want_values, rtol=1e-5)


@needs_no_gpu
def test_scoring_on_the_gpu_where_there_is_none_is_refused_and_auto_stays_on_the_cpu(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    table = ItemTable.quantize(np.ones((20_000, 4), dtype=np.float32), "float32")
    with pytest.raises(AcceleratorError, match="no GPU is usable here"):
        Scorer(table, accelerator="gpu")
    assert Scorer(table, accelerator="auto").accelerator == "cpu"
    assert not crossover_cache_path().exists()  # nothing measured without a GPU
    # Integer tables never go to the GPU, present or not.
    int8 = ItemTable.quantize(np.ones((20_000, 4), dtype=np.float32), "int8")
    assert Scorer(int8, accelerator="gpu").accelerator == "cpu"


def test_crossover_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    measured: list[tuple[str, int]] = []

    def measure_on_this_cpu(dtype: str, dim: int) -> dict:
        measured.append((dtype, dim))
        return measure_crossover(dtype, dim, accelerator="cpu", sizes=(256, 1024), calls=3)

    first = crossover_items("float32", 8, measure=measure_on_this_cpu)
    again = crossover_items("float32", 8, measure=measure_on_this_cpu)
    other = crossover_items("float16", 8, measure=measure_on_this_cpu)
    assert measured == [("float32", 8), ("float16", 8)]
    assert first == again and first in (None, 256, 1024) and other in (None, 256, 1024)
    path = crossover_cache_path()
    assert path == tmp_path / "cache" / "pocketrec" / "scoring-crossover.json"
    entries = json.loads(path.read_text())
    assert len(entries) == 2
    entry = next(e for key, e in entries.items() if "float32 d8" in key)
    assert entry["sizes"] == [256, 1024] and len(entry["cpu_us"]) == 2


def test_a_corrupt_crossover_cache_is_measured_again_and_rewritten(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    crossover_cache_path().parent.mkdir(parents=True)
    crossover_cache_path().write_text("{not json")
    measured = []

    def measure(dtype: str, dim: int) -> dict:
        measured.append(dtype)
        return {"crossover_items": 4096, "sizes": [4096], "cpu_us": [2.0], "accelerated_us": [1.0]}

    assert crossover_items("float32", 16, measure=measure) == 4096
    assert measured == ["float32"]
    assert json.loads(crossover_cache_path().read_text())  # valid JSON again


def test_shipped_device_suite_reports_cpu_passing_and_absent_accelerators_skipped() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pocketrec.device_tests", "--shipped", "--calls", "20"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["passed"] is True
    assert {Path(b["bundle"]).name for b in report["bundles"]} >= {"float32", "gpu-float16"}
    for bundle in report["bundles"]:
        cpu = bundle["accelerators"]["cpu"]
        assert cpu["status"] == "passed"
        assert cpu["relative_error"] <= cpu["tolerance"]
        assert cpu["top10_agreement_with_cpu"] == 1.0
        assert cpu["latency_us"]["p50"] <= cpu["latency_us"]["p99"]
        assert isinstance(cpu["fully_delegated"], bool) and cpu["load_ms"] > 0
        for name, detection in (("gpu", GPU), ("npu", NPU)):
            if not detection.present:
                assert bundle["accelerators"][name] == {
                    "status": "skipped",
                    "reason": detection.detail,
                }
    if not GPU.present:
        assert report["table_scoring_on_gpu"]["status"] == "skipped"


def test_a_corrupt_bundle_is_a_failed_entry_and_the_suite_goes_on(tmp_path) -> None:
    from pocketrec.device_tests._bundles import shipped_bundles
    from pocketrec.device_tests._suite import run_suite

    good = shipped_bundles()[0]
    corrupt = tmp_path / "corrupt"
    shutil.copytree(good, corrupt)
    table = next(p for p in corrupt.iterdir() if p.name.startswith("item_table"))
    table.write_bytes(table.read_bytes()[:-8] + bytes(8))
    report = run_suite([corrupt, good], calls=5)
    failed, passed = report["bundles"]
    assert failed["status"] == "failed" and "sha256" in failed["reason"]
    assert passed["accelerators"]["cpu"]["status"] == "passed"
    assert report["passed"] is False


def test_float16_weights_are_widened_for_the_gpu_with_the_same_vectors() -> None:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from pocketrec.device_tests._bundles import SHIPPED
    from pocketrec.sdk.flatbuffer import expand_float16_weights

    def ops_and_vector(model: bytes) -> tuple[set[str], np.ndarray]:
        interpreter = Interpreter(
            model_content=model,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        runner = interpreter.get_signature_runner("user_vector")
        shape = runner.get_input_details()["history"]["shape"]
        rng = np.random.default_rng(0)
        history = rng.standard_normal(shape).astype(np.float32)
        mask = (rng.random(shape[:2]) < 0.7).astype(np.float32)
        vector = runner(history=history, mask=mask)["user_vector"]
        return {op["op_name"] for op in interpreter._get_ops_details()}, vector

    float16 = (SHIPPED / "gpu-float16" / "user_tower.tflite").read_bytes()
    ops, vector = ops_and_vector(float16)
    widened_ops, widened_vector = ops_and_vector(expand_float16_weights(float16))
    assert "DEQUANTIZE" in ops and "DEQUANTIZE" not in widened_ops
    assert widened_ops == ops - {"DEQUANTIZE"}
    np.testing.assert_array_equal(widened_vector, vector)
    float32 = (SHIPPED / "float32" / "user_tower.tflite").read_bytes()
    assert expand_float16_weights(float32) is float32
