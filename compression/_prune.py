"""Magnitude pruning (tfmot ``prune_low_magnitude``) of the user tower and the item table."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras

from pocketrec.compression._configs import FineTuneConfig, PruningConfig
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

# Layer types whose kernels tfmot prunes (its PruneRegistry), and the weights counted.
PRUNABLE_LAYERS: WeightRegistry = {
    tf_keras.layers.Dense: ("kernel",),
    tf_keras.layers.Embedding: ("embeddings",),
    tf_keras.layers.MultiHeadAttention: ("kernel",),
    tf_keras.layers.Conv1D: ("kernel",),
}
_NOTHING_TO_PRUNE = (
    "pruning found no prunable weights: expected Dense, Embedding or MultiHeadAttention "
    "layers with at least {min_weights} weights; lower PruningConfig.min_weights or set "
    "prune_item_table=True"
)
# tfmot rounds the pruned count of each tensor to a whole number of weights.
_SPARSITY_TOLERANCE = 0.005


def prune(
    parts: ModelParts,
    config: PruningConfig,
    split: Split,
    fine_tune_config: FineTuneConfig | None = None,
) -> ModelParts:
    """Prunes the user tower's kernels (and the item table) while fine-tuning on ``split``.

    Returns new parts whose pruned weights hold exact zeros (``strip_pruning`` applied).

    Raises:
        CompressionError: a layer cannot be rebuilt for pruning, or the achieved sparsity
            of a pruned weight is below its target (the message names it).
    """
    fine_tune_config = fine_tune_config or FineTuneConfig()
    steps = fine_tune_config.steps
    begin = int(config.begin_fraction * steps)
    # The last mask update must fall inside the run: end on a multiple of frequency.
    end = max(
        config.frequency, int(config.end_fraction * steps) // config.frequency * config.frequency
    )
    if end >= steps:
        raise ValueError(
            f"fine-tuning of {steps} steps is too short for mask updates every "
            f"{config.frequency} steps; raise FineTuneConfig.steps or lower frequency"
        )

    def schedule(final_sparsity: float) -> tfmot.sparsity.keras.PolynomialDecay:
        return tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0,
            final_sparsity=final_sparsity,
            begin_step=begin,
            end_step=end,
            frequency=config.frequency,
        )

    wrapped: list[str] = []

    def wrap(layer: tf_keras.layers.Layer) -> tf_keras.layers.Layer:
        if in_registry(layer, PRUNABLE_LAYERS, config.min_weights):
            wrapped.append(layer.name)
            return tfmot.sparsity.keras.prune_low_magnitude(
                layer, pruning_schedule=schedule(config.target_sparsity)
            )
        return layer

    network = rewrap(private_copy(parts.network), wrap)
    if not wrapped and not config.prune_item_table:
        raise CompressionError(_NOTHING_TO_PRUNE.format(min_weights=config.min_weights))
    table = item_table_layer(parts, trainable=config.prune_item_table)
    if config.prune_item_table:
        table = tfmot.sparsity.keras.prune_low_magnitude(
            table, pruning_schedule=schedule(config.item_table_sparsity)
        )
    model = fine_tune(
        parts,
        network,
        table,
        split,
        fine_tune_config,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
    )
    step = f"prune({config.target_sparsity:g}"
    if config.prune_item_table and config.table_sparsity is not None:
        step += f", table {config.table_sparsity:g}"
    stripped = tfmot.sparsity.keras.strip_pruning(model)
    pruned = parts_from_stripped(parts, f"{step})", stripped, network.name)
    _check_sparsity(pruned, config)
    return pruned


def weight_sparsity(parts: ModelParts, min_weights: int = 256) -> dict[str, float]:
    """Fraction of zeros per prunable weight (``layer/weight``) and for the item table.

    The key ``"item_table"`` is the table; ``"overall"`` pools every listed weight.
    """
    sparsity: dict[str, float] = {}
    zeros = total = 0
    for name, values in registry_weights(parts.network, PRUNABLE_LAYERS, min_weights):
        sparsity[name] = float(np.mean(values == 0))
        zeros, total = zeros + int(np.sum(values == 0)), total + values.size
    table = np.asarray(parts.item_vectors)
    sparsity[ITEM_TABLE_LAYER] = float(np.mean(table == 0))
    zeros, total = zeros + int(np.sum(table == 0)), total + table.size
    sparsity["overall"] = zeros / total
    return sparsity


def _check_sparsity(parts: ModelParts, config: PruningConfig) -> None:
    sparsity = weight_sparsity(parts, config.min_weights)
    checked = {k: v for k, v in sparsity.items() if k != "overall"}
    if not config.prune_item_table:
        checked.pop(ITEM_TABLE_LAYER)
    targets = {name: config.target_sparsity for name in checked}
    targets[ITEM_TABLE_LAYER] = config.item_table_sparsity
    short = {
        name: value
        for name, value in checked.items()
        if value < targets[name] - _SPARSITY_TOLERANCE
    }
    if not checked:
        raise CompressionError(_NOTHING_TO_PRUNE.format(min_weights=config.min_weights))
    if short:
        listed = ", ".join(
            f"{name} {value:.3f} (target {targets[name]:g})"
            for name, value in sorted(short.items())
        )
        raise CompressionError(
            f"pruning reached less than the target sparsity: {listed}. Raise "
            "FineTuneConfig.steps or lower PruningConfig.frequency so that "
            "the schedule's last mask update happens"
        )
