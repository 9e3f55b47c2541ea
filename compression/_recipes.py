"""Named compositions of the compression steps.

A recipe name reads ``[step+]<model format>[+<table format>-table]``: the steps that
fine-tune (``pruned``, ``clustered``, ``qat``), then how the user tower is converted, then
the item table's stored form when it differs from the model's float32 default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pocketrec.compression._configs import ClusteringConfig, FineTuneConfig, PruningConfig
from pocketrec.sdk.contract import ACCELERATORS, QUANTIZATIONS, TABLE_DTYPES, check_choice


@dataclass(frozen=True)
class Recipe:
    """How to turn a trained model into a bundle.

    Attributes:
        name: the recipe's name (recorded in the bundle manifest).
        description: one line for ``--list-recipes`` and reports.
        quantization: post-training quantization of the user tower (`QUANTIZATIONS`).
        table_dtype: stored form of the item table (`TABLE_DTYPES`).
        pruning: magnitude pruning while fine-tuning, or None.
        clustering: weight clustering while fine-tuning, or None.
        quantization_aware: fine-tune the Dense layers with fake int8 quantization first
            (needs ``quantization="int8"``).
        accelerator: the intended accelerator, recorded in the manifest.
        batch_size: fixed batch dimension of the converted model (1 for GPU delegates);
            None keeps it dynamic.
        per_channel_weights: int8 weight scales per output channel instead of one per
            tensor. Per tensor saves 12 bytes a channel (5 KB of the default 70 KB int8
            tower) and lost no NDCG@10 on ML-100K; `compress --auto` checks it per model.
        fine_tune: fine-tuning of the steps above.
        cluster_fine_tune: fine-tuning of the clustering step when it differs from
            ``fine_tune`` (a short, gentle one after a long pruning); None: ``fine_tune``.
    """

    name: str
    description: str
    quantization: str = "float32"
    table_dtype: str = "float32"
    pruning: PruningConfig | None = None
    clustering: ClusteringConfig | None = None
    quantization_aware: bool = False
    accelerator: str = "cpu"
    batch_size: int | None = None
    per_channel_weights: bool = False
    fine_tune: FineTuneConfig = field(default_factory=FineTuneConfig)
    cluster_fine_tune: FineTuneConfig | None = None

    def __post_init__(self) -> None:
        check_choice(self.quantization, QUANTIZATIONS, "quantization")
        check_choice(self.table_dtype, TABLE_DTYPES, "table_dtype")
        check_choice(self.accelerator, ACCELERATORS, "accelerator")
        if self.quantization_aware and self.quantization != "int8":
            raise ValueError(
                "quantization_aware=True learns int8 ranges: it needs quantization='int8', "
                f"got {self.quantization!r}"
            )
        if self.accelerator == "gpu" and self.quantization not in ("float32", "float16"):
            raise ValueError(
                "GPU delegates compute in float: accelerator='gpu' needs quantization "
                f"'float16' or 'float32', got {self.quantization!r}"
            )
        if self.pruning and self.clustering and not self.clustering.preserve_sparsity:
            raise ValueError(
                "clustering after pruning moves the pruned zeros to the nearest cluster: "
                "set ClusteringConfig(preserve_sparsity=True)"
            )
        if self.cluster_fine_tune is not None and self.clustering is None:
            raise ValueError("cluster_fine_tune is set but the recipe does not cluster")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"expected batch_size >= 1 or None, got {self.batch_size}")

    @property
    def fine_tunes(self) -> bool:
        """Whether the recipe trains (pruning, clustering or QAT) before converting."""
        return bool(self.pruning or self.clustering or self.quantization_aware)

    @property
    def trains_table(self) -> bool:
        """Whether a step changes the item table (pruning or clustering it)."""
        return bool(
            (self.pruning and self.pruning.prune_item_table)
            or (self.clustering and self.clustering.cluster_item_table)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "name": self.name,
            "description": self.description,
            "quantization": self.quantization,
            "table_dtype": self.table_dtype,
            "pruning": None if self.pruning is None else vars(self.pruning),
            "clustering": None if self.clustering is None else vars(self.clustering),
            "quantization_aware": self.quantization_aware,
            "accelerator": self.accelerator,
            "batch_size": self.batch_size,
            "per_channel_weights": self.per_channel_weights,
            "fine_tune": vars(self.fine_tune) if self.fine_tunes else None,
            "cluster_fine_tune": (
                None if self.cluster_fine_tune is None else vars(self.cluster_fine_tune)
            ),
        }


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe("float32", "float32 model and table: the reference every drop is measured from"),
        Recipe(
            "dynamic", "dynamic-range model (int8 weights, float kernels), float32 table", "dynamic"
        ),
        Recipe("float16", "float16 weights and float16 table", "float16", "float16"),
        Recipe("int8", "full-integer int8 model, float32 table", "int8"),
        Recipe("int8+int8-table", "int8 model, row-wise int8 table", "int8", "int8"),
        Recipe("int8+int4-table", "int8 model, row-wise packed int4 table", "int8", "int4"),
        Recipe(
            "pruned+clustered+int8+int4-table",
            "magnitude pruning of the tower to 87% while fine-tuning against the frozen "
            "table, then 16 shared values per kernel, int8 model, int4 table",
            "int8",
            "int4",
            # An int4 table gzips to about what an int8 table pruned to 72% does (51 vs 49
            # KiB on ML-100K) and loses ~1% of validation NDCG@10 instead of ~10%; frozen,
            # the table cannot overfit the fine-tuning. A kept weight drawn from 16 values
            # gzips ~2.3 bits smaller than an int8 one. 87% is the least sparsity that kept
            # every seed over 8x once the reference's attention kernels were merged too
            # (docs/compression.md).
            pruning=PruningConfig(target_sparsity=0.87, prune_item_table=False, end_fraction=0.5),
            clustering=ClusteringConfig(
                num_clusters=16, cluster_item_table=False, preserve_sparsity=True
            ),
            fine_tune=FineTuneConfig(steps=800, learning_rate=3e-4),
            cluster_fine_tune=FineTuneConfig(steps=200, learning_rate=1e-4),
        ),
        Recipe(
            "clustered+int8",
            "16-cluster weight clustering of tower and table while fine-tuning, int8 model "
            "and table",
            "int8",
            "int8",
            clustering=ClusteringConfig(num_clusters=16),
        ),
        Recipe(
            "qat+int8",
            "quantization-aware fine-tuning of the Dense layers, int8 model and table",
            "int8",
            "int8",
            quantization_aware=True,
        ),
        Recipe(
            "gpu-float16",
            "GPU-friendly: float16 model with a fixed batch of 1, float16 table",
            "float16",
            "float16",
            accelerator="gpu",
            batch_size=1,
        ),
    )
}


def get_recipe(recipe: str | Recipe) -> Recipe:
    """The recipe called ``recipe`` (a `Recipe` passes through).

    Raises:
        ValueError: unknown name; the message lists the known ones.
    """
    if isinstance(recipe, Recipe):
        return recipe
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; expected one of {list(RECIPES)}")
    return RECIPES[recipe]


def list_recipes() -> list[Recipe]:
    """Every named recipe, float32 first."""
    return list(RECIPES.values())
