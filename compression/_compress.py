"""`compress`: a trained model and a recipe in, a measured bundle out."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pocketrec.compression._accelerators import AcceleratorReport, accelerator_coverage
from pocketrec.compression._cluster import cluster, unique_weight_counts
from pocketrec.compression._inspect import ModelInfo, inspect_model
from pocketrec.compression._parts import ModelParts
from pocketrec.compression._prune import prune, weight_sparsity
from pocketrec.compression._ptq import (
    calibration_user_vectors,
    post_training_quantize,
    quantize_table,
    representative_histories,
)
from pocketrec.compression._qat import quantization_aware
from pocketrec.compression._recipes import Recipe, get_recipe
from pocketrec.evaluation import Metrics, Split, evaluate
from pocketrec.sdk import Bundle, ItemTable, Recommender
from pocketrec.training.export import cold_start_extra, items_metadata
from pocketrec.training.model import user_tower_from_encoder

if TYPE_CHECKING:
    from pocketrec.training import TrainedModel


@dataclass(frozen=True)
class CompressionResult:
    """A bundle written by `compress`, with what it cost and what it holds.

    Attributes:
        recipe: the recipe applied.
        bundle: the bundle directory.
        sizes: ``{"model"|"table"|"total": {"raw": bytes, "gzip": bytes}}`` (SDK's
            ``bundle_size``; gzip per file, level 9).
        metrics: ``{"valid": Metrics, "test": Metrics}`` measured through the SDK's
            ``Recommender`` (LiteRT), empty when not evaluated.
        model_info: ops and tensor dtypes of the converted user tower.
        accelerators: XNNPACK / GPU / NPU coverage of the converted user tower.
        sparsity: fraction of zeros per pruned weight, when the recipe prunes.
        unique_values: distinct values per clustered weight, when the recipe clusters.
        steps: the fine-tuning steps applied, in order.
        seconds: wall time of the whole recipe.
    """

    recipe: Recipe
    bundle: Path
    sizes: dict[str, dict[str, int]]
    metrics: dict[str, Metrics]
    model_info: ModelInfo
    accelerators: AcceleratorReport
    sparsity: dict[str, float] | None = None
    unique_values: dict[str, int] | None = None
    steps: tuple[str, ...] = ()
    seconds: float = 0.0

    def payload(self, metric: str = "raw") -> int:
        """Bytes of model + table (``metric`` ``"raw"`` or ``"gzip"``): what compression changes.

        The bundle's ``total`` adds the manifest and ``items.json``, the same for every recipe.
        """
        return self.sizes["model"][metric] + self.sizes["table"][metric]

    def ndcg_at_10(self, stage: str = "valid") -> float:
        """NDCG@10 of ``stage``; raises ``KeyError`` when the bundle was not evaluated."""
        return self.metrics[stage].ndcg_at_10

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {
            "recipe": self.recipe.to_dict(),
            "bundle": str(self.bundle),
            "sizes": self.sizes,
            "metrics": {stage: m.as_dict() for stage, m in self.metrics.items()},
            "model": self.model_info.to_dict(),
            "accelerators": self.accelerators.to_dict(),
            "sparsity": self.sparsity,
            "unique_values": self.unique_values,
            "steps": list(self.steps),
            "seconds": round(self.seconds, 2),
        }


def model_parts(source: TrainedModel | ModelParts | str | Path) -> ModelParts:
    """`ModelParts` of a trained model, its saved directory, or parts (returned as is).

    The item tower is folded into its output table (``item_vectors()``); the encoder comes
    along so that fine-tuning predicts the next item at every position, as training does.
    A trained model's attention kernels are merged (`fold_attention`, exact): every step
    and the conversion work on the two kernels per block that the scores depend on.
    """
    if isinstance(source, ModelParts):
        return source
    if isinstance(source, str | Path):
        from pocketrec.training import TrainedModel

        source = TrainedModel.load(source)
    vectors = np.asarray(source.item_vectors(), dtype=np.float32)
    encoder = source.folded_encoder()
    return ModelParts(
        user_tower=user_tower_from_encoder(encoder),
        item_vectors=vectors,
        encoder=encoder,
        cold_start_vector=source.cold_start_vector,
    )


def checked_parts(source: TrainedModel | ModelParts | str | Path, split: Split) -> ModelParts:
    """`model_parts` of ``source``, refusing a split of other items.

    Raises:
        ValueError: the model's items (ids, when it has them, else their count) are not
            the split's.
    """
    if isinstance(source, str | Path):
        from pocketrec.training import TrainedModel

        source = TrainedModel.load(source)
    parts = model_parts(source)
    ids = None if isinstance(source, ModelParts) else [str(i) for i in source.item_ids]
    if parts.num_items != split.num_items or (
        ids is not None and ids != [str(i) for i in split.item_ids]
    ):
        raise ValueError(
            f"the model scores {parts.num_items} items but the split has {split.num_items} "
            "(or other ids); pass the split the model was trained on"
        )
    return parts


def apply_steps(parts: ModelParts, recipe: Recipe, split: Split) -> ModelParts:
    """The recipe's fine-tuning steps (pruning, clustering, QAT), in that order."""
    if recipe.pruning is not None:
        parts = prune(parts, recipe.pruning, split, recipe.fine_tune)
    if recipe.clustering is not None:
        parts = cluster(
            parts, recipe.clustering, split, recipe.cluster_fine_tune or recipe.fine_tune
        )
    if recipe.quantization_aware:
        parts = quantization_aware(parts, split, recipe.fine_tune)
    return parts


