"""Each bundle on each accelerator that is present, against the manifest's golden outputs.

Accelerators: LiteRT's interpreter with XNNPACK (the default CPU path), the interpreter's
reference kernels, `CompiledModel` on the CPU, and `CompiledModel` on the GPU (LiteRT's
WebGPU accelerator over Vulkan). An accelerator that is absent is skipped with the reason.
NNAPI is never present off Android. Presence and the reasons for absence come from
`pocketrec.sdk.accelerators.detect`, as in the SDK; `python -m pocketrec.device_tests`
runs the SDK's own paths and writes the JSON report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from pocketrec.device_tests._bundles import bundle_names
from pocketrec.sdk import GOLDEN_TOLERANCE, Recommender, encode_histories
from pocketrec.sdk.accelerators import ACCELERATOR_TOLERANCE, detect
from pocketrec.sdk.contract import HISTORY_INPUT, MASK_INPUT, SIGNATURE_KEY, USER_VECTOR_OUTPUT
from pocketrec.sdk.flatbuffer import expand_float16_weights

ACCELERATORS = ("cpu-xnnpack", "cpu-reference", "compiled-cpu", "compiled-gpu", "npu-nnapi")
# Relative error allowed on the GPU, which computes in float16: a float model's user vector
# stays within it; an int8 model has no GPU kernels (2.2% and 4.7% errors on an NVIDIA H200).
GPU_TOLERANCE = ACCELERATOR_TOLERANCE["gpu"]
# Share of the golden top-k that an integer model must keep on another kernel library.
MIN_TOP_K_OVERLAP = 0.7
REPORT = os.environ.get("POCKETREC_DEVICE_REPORT")


def golden_inputs(bundle: Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, Callable]:
    """(manifest, history, mask, expected user vectors, top-k overlap) of the golden histories.

    The last is a function of user vectors: the mean share of each golden top-k list that
    the same vectors' top-k over the bundle's table keeps.

    Opening the bundle with the SDK checks every file's checksum first.
    """
    with Recommender.open(bundle) as recommender:
        manifest = recommender.manifest
        row = {item: i for i, item in enumerate(recommender.item_ids)}
        histories = [[row[i] for i in h if i in row] for h in manifest["golden"]["histories"]]
        history, mask = encode_histories(recommender.table, histories, manifest["history_length"])
        table = recommender.table
    golden_top = [[row[i] for i in top["item_ids"]] for top in manifest["golden"]["top_k"]]

    def overlap(vectors: np.ndarray) -> float:
        scores = table.scores(vectors)
        shares = []
        for user_scores, want in zip(scores, golden_top, strict=True):
            got = np.argsort(-user_scores)[: len(want)]
            shares.append(len(set(got.tolist()) & set(want)) / max(len(want), 1))
        return float(np.mean(shares))

    expected = np.asarray(manifest["golden"]["user_vectors"], np.float32)
    return manifest, history, mask, expected, overlap


def run_interpreter(model: Path, history, mask, resolver: OpResolverType) -> np.ndarray:
    interpreter = Interpreter(model_path=str(model), experimental_op_resolver_type=resolver)
    runner = interpreter.get_signature_runner(SIGNATURE_KEY)
    return np.concatenate(
        [
            runner(**{HISTORY_INPUT: history[i : i + 1], MASK_INPUT: mask[i : i + 1]})[
                USER_VECTOR_OUTPUT
            ]
            for i in range(len(history))
        ]
    )


def run_compiled(model: bytes, history, mask, accelerator) -> tuple[np.ndarray, bool]:
    from ai_edge_litert.compiled_model import CompiledModel

    compiled = CompiledModel.from_buffer(model, hardware_accel=accelerator)
    signature = compiled.get_signature_index(SIGNATURE_KEY)
    names = compiled.get_signature_list()[SIGNATURE_KEY]["inputs"]
    outputs = []
    for i in range(len(history)):
        feeds = {HISTORY_INPUT: history[i : i + 1], MASK_INPUT: mask[i : i + 1]}
        inputs = compiled.create_input_buffers(signature)
        for name, buffer in zip(names, inputs, strict=True):
            buffer.write(np.ascontiguousarray(feeds[name]))
        result = compiled.create_output_buffers(signature)
        compiled.run_by_index(signature, inputs, result)
        outputs.append(result[0].read(history.shape[-1], np.float32))
    return np.stack(outputs), compiled.is_fully_accelerated()


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest deviation relative to max(1, max|expected|), as the SDK's golden check."""
    return float(np.abs(actual - expected).max() / max(1.0, float(np.abs(expected).max())))


def record(bundle: Path, accelerator: str, **values) -> None:
    if REPORT:
        with open(REPORT, "a") as file:
            file.write(json.dumps({"bundle": str(bundle), "accelerator": accelerator, **values}))
            file.write("\n")


@pytest.mark.parametrize("accelerator", ACCELERATORS)
@pytest.mark.parametrize("bundle", bundle_names(), indirect=True)
def test_bundle_reproduces_its_golden_outputs(bundle: Path, accelerator: str):
    manifest, history, mask, expected, overlap = golden_inputs(bundle)
    model = bundle / manifest["model"]["file"]
    quantization = manifest["model"]["quantization"]
    tolerance = GOLDEN_TOLERANCE[quantization]

    if accelerator == "npu-nnapi":
        pytest.skip(f"NPU: {detect('npu').detail}")
    if accelerator.startswith("cpu-"):
        resolver = (
            OpResolverType.AUTO
            if accelerator == "cpu-xnnpack"
            else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        actual = run_interpreter(model, history, mask, resolver)
        error, kept = relative_error(actual, expected), overlap(actual)
        record(bundle, accelerator, relative_error=error, top_k_overlap=kept)
        if quantization == "int8" and accelerator == "cpu-reference":
            # Integer kernels of the two libraries round requantization differently (up to
            # ~10% of the vector seen here); what must hold is the recommendation.
            assert kept >= MIN_TOP_K_OVERLAP, f"top-k overlap {kept:.2f}, error {error:.2e}"
            return
        assert error <= tolerance, f"{accelerator}: relative error {error:.2e} > {tolerance}"
        return

    from ai_edge_litert.compiled_model import HardwareAccelerator

    if accelerator == "compiled-cpu":
        actual, _ = run_compiled(model.read_bytes(), history, mask, HardwareAccelerator.CPU)
        error = relative_error(actual, expected)
        record(bundle, accelerator, relative_error=error)
        assert error <= tolerance
        return

    gpu = detect("gpu")
    if not gpu.present:
        pytest.skip(f"GPU: {gpu.detail}")
    # Detection found a GPU: a float model it cannot compile is a failure, not a skip. It
    # gets the model as the SDK compiles it for the GPU, float16 weights widened.
    try:
        actual, full = run_compiled(
            expand_float16_weights(model.read_bytes()),
            history,
            mask,
            HardwareAccelerator.GPU | HardwareAccelerator.CPU,
        )
    except RuntimeError as exc:
        if quantization == "int8":
            pytest.xfail(f"int8 is a CPU format: the GPU did not compile it ({exc})")
        raise
    error, kept = relative_error(actual, expected), overlap(actual)
    record(bundle, accelerator, relative_error=error, top_k_overlap=kept, fully_accelerated=full)
    if quantization == "int8":
        pytest.xfail(f"int8 is a CPU format: GPU relative error {error:.2e}, whole graph {full}")
    assert error <= GPU_TOLERANCE, f"GPU relative error {error:.2e}"
    if manifest["model"]["accelerator"] == "gpu":
        assert full, "a bundle exported for the GPU must run whole on it"
