"""Compression: prune, cluster, quantize a trained model into bundles, and choose one.

Verbs configured by small config objects (``prune``, ``cluster``,
``quantization_aware``, ``post_training_quantize``, ``quantize_table``), composed into
named `Recipe`s; ``compress`` writes one bundle, ``auto_compress`` keeps the smallest
within an accuracy budget. See docs/compression.md.

The names below load on first use, so `pocketrec.compression._cli` (imported by every
`pocketrec` command) does not pull in TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pocketrec.compression._accelerators import (
        GPU_SUPPORTED_OPS,
        AcceleratorReport,
        accelerator_coverage,
        gpu_available,
    )
    from pocketrec.compression._auto import (
        AutoReport,
        Candidate,
        auto_compress,
        default_candidates,
    )
    from pocketrec.compression._cluster import (
        cluster,
        unique_weight_counts,
    )
    from pocketrec.compression._compress import (
        CompressionResult,
        compress,
        evaluate_bundle,
        model_parts,
    )
    from pocketrec.compression._configs import (
        ClusteringConfig,
        FineTuneConfig,
        PruningConfig,
    )
    from pocketrec.compression._inspect import (
        ModelInfo,
        inspect_model,
    )
    from pocketrec.compression._parts import (
        ModelParts,
    )
    from pocketrec.compression._prune import (
        prune,
        weight_sparsity,
    )
    from pocketrec.compression._ptq import (
        post_training_quantize,
        quantize_table,
        representative_histories,
    )
    from pocketrec.compression._qat import (
        QuantizationAwareConfig,
        quantization_aware,
    )
    from pocketrec.compression._recipes import (
        RECIPES,
        Recipe,
        get_recipe,
        list_recipes,
    )

_MODULE_OF = {
    "GPU_SUPPORTED_OPS": "_accelerators",
    "AcceleratorReport": "_accelerators",
    "accelerator_coverage": "_accelerators",
    "gpu_available": "_accelerators",
    "AutoReport": "_auto",
    "Candidate": "_auto",
    "auto_compress": "_auto",
    "default_candidates": "_auto",
    "ClusteringConfig": "_configs",
    "cluster": "_cluster",
    "unique_weight_counts": "_cluster",
    "CompressionResult": "_compress",
    "compress": "_compress",
    "evaluate_bundle": "_compress",
    "model_parts": "_compress",
    "ModelInfo": "_inspect",
    "inspect_model": "_inspect",
    "FineTuneConfig": "_configs",
    "ModelParts": "_parts",
    "PruningConfig": "_configs",
    "prune": "_prune",
    "weight_sparsity": "_prune",
    "post_training_quantize": "_ptq",
    "quantize_table": "_ptq",
    "representative_histories": "_ptq",
    "QuantizationAwareConfig": "_qat",
    "quantization_aware": "_qat",
    "RECIPES": "_recipes",
    "Recipe": "_recipes",
    "get_recipe": "_recipes",
    "list_recipes": "_recipes",
}

__all__ = [
    "GPU_SUPPORTED_OPS",
    "RECIPES",
    "AcceleratorReport",
    "AutoReport",
    "Candidate",
    "ClusteringConfig",
    "CompressionResult",
    "FineTuneConfig",
    "ModelInfo",
    "ModelParts",
    "PruningConfig",
    "QuantizationAwareConfig",
    "Recipe",
    "accelerator_coverage",
    "auto_compress",
    "cluster",
    "compress",
    "default_candidates",
    "evaluate_bundle",
    "get_recipe",
    "gpu_available",
    "inspect_model",
    "list_recipes",
    "model_parts",
    "post_training_quantize",
    "prune",
    "quantization_aware",
    "quantize_table",
    "representative_histories",
    "unique_weight_counts",
    "weight_sparsity",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])
