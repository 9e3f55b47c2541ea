"""The device suite: every bundle on every accelerator, as one JSON report.

Per bundle and accelerator (`pocketrec.sdk.accelerators.ACCELERATORS`): golden parity (the
largest relative error of the manifest's golden user vectors, against the SDK tolerance of
that accelerator), top-10 agreement with the CPU over the bundle's table, whether the
graph is fully delegated (and the ops left to the CPU's built-in kernels, where LiteRT
says), load time, and p50/p99 latency of one history. An accelerator that is absent is
``skipped`` with detection's reason; an int8 bundle on the GPU is ``refused`` (integer
kernels are a CPU format). Where a GPU is present the table-scoring crossover is measured
too (`pocketrec.sdk._scorer.measure_crossover`).
"""

from __future__ import annotations

import platform
import statistics
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from pocketrec.errors import AcceleratorError, BundleError
from pocketrec.sdk import Bundle, UserTower, encode_histories
from pocketrec.sdk._scorer import measure_crossover
from pocketrec.sdk.accelerators import ACCELERATORS, choose, detect, golden_tolerance

# Histories beyond the golden ones whose top-10 is compared with the CPU's.
AGREEMENT_HISTORIES = 64
TOP_K = 10


def run_suite(bundles: list[Path], *, calls: int = 200) -> dict[str, Any]:
    """The report of ``bundles`` on every accelerator (see the module docstring)."""
    detected = {name: detect(name) for name in ACCELERATORS}
    report: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "ai_edge_litert": _version("ai-edge-litert"),
        },
        "accelerators": {
            name: {"present": found.present, "detail": found.detail}
            for name, found in detected.items()
        },
        "bundles": [_bundle_report(path, calls) for path in bundles],
    }
    if detected["gpu"].present:
        dim = Bundle.open(bundles[0], verify=False).embedding_dim if bundles else 64
        report["table_scoring_on_gpu"] = measure_crossover("float32", dim)
    else:
        report["table_scoring_on_gpu"] = {
            "status": "skipped",
            "reason": f"crossover not measured: {detected['gpu'].detail}",
        }
    report["passed"] = all(
        bundle.get("status") != "failed"
        and all(entry["status"] != "failed" for entry in bundle["accelerators"].values())
        for bundle in report["bundles"]
    )
    return report


def _bundle_report(path: Path, calls: int) -> dict[str, Any]:
    try:
        bundle = Bundle.open(path, verify=True)
    except BundleError as exc:
        # One bad bundle is a failed entry of the report, not the end of the suite.
        return {"bundle": str(path), "status": "failed", "reason": str(exc), "accelerators": {}}
    table = bundle.table
    golden = bundle.manifest["golden"]
    row_of = {item: row for row, item in enumerate(bundle.item_ids)}
    golden_rows = [[row_of[i] for i in h if i in row_of] for h in golden["histories"]]
    rng = np.random.default_rng(0)
    random_rows = [
        rng.choice(table.num_items, size=int(rng.integers(1, bundle.history_length + 1)))
        .astype(int)
        .tolist()
        for _ in range(AGREEMENT_HISTORIES)
    ]
    golden_inputs = encode_histories(table, golden_rows, bundle.history_length)
    other_inputs = encode_histories(table, random_rows, bundle.history_length)
    expected = np.asarray(golden["user_vectors"], np.float32)
    results: dict[str, Any] = {}
    cpu_top: np.ndarray | None = None
    for name in ACCELERATORS:
        found = detect(name)
        if not found.present:
            results[name] = {"status": "skipped", "reason": found.detail}
            continue
        try:
            placement = choose(name, bundle.quantization)
        except AcceleratorError as exc:
            results[name] = {"status": "refused", "reason": str(exc)}
            continue
        started = time.perf_counter()
        try:
            tower = UserTower(
                bundle.model,
                history_length=bundle.history_length,
                dim=bundle.embedding_dim,
                accelerator=placement.accelerator,
            )
        except AcceleratorError as exc:  # a present accelerator that cannot compile it
            results[name] = {"status": "failed", "reason": str(exc)}
            continue
        vectors = tower.run(*golden_inputs)
        load_ms = (time.perf_counter() - started) * 1e3
        error = _relative_error(vectors, expected)
        tolerance = golden_tolerance(name, bundle.quantization)
        top = _top(table.scores(tower.run(*other_inputs)))
        cpu_top = top if name == "cpu" else cpu_top
        agreement = _agreement(top, cpu_top) if cpu_top is not None else None
        results[name] = {
            "status": "passed" if error <= tolerance else "failed",
            "relative_error": error,
            "tolerance": tolerance,
            "top10_agreement_with_cpu": agreement,
            "fully_delegated": tower.fully_delegated,
            "undelegated_ops": tower.undelegated_ops,
            "load_ms": round(load_ms, 2),
            "latency_us": _latency(tower, golden_inputs, calls),
        }
    return {
        "bundle": str(path),
        "recipe": bundle.manifest["recipe"],
        "quantization": bundle.quantization,
        "exported_for": bundle.manifest["model"]["accelerator"],
        "accelerators": results,
    }


def _latency(tower: UserTower, inputs: tuple[np.ndarray, np.ndarray], calls: int) -> dict:
    """p50/p99 of one history per call, in microseconds (after one warm-up call)."""
    history, mask = inputs[0][-1:], inputs[1][-1:]
    tower.run(history, mask)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        tower.run(history, mask)
        times.append((time.perf_counter() - start) * 1e6)
    times.sort()
    p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
    return {"p50": round(statistics.median(times), 1), "p99": round(p99, 1), "calls": calls}


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest deviation relative to max(1, max|expected|), as the SDK's golden check."""
    return float(np.abs(actual - expected).max() / max(1.0, float(np.abs(expected).max())))


def _top(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, axis=1, kind="stable")[:, :TOP_K]


def _agreement(top: np.ndarray, reference: np.ndarray) -> float:
    """Mean share of the reference's top-10 that ``top`` keeps, over the histories."""
    pairs = zip(top.tolist(), reference.tolist(), strict=True)
    shares = [len(set(a) & set(b)) / TOP_K for a, b in pairs]
    return round(float(np.mean(shares)), 4)


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
