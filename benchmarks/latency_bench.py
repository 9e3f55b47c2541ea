"""How fast `Recommender.recommend` is at catalog scale, per item-table dtype.

`python -m pocketrec.benchmarks.latency_bench` builds synthetic catalogs of 10k, 100k and
1M items x 64 dims, each in a process of its own (so peak RSS is one catalog's), serves
them with a small user tower composed here (masked sum of the history, then a 64x64
FULLY_CONNECTED; no TensorFlow), and prints per dtype: `recommend(k=10)` p50/p99 end to
end, the tower alone, scoring + top-K alone (the device-built graph, and numpy
`ItemTable.scores` + `top_k` beside it), scorer build time (what a sync-applied table
change costs), peak RSS, and top-10 agreement with exact float32 scoring of the original
vectors. One interpreter thread throughout. TensorFlow baselines are not run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from pocketrec.sdk import TABLE_DTYPES, Bundle, ItemTable, Recommender
from pocketrec.sdk._ranking import top_k
from pocketrec.sdk._scorer import Scorer

DIM = 64
HISTORY_LENGTH = 20
SIZES = (10_000, 100_000, 1_000_000)


def tower_model(history_length: int, dim: int, seed: int = 0) -> bytes:
    """A user tower of the model contract: ``tanh(W @ sum(mask * history))``, batch 1."""
    f32, i32 = schema.TensorType.FLOAT32, schema.TensorType.INT32
    weights = np.random.default_rng(seed).standard_normal((dim, dim)).astype(np.float32)
    weights /= np.sqrt(dim)
    constants = [
        np.array([1, 1, history_length], np.int32),
        np.array([1, dim], np.int32),
        weights,
    ]
    specs = [  # name, shape, type, buffer
        ("history", [1, history_length, dim], f32, 0),
        ("mask", [1, history_length], f32, 0),
        ("mask_shape", [3], i32, 1),
        ("sum_shape", [2], i32, 2),
        ("weights", [dim, dim], f32, 3),
        ("mask3", [1, 1, history_length], f32, 0),
        ("sum3", [1, 1, dim], f32, 0),
        ("sum", [1, dim], f32, 0),
        ("dense", [1, dim], f32, 0),
        ("user_vector", [1, dim], f32, 0),
    ]
    tensors = []
    for name, shape, dtype, buffer in specs:
        tensor = schema.TensorT()
        tensor.name, tensor.shape, tensor.type, tensor.buffer = name, shape, dtype, buffer
        tensors.append(tensor)
    ops = schema.BuiltinOperator
    codes = [ops.RESHAPE, ops.BATCH_MATMUL, ops.FULLY_CONNECTED, ops.TANH]
    fc = schema.FullyConnectedOptionsT()
    graph = [  # opcode, inputs, outputs, options type, options
        (0, [1, 2], [5], 0, None),
        (1, [5, 0], [6], schema.BuiltinOptions.BatchMatMulOptions, schema.BatchMatMulOptionsT()),
        (0, [6, 3], [7], 0, None),
        (2, [7, 4, -1], [8], schema.BuiltinOptions.FullyConnectedOptions, fc),
        (3, [8], [9], 0, None),
    ]
    operators = []
    for code, inputs, outputs, options_type, options in graph:
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = code, inputs, outputs
        op.builtinOptionsType, op.builtinOptions = options_type, options
        operators.append(op)
    subgraph = schema.SubGraphT()
    subgraph.tensors, subgraph.operators = tensors, operators
    subgraph.inputs, subgraph.outputs = [0, 1], [9]
    signature = schema.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = "user_vector", 0
    signature.inputs = [_tensor_map("history", 0), _tensor_map("mask", 1)]
    signature.outputs = [_tensor_map("user_vector", 9)]
    model = schema.ModelT()
    model.version, model.subgraphs, model.signatureDefs = 3, [subgraph], [signature]
    model.operatorCodes = []
    for builtin in codes:
        code = schema.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, builtin, 1
        model.operatorCodes.append(code)
    model.buffers = [schema.BufferT()]
    for constant in constants:
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(constant.tobytes(), dtype=np.uint8)
        model.buffers.append(buffer)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _tensor_map(name: str, index: int) -> schema.TensorMapT:
    tensor_map = schema.TensorMapT()
    tensor_map.name, tensor_map.tensorIndex = name, index
    return tensor_map


def _timed(call: Callable[[int], object], count: int, warmup: int = 50) -> dict[str, float]:
    for i in range(warmup):
        call(i)
    times = np.empty(count)
    for i in range(count):
        begin = time.perf_counter()
        call(i)
        times[i] = time.perf_counter() - begin
    micros = times * 1e6
    return {"p50_us": float(np.percentile(micros, 50)), "p99_us": float(np.percentile(micros, 99))}


def _rss_mb(field: str = "VmHWM") -> float:
    """This process's peak (``VmHWM``) or current (``VmRSS``) resident memory."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(num_items: int, dtype: str, calls: int, seed: int = 0) -> dict[str, float]:
    """Every figure of one catalog size and table dtype (run it in a fresh process)."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((num_items, DIM)).astype(np.float32)
    table = ItemTable.quantize(vectors, dtype)
    ids = [f"i{r}" for r in range(num_items)]
    bundle = Bundle.build(
        model=tower_model(HISTORY_LENGTH, DIM),
        table=table,
        item_ids=ids,
        history_length=HISTORY_LENGTH,
        golden_histories=[[], ids[:3]],
    )
    del vectors
    histories = [rng.choice(num_items, size=10, replace=False).tolist() for _ in range(64)]
    builds = []
    for _ in range(3):
        scorer = None
        before = _rss_mb("VmRSS")
        began = time.perf_counter()
        scorer = Scorer(table, num_threads=1)
        builds.append(time.perf_counter() - began)
        scorer_mb = _rss_mb("VmRSS") - before
    rec = Recommender.open(bundle, num_threads=1, interpreter_pool_size=1)
    id_histories = [[ids[r] for r in h] for h in histories]
    users = rec.user_vectors(histories)
    result = {"kernel": scorer.kernel, "build_ms": 1e3 * float(np.median(builds))}
    result["scorer_rss_mb"] = scorer_mb
    result["recommend"] = _timed(lambda i: rec.recommend(id_histories[i % 64], k=10), calls)
    tower = _timed(lambda i: rec.user_vectors(histories[i % 64 : i % 64 + 1]), calls)
    result["tower"] = tower
    result["scoring"] = _timed(
        lambda i: scorer.top_k(users[i % 64], 10, banned=set(histories[i % 64])), calls
    )

    def numpy_top(i: int) -> None:
        scores = table.scores(users[i % 64 : i % 64 + 1])[0]
        scores[histories[i % 64]] = -np.inf
        top_k(scores, 10)

    result["numpy_scoring"] = _timed(numpy_top, max(calls // 10, 20), warmup=5)
    exact = ItemTable.quantize(
        np.random.default_rng(seed).standard_normal((num_items, DIM)).astype(np.float32),
        "float32",
    )
    agreement = []
    for h, user in zip(histories, users, strict=True):
        scores = exact.scores(user[None, :])[0]
        scores[h] = -np.inf
        reference = set(top_k(scores, 10).tolist())
        got = {int(i[1:]) for i in rec.recommend([ids[r] for r in h], k=10).item_ids}
        agreement.append(len(reference & got))
    result["top10_agreement"] = float(np.mean(agreement))
    result["peak_rss_mb"] = _rss_mb()
    rec.close()
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """Prints the machine, then one row per catalog size and dtype."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--dtypes", nargs="+", default=list(TABLE_DTYPES))
    parser.add_argument("--calls", type=int, default=1000, help="timed calls per figure")
    parser.add_argument("--calls-1m", type=int, default=300, help="timed calls at >= 1M items")
    parser.add_argument("--one", nargs=2, metavar=("N", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        num_items, dtype = int(args.one[0]), args.one[1]
        calls = args.calls_1m if num_items >= 1_000_000 else args.calls
        print(json.dumps(measure(num_items, dtype, calls)))
        return
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    print(
        f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"OPENBLAS_CORETYPE={'unset' if coretype is None else coretype}; one thread; k=10"
    )
    print(
        f"{'N':>9} {'dtype':>7} {'kernel':>6} {'rec p50':>8} {'rec p99':>8} {'tower':>7} "
        f"{'score':>7} {'numpy':>8} {'build':>8} {'+RSS':>6} {'peak':>6} {'top10':>6}"
    )
    for num_items in args.sizes:
        for dtype in args.dtypes:
            calls = args.calls_1m if num_items >= 1_000_000 else args.calls
            command = [sys.executable, "-m", "pocketrec.benchmarks.latency_bench"]
            command += ["--one", str(num_items), dtype, "--calls", str(calls)]
            command += ["--calls-1m", str(calls)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(
                f"{num_items:>9} {dtype:>7} {r['kernel']:>6} "
                f"{r['recommend']['p50_us'] / 1e3:>6.3f}ms "
                f"{r['recommend']['p99_us'] / 1e3:>6.3f}ms "
                f"{r['tower']['p50_us'] / 1e3:>5.3f}ms {r['scoring']['p50_us'] / 1e3:>5.3f}ms "
                f"{r['numpy_scoring']['p50_us'] / 1e3:>6.3f}ms {r['build_ms']:>6.1f}ms "
                f"{r['scorer_rss_mb']:>6.0f} {r['peak_rss_mb']:>6.0f} "
                f"{r['top10_agreement']:>6.2f}",
                flush=True,
            )
    print(
        f"calls per figure: {args.calls} (at 1M: {args.calls_1m}; numpy column: a tenth). "
        "build: Scorer over the table incl. its first call (a sync-applied table change); "
        "+RSS: resident MB the scorer adds; peak: the whole benchmark process (MB); "
        "top10: mean overlap with exact float32 scoring of the original vectors"
    )


if __name__ == "__main__":
    main()
