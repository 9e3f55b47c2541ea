"""Which LiteRT accelerators this machine has, and why the others are absent.

One answer for the SDK (`RecommenderOptions.accelerator`), the device suite
(`pocketrec.device_tests`) and the compression report: asking twice costs nothing (each
accelerator is detected once per process), and nothing is printed for an accelerator that
is absent (its reason is returned instead).

- ``cpu``: always present; the LiteRT interpreter with XNNPACK.
- ``gpu``: LiteRT's GPU accelerator (``libLiteRtWebGpuAccelerator.so``: WebGPU, over Vulkan
  on Linux) through ``CompiledModel``. On Linux the Vulkan loader is looked for first, so a
  machine without one is never probed; otherwise a one-op model is compiled for the GPU
  with the runtime's native log captured, and its failure becomes the reason.
- ``npu``: LiteRT's vendor dispatch libraries (``vendors/*/dispatch`` of ai-edge-litert;
  Intel OpenVINO on x86 Linux), each loaded and then probed with the NPU alone. NNAPI is
  Android-only and deprecated since Android 15, so it is never used.

GPUs compute in float16: a float model's golden user vectors must hold within
`ACCELERATOR_TOLERANCE` there (see `golden_tolerance`). Integer models stay on the CPU:
on an NVIDIA H200 int8 user towers erred by 2.2% and 4.7%, float ones by under 1e-3.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from pocketrec.errors import AcceleratorError
from pocketrec.sdk._runtime import captured_native_stderr, failure_lines
from pocketrec.sdk.contract import GOLDEN_TOLERANCE, check_choice

# What `RecommenderOptions.accelerator` accepts; `auto` picks the GPU when one is present
# and runs the user tower faster than the CPU (`Recommender` times both).
ACCELERATOR_CHOICES = ("cpu", "auto", "gpu", "npu")
# Accelerators `detect` knows, in the order reports list them.
ACCELERATORS = ("cpu", "gpu", "npu")
# Golden user-vector tolerance (relative to max(1, max|golden|), as `GOLDEN_TOLERANCE`) off
# the CPU. GPUs run float16 arithmetic: a float model's vectors drift by up to 1e-3
# (3.6e-4 to 9.3e-4 measured on an NVIDIA H200, device_tests/README.md), so 1e-2 keeps 10x
# headroom while an int8 model (2.2% and 4.7% there) still fails. NPUs: the same bound until
# one is measured.
ACCELERATOR_TOLERANCE = {"gpu": 1e-2, "npu": 1e-2}
INT8_ON_GPU = (
    "int8 models stay on the CPU: integer kernels are a CPU format (int8 user towers erred "
    "by 2.2% and 4.7% on an NVIDIA H200, against the GPU's 1% tolerance)"
)
NNAPI_NOTE = "NNAPI is Android-only and deprecated since Android 15"

_GPU_LIBRARY = "libLiteRtWebGpuAccelerator.so"
_VULKAN_LOADER = "libvulkan.so.1"
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Detection:
    """Whether one accelerator can run models here.

    Attributes:
        accelerator: ``"cpu"``, ``"gpu"`` or ``"npu"``.
        present: whether LiteRT can run a model on it here.
        detail: what runs it when present; when absent, precisely why not.
    """

    accelerator: str
    present: bool
    detail: str


@dataclass(frozen=True)
class Placement:
    """Where a bundle will run, for `choose`.

    Attributes:
        accelerator: ``"cpu"``, ``"gpu"`` or ``"npu"``.
        fallback: why ``auto`` stayed on the CPU; None when nothing fell back.
    """

    accelerator: str
    fallback: str | None = None


def detect(accelerator: str) -> Detection:
    """Whether ``accelerator`` (one of `ACCELERATORS`) is usable here; detected once per process.

    Raises:
        ValueError: for an unknown accelerator name.
    """
    check_choice(accelerator, ACCELERATORS, "accelerator")
    with _LOCK:  # a probe points file descriptor 2 elsewhere: one at a time
        return _detect(accelerator)


def detect_all() -> dict[str, Detection]:
    """`detect` of every accelerator, in `ACCELERATORS` order."""
    return {name: detect(name) for name in ACCELERATORS}


def choose(requested: str, quantization: str) -> Placement:
    """Where a model of ``quantization`` runs when ``requested`` (`ACCELERATOR_CHOICES`).

    ``auto`` takes the GPU when one is present and the model is not int8, else the CPU
    (saying why in `Placement.fallback`); `Recommender` then keeps the GPU only where it
    runs the tower faster. ``gpu`` and ``npu`` must be present.

    Raises:
        ValueError: for an unknown ``requested``.
        AcceleratorError: ``gpu``/``npu`` absent here (naming what is missing), or ``gpu``
            for an int8 model.
    """
    check_choice(requested, ACCELERATOR_CHOICES, "accelerator")
    if requested == "cpu":
        return Placement("cpu")
    if requested == "auto":
        if quantization == "int8":
            return Placement("cpu", INT8_ON_GPU)
        gpu = detect("gpu")
        return Placement("gpu") if gpu.present else Placement("cpu", f"no GPU: {gpu.detail}")
    if requested == "gpu" and quantization == "int8":
        raise AcceleratorError(
            f"accelerator='gpu' was asked for an int8 bundle; {INT8_ON_GPU}. Serve it with "
            "accelerator='cpu' or 'auto', or export a float recipe (e.g. gpu-float16) for "
            "the GPU"
        )
    found = detect(requested)
    if not found.present:
        raise AcceleratorError(
            f"accelerator={requested!r} was asked for, but no {requested.upper()} is usable "
            f"here: {found.detail}. Fix that, or open with accelerator='cpu' (or 'auto', "
            "which falls back to the CPU)"
        )
    return Placement(requested)


def golden_tolerance(accelerator: str, quantization: str) -> float:
    """The golden self-check's relative tolerance for ``quantization`` on ``accelerator``."""
    base = GOLDEN_TOLERANCE[quantization]
    if accelerator == "cpu":
        return base
    return max(base, ACCELERATOR_TOLERANCE[accelerator])


