"""Weight clustering (tfmot ``cluster_weights``): each kernel keeps N distinct values."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras

from pocketrec.compression._configs import ClusteringConfig, FineTuneConfig
from pocketrec.compression._parts import (
    ITEM_TABLE_LAYER,
    ModelParts,
    WeightRegistry,
    fine_tune,
    in_registry,
    item_table_layer,
    parts_from_stripped,
    private_copy,
    registry_weights,
    rewrap,
)
from pocketrec.errors import CompressionError
from pocketrec.evaluation import Split

# Layer types whose kernels tfmot clusters (its ClusteringRegistry), and the weights counted.
CLUSTERABLE_LAYERS: WeightRegistry = {
    tf_keras.layers.Dense: ("kernel",),
    tf_keras.layers.Embedding: ("embeddings",),
    tf_keras.layers.Conv1D: ("kernel",),
}


def cluster(
    parts: ModelParts,
    config: ClusteringConfig,
    split: Split,
    fine_tune_config: FineTuneConfig | None = None,
) -> ModelParts:
    """Clusters the user tower's kernels (and the item table) while fine-tuning on ``split``.

    Returns new parts with ``strip_clustering`` applied: plain layers whose clustered
    weights hold at most ``config.num_clusters`` distinct values each.

    Raises:
        CompressionError: a layer cannot be rebuilt, or a clustered weight ends with more
            distinct values than asked.
    """
    fine_tune_config = fine_tune_config or FineTuneConfig()
    options = {
        "number_of_clusters": config.num_clusters,
        "cluster_centroids_init": tfmot.clustering.keras.CentroidInitialization.KMEANS_PLUS_PLUS,
        "preserve_sparsity": config.preserve_sparsity,
    }

    def wrap(layer: tf_keras.layers.Layer) -> tf_keras.layers.Layer:
        if in_registry(layer, CLUSTERABLE_LAYERS, config.min_weights):
            return tfmot.clustering.keras.cluster_weights(layer, **options)
        return layer

    network = rewrap(private_copy(parts.network), wrap)
    table = item_table_layer(parts, trainable=config.cluster_item_table)
    if config.cluster_item_table:
        table = tfmot.clustering.keras.cluster_weights(table, **options)
    model = fine_tune(parts, network, table, split, fine_tune_config)
    stripped = tfmot.clustering.keras.strip_clustering(model)
    clustered = parts_from_stripped(
        parts, f"cluster({config.num_clusters})", stripped, network.name
    )
    counts = unique_weight_counts(clustered, config.min_weights)
    if not config.cluster_item_table:
        counts.pop(ITEM_TABLE_LAYER)
    over = {name: n for name, n in counts.items() if n > config.num_clusters}
    if over:
        listed = ", ".join(f"{name} {n}" for name, n in sorted(over.items()))
        raise CompressionError(
            f"clustering left more than {config.num_clusters} distinct values in {listed}; "
            "this is a tfmot bug or the weights were changed after strip_clustering"
        )
    return clustered


def unique_weight_counts(parts: ModelParts, min_weights: int = 256) -> dict[str, int]:
    """Distinct values per clusterable weight (``layer/weight``) and of the item table."""
    counts = {
        name: int(np.unique(values).size)
        for name, values in registry_weights(parts.network, CLUSTERABLE_LAYERS, min_weights)
    }
    counts[ITEM_TABLE_LAYER] = int(np.unique(np.asarray(parts.item_vectors)).size)
    return counts