def shipped_table(parts: ModelParts, recipe: Recipe, split: Split) -> ItemTable:
    """``parts``' item vectors stored as ``recipe.table_dtype``.

    int4 rows keep the scores of ``parts``' calibration users (their steps are coarse
    enough that clipping pays; int8 rows lost more than they gained, docs/compression.md).
    """
    users = (
        calibration_user_vectors(parts.user_tower, parts.item_vectors, split)
        if recipe.table_dtype == "int4"
        else None
    )
    return quantize_table(parts.item_vectors, recipe.table_dtype, users)


def compress(
    source: TrainedModel | ModelParts | str | Path,
    recipe: str | Recipe,
    out_bundle: str | Path,
    *,
    split: Split,
    measure: bool = True,
    probe_gpu: bool = True,
    model_version: str | None = None,
) -> CompressionResult:
    """Applies ``recipe`` to ``source`` and writes a bundle the SDK opens.

    A recipe that fine-tunes without training the table (`Recipe.trains_table`) tunes
    the tower against the table as it will ship, and ships that table.

    Args:
        source: a ``TrainedModel``, its saved run directory, or `ModelParts`.
        recipe: a name from `RECIPES` or a `Recipe`.
        out_bundle: bundle directory to write (replaced if it holds a bundle).
        split: the data split the model was trained on: fine-tuning examples, int8
            calibration histories, item ids and metadata, and the evaluation targets.
        measure: measure validation and test metrics through the SDK.
        probe_gpu: let the accelerator report try LiteRT's GPU accelerator.
        model_version: recorded in the manifest; default: derived from the model bytes.

    Raises:
        CompressionError: a step or the conversion failed (the message says which and why).
    """
    started = time.perf_counter()
    recipe = get_recipe(recipe)
    parts = checked_parts(source, split)
    if recipe.trains_table:
        parts = apply_steps(parts, recipe, split)
        table = shipped_table(parts, recipe, split)
    else:
        # Quantized before any fine-tuning, which then learns to read and score the
        # rounded vectors the device holds; the table ships as it is.
        table = shipped_table(parts, recipe, split)
        if recipe.fine_tunes:
            parts = apply_steps(replace(parts, item_vectors=table.dequantized()), recipe, split)
    representative = (
        representative_histories(split, table, parts.history_length)
        if recipe.quantization == "int8"
        else None
    )
    model = post_training_quantize(
        parts.user_tower,
        recipe.quantization,
        representative,
        batch_size=recipe.batch_size,
        per_channel=recipe.per_channel_weights,
    )
    details: dict[str, Any] = {"recipe": recipe.to_dict(), "steps": list(parts.steps)}
    sparsity = weight_sparsity(parts) if recipe.pruning is not None else None
    unique_values = unique_weight_counts(parts) if recipe.clustering is not None else None
    if sparsity is not None:
        details["sparsity"] = sparsity
    if unique_values is not None:
        details["unique_values"] = unique_values
    bundle = Bundle.build(
        model=model,
        table=table,
        item_ids=[str(i) for i in split.item_ids],
        history_length=parts.history_length,
        items_metadata=items_metadata(split),
        model_version=model_version,
        recipe=recipe.name,
        quantization=recipe.quantization,
        accelerator=recipe.accelerator,
        extra={"compression": details, **cold_start_extra(parts.cold_start_vector)},
    )
    metrics: dict[str, Metrics] = {}
    if measure:
        # Measured in memory before writing: the metrics go into the manifest.
        metrics = evaluate_bundle(bundle, split)
        bundle = bundle.with_metrics({stage: m.as_dict() for stage, m in metrics.items()})
    out = bundle.save(out_bundle)
    return CompressionResult(
        recipe=recipe,
        bundle=out,
        sizes=bundle.sizes(),
        metrics=metrics,
        model_info=inspect_model(model),
        accelerators=accelerator_coverage(model, probe_gpu=probe_gpu),
        sparsity=sparsity,
        unique_values=unique_values,
        steps=parts.steps,
        seconds=time.perf_counter() - started,
    )


def evaluate_bundle(bundle: Bundle | str | Path, split: Split) -> dict[str, Metrics]:
    """Validation and test metrics of a bundle, scored by the SDK's ``Recommender``."""
    with Recommender.open(bundle) as recommender:
        return {
            stage: evaluate(recommender.score_rows, split, stage) for stage in ("valid", "test")
        }
