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
