"""Runs the user tower ``.tflite``: the LiteRT interpreter on the CPU, `CompiledModel` elsewhere.

The model contract is `pocketrec.sdk.contract`'s; the batch dimension should be dynamic
(``-1``), and a model fixed to batch 1 runs one history per call. On the CPU the
interpreter runs XNNPACK (ops it does not take run on the built-in kernels); on the GPU or
NPU, LiteRT's ``CompiledModel`` runs the graph on that accelerator with the CPU taking the
ops it cannot, one history per call (accelerators compile fixed shapes).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pocketrec.errors import AcceleratorError, BundleError
from pocketrec.sdk.contract import HISTORY_INPUT, MASK_INPUT, SIGNATURE_KEY, USER_VECTOR_OUTPUT
from pocketrec.sdk.flatbuffer import expand_float16_weights

try:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
except ImportError:  # Older devices ship only the standalone runtime.
    from tflite_runtime.interpreter import Interpreter, OpResolverType

# A native log line worth quoting as the reason an accelerator failed.
_FAILURE_LINE = re.compile(r"(?i)couldn't|cannot|could not|failed|no adapters|not found|error")
_LOG_PREFIX = re.compile(r"^(?:(?:ERROR|WARNING|INFO): \[[^\]]*\]\s*|[IWE]\d{4} [^\]]*\]\s*|└\s*)")
# Which of those lines concern an accelerator (LiteRT also logs every vendor it skipped).
_TOPIC = {
    "gpu": re.compile(r"(?i)vulkan|webgpu|adapter|opencl|metal|gpu"),
    "npu": re.compile(r"(?i)npu|dispatch|openvino|qualcomm|mediatek|plugin"),
    "cpu": re.compile(r"(?i)cpu|xnnpack"),
}
# Held while file descriptor 2 points at a capture file.
_STDERR_LOCK = threading.RLock()
# Where `UserTower` can run a model; `pocketrec.sdk.accelerators` says which are present.
TOWER_ACCELERATORS = ("cpu", "gpu", "npu")

_INPUTS = (HISTORY_INPUT, MASK_INPUT)
_OUTPUTS = (USER_VECTOR_OUTPUT,)
_EXPECTED = (
    f"signature {SIGNATURE_KEY!r} with inputs {HISTORY_INPUT} float32 [B, L, D] and "
    f"{MASK_INPUT} float32 [B, L], output {USER_VECTOR_OUTPUT} float32 [B, D]"
)


class UserTower:
    """One LiteRT interpreter running the user tower; calls are serialized by a lock.

    For concurrency create several towers (the `Recommender` keeps a pool of them).
    """

    def __init__(
        self,
        model: bytes | str | Path,
        *,
        num_threads: int = 1,
        history_length: int | None = None,
        dim: int | None = None,
        accelerator: str = "cpu",
    ) -> None:
        """Loads ``model`` (``.tflite`` bytes or path) and checks its signature.

        Args:
            num_threads: CPU threads the interpreter may use (>= 1).
            history_length, dim: when given, the ``L`` and ``D`` the model must have.
            accelerator: ``"cpu"`` (the interpreter with XNNPACK), ``"gpu"`` or ``"npu"``
                (``CompiledModel``; check presence with `pocketrec.sdk.accelerators`).

        Raises:
            ValueError: if ``num_threads < 1`` or ``accelerator`` is unknown.
            BundleError: if the model cannot be loaded or its signature is not the contract.
            AcceleratorError: if the accelerator cannot compile the model.
        """
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be an int >= 1, got {num_threads!r}")
        if accelerator not in TOWER_ACCELERATORS:
            raise ValueError(
                f"accelerator must be one of {', '.join(TOWER_ACCELERATORS)}; got {accelerator!r}"
            )
        self._model = _read_model(model)
        self.accelerator = accelerator
        # The CPU runs the interpreter with XNNPACK; elsewhere an interpreter without
        # delegates only checks the signature, and CompiledModel runs the graph.
        resolver = (
            OpResolverType.AUTO
            if accelerator == "cpu"
            else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        try:
            self._interpreter = Interpreter(
                model_content=self._model,
                num_threads=num_threads,
                experimental_op_resolver_type=resolver,
            )
        except (ValueError, RuntimeError) as exc:
            raise BundleError(
                f"the user tower is not a loadable .tflite model ({exc}); re-export it"
            ) from exc
        self._runner = self._checked_runner(history_length, dim)
        self._lock = threading.Lock()
        # None until the first batch > 1 shows whether inputs can be resized.
        self._batched: bool | None = None
        self._op_types: list[str] | None = None
        self._undelegated: dict[str, int] | None = None
        self._compiled: CompiledRunner | None = None
        if accelerator != "cpu":
            self._compiled = CompiledRunner(self._model, accelerator, num_threads=num_threads)
            self._runner = self._compiled
            self._batched = False

    @property
    def history_length(self) -> int:
        """``L``, the number of history positions."""
        return self._history_length

    @property
    def dim(self) -> int:
        """``D``, the item and user vector dimension."""
        return self._dim

    @property
    def op_types(self) -> list[str]:
        """Op name of every node (e.g. ``"FULLY_CONNECTED"``), in execution order."""
        if self._op_types is None:
            self._op_types = model_op_types(self._model)
        return list(self._op_types)

    @property
    def fully_delegated(self) -> bool:
        """Whether the accelerator's delegate runs every op (on the CPU: XNNPACK)."""
        if self._compiled is not None:
            return self._compiled.fully_accelerated
        return not self.undelegated_ops

    @property
    def undelegated_ops(self) -> dict[str, int] | None:
        """Op name -> nodes left to the CPU's built-in kernels; None where LiteRT does not
        say which (``CompiledModel`` reports only whether the whole graph is accelerated)."""
        if self._compiled is not None:
            return None
        if self._undelegated is None:
            # Read off an interpreter of its own: the serving one is held by its runner.
            interpreter = Interpreter(model_content=self._model)
            interpreter.allocate_tensors()  # delegates replace nodes on allocation
            self._undelegated = undelegated_ops(interpreter)
        return dict(self._undelegated)

    def run(self, history: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """User vectors float32 ``[B, D]`` for ``history`` ``[B, L, D]`` and ``mask`` ``[B, L]``.

        Raises:
            ValueError: if the inputs do not have the model's shapes.
            BundleError: if the model fails or returns non-finite vectors.
        """
        history = np.ascontiguousarray(history, dtype=np.float32)
        mask = np.ascontiguousarray(mask, dtype=np.float32)
        L, D = self._history_length, self._dim
        if history.ndim != 3 or history.shape[1:] != (L, D):
            raise ValueError(f"history must have shape [B, {L}, {D}], got {history.shape}")
        if mask.shape != history.shape[:2]:
            raise ValueError(f"mask must have shape [{history.shape[0]}, {L}], got {mask.shape}")
        batch = history.shape[0]
        if batch == 0:
            return np.zeros((0, D), dtype=np.float32)
        with self._lock:
            out = self._run_locked(history, mask)
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            empty = int((mask[bad].sum(axis=1) == 0).sum())
            raise BundleError(
                f"the user tower returned NaN or infinite vectors for {int(bad.sum())} of "
                f"{batch} histories ({empty} of them empty); a user tower must return finite "
                "vectors for every input, including an all-zero mask"
            )
        return out

    def _run_locked(self, history: np.ndarray, mask: np.ndarray) -> np.ndarray:
        batch = history.shape[0]
        if batch > 1 and self._batched is not False:
            try:
                out = self._invoke(history, mask)
            except BundleError:
                if self._batched:
                    raise
                out = None
            if out is not None and out.shape == (batch, self._dim):
                self._batched = True
                return out
            # A model converted with a fixed batch of 1: run it once per history instead.
            self._batched = False
        if batch == 1:
            return self._invoke(history, mask)
        return np.concatenate(
            [self._invoke(history[i : i + 1], mask[i : i + 1]) for i in range(batch)]
        )

    def _invoke(self, history: np.ndarray, mask: np.ndarray) -> np.ndarray:
        try:
            result = self._runner(**{HISTORY_INPUT: history, MASK_INPUT: mask})
        except (RuntimeError, ValueError) as exc:
            raise BundleError(f"the user tower failed to run: {exc}") from exc
        return np.array(result[_OUTPUTS[0]], dtype=np.float32, copy=True)

    def _checked_runner(self, history_length: int | None, dim: int | None) -> Any:
        signatures = self._interpreter.get_signature_list()
        if SIGNATURE_KEY not in signatures:
            raise BundleError(
                f"expected a {_EXPECTED}; found signatures {signatures}. Export the user tower "
                f"as a SavedModel with signatures={{{SIGNATURE_KEY!r}: fn}} before converting"
            )
        found = signatures[SIGNATURE_KEY]
        if sorted(found["inputs"]) != sorted(_INPUTS) or list(found["outputs"]) != list(_OUTPUTS):
            raise BundleError(
                f"expected a {_EXPECTED}; found inputs {found['inputs']} and outputs "
                f"{found['outputs']}"
            )
        runner = self._interpreter.get_signature_runner(SIGNATURE_KEY)
        details = {**runner.get_input_details(), **runner.get_output_details()}
        shapes = {name: [int(v) for v in d["shape_signature"]] for name, d in details.items()}
        dtypes = {name: np.dtype(d["dtype"]).name for name, d in details.items()}
        found_text = ", ".join(f"{n} {dtypes[n]} {shapes[n]}" for n in (*_INPUTS, *_OUTPUTS))
        ranks_ok = [len(shapes[n]) for n in (*_INPUTS, *_OUTPUTS)] == [3, 2, 2]
        if not ranks_ok or any(t != "float32" for t in dtypes.values()):
            raise BundleError(f"expected a {_EXPECTED}; found {found_text}")
        L, D = shapes[HISTORY_INPUT][1:]
        consistent = (
            shapes[MASK_INPUT][1] == L and shapes[USER_VECTOR_OUTPUT][1] == D and L > 0 and D > 0
        )
        wanted = (history_length is None or history_length == L) and (dim is None or dim == D)
        if not consistent or not wanted:
            want_l = "L" if history_length is None else history_length
            want_d = "D" if dim is None else dim
            raise BundleError(
                f"expected history [B, {want_l}, {want_d}], mask [B, {want_l}], "
                f"user_vector [B, {want_d}] with fixed L and D; found {found_text}"
            )
        self._history_length, self._dim = L, D
        return runner


class CompiledRunner:
    """The user tower as a LiteRT ``CompiledModel`` on an accelerator, one history per call.

    Called like the interpreter's signature runner: ``runner(history=..., mask=...)``
    returns ``{"user_vector": [1, D]}``. Ops the accelerator cannot run fall back to the CPU
    (`fully_accelerated` says whether any did). For the GPU, float16 weights are widened
    first (`expand_float16_weights`). ``"cpu"`` compiles for the CPU alone: the
    same code path, testable where no accelerator is present.
    """

    def __init__(self, model: bytes, accelerator: str, *, num_threads: int = 1) -> None:
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
        from ai_edge_litert.options import CpuOptions, Options

        flags = {
            "cpu": HardwareAccelerator.CPU,
            "gpu": HardwareAccelerator.GPU | HardwareAccelerator.CPU,
            "npu": HardwareAccelerator.NPU | HardwareAccelerator.CPU,
        }[accelerator]
        options = Options(hardware_accelerators=flags, cpu_options=CpuOptions(num_threads))
        if accelerator == "gpu":
            model = expand_float16_weights(model)
        failure = None
        # LiteRT logs every vendor plugin it could not load: kept unless compiling fails.
        with captured_native_stderr() as log:
            try:
                self._compiled = CompiledModel.from_buffer(model, options=options)
            except RuntimeError as exc:
                failure = exc
        if failure is not None:
            lines = failure_lines(log[0] if log else "", accelerator)
            said = "; ".join(lines) or str(failure).strip()
            raise AcceleratorError(
                f"LiteRT could not compile the user tower for the {accelerator.upper()} "
                f"({said}); open the bundle with accelerator='cpu'"
            ) from failure
        self.fully_accelerated = self._compiled.is_fully_accelerated()
        self._signature = self._compiled.get_signature_index(SIGNATURE_KEY)
        self._names = self._compiled.get_signature_list()[SIGNATURE_KEY]["inputs"]
        self._inputs = self._compiled.create_input_buffers(self._signature)
        self._outputs = self._compiled.create_output_buffers(self._signature)
        (output,) = self._compiled.get_output_tensor_details(SIGNATURE_KEY).values()
        self._dim = int(np.prod(output["shape"]))

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        for name, buffer in zip(self._names, self._inputs, strict=True):
            buffer.write(np.ascontiguousarray(feeds[name], dtype=np.float32))
        self._compiled.run_by_index(self._signature, self._inputs, self._outputs)
        return {_OUTPUTS[0]: self._outputs[0].read(self._dim, np.float32).reshape(1, -1)}


def undelegated_ops(interpreter: Interpreter) -> dict[str, int]:
    """Op name -> nodes of an allocated interpreter's main graph that no delegate replaced.

    A DELEGATE node consumes its partition's inputs and produces its outputs; walking back
    from those outputs through the original producers, up to the partition's inputs,
    visits exactly the replaced nodes. The others run on the built-in kernels.
    """
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
    left = Counter(
        str(op["op_name"])
        for op in ops
        if op["op_name"] != "DELEGATE" and int(op["index"]) not in delegated
    )
    return dict(left)


@contextlib.contextmanager
def captured_native_stderr() -> Iterator[list[str]]:
    """Collects what native code writes to file descriptor 2 while the block runs.

    The list it yields holds the text once the block ends. Process-wide (the descriptor is
    shared), so it is used around short native calls only, one at a time.
    """
    captured: list[str] = []
    with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
        if sys.stderr is not None:
            sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no descriptor 2: nothing to capture
            yield captured
            return
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", "replace"))


def failure_lines(native_log: str, accelerator: str) -> list[str]:
    """Up to two distinct lines of a native log about ``accelerator`` that say what failed."""
    found: list[str] = []
    for line in native_log.splitlines():
        text = _LOG_PREFIX.sub("", line.strip()).strip()
        about = _TOPIC[accelerator].search(text)
        if about and _FAILURE_LINE.search(text) and text not in found:
            found.append(text)
    return found[:2]


def model_op_types(model: bytes | str | Path) -> list[str]:
    """Op name of every node of a ``.tflite`` model (e.g. ``"FULLY_CONNECTED"``), in order.

    Read before any delegate rewrites the graph, so the names are the model's own builtins.

    Raises:
        BundleError: if the model cannot be loaded.
    """
    content = _read_model(model)
    try:
        interpreter = Interpreter(
            model_content=content,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
    except (ValueError, RuntimeError) as exc:
        raise BundleError(f"not a loadable .tflite model ({exc}); re-export it") from exc
    return [str(op["op_name"]) for op in interpreter._get_ops_details()]


def _read_model(model: bytes | str | Path) -> bytes:
    if isinstance(model, bytes | bytearray | memoryview):
        return bytes(model)
    path = Path(model)
    if not path.is_file():
        raise BundleError(f"user tower model {path} does not exist")
    return path.read_bytes()
