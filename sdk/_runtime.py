"""Runs the user tower ``.tflite`` with the LiteRT interpreter.

The model contract is `pocketrec.sdk.contract`'s; the batch dimension should be dynamic
(``-1``), and a model fixed to batch 1 runs one history per call.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from pocketrec.errors import BundleError
from pocketrec.sdk.contract import HISTORY_INPUT, MASK_INPUT, SIGNATURE_KEY, USER_VECTOR_OUTPUT

try:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
except ImportError:  # Older devices ship only the standalone runtime.
    from tflite_runtime.interpreter import Interpreter, OpResolverType

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
    ) -> None:
        """Loads ``model`` (``.tflite`` bytes or path) and checks its signature.

        Args:
            num_threads: CPU threads the interpreter may use (>= 1).
            history_length, dim: when given, the ``L`` and ``D`` the model must have.

        Raises:
            ValueError: if ``num_threads < 1``.
            BundleError: if the model cannot be loaded or its signature is not the contract.
        """
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be an int >= 1, got {num_threads!r}")
        self._model = _read_model(model)
        try:
            self._interpreter = Interpreter(model_content=self._model, num_threads=num_threads)
        except (ValueError, RuntimeError) as exc:
            raise BundleError(
                f"the user tower is not a loadable .tflite model ({exc}); re-export it"
            ) from exc
        self._runner = self._checked_runner(history_length, dim)
        self._lock = threading.Lock()
        # None until the first batch > 1 shows whether inputs can be resized.
        self._batched: bool | None = None
        self._op_types: list[str] | None = None

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
