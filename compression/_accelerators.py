"""Which accelerator runs which op of a converted user tower.

- CPU (XNNPACK): **measured**. The model is loaded twice through ``ai_edge_litert``, with
  and without the default XNNPACK delegate; every op that the delegate's partitions
  replaced is counted as delegated, the rest run on the built-in reference kernels.
- GPU: **measured** with ``ai_edge_litert.compiled_model.CompiledModel`` and
  ``HardwareAccelerator.GPU`` where a GPU is present (``is_fully_accelerated()``);
  otherwise **static**: a per-op support table (below) plus the delegate's rule that
  every runtime tensor of a GPU op is float32 or float16. int8 kernels are a CPU format:
  a full-integer model stays on the CPU (measured on an NVIDIA GPU, the int8 twin of the
  attention tower also erred by 17%).
- NPU: not evaluated. NNAPI is Android-only and deprecated since Android 15; LiteRT
  reaches NPUs through vendor dispatch libraries (Qualcomm, MediaTek, Intel OpenVINO)
  that ahead-of-time compile for one chip.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pocketrec.compression._inspect import Graph, load_interpreter, read_graph

# Static GPU support table: the float ops the LiteRT/TFLite GPU delegate parses (from its
# operation parsers), for a graph whose shapes are fixed. Ops not listed stay on the CPU.
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
        "DEQUANTIZE",
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
    "not evaluated: NNAPI is Android-only and deprecated since Android 15; LiteRT reaches "
    "NPUs through vendor dispatch libraries (Qualcomm, MediaTek, Intel OpenVINO) compiled "
    "ahead of time for one chip"
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
    delegated = _xnnpack_delegated(model)
    on_cpu = Counter(node.op for node in graph.nodes if node.index not in delegated)
    if probe_gpu and gpu_available():
        fully = _gpu_fully_accelerated(model)
        source, supported, rejected = "measured", len(graph.nodes) if fully else None, {}
    else:
        rejected = _static_gpu_rejections(graph)
        unsupported = sum(1 for node in graph.nodes if node.op in rejected)
        source, supported, fully = "static", len(graph.nodes) - unsupported, not rejected
    return AcceleratorReport(
        ops=dict(ops),
        num_ops=len(graph.nodes),
        xnnpack_delegated=len(delegated),
        xnnpack_on_cpu_kernels=dict(on_cpu),
        gpu_source=source,
        gpu_supported=supported,
        gpu_fully_accelerated=fully,
        gpu_rejected=rejected,
    )


@functools.cache
def gpu_available() -> bool:
    """Whether LiteRT's GPU accelerator starts here (probed once per process)."""
    from ai_edge_litert.compiled_model import CompiledModel, HardwareAccelerator

    try:
        CompiledModel.from_buffer(_tiny_model(), hardware_accel=HardwareAccelerator.GPU)
    except (RuntimeError, OSError):
        return False
    return True


def _gpu_fully_accelerated(model: bytes) -> bool:
    from ai_edge_litert.compiled_model import CompiledModel, HardwareAccelerator

    try:
        compiled = CompiledModel.from_buffer(
            model, hardware_accel=HardwareAccelerator.GPU | HardwareAccelerator.CPU
        )
    except RuntimeError:
        return False
    return compiled.is_fully_accelerated()


@functools.cache
def _tiny_model() -> bytes:
    # A one-op float model (ADD of an input to itself), built from the schema so the probe
    # needs no converter and no TensorFlow.
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    tensor = schema.TensorT()
    tensor.shape = [1, 4]
    tensor.type = schema.TensorType.FLOAT32
    tensor.buffer = 0
    tensor.name = "x"
    out = schema.TensorT()
    out.shape = [1, 4]
    out.type = schema.TensorType.FLOAT32
    out.buffer = 0
    out.name = "y"
    op = schema.OperatorT()
    op.opcodeIndex = 0
    op.inputs = [0, 0]
    op.outputs = [1]
    op.builtinOptionsType = schema.BuiltinOptions.AddOptions
    op.builtinOptions = schema.AddOptionsT()
    subgraph = schema.SubGraphT()
    subgraph.tensors = [tensor, out]
    subgraph.inputs = [0]
    subgraph.outputs = [1]
    subgraph.operators = [op]
    code = schema.OperatorCodeT()
    code.builtinCode = schema.BuiltinOperator.ADD
    code.deprecatedBuiltinCode = schema.BuiltinOperator.ADD
    code.version = 1
    model = schema.ModelT()
    model.version = 3
    model.operatorCodes = [code]
    model.subgraphs = [subgraph]
    model.buffers = [schema.BufferT()]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _xnnpack_delegated(model: bytes) -> set[int]:
    """Indices of the nodes that XNNPACK's partitions replaced.

    A DELEGATE node consumes its partition's inputs and produces its outputs; walking
    back from those outputs through the original producers, up to the partition's
    inputs, visits exactly the replaced nodes.
    """
    interpreter = load_interpreter(model, delegates=True)
    ops = interpreter._get_ops_details()
    producer = {
        int(t): int(op["index"]) for op in ops if op["op_name"] != "DELEGATE" for t in op["outputs"]
    }
    by_index = {int(op["index"]): op for op in ops}
    delegated: set[int] = set()
    for op in ops:
        if op["op_name"] != "DELEGATE":
            continue
        boundary = {int(t) for t in op["inputs"]}
        stack = [int(t) for t in op["outputs"]]
        seen: set[int] = set()
        while stack:
            tensor = stack.pop()
            if tensor in boundary or tensor in seen or tensor not in producer:
                continue
            seen.add(tensor)
            node = producer[tensor]
            delegated.add(node)
            stack.extend(int(t) for t in by_index[node]["inputs"] if t >= 0)
    return delegated


def _static_gpu_rejections(graph: Graph) -> dict[str, str]:
    rejected: dict[str, str] = {}
    for node in graph.nodes:
        if node.op not in GPU_SUPPORTED_OPS:
            rejected.setdefault(node.op, "op not in the GPU delegate's support table")
            continue
        runtime = [t for t in node.inputs + node.outputs if t not in graph.constants]
        bad = sorted({graph.dtypes[t] for t in runtime} - _GPU_DTYPES)
        if bad:
            rejected.setdefault(
                node.op, f"runtime tensors of dtype {', '.join(bad)} (GPU computes in float)"
            )
        elif any(graph.dtypes[t] == "int8" for t in node.inputs if t in graph.constants) and (
            node.op in {"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "BATCH_MATMUL"}
        ):
            rejected.setdefault(
                node.op, "int8 weights with float activations (hybrid kernel, CPU only)"
            )
    return rejected
