"""Measures one bundle on the device path, in a process of its own.

Run as `python -m pocketrec.benchmarks._measure BUNDLE HISTORIES.json CALLS`; prints one
JSON object. Its own process keeps the numbers honest: nothing but the SDK is loaded, so
peak RSS is what a device pays, and the check that TensorFlow stayed out is real.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


def _percentiles(seconds: list[float]) -> dict[str, float]:
    micros = np.asarray(seconds) * 1e6
    return {"p50_us": float(np.percentile(micros, 50)), "p99_us": float(np.percentile(micros, 99))}


def _peak_rss_mb() -> float:
    # VmHWM starts afresh with this program's image; getrusage's ru_maxrss does not (Linux
    # keeps it across execve, so it would report the parent's peak).
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(bundle: Path, histories: list[list[str]], calls: int, warmup: int = 100) -> dict:
    """Bundle load time, user-tower latency, end-to-end `recommend(k=10)` latency, RSS."""
    from ai_edge_litert.interpreter import Interpreter

    from pocketrec.sdk import Recommender, encode_histories

    started = time.perf_counter()
    recommender = Recommender.open(bundle, num_threads=1)
    load_s = time.perf_counter() - started

    manifest = recommender.manifest
    interpreter = Interpreter(model_path=str(bundle / manifest["model"]["file"]), num_threads=1)
    runner = interpreter.get_signature_runner(manifest["model"]["signature"])
    index = {item: row for row, item in enumerate(recommender.item_ids)}
    rows = [[index[i] for i in h if i in index] for h in histories]
    inputs = [encode_histories(recommender.table, [r], manifest["history_length"]) for r in rows]

    def timed(call, count: int) -> list[float]:
        for i in range(warmup):
            call(i)
        times = []
        for i in range(count):
            begin = time.perf_counter()
            call(i)
            times.append(time.perf_counter() - begin)
        return times

    def tower(i: int) -> None:
        history, mask = inputs[i % len(inputs)]
        runner(history=history, mask=mask)

    def end_to_end(i: int) -> None:
        recommender.recommend(history=histories[i % len(histories)], k=10)

    tower_times = timed(tower, calls)
    e2e_times = timed(end_to_end, calls)
    recommender.close()
    return {
        "load_ms": load_s * 1e3,
        "user_tower": _percentiles(tower_times),
        "recommend": _percentiles(e2e_times),
        "calls": calls,
        "peak_rss_mb": _peak_rss_mb(),
        "tensorflow_loaded": "tensorflow" in sys.modules,
    }


def main(argv: list[str]) -> None:
    bundle, histories_file, calls = Path(argv[0]), Path(argv[1]), int(argv[2])
    histories = json.loads(histories_file.read_text())
    print(json.dumps(measure(bundle, histories, calls)))


if __name__ == "__main__":
    main(sys.argv[1:])
