"""Training of the dual encoder, TFLite conversion and bundle export (needs TensorFlow).

The names below load on first use, so `pocketrec.training._cli` (imported by every
`pocketrec` command) does not pull in TensorFlow. The module `pocketrec.training.train`
holds `train`, `TrainConfig` and `make_windows`; `pocketrec.training.train` as an
attribute is the function.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pocketrec.training._trained import TrainedModel
    from pocketrec.training.convert import (
        QUANTIZATIONS,
        SIGNATURE_KEY,
        to_tflite,
        user_tower_shape,
    )
    from pocketrec.training.export import export_bundle, items_metadata
    from pocketrec.training.model import (
        ENCODERS,
        ModelConfig,
        build_item_tower,
        build_sequence_encoder,
        build_user_tower,
        user_tower_from_encoder,
    )
    from pocketrec.training.train import LOSSES, TrainConfig, make_windows, train

_MODULE_OF = {
    "TrainedModel": "_trained",
    "QUANTIZATIONS": "convert",
    "SIGNATURE_KEY": "convert",
    "to_tflite": "convert",
    "user_tower_shape": "convert",
    "export_bundle": "export",
    "items_metadata": "export",
    "ENCODERS": "model",
    "ModelConfig": "model",
    "build_item_tower": "model",
    "build_sequence_encoder": "model",
    "build_user_tower": "model",
    "user_tower_from_encoder": "model",
    "LOSSES": "train",
    "TrainConfig": "train",
    "make_windows": "train",
    "train": "train",
}

__all__ = [
    "ENCODERS",
    "LOSSES",
    "QUANTIZATIONS",
    "SIGNATURE_KEY",
    "ModelConfig",
    "TrainConfig",
    "TrainedModel",
    "build_item_tower",
    "build_sequence_encoder",
    "build_user_tower",
    "export_bundle",
    "items_metadata",
    "make_windows",
    "to_tflite",
    "train",
    "user_tower_from_encoder",
    "user_tower_shape",
]


class _Package(types.ModuleType):
    """This package, loading its public names on first use."""

    def __getattr__(self, name: str) -> Any:
        module = _MODULE_OF.get(name)
        if module is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{self.__name__}.{module}"), name)
        super().__setattr__(name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        # Importing the submodule `train` binds it on the package; it must not hide the
        # function `train` (nor load it eagerly).
        if name in _MODULE_OF and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *_MODULE_OF})


sys.modules[__name__].__class__ = _Package
