"""Top-K scoring of an item table by a small LiteRT graph the device builds itself.

A table baked into a ``.tflite`` graph as a constant is scored by XNNPACK's packed kernels
(int8 and int4 rows by the dynamic-range kernel, one float scale per row), several times
faster than numpy over a compressed table; but a bundle's graph can't follow a table the
sync changes. So `Scorer` composes that graph from the stored table with the
``flatbuffers`` package and the LiteRT schema — no TensorFlow — whenever a table arrives:

    user_vector float32 [1, D] ─ FULLY_CONNECTED(table [N, D]) ─ ADD(mask float32 [1, N])
        ─ TOPK_V2(k int32 []) → values [1, k], indices [1, k]

``mask`` is 0 for items that may come back and -inf for excluded ones, so exclusions and
allow-lists cost one write per listed row and never copy the table. The table's stored
form is kept: int8 rows as INT8 weights with per-row (per-output-channel) scales, int4 rows
repacked to LiteRT's INT4 layout, float16 as FLOAT16 weights behind a DEQUANTIZE (XNNPACK
keeps a float32 copy of them), float32 as is. Tables too small for the graph to pay off
are scored by numpy (`ItemTable.scores`) instead.

`Scorer.score_batch` (``Recommender.score_rows``, so evaluation) scores many users at once
by a second graph, built on its first call: FULLY_CONNECTED alone over ``BATCH_ROWS`` user
vectors, the same kernel as the top-K graph's (XNNPACK quantizes each user row on its own),
2-4x faster than numpy at 100k items.

On a GPU (``accelerator="gpu"``, or ``"auto"`` past the measured crossover) a float32 or
float16 table is also compiled, with its top-K fixed to `GPU_TOP_K`, by LiteRT's
``CompiledModel`` for the GPU (ops it cannot run fall back to the CPU); `Scorer.top_k` runs
there, and a call that asks for more, or whose K-th and (K+1)-th scores tie, is ranked on
the CPU. int8/int4 tables stay on the CPU: integer kernels are a CPU format. Where the GPU
starts to beat the CPU depends on the device, so `crossover_items` times both once per
table dtype and dimension and keeps the answer in ``$XDG_CACHE_HOME/pocketrec/``
(`crossover_cache_path`). Not yet measured on a GPU: see DEVELOPERS.md.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Collection
from importlib import metadata
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from pocketrec.errors import AcceleratorError, BundleError
from pocketrec.sdk._ranking import top_k
from pocketrec.sdk._runtime import Interpreter, captured_native_stderr, failure_lines
from pocketrec.sdk.accelerators import detect
from pocketrec.sdk.flatbuffer import FILE_IDENTIFIER, AlignedBuffer, operator_code
from pocketrec.sdk.table import ItemTable

# Below these many items numpy scores the table faster than an interpreter call
# (measured one thread at 5k x 33: float32 numpy 21 us vs graph 34 us; int8 33 vs 23 us;
# float16 numpy converts slowly, 340 us vs 32 us).
GRAPH_MIN_ITEMS = {"float32": 16384, "float16": 1024, "int8": 1024, "int4": 1024}
# User vectors per call of the batch graph (a partial last chunk is padded with zeros).
BATCH_ROWS = 64
# Rows the GPU graph returns per call (a constant: accelerators compile fixed shapes).
GPU_TOP_K = 128
# Table dtypes the GPU scores; integer tables stay on the CPU's integer kernels.
GPU_TABLE_DTYPES = ("float32", "float16")
# Catalog sizes `measure_crossover` times on the CPU and on the accelerator.
CROSSOVER_SIZES = (16_384, 65_536, 262_144, 1_048_576)
_CACHE_FILE = "scoring-crossover.json"
_cache_lock = threading.Lock()
_WEIGHT_TYPE = {
    "float32": schema.TensorType.FLOAT32,
    "float16": schema.TensorType.FLOAT16,
    "int8": schema.TensorType.INT8,
    "int4": schema.TensorType.INT4,
}


class Scorer:
    """Scores one `ItemTable` and picks its top-K, by the LiteRT graph or by numpy.

    Thread-safe: calls on the graph are serialized by a lock (one graph per table keeps
    one packed copy of the weights).
    """

    def __init__(
        self,
        table: ItemTable,
        *,
        num_threads: int = 1,
        kernel: str = "auto",
        accelerator: str = "cpu",
    ) -> None:
        """Builds the scoring graph for ``table`` (unless it is numpy's to score).

        Args:
            kernel: ``"graph"``, ``"numpy"``, or ``"auto"``: the graph from the table
                dtype's `GRAPH_MIN_ITEMS` items on, numpy below.
            accelerator: where `top_k` runs: ``"cpu"``; ``"gpu"``: a float table of a
                graph's size on the GPU; ``"auto"``: on the GPU when one is present and
                the table reaches `crossover_items` (measured on the first such table).

        Raises:
            ValueError: for an unknown ``kernel`` or ``accelerator``.
            BundleError: if LiteRT rejects the graph built from the table.
            AcceleratorError: ``"gpu"`` where no GPU is present, or the GPU cannot
                compile the graph.
        """
        if kernel not in ("auto", "graph", "numpy"):
            raise ValueError(f"kernel must be 'auto', 'graph' or 'numpy', got {kernel!r}")
        if accelerator not in ("cpu", "gpu", "auto"):
            raise ValueError(f"accelerator must be 'cpu', 'gpu' or 'auto', got {accelerator!r}")
        if kernel == "auto":
            kernel = "graph" if table.num_items >= GRAPH_MIN_ITEMS[table.dtype] else "numpy"
        self.table = table
        self.kernel = kernel
        self._num_threads = num_threads
        self._lock = threading.Lock()
        self._batch_lock = threading.Lock()
        self._batch_interpreter: Interpreter | None = None
        if kernel == "graph":
            self.model = scorer_model(table)
            self._interpreter = self._interpreter_of(self.model)
            inputs = {d["name"]: d["index"] for d in self._interpreter.get_input_details()}
            self._user, self._mask, self._k = inputs["user_vector"], inputs["mask"], inputs["k"]
            values, indices, masked = self._interpreter.get_output_details()
            self._values, self._indices = values["index"], indices["index"]
            self._masked = masked["index"]
            # The arena starts uninitialised; `_run` keeps the mask at zero between calls.
            self._interpreter.tensor(self._mask)()[:] = 0.0
            # The first call packs the weights for XNNPACK: pay it here, before serving.
            self._run(np.zeros(table.dim, dtype=np.float32), 1, (), None)
        self.accelerator = _scoring_place(table, kernel, accelerator)
        self._compiled: CompiledTopK | None = None
        if self.accelerator == "gpu":
            self._compiled = CompiledTopK(table, "gpu")
            self._compiled_mask = np.zeros(table.num_items, dtype=np.float32)

    def scores(self, user_vector: np.ndarray) -> np.ndarray:
        """This kernel's scores float32 ``[N]`` of every row for one user vector ``[D]``.

        With the graph, int8/int4 scores differ from `ItemTable.scores` by the dynamic-range
        kernel's int8 rounding of the user vector.
        """
        if self.kernel == "numpy":
            return self.table.scores(user_vector[None, :])[0]
        with self._lock:
            self._run(user_vector, 1, (), None)
            return self._interpreter.get_tensor(self._masked)[0]

    def score_batch(self, user_vectors: np.ndarray) -> np.ndarray:
        """This kernel's scores float32 ``[B, N]`` of every row for user vectors ``[B, D]``.

        Row ``b`` equals ``scores(user_vectors[b])``: the batch graph runs the same kernel.
        """
        users = np.asarray(user_vectors, dtype=np.float32)
        if users.ndim != 2 or users.shape[1] != self.table.dim:
            raise ValueError(
                f"user_vectors must have shape [B, {self.table.dim}], got {users.shape}"
            )
        if self.kernel == "numpy":
            return self.table.scores(users)
        out = np.empty((len(users), self.table.num_items), dtype=np.float32)
        chunk = np.zeros((BATCH_ROWS, self.table.dim), dtype=np.float32)
        with self._batch_lock:
            if self._batch_interpreter is None:
                model = scorer_model(self.table, batch=BATCH_ROWS)
                self._batch_interpreter = self._interpreter_of(model)
            interpreter = self._batch_interpreter
            (user,) = interpreter.get_input_details()
            (scores,) = interpreter.get_output_details()
            for start in range(0, len(users), BATCH_ROWS):
                rows = users[start : start + BATCH_ROWS]
                chunk[: len(rows)] = rows
                chunk[len(rows) :] = 0.0
                interpreter.set_tensor(user["index"], chunk)
                try:
                    interpreter.invoke()
                except RuntimeError as exc:
                    raise BundleError(f"the batch scoring graph failed to run: {exc}") from exc
                out[start : start + len(rows)] = interpreter.get_tensor(scores["index"])[
                    : len(rows)
                ]
        return out

    def _interpreter_of(self, model: bytes) -> Interpreter:
        try:
            interpreter = Interpreter(model_content=model, num_threads=self._num_threads)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BundleError(
                f"LiteRT rejected the scoring graph of a {self.table!r} ({exc}); "
                "score it with kernel='numpy'"
            ) from exc
        return interpreter

    def top_k(
        self,
        user_vector: np.ndarray,
        k: int,
        *,
        banned: Collection[int] = (),
        allowed: Collection[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the ``k`` best-scoring items and their scores, best first.

        ``banned`` rows never come back; with ``allowed``, only those rows may. Ties go to
        the lower row, as in `pocketrec.sdk._ranking.top_k`; fewer than ``k`` rows come back
        when fewer remain.
        """
        if self.kernel == "numpy":
            scores = self.table.scores(user_vector[None, :])[0]
            if allowed is not None:
                kept = np.full(scores.shape, -np.inf, dtype=np.float32)
                rows = np.fromiter(allowed, dtype=np.int64, count=len(allowed))
                kept[rows] = scores[rows]
                scores = kept
            scores[list(banned)] = -np.inf
            rows = top_k(scores, k)
            return rows, scores[rows]
        # One more than asked shows whether a tie crosses the boundary.
        wanted = min(k + 1, self.table.num_items)
        if self._compiled is not None and wanted <= self._compiled.k:
            found = self._compiled_top_k(user_vector, k, wanted, banned, allowed)
            if found is not None:
                return found
        with self._lock:
            self._run(user_vector, wanted, banned, allowed)
            values = self._interpreter.get_tensor(self._values)[0]
            rows = self._interpreter.get_tensor(self._indices)[0].astype(np.int64)
            finite = np.isfinite(values)
            values, rows = values[finite], rows[finite]
            if len(rows) > k and values[k - 1] == values[k]:
                # TOPK_V2 does not promise which of tied rows it keeps: rank them all.
                scores = self._interpreter.get_tensor(self._masked)[0]
                rows = top_k(scores, k)
                return rows, scores[rows]
        order = np.lexsort((rows, -values))[:k]
        return rows[order], values[order]

    def _compiled_top_k(
        self,
        user_vector: np.ndarray,
        k: int,
        wanted: int,
        banned: Collection[int],
        allowed: Collection[int] | None,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The accelerator's top-``k``; None when a tie at the boundary needs the CPU."""
        assert self._compiled is not None
        with self._lock:
            mask = self._compiled_mask
            touched = _fill_mask(mask, banned, allowed)
            try:
                values, rows = self._compiled.run(user_vector, mask)
            finally:
                if touched is None:
                    mask[:] = 0.0
                else:
                    mask[touched] = 0.0
        values, rows = values[:wanted], rows[:wanted]
        finite = np.isfinite(values)
        values, rows = values[finite], rows[finite]
        if len(rows) > k and values[k - 1] == values[k]:
            return None
        order = np.lexsort((rows, -values))[:k]
        return rows[order], values[order]

    def _run(
        self,
        user_vector: np.ndarray,
        k: int,
        banned: Collection[int],
        allowed: Collection[int] | None,
    ) -> None:
        interpreter = self._interpreter
        interpreter.set_tensor(self._user, np.asarray(user_vector, np.float32).reshape(1, -1))
        interpreter.set_tensor(self._k, np.array(k, dtype=np.int32))
        touched = _fill_mask(interpreter.tensor(self._mask)()[0], banned, allowed)
        try:
            interpreter.invoke()
        except RuntimeError as exc:
            raise BundleError(f"the scoring graph failed to run: {exc}") from exc
        finally:
            # Back to all zeros for the next call, whatever this one listed.
            mask = interpreter.tensor(self._mask)()[0]
            if touched is None:
                mask[:] = 0.0
            else:
                mask[touched] = 0.0


class CompiledTopK:
    """The top-K graph of a table with K fixed to `GPU_TOP_K`, compiled by ``CompiledModel``.

    ``"gpu"`` runs it on the GPU with the CPU taking what the GPU cannot (`fully_accelerated`
    says whether anything fell back); ``"cpu"`` compiles it for the CPU alone, the same code
    path where no GPU is present. Not thread-safe: `Scorer` serializes calls.
    """

    def __init__(self, table: ItemTable, accelerator: str) -> None:
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator

        self.k = min(GPU_TOP_K, table.num_items)
        flags = HardwareAccelerator.CPU
        graph_table = table
        if accelerator == "gpu":
            flags = HardwareAccelerator.GPU | HardwareAccelerator.CPU
            if table.dtype == "float16":  # exact; the GPU leaves DEQUANTIZE to the CPU
                graph_table = ItemTable.quantize(table.dequantized(), "float32")
        failure = None
        with captured_native_stderr() as log:
            try:
                self._compiled = CompiledModel.from_buffer(
                    scorer_model(graph_table, top_k=self.k), hardware_accel=flags
                )
            except RuntimeError as exc:
                failure = exc
        if failure is not None:
            said = "; ".join(failure_lines(log[0] if log else "", accelerator))
            raise AcceleratorError(
                f"LiteRT could not compile the scoring graph of a {table!r} for the "
                f"{accelerator.upper()} ({said or str(failure).strip()}); score it on the CPU "
                "(accelerator='cpu')"
            ) from failure
        self.fully_accelerated = self._compiled.is_fully_accelerated()
        self._inputs = self._compiled.create_input_buffers(0)
        self._outputs = self._compiled.create_output_buffers(0)

    def run(self, user_vector: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values, rows) of the ``k`` best scores after ``mask`` (0 or -inf per row)."""
        user, masked = self._inputs
        user.write(np.asarray(user_vector, dtype=np.float32).reshape(1, -1))
        masked.write(mask.reshape(1, -1))
        self._compiled.run_by_index(0, self._inputs, self._outputs)
        values, rows = self._outputs
        return values.read(self.k, np.float32), rows.read(self.k, np.int32).astype(np.int64)


def crossover_cache_path() -> Path:
    """Where measured crossovers are kept: ``$XDG_CACHE_HOME/pocketrec/`` (``~/.cache``)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "pocketrec" / _CACHE_FILE


def crossover_items(
    dtype: str,
    dim: int,
    *,
    measure: Callable[[str, int], dict[str, Any]] | None = None,
) -> int | None:
    """Fewest items from which the GPU scores a ``dtype`` table of ``dim`` faster; None if
    it never did up to the largest size timed. Measured once per device (ai-edge-litert
    version, dtype, dim) by ``measure`` (default `measure_crossover` on the GPU) and kept
    in `crossover_cache_path`; an unreadable cache is measured again and rewritten.
    """
    key = f"ai-edge-litert {_litert_version()} {dtype} d{dim}"
    path = crossover_cache_path()
    with _cache_lock:
        cache = _read_cache(path)
        entry = cache.get(key)
        if not (isinstance(entry, dict) and _valid_crossover(entry.get("crossover_items"))):
            entry = (measure or measure_crossover)(dtype, dim)
            cache[key] = entry
            _write_cache(path, cache)
    return entry["crossover_items"]


def measure_crossover(
    dtype: str,
    dim: int,
    *,
    accelerator: str = "gpu",
    sizes: tuple[int, ...] = CROSSOVER_SIZES,
    calls: int = 30,
) -> dict[str, Any]:
    """Median `Scorer.top_k` time (k=10) on the CPU and compiled for ``accelerator`` for
    random ``dtype`` tables of each of ``sizes`` items; the first size where the
    accelerator is faster is ``crossover_items`` (None when it never is)."""
    rng = np.random.default_rng(0)
    user = rng.standard_normal(dim).astype(np.float32)
    result: dict[str, Any] = {"sizes": list(sizes), "cpu_us": [], "accelerated_us": []}
    result["accelerator"], result["crossover_items"] = accelerator, None
    for size in sizes:
        table = ItemTable.quantize(rng.standard_normal((size, dim)).astype(np.float32), dtype)
        cpu, compiled = Scorer(table), CompiledTopK(table, accelerator)
        mask = np.zeros(size, dtype=np.float32)
        cpu_us = median_us(lambda cpu=cpu: cpu.top_k(user, 10), calls)
        accelerated_us = median_us(lambda c=compiled, m=mask: c.run(user, m), calls)
        result["cpu_us"].append(cpu_us)
        result["accelerated_us"].append(accelerated_us)
        if result["crossover_items"] is None and accelerated_us < cpu_us:
            result["crossover_items"] = size
    return result


def median_us(call: Callable[[], object], calls: int) -> float:
    """Median wall time of ``calls`` calls of ``call``, in microseconds, after one more."""
    call()  # the first call pays for allocation and weight packing
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e6, 1)


def _scoring_place(table: ItemTable, kernel: str, accelerator: str) -> str:
    """``"gpu"`` where ``accelerator`` lets a GPU score ``table`` (see `Scorer`), else cpu."""
    if accelerator == "cpu" or table.dtype not in GPU_TABLE_DTYPES:
        return "cpu"
    gpu = detect("gpu")
    if accelerator == "gpu":
        if not gpu.present:
            raise AcceleratorError(
                f"accelerator='gpu' was asked for scoring, but no GPU is usable here: "
                f"{gpu.detail}. Score on the CPU (accelerator='cpu')"
            )
        return "gpu" if kernel == "graph" else "cpu"
    if not gpu.present or table.num_items < CROSSOVER_SIZES[0]:
        return "cpu"  # no GPU, or a table smaller than any size timed: nothing to measure
    crossover = crossover_items(table.dtype, table.dim)
    return "gpu" if crossover is not None and table.num_items >= crossover else "cpu"


def _valid_crossover(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0)


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_cache(path: Path, cache: dict[str, Any]) -> None:
    """Replaces the cache file atomically; a cache that cannot be written is measured again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(json.dumps(cache, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(partial, path)
    except OSError:
        pass


def _litert_version() -> str:
    try:
        return metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
        return "unknown"


def _fill_mask(
    mask: np.ndarray, banned: Collection[int], allowed: Collection[int] | None
) -> np.ndarray | None:
    """Writes -inf over excluded rows; returns the rows written, None for all of them."""
    rows = np.fromiter(banned, dtype=np.int64, count=len(banned))
    if allowed is None:
        mask[rows] = -np.inf
        return rows
    mask[:] = -np.inf
    mask[np.fromiter(allowed, dtype=np.int64, count=len(allowed))] = 0.0
    mask[rows] = -np.inf
    return None


def scorer_model(table: ItemTable, *, batch: int | None = None, top_k: int | None = None) -> bytes:
    """The ``.tflite`` scoring graph of ``table`` (see the module docstring).

    With ``batch``, the graph of `Scorer.score_batch`: ``user_vectors [batch, D]`` through
    the FULLY_CONNECTED alone to ``scores [batch, N]``. With ``top_k``, ``k`` is that
    constant instead of an input (inputs ``user_vector``, ``mask``; outputs ``values``,
    ``indices`` ``[1, top_k]``): the graph `CompiledTopK` compiles.
    """
    n, d = table.num_items, table.dim
    weights, quantization = _weights(table)
    f32, i32 = schema.TensorType.FLOAT32, schema.TensorType.INT32
    buffers = [AlignedBuffer(None), AlignedBuffer(weights)]
    weight_type = _WEIGHT_TYPE[table.dtype]
    fc_options = schema.FullyConnectedOptionsT()
    fc_type = schema.BuiltinOptions.FullyConnectedOptions
    if batch is None:
        tensors = [
            _tensor("user_vector", [1, d], f32),
            _tensor("mask", [1, n], f32),
            _tensor("k", [], i32),
            _tensor("table", [n, d], weight_type, buffer=1, quantization=quantization),
            _tensor("scores", [1, n], f32),
            _tensor("masked_scores", [1, n], f32),
            _tensor("values", [1, 1], f32),
            _tensor("indices", [1, 1], i32),
        ]
        codes = [schema.BuiltinOperator.FULLY_CONNECTED, schema.BuiltinOperator.ADD]
        codes.append(schema.BuiltinOperator.TOPK_V2)
        top_options = schema.TopKV2OptionsT()
        operators = [
            _operator(0, [0, 3, -1], [4], fc_type, fc_options),
            _operator(1, [4, 1], [5], schema.BuiltinOptions.AddOptions, schema.AddOptionsT()),
            _operator(2, [5, 2], [6, 7], schema.BuiltinOptions.TopKV2Options, top_options),
        ]
        inputs, outputs, table_index = [0, 1, 2], [6, 7, 5], 3
        if top_k is not None:
            buffers.append(AlignedBuffer(np.array(top_k, dtype=np.int32)))
            tensors[2].buffer = len(buffers) - 1
            tensors[6].shape = tensors[7].shape = [1, top_k]
            inputs, outputs = [0, 1], [6, 7]
    else:
        tensors = [
            _tensor("user_vectors", [batch, d], f32),
            _tensor("table", [n, d], weight_type, buffer=1, quantization=quantization),
            _tensor("scores", [batch, n], f32),
        ]
        codes = [schema.BuiltinOperator.FULLY_CONNECTED]
        operators = [_operator(0, [0, 1, -1], [2], fc_type, fc_options)]
        inputs, outputs, table_index = [0], [2], 1
    if table.dtype == "float16":
        # XNNPACK folds a DEQUANTIZE of constant float16 weights into float32 weights.
        tensors.append(_tensor("table_float32", [n, d], f32))
        operators.insert(0, _operator(len(codes), [table_index], [len(tensors) - 1], 0, None))
        codes.append(schema.BuiltinOperator.DEQUANTIZE)
        operators[1].inputs[1] = len(tensors) - 1
    subgraph = schema.SubGraphT()
    subgraph.tensors = tensors
    subgraph.inputs, subgraph.outputs = inputs, outputs
    subgraph.operators = operators
    subgraph.name = "main"
    model = schema.ModelT()
    model.version = 3
    model.description = "pocketrec item scorer"
    model.operatorCodes = [operator_code(code) for code in codes]
    model.subgraphs, model.buffers = [subgraph], buffers
    builder = flatbuffers.Builder(weights.nbytes + 4096)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    # One copy of the finished bytes (``Output()`` would slice, then ``bytes`` copy again).
    return bytes(memoryview(builder.Bytes)[builder.Head() :])


def _weights(table: ItemTable) -> tuple[np.ndarray, schema.QuantizationParametersT | None]:
    """The table's constant buffer and quantization, in LiteRT's layout."""
    values = np.ascontiguousarray(table.values)
    if table.dtype in ("float32", "float16"):
        return values, None
    quantization = schema.QuantizationParametersT()
    scales = np.asarray(table.scales, dtype=np.float32)
    # An all-zero row has scale 0, which kernels reject; its values are 0 whatever the scale.
    quantization.scale = np.where(scales > 0, scales, np.float32(1.0))
    quantization.zeroPoint = np.zeros(table.num_items, dtype=np.int64)
    quantization.quantizedDimension = 0
    if table.dtype == "int8":
        return values, quantization
    # int4: ours pads each row to whole bytes and offsets nibbles by 8; LiteRT packs the
    # flattened tensor's signed nibbles back to back, low nibble first.
    low = (values & 0x0F).astype(np.int8) - np.int8(8)
    high = (values >> 4).astype(np.int8) - np.int8(8)
    unpacked = np.empty((table.num_items, 2 * values.shape[1]), dtype=np.int8)
    unpacked[:, 0::2], unpacked[:, 1::2] = low, high
    flat = unpacked[:, : table.dim].reshape(-1)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, dtype=np.int8)])
    nibbles = flat.view(np.uint8) & np.uint8(0x0F)
    return np.ascontiguousarray(nibbles[0::2] | (nibbles[1::2] << 4)), quantization


def _tensor(
    name: str,
    shape: list[int],
    dtype: int,
    *,
    buffer: int = 0,
    quantization: schema.QuantizationParametersT | None = None,
) -> schema.TensorT:
    tensor = schema.TensorT()
    tensor.name, tensor.shape, tensor.type, tensor.buffer = name, shape, dtype, buffer
    tensor.quantization = quantization
    return tensor


def _operator(
    code: int, inputs: list[int], outputs: list[int], options_type: int, options: object
) -> schema.OperatorT:
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = code, inputs, outputs
    op.builtinOptionsType, op.builtinOptions = options_type, options
    return op
