"""Scoring + top-10 baselines for the latency benchmark, one per process.

`latency_bench` runs ``python -m pocketrec.benchmarks.latency_baselines NAME N`` for each
baseline and catalog size, so TensorFlow is only ever imported here, never beside the SDK.
Each scores the same synthetic table as `latency_bench.measure` (same seed) for one user
vector and picks the top 10, one thread:

- ``tflite-float32`` / ``tflite-int8``: what the TFLite on-device recommendation example
  does: a ``tf.function`` of ``tf.math.top_k(tf.matmul(user, table, transpose_b=True))``
  with the table a constant, converted by TensorFlow's converter (int8: dynamic-range
  quantization, ``Optimize.DEFAULT``), run by the LiteRT interpreter;
- ``numpy``: float32 matmul + ``argpartition`` (OpenBLAS held to one thread by the caller);
- ``tensorflow``: TensorFlow Recommenders' brute force, ``tf.math.top_k(tf.matmul(...))``
  eagerly in a ``tf.function``, intra- and inter-op parallelism 1.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence

import numpy as np

BASELINES = ("tflite-float32", "tflite-int8", "numpy", "tensorflow")
NEEDS_TENSORFLOW = ("tflite-float32", "tflite-int8", "tensorflow")
K = 10


def table_vectors(num_items: int, dim: int, seed: int = 0) -> np.ndarray:
    """The float32 vectors `latency_bench.measure` quantizes (same generator, same seed)."""
    return np.random.default_rng(seed).standard_normal((num_items, dim)).astype(np.float32)


def timed(call: Callable[[int], object], count: int, warmup: int = 50) -> dict[str, float]:
    """p50 and p99 of ``count`` calls in microseconds, after ``warmup`` untimed ones."""
    for i in range(warmup):
        call(i)
    times = np.empty(count)
    for i in range(count):
        begin = time.perf_counter()
        call(i)
        times[i] = time.perf_counter() - begin
    micros = times * 1e6
    return {"p50_us": float(np.percentile(micros, 50)), "p99_us": float(np.percentile(micros, 99))}


def measure_baseline(name: str, num_items: int, dim: int, calls: int) -> dict[str, object]:
    """p50/p99 of one baseline's scoring + top-10, and what preparing it took."""
    if name not in BASELINES:
        raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {name!r}")
    vectors = table_vectors(num_items, dim)
    users = np.random.default_rng(1).standard_normal((64, dim)).astype(np.float32)
    began = time.perf_counter()
    if name == "numpy":

        def call(i: int) -> np.ndarray:
            scores = vectors @ users[i % 64]
            top = np.argpartition(-scores, K)[:K]
            return top[np.argsort(-scores[top], kind="stable")]

    elif name == "tensorflow":
        call = _tensorflow_call(vectors, users)
    else:
        call = _tflite_call(vectors, users, quantize=name == "tflite-int8")
    call(0)
    prepare_s = time.perf_counter() - began
    result: dict[str, object] = {"name": name, "num_items": num_items, "prepare_s": prepare_s}
    result.update(timed(call, calls))
    return result


def _tensorflow_call(vectors: np.ndarray, users: np.ndarray) -> Callable[[int], object]:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    table = tf.constant(vectors)
    user_tensors = [tf.constant(u[None, :]) for u in users]

    @tf.function
    def top(user: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.math.top_k(tf.matmul(user, table, transpose_b=True), k=K)

    def call(i: int) -> np.ndarray:
        return top(user_tensors[i % 64])[1].numpy()

    return call


def _tflite_call(
    vectors: np.ndarray, users: np.ndarray, *, quantize: bool
) -> Callable[[int], object]:
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    table = tf.constant(vectors)

    @tf.function(input_signature=[tf.TensorSpec([1, vectors.shape[1]], tf.float32)])
    def top(user: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.math.top_k(tf.matmul(user, table, transpose_b=True), k=K)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([top.get_concrete_function()], top)
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    interpreter = Interpreter(model_content=converter.convert(), num_threads=1)
    interpreter.allocate_tensors()
    user_index = interpreter.get_input_details()[0]["index"]
    outputs = [d["index"] for d in interpreter.get_output_details()]

    def call(i: int) -> list[np.ndarray]:
        interpreter.set_tensor(user_index, users[i % 64 : i % 64 + 1])
        interpreter.invoke()
        return [interpreter.get_tensor(o) for o in outputs]

    return call


def main(argv: Sequence[str] | None = None) -> None:
    """Prints one baseline's figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=BASELINES)
    parser.add_argument("num_items", type=int)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args(argv)
    print(json.dumps(measure_baseline(args.name, args.num_items, args.dim, args.calls)))


if __name__ == "__main__":
    main()
