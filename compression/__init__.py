"""Compression: prune, cluster, quantize a trained model into bundles, and choose one.

Verbs configured by small config objects (``prune``, ``cluster``,
``quantization_aware``, ``post_training_quantize``, ``quantize_table``), composed into
named `Recipe`s; ``compress`` writes one bundle, ``auto_compress`` keeps the smallest
within an accuracy budget. See docs/compression.md.

Importing this package loads TensorFlow and tfmot; the `pocketrec` command line imports
it only inside `pocketrec compress` and `pocketrec bench`.
"""

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
    calibration_user_vectors,
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
    "calibration_user_vectors",
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
