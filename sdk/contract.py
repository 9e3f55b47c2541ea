"""The model contract: the one owner of every name training, compression and the device share.

The user tower is a ``.tflite`` model with signature `SIGNATURE_KEY` and

- input `HISTORY_INPUT`: float32 ``[B, L, D]``, the item vectors of the last ``L`` history
  items, right-aligned (most recent at ``L - 1``), zero rows as padding;
- input `MASK_INPUT`: float32 ``[B, L]``, 1.0 for real items, 0.0 for padding;
- output `USER_VECTOR_OUTPUT`: float32 ``[B, D]``.

An item's score is the dot product of the user vector with its row of the item table, stored
in one of `TABLE_DTYPES`. The model's weights and kernels are one of `QUANTIZATIONS`; inputs
and outputs stay float32 whatever the quantization.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

SIGNATURE_KEY = "user_vector"
HISTORY_INPUT = "history"
MASK_INPUT = "mask"
USER_VECTOR_OUTPUT = "user_vector"

# Key in a bundle manifest's ``extra``: float [D], the user vector of an empty history.
COLD_START_VECTOR = "cold_start_vector"
# float32: no optimization; dynamic: int8 weights, float kernels; float16: float16 weights;
# int8: full-integer kernels calibrated on representative histories.
QUANTIZATIONS = ("float32", "dynamic", "float16", "int8")
# Stored forms of the item table (see pocketrec.sdk.table).
TABLE_DTYPES = ("float32", "float16", "int8", "int4")
# Where a bundle is meant to run (recorded in its manifest).
ACCELERATORS = ("cpu", "gpu")

RepresentativeData = Callable[[], Iterable[dict[str, np.ndarray]]]
"""A callable returning samples ``{HISTORY_INPUT: float32 [1, L, D], MASK_INPUT: [1, L]}``."""


def check_choice(value: object, allowed: tuple[str, ...], name: str) -> str:
    """``value`` if it is one of ``allowed``.

    Raises:
        ValueError: naming ``name``, the allowed values and what came.
    """
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


# Largest golden user-vector deviation the CPU self-check allows, relative to
# max(1, max|golden vector|), per model quantization. Golden outputs are recorded by
# XNNPACK, which the SDK runs on every CPU. Measured with benchmarks/golden_tolerance.py:
# XNNPACK at 1 and 2 threads agrees exactly; LiteRT's optimized builtin kernels differ by
# 1.3e-7 (float32, float16), 3.1e-4 (dynamic) and 2.0e-2 (int8; 5.8e-2 on an earlier
# model). The float bounds leave 75x headroom over the builtins, dynamic 30x; int8 allows
# about 2.5 output quantization steps of another CPU's XNNPACK, not what the builtin int8
# kernels may differ. Accelerators get their own tolerances.
GOLDEN_TOLERANCE = {"float32": 1e-5, "float16": 1e-5, "dynamic": 1e-2, "int8": 2e-2}
