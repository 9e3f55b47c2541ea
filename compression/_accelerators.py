"""Which accelerator runs which op of a converted user tower.

- CPU (XNNPACK): **measured**. The model is loaded twice through ``ai_edge_litert``, with
  and without the default XNNPACK delegate; every op that the delegate's partitions
  replaced is counted as delegated, the rest run on the built-in reference kernels.
- GPU: **measured** with ``ai_edge_litert.compiled_model.CompiledModel`` and
  ``HardwareAccelerator.GPU`` where `pocketrec.sdk.accelerators.detect` finds a GPU
  (``is_fully_accelerated()``); otherwise **static** (nothing is probed, so nothing is
  printed; the report keeps detection's reason in ``gpu_absent``): a per-op support table
  (below) plus the delegate's rule that every runtime tensor of a GPU op is float32 or
  float16, and no STRIDED_SLICE shrinks an axis. int8 kernels are a CPU format: a
  full-integer model stays on the CPU (on an NVIDIA H200 int8 towers erred by 2.2 and 4.7%).
- NPU: not evaluated. NNAPI is Android-only and deprecated since Android 15; LiteRT
  reaches NPUs through vendor dispatch libraries (Qualcomm, MediaTek, Intel OpenVINO)
  that ahead-of-time compile for one chip.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from ai_edge_litert import schema_py_generated as schema

from pocketrec.compression._inspect import Graph, Node, load_interpreter, read_graph
from pocketrec.errors import AcceleratorError
from pocketrec.sdk._runtime import CompiledRunner, undelegated_ops
from pocketrec.sdk.accelerators import NNAPI_NOTE, detect
from pocketrec.sdk.flatbuffer import builtin_code, expand_float16_weights

# Static GPU support table: the float ops the LiteRT/TFLite GPU delegate parses (from its
# operation parsers), for a graph whose shapes are fixed. Ops not listed stay on the CPU.
# DEQUANTIZE is not listed: LiteRT's WebGPU accelerator left it to the CPU (measured on an
# NVIDIA GPU); the SDK widens float16 weights before compiling, so those never reach it.
GPU_SUPPORTED_OPS: frozenset[str] = frozenset(
    {
        "ABS",
        "ADD",
        "AVERAGE_POOL_2D",
        "BATCH_MATMUL",
        "CONCATENATION",
        "CONV_2D",
        "COS",
        "DEPTH_TO_SPACE",
        "DEPTHWISE_CONV_2D",
        "DIV",
        "ELU",
        "EXP",
        "FLOOR",
        "FULLY_CONNECTED",
        "GELU",
        "HARD_SWISH",
        "LEAKY_RELU",
        "LOG",
        "LOGISTIC",
        "MAX_POOL_2D",
        "MAXIMUM",
        "MEAN",
        "MINIMUM",
        "MUL",
        "NEG",
        "PAD",
        "PADV2",
        "POW",
        "PRELU",
        "REDUCE_MAX",
        "REDUCE_MIN",
        "RELU",
        "RELU6",
        "RESHAPE",
        "RESIZE_BILINEAR",
        "RESIZE_NEAREST_NEIGHBOR",
        "RSQRT",
        "SIN",
        "SLICE",
        "SOFTMAX",
        "SPACE_TO_DEPTH",
        "SPLIT",
        "SQRT",
        "SQUARE",
        "SQUARED_DIFFERENCE",
        "STRIDED_SLICE",
        "SUB",
        "SUM",
        "TANH",
        "TRANSPOSE",
        "TRANSPOSE_CONV",
    }
)
_GPU_DTYPES = frozenset({"float32", "float16"})

NPU_NOTE = (
    f"not evaluated: {NNAPI_NOTE}; LiteRT reaches NPUs through vendor dispatch libraries "
    "(Qualcomm, MediaTek, Intel OpenVINO) compiled ahead of time for one chip"
)


@dataclass(frozen=True)
class AcceleratorReport:
    """Per-accelerator coverage of one model's main subgraph.

    Attributes:
        ops: op name -> node count.
        num_ops: total node count.
        xnnpack_delegated: nodes the XNNPACK delegate replaced (measured).
        xnnpack_on_cpu_kernels: op name -> nodes XNNPACK left to the built-in kernels.
        gpu_source: ``"measured"`` (CompiledModel on a present GPU) or ``"static"``.
        gpu_supported: nodes the GPU takes (static: by the table; measured: all or none
            is known, so ``num_ops`` when fully accelerated and ``None`` otherwise).
        gpu_fully_accelerated: whether the GPU takes the whole graph.
        gpu_rejected: op name -> why the GPU leaves it to the CPU (static only).
        npu: the NPU/NNAPI situation.
        gpu_absent: why the GPU was not measured (detection's reason); None when it was,
            or when the probe was not asked for.
    """

    ops: dict[str, int]
    num_ops: int
    xnnpack_delegated: int
    xnnpack_on_cpu_kernels: dict[str, int]
    gpu_source: str
    gpu_supported: int | None
    gpu_fully_accelerated: bool
    gpu_rejected: dict[str, str]
    npu: str = NPU_NOTE
    gpu_absent: str | None = None

    @property
    def xnnpack_fully_delegated(self) -> bool:
        return self.xnnpack_delegated == self.num_ops

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, with the source of every figure."""
        return {
            "ops": dict(self.ops),
            "num_ops": self.num_ops,
            "cpu_xnnpack": {
                "source": "measured",
                "delegated": self.xnnpack_delegated,
                "on_cpu_kernels": dict(self.xnnpack_on_cpu_kernels),
            },
            "gpu": {
                "source": self.gpu_source,
                "supported": self.gpu_supported,
                "fully_accelerated": self.gpu_fully_accelerated,
                "rejected": dict(self.gpu_rejected),
                "absent": self.gpu_absent,
            },
            "npu": self.npu,
        }

    def summary(self) -> str:
        """One line: XNNPACK and GPU coverage."""
        gpu = (
            "whole graph"
            if self.gpu_fully_accelerated
            else (
                f"{self.gpu_supported}/{self.num_ops} ops"
                if self.gpu_supported is not None
                else "partial"
            )
        )
        rejected = ", ".join(sorted(self.gpu_rejected))
        return (
            f"XNNPACK {self.xnnpack_delegated}/{self.num_ops} ops (measured); "
            f"GPU {gpu} ({self.gpu_source})" + (f", rejects {rejected}" if rejected else "")
        )


def accelerator_coverage(model: bytes, *, probe_gpu: bool = True) -> AcceleratorReport:
    """Which of ``model``'s ops XNNPACK, the GPU and the NPU take (see the module docstring).

    ``probe_gpu=False`` skips the LiteRT GPU probe (which costs seconds where no GPU
    exists) and uses the static table.
    """
    graph = read_graph(model)
    ops = Counter(node.op for node in graph.nodes)
    on_cpu = undelegated_ops(load_interpreter(model, delegates=True))
    gpu = detect("gpu") if probe_gpu else None
    if gpu is not None and gpu.present:
        fully = _gpu_fully_accelerated(model)
        source, supported, rejected = "measured", len(graph.nodes) if fully else None, {}
    else:
        # The graph the SDK compiles for the GPU: float16 weights widened, DEQUANTIZE gone.
        gpu_model = expand_float16_weights(model)
        gpu_graph = graph if gpu_model is model else read_graph(gpu_model)
        rejected, unsupported = _static_gpu_rejections(gpu_graph, _shrinking_slices(gpu_model))
        source, supported, fully = "static", len(graph.nodes) - unsupported, not rejected
    return AcceleratorReport(
        ops=dict(ops),
        num_ops=len(graph.nodes),
        xnnpack_delegated=len(graph.nodes) - sum(on_cpu.values()),
        xnnpack_on_cpu_kernels=on_cpu,
        gpu_source=source,
        gpu_supported=supported,
        gpu_fully_accelerated=fully,
        gpu_rejected=rejected,
        gpu_absent=None if gpu is None or gpu.present else gpu.detail,
    )


def gpu_available() -> bool:
    """Whether LiteRT's GPU accelerator runs here (`pocketrec.sdk.accelerators.detect`)."""
    return detect("gpu").present


def _gpu_fully_accelerated(model: bytes) -> bool:
    try:
        return CompiledRunner(model, "gpu").fully_accelerated
    except AcceleratorError:
        return False


def _static_gpu_rejections(graph: Graph, shrinking: frozenset[int]) -> tuple[dict[str, str], int]:
    """Op name -> why the GPU leaves it to the CPU, and how many nodes it leaves there."""
    rejected: dict[str, str] = {}
    count = 0
    for node in graph.nodes:
        reason = _gpu_rejection(graph, node, shrinking)
        if reason is not None:
            rejected.setdefault(node.op, reason)
            count += 1
    return rejected, count


def _gpu_rejection(graph: Graph, node: Node, shrinking: frozenset[int]) -> str | None:
    if node.op not in GPU_SUPPORTED_OPS:
        return "op not in the GPU delegate's support table"
    if node.index in shrinking:
        return "shrink_axis_mask (measured: LiteRT's GPU accelerator refuses it)"
    runtime = [t for t in node.inputs + node.outputs if t not in graph.constants]
    bad = sorted({graph.dtypes[t] for t in runtime} - _GPU_DTYPES)
    if bad:
        return f"runtime tensors of dtype {', '.join(bad)} (GPU computes in float)"
    if any(graph.dtypes[t] == "int8" for t in node.inputs if t in graph.constants) and (
        node.op in {"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "BATCH_MATMUL"}
    ):
        return "int8 weights with float activations (hybrid kernel, CPU only)"
    return None


def _shrinking_slices(model: bytes) -> frozenset[int]:
    """Nodes of the main subgraph that are STRIDED_SLICEs with a ``shrink_axis_mask``."""
    parsed = schema.ModelT.InitFromPackedBuf(model, 0)
    codes = [builtin_code(code) for code in parsed.operatorCodes]
    return frozenset(
        index
        for index, op in enumerate(parsed.subgraphs[0].operators)
        if codes[op.opcodeIndex] == schema.BuiltinOperator.STRIDED_SLICE
        and getattr(op.builtinOptions, "shrinkAxisMask", 0)
    )
