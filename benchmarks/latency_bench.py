"""How fast `Recommender.recommend` is at catalog scale, per item-table dtype.

`python -m pocketrec.benchmarks.latency_bench` builds synthetic catalogs of 10k, 100k and
1M items x 64 dims, each in a process of its own (so peak RSS is one catalog's), serves
them with a small user tower composed here (masked sum of the history, then a 64x64
FULLY_CONNECTED; no TensorFlow), and prints per dtype: `recommend(k=10)` p50/p99 end to
end, the tower alone, scoring + top-K alone (the device-built graph, and numpy
`ItemTable.scores` + `top_k` beside it), scorer build time (what a sync-applied table
change costs), peak RSS, and top-10 agreement with exact float32 scoring of the original
vectors. One interpreter thread throughout (OpenBLAS too).

Beside them, per size, the baselines of `pocketrec.benchmarks.latency_baselines` (each in
a process of its own, so the SDK's never imports TensorFlow), the ratios of our scoring to
each, and the issue's targets as pass/fail checks. With ``bundle``, a row for a real bundle
(e.g. the demo's, trained on MovieLens 100K). ``pocketrec bench-latency`` runs it all and
writes latency.json and latency.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from pocketrec.benchmarks.latency_baselines import BASELINES, NEEDS_TENSORFLOW, table_vectors, timed
from pocketrec.errors import PocketrecError
from pocketrec.sdk import TABLE_DTYPES, Bundle, ItemTable, Recommender
from pocketrec.sdk._ranking import top_k
from pocketrec.sdk._scorer import Scorer
from pocketrec.sdk.flatbuffer import FILE_IDENTIFIER, operator_code

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
    model.operatorCodes = [operator_code(builtin) for builtin in codes]
    model.buffers = [schema.BufferT()]
    for constant in constants:
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(constant.tobytes(), dtype=np.uint8)
        model.buffers.append(buffer)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _tensor_map(name: str, index: int) -> schema.TensorMapT:
    tensor_map = schema.TensorMapT()
    tensor_map.name, tensor_map.tensorIndex = name, index
    return tensor_map


def _rss_mb(field: str = "VmHWM") -> float:
    """This process's peak (``VmHWM``) or current (``VmRSS``) resident memory."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(
    num_items: int, dtype: str, calls: int, seed: int = 0, *, approximate: bool = False
) -> dict[str, object]:
    """Every figure of one catalog size and table dtype (run it in a fresh process)."""
    vectors = table_vectors(num_items, DIM, seed)
    table = ItemTable.quantize(vectors, dtype)
    rng = np.random.default_rng(seed + 1)
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
    result["recommend"] = timed(lambda i: rec.recommend(id_histories[i % 64], k=10), calls)
    tower = timed(lambda i: rec.user_vectors(histories[i % 64 : i % 64 + 1]), calls)
    result["tower"] = tower
    result["scoring"] = timed(
        lambda i: scorer.top_k(users[i % 64], 10, banned=set(histories[i % 64])), calls
    )

    def numpy_top(i: int) -> None:
        scores = table.scores(users[i % 64 : i % 64 + 1])[0]
        scores[histories[i % 64]] = -np.inf
        top_k(scores, 10)

    result["numpy_scoring"] = timed(numpy_top, max(calls // 10, 20), warmup=5)
    exact = ItemTable.quantize(table_vectors(num_items, DIM, seed), "float32")
    agreement = []
    for h, user in zip(histories, users, strict=True):
        scores = exact.scores(user[None, :])[0]
        scores[h] = -np.inf
        reference = set(top_k(scores, 10).tolist())
        got = {int(i[1:]) for i in rec.recommend([ids[r] for r in h], k=10).item_ids}
        agreement.append(len(reference & got))
    result["top10_agreement"] = float(np.mean(agreement))
    if approximate:
        result["approximate"] = _measure_approximate(rec, id_histories, calls)
    result["peak_rss_mb"] = _rss_mb()
    rec.close()
    return result


def _measure_approximate(
    rec: Recommender, id_histories: list[list[str]], calls: int
) -> dict[str, object]:
    """HNSW `recommend(approximate=True)`: build time, p50/p99, recall@10 vs exact."""
    began = time.perf_counter()
    rec.recommend(id_histories[0], k=10, approximate=True)
    build_s = time.perf_counter() - began
    timing = timed(lambda i: rec.recommend(id_histories[i % 64], k=10, approximate=True), calls)
    recall = [
        len(
            set(rec.recommend(h, k=10).item_ids)
            & set(rec.recommend(h, k=10, approximate=True).item_ids)
        )
        / 10
        for h in id_histories
    ]
    return {"build_s": build_s, "recommend": timing, "recall_at_10": float(np.mean(recall))}


def measure_bundle(path: Path, calls: int, seed: int = 0) -> dict[str, object]:
    """`recommend(k=10)` and tower p50/p99 of a real bundle, for random 10-item histories."""
    rec = Recommender.open(path, num_threads=1, interpreter_pool_size=1)
    ids = rec.item_ids
    rng = np.random.default_rng(seed)
    size = min(10, len(ids))
    histories = [rng.choice(len(ids), size=size, replace=False).tolist() for _ in range(64)]
    id_histories = [[ids[r] for r in h] for h in histories]
    result: dict[str, object] = {
        "bundle": str(path),
        "num_items": len(ids),
        "dim": rec.table.dim,
        "dtype": rec.table.dtype,
        "kernel": rec._current().scorer.kernel,
    }
    result["recommend"] = timed(lambda i: rec.recommend(id_histories[i % 64], k=10), calls)
    result["tower"] = timed(lambda i: rec.user_vectors(histories[i % 64 : i % 64 + 1]), calls)
    rec.close()
    return result


@dataclass(frozen=True)
class LatencyConfig:
    """What `run_latency` measures."""

    sizes: Sequence[int] = SIZES
    dtypes: Sequence[str] = TABLE_DTYPES
    calls: int = 1000
    calls_1m: int = 300
    baselines: Sequence[str] = BASELINES
    bundle: Path | None = None
    approximate: bool = False


@dataclass
class LatencyResults:
    """Everything `run_latency` measured; ``asdict`` of it is latency.json."""

    machine: str
    rows: list[dict[str, object]] = field(default_factory=list)
    baselines: list[dict[str, object]] = field(default_factory=list)
    skipped_baselines: list[str] = field(default_factory=list)
    bundle: dict[str, object] | None = None
    checks: list[dict[str, object]] = field(default_factory=list)


def machine_line() -> str:
    """CPU, Python, and whether OPENBLAS_CORETYPE is set (it changes the numpy figures)."""
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    return (
        f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"OPENBLAS_CORETYPE={'unset' if coretype is None else coretype}; one thread; k=10"
    )


def _child(arguments: list[str]) -> dict[str, object]:
    """Runs one measurement in a fresh process (one thread, TensorFlow quiet); its JSON."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env.update(TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(
        [sys.executable, "-m", *arguments], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise PocketrecError(
            f"`python -m {' '.join(arguments)}` failed (exit {done.returncode}):\n"
            f"{done.stderr[-2000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_latency(config: LatencyConfig, report: Callable[[str], None] = print) -> LatencyResults:
    """Measures every size x dtype, the baselines and the bundle; reports rows as they come."""
    unknown = set(config.baselines) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; known: {', '.join(BASELINES)}")
    unknown = set(config.dtypes) - set(TABLE_DTYPES)
    if unknown:
        raise ValueError(f"unknown dtypes {sorted(unknown)}; known: {', '.join(TABLE_DTYPES)}")
    if min(config.sizes, default=1) < 1000 or min(config.calls, config.calls_1m) < 1:
        raise ValueError(
            f"sizes must be >= 1000 items and calls >= 1, got sizes {list(config.sizes)}, "
            f"calls {config.calls} and {config.calls_1m}"
        )
    if config.approximate and importlib.util.find_spec("hnswlib") is None:
        raise ValueError("--approximate needs hnswlib: pip install 'pocketrec[ann]'")
    if config.bundle is not None and not (Path(config.bundle) / "manifest.json").is_file():
        raise ValueError(
            f"--bundle {config.bundle} is not a bundle directory (no manifest.json); pass "
            "one that `pocketrec demo` or `pocketrec export` wrote"
        )
    results = LatencyResults(machine=machine_line())
    report(results.machine)
    baselines = list(config.baselines)
    if importlib.util.find_spec("tensorflow") is None:
        results.skipped_baselines = [b for b in baselines if b in NEEDS_TENSORFLOW]
        baselines = [b for b in baselines if b not in NEEDS_TENSORFLOW]
        if results.skipped_baselines:
            report(
                f"skipped {', '.join(results.skipped_baselines)}: TensorFlow is not "
                "installed (pip install 'pocketrec[train]')"
            )
    report(_ROW_HEADER)
    for num_items in config.sizes:
        calls = config.calls_1m if num_items >= 1_000_000 else config.calls
        for dtype in config.dtypes:
            arguments = ["pocketrec.benchmarks.latency_bench", "--one", str(num_items), dtype]
            arguments += ["--calls", str(calls), "--calls-1m", str(calls)]
            if config.approximate and dtype == "int8":
                arguments.append("--approximate")
            row = _child(arguments)
            row.update(num_items=num_items, dtype=dtype)
            results.rows.append(row)
            report(_row_line(row))
            if "approximate" in row:
                report(_approximate_line(row))
        for name in baselines:
            arguments = ["pocketrec.benchmarks.latency_baselines", name, str(num_items)]
            baseline = _child([*arguments, "--dim", str(DIM), "--calls", str(calls)])
            results.baselines.append(baseline)
            report(
                f"{num_items:>9} {name:>14} p50 {baseline['p50_us'] / 1e3:.3f}ms "
                f"p99 {baseline['p99_us'] / 1e3:.3f}ms (prepared in {baseline['prepare_s']:.1f}s)"
            )
    if results.baselines:
        report("ratios, our scoring p50 ÷ baseline p50 (scoring + top-10 alone):")
        for line in ratio_lines(results):
            report(line)
    if config.bundle is not None:
        results.bundle = _child(
            [
                "pocketrec.benchmarks.latency_bench",
                "--bundle-one",
                str(config.bundle),
                "--calls",
                str(config.calls),
            ]
        )
        b = results.bundle
        report(
            f"bundle {b['bundle']}: {b['num_items']} items x {b['dim']} {b['dtype']} "
            f"({b['kernel']}): recommend p50 {b['recommend']['p50_us'] / 1e3:.3f}ms "
            f"p99 {b['recommend']['p99_us'] / 1e3:.3f}ms, tower p50 "
            f"{b['tower']['p50_us'] / 1e3:.3f}ms"
        )
    results.checks = target_checks(results)
    for check in results.checks:
        report(f"{'PASS' if check['passed'] else 'FAIL'} {check['target']}: {check['detail']}")
    report(_FOOTNOTE.format(calls=config.calls, calls_1m=config.calls_1m))
    return results


_ROW_HEADER = (
    f"{'N':>9} {'dtype':>7} {'kernel':>6} {'rec p50':>8} {'rec p99':>8} {'tower':>7} "
    f"{'score':>7} {'numpy':>8} {'build':>8} {'+RSS':>6} {'peak':>6} {'top10':>6}"
)
_FOOTNOTE = (
    "calls per figure: {calls} (at 1M: {calls_1m}; numpy column: a tenth). "
    "build: Scorer over the table incl. its first call (a sync-applied table change); "
    "+RSS: resident MB the scorer adds; peak: the whole benchmark process (MB); "
    "top10: mean overlap with exact float32 scoring of the original vectors"
)


def _row_line(r: dict) -> str:
    return (
        f"{r['num_items']:>9} {r['dtype']:>7} {r['kernel']:>6} "
        f"{r['recommend']['p50_us'] / 1e3:>6.3f}ms "
        f"{r['recommend']['p99_us'] / 1e3:>6.3f}ms "
        f"{r['tower']['p50_us'] / 1e3:>5.3f}ms {r['scoring']['p50_us'] / 1e3:>5.3f}ms "
        f"{r['numpy_scoring']['p50_us'] / 1e3:>6.3f}ms {r['build_ms']:>6.1f}ms "
        f"{r['scorer_rss_mb']:>6.0f} {r['peak_rss_mb']:>6.0f} "
        f"{r['top10_agreement']:>6.2f}"
    )


def _approximate_line(row: dict) -> str:
    a = row["approximate"]
    return (
        f"{row['num_items']:>9} {'hnsw':>7} approximate=True: recommend p50 "
        f"{a['recommend']['p50_us'] / 1e3:.3f}ms p99 {a['recommend']['p99_us'] / 1e3:.3f}ms, "
        f"recall@10 vs exact {a['recall_at_10']:.3f}, index built in {a['build_s']:.1f}s"
    )


def _row(results: LatencyResults, num_items: int, dtype: str) -> dict | None:
    return next(
        (r for r in results.rows if r["num_items"] == num_items and r["dtype"] == dtype), None
    )


def _baseline(results: LatencyResults, num_items: int, name: str) -> dict | None:
    return next(
        (b for b in results.baselines if b["num_items"] == num_items and b["name"] == name),
        None,
    )


def ratio_lines(results: LatencyResults) -> list[str]:
    """Per size and dtype, our scoring + top-10 p50 divided by each baseline's p50."""
    names = list(dict.fromkeys(b["name"] for b in results.baselines))
    lines = [f"{'N':>9} {'dtype':>7} " + " ".join(f"{n:>14}" for n in names)]
    for row in results.rows:
        ratios = []
        for name in names:
            baseline = _baseline(results, row["num_items"], name)
            ours = row["scoring"]["p50_us"]
            ratios.append("-" if baseline is None else f"{ours / baseline['p50_us']:.2f}x")
        lines.append(
            f"{row['num_items']:>9} {row['dtype']:>7} " + " ".join(f"{r:>14}" for r in ratios)
        )
    return lines


CHECK_SIZES = (100_000, 1_000_000)


def target_checks(results: LatencyResults) -> list[dict[str, object]]:
    """The issue's latency targets, for the sizes and dtypes measured."""
    checks: list[dict[str, object]] = []

    def add(target: str, ours: float, bound: float, detail: str) -> None:
        checks.append(
            {
                "target": target,
                "passed": ours <= bound,
                "ours_ms": ours / 1e3,
                "bound_ms": bound / 1e3,
                "detail": f"{ours / 1e3:.3f}ms <= {bound / 1e3:.3f}ms ({detail})",
            }
        )

    for n in CHECK_SIZES:
        int8 = _row(results, n, "int8")
        for dtype, baseline_name, factor in (
            ("int8", "tflite-int8", 1.1),
            ("float32", "tflite-float32", 1.5),
            ("float16", "tflite-float32", 1.5),
        ):
            row, baseline = _row(results, n, dtype), _baseline(results, n, baseline_name)
            if row is None or baseline is None:
                continue
            tower = row["tower"]["p50_us"]
            add(
                f"{n} {dtype} recommend p50 <= {factor} x ({baseline_name} + tower)",
                row["recommend"]["p50_us"],
                factor * (baseline["p50_us"] + tower),
                f"{baseline_name} {baseline['p50_us'] / 1e3:.3f}ms, tower {tower / 1e3:.3f}ms",
            )
        int4 = _row(results, n, "int4")
        if int4 is not None and int8 is not None:
            add(
                f"{n} int4 recommend p50 <= 1.1 x int8's",
                int4["recommend"]["p50_us"],
                1.1 * int8["recommend"]["p50_us"],
                f"int8 {int8['recommend']['p50_us'] / 1e3:.3f}ms",
            )
    int8_1m = _row(results, 1_000_000, "int8")
    if int8_1m is not None:
        add(
            "1000000 int8 recommend p99 <= 6 ms",
            int8_1m["recommend"]["p99_us"],
            6000.0,
            f"p50 {int8_1m['recommend']['p50_us'] / 1e3:.3f}ms",
        )
    return checks


def write_results(results: LatencyResults, out: Path) -> None:
    """latency.json (every figure) and latency.md (the tables and checks) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.json").write_text(json.dumps(asdict(results), indent=2) + "\n")
    lines = ["# Catalog-scale latency", "", results.machine, ""]
    lines += [
        "| N | dtype | kernel | recommend p50 | p99 | tower p50 | scoring p50 | numpy p50 "
        "| build | +RSS MB | peak MB | top-10 agreement |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results.rows:
        lines.append(
            f"| {r['num_items']} | {r['dtype']} | {r['kernel']} "
            f"| {r['recommend']['p50_us'] / 1e3:.3f} ms | {r['recommend']['p99_us'] / 1e3:.3f} ms "
            f"| {r['tower']['p50_us'] / 1e3:.3f} ms | {r['scoring']['p50_us'] / 1e3:.3f} ms "
            f"| {r['numpy_scoring']['p50_us'] / 1e3:.3f} ms | {r['build_ms']:.1f} ms "
            f"| {r['scorer_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['top10_agreement']:.2f} |"
        )
    approximate = [r for r in results.rows if "approximate" in r]
    if approximate:
        lines += ["", "## Approximate (HNSW, int8 table)", "", "```"]
        lines += [_approximate_line(r) for r in approximate] + ["```"]
    if results.baselines:
        lines += ["", "## Baselines (scoring + top-10, one thread)", ""]
        lines += ["| N | baseline | p50 | p99 | prepared in |", "|---|---|---|---|---|"]
        for b in results.baselines:
            lines.append(
                f"| {b['num_items']} | {b['name']} | {b['p50_us'] / 1e3:.3f} ms "
                f"| {b['p99_us'] / 1e3:.3f} ms | {b['prepare_s']:.1f} s |"
            )
        lines += ["", "Our scoring p50 ÷ each baseline's p50:", "", "```"]
        lines += [*ratio_lines(results), "```"]
    if results.skipped_baselines:
        lines += ["", f"Skipped (no TensorFlow): {', '.join(results.skipped_baselines)}"]
    if results.bundle is not None:
        b = results.bundle
        lines += [
            "",
            f"## Bundle {b['bundle']}",
            "",
            f"{b['num_items']} items x {b['dim']} {b['dtype']} ({b['kernel']}): recommend "
            f"p50 {b['recommend']['p50_us'] / 1e3:.3f} ms, p99 "
            f"{b['recommend']['p99_us'] / 1e3:.3f} ms; tower p50 "
            f"{b['tower']['p50_us'] / 1e3:.3f} ms",
        ]
    if results.checks:
        lines += ["", "## Targets", ""]
        lines += [
            f"- {'PASS' if c['passed'] else 'FAIL'} {c['target']}: {c['detail']}"
            for c in results.checks
        ]
    (out / "latency.md").write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    """Prints the machine, one row per catalog size and dtype, baselines and checks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--dtypes", nargs="+", default=list(TABLE_DTYPES))
    parser.add_argument("--calls", type=int, default=1000, help="timed calls per figure")
    parser.add_argument("--calls-1m", type=int, default=300, help="timed calls at >= 1M items")
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES))
    parser.add_argument("--bundle", type=Path, help="also time recommend on this bundle")
    parser.add_argument(
        "--approximate", action="store_true", help="also time HNSW recommend (int8 rows)"
    )
    parser.add_argument("--out", type=Path, help="write latency.json and latency.md here")
    parser.add_argument("--one", nargs=2, metavar=("N", "DTYPE"), help=argparse.SUPPRESS)
    parser.add_argument("--bundle-one", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        num_items, dtype = int(args.one[0]), args.one[1]
        calls = args.calls_1m if num_items >= 1_000_000 else args.calls
        print(json.dumps(measure(num_items, dtype, calls, approximate=args.approximate)))
        return
    if args.bundle_one:
        print(json.dumps(measure_bundle(args.bundle_one, args.calls)))
        return
    config = LatencyConfig(
        sizes=args.sizes,
        dtypes=args.dtypes,
        calls=args.calls,
        calls_1m=args.calls_1m,
        baselines=args.baselines,
        bundle=args.bundle,
        approximate=args.approximate,
    )
    results = run_latency(config, report=lambda line: print(line, flush=True))
    if args.out:
        write_results(results, args.out)


if __name__ == "__main__":
    main()