@functools.cache
def _detect(accelerator: str) -> Detection:
    if accelerator == "cpu":
        return Detection("cpu", True, "LiteRT interpreter with XNNPACK")
    package = _litert_dir()
    if package is None:
        return Detection(
            accelerator,
            False,
            "ai-edge-litert is not installed (tflite_runtime has no "
            "CompiledModel, which runs the GPU and NPU accelerators)",
        )
    return _detect_gpu(package) if accelerator == "gpu" else _detect_npu(package)


def _detect_gpu(package: Path) -> Detection:
    if not (package / _GPU_LIBRARY).is_file():
        return Detection("gpu", False, f"this ai-edge-litert install has no {_GPU_LIBRARY}")
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(_VULKAN_LOADER)
        except OSError:
            return Detection(
                "gpu",
                False,
                f"no Vulkan loader: {_VULKAN_LOADER} not found (LiteRT's GPU accelerator is "
                "WebGPU over Vulkan here; install the loader, e.g. the libvulkan1 package, "
                "and the GPU driver's Vulkan ICD)",
            )
    error = _probe("gpu")
    if error is not None:
        return Detection("gpu", False, f"LiteRT's GPU accelerator did not start: {error}")
    return Detection("gpu", True, f"LiteRT GPU accelerator ({_GPU_LIBRARY})")


def _detect_npu(package: Path) -> Detection:
    android = hasattr(sys, "getandroidapilevel") or "ANDROID_ROOT" in os.environ
    nnapi = "NNAPI is deprecated since Android 15" if android else NNAPI_NOTE
    libraries = sorted(package.glob("vendors/*/dispatch/libLiteRtDispatch_*"))
    if not libraries:
        return Detection(
            "npu", False, f"{nnapi}; this ai-edge-litert install has no NPU dispatch library"
        )
    problems = []
    for library in libraries:
        try:
            ctypes.CDLL(str(library))
        except OSError as exc:
            problems.append(f"{library.name} cannot load: {_missing_library(exc)}")
            continue
        error = _probe("npu")
        if error is None:
            return Detection("npu", True, f"LiteRT NPU dispatch {library.name}")
        problems.append(f"{library.name} loads but the NPU did not start: {error}")
    return Detection("npu", False, f"{nnapi}; " + "; ".join(problems))


def _probe(accelerator: str) -> str | None:
    """None if a one-op model compiles for ``accelerator`` alone; else why not."""
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator

    flag = HardwareAccelerator.GPU if accelerator == "gpu" else HardwareAccelerator.NPU
    failure: str | None = None
    with captured_native_stderr() as log:
        try:
            compiled = CompiledModel.from_buffer(tiny_model(), hardware_accel=flag)
            if not compiled.is_fully_accelerated():
                failure = f"a one-op model did not run on the {accelerator.upper()}"
        except (RuntimeError, OSError) as exc:
            failure = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
    if failure is None:
        return None
    quoted = failure_lines(log[0] if log else "", accelerator)
    return "; ".join(quoted) if quoted else failure


def _missing_library(exc: OSError) -> str:
    match = re.search(r"([\w.+-]+\.so[\w.]*): cannot open shared object file", str(exc))
    if match:
        return f"it needs {match.group(1)}, which is not installed"
    return str(exc)


def _litert_dir() -> Path | None:
    try:
        import ai_edge_litert
    except ImportError:
        return None
    return Path(ai_edge_litert.__file__).resolve().parent


@functools.cache
def tiny_model() -> bytes:
    """A one-op float model (ADD of an input to itself), built from the LiteRT schema."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    from pocketrec.sdk.flatbuffer import FILE_IDENTIFIER, operator_code

    tensors = []
    for name in ("x", "y"):
        tensor = schema.TensorT()
        tensor.shape, tensor.type, tensor.buffer, tensor.name = [1, 4], 0, 0, name
        tensors.append(tensor)
    tensors[0].type = tensors[1].type = schema.TensorType.FLOAT32
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 0], [1]
    op.builtinOptionsType = schema.BuiltinOptions.AddOptions
    op.builtinOptions = schema.AddOptionsT()
    subgraph = schema.SubGraphT()
    subgraph.tensors, subgraph.inputs, subgraph.outputs = tensors, [0], [1]
    subgraph.operators = [op]
    model = schema.ModelT()
    model.version = 3
    model.operatorCodes = [operator_code(schema.BuiltinOperator.ADD)]
    model.subgraphs, model.buffers = [subgraph], [schema.BufferT()]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())
