"""The small config objects of the compression steps (no TensorFlow needed to build them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FineTuneConfig:
    """How pruning, clustering and QAT fine-tune: the training objective, for a few steps.

    Attributes:
        steps: optimizer steps.
        batch_size: (history, next item) examples per step.
        learning_rate: Adam learning rate (training's default).
        seed: example sampling, shuffling and dropout. Fine-tuning turns on TensorFlow's
            deterministic kernels, as training does: the same seed gives the same weights
            in a fresh process and in one that trained first.
    """

    steps: int = 300
    batch_size: int = 256
    learning_rate: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(
                f"expected steps >= 1 and batch_size >= 1, got steps={self.steps}, "
                f"batch_size={self.batch_size}"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"expected learning_rate > 0, got {self.learning_rate}")


@dataclass(frozen=True)
class PruningConfig:
    """Magnitude pruning to a target sparsity, reached by a polynomial schedule.

    Attributes:
        target_sparsity: fraction of zeros in every pruned weight of the user tower after
            fine-tuning.
        table_sparsity: the same for the item table; None: ``target_sparsity``. The table
            is most of a bundle and loses less accuracy per zero than the tower's kernels
            (on ML-100K, 75 % of the table alone cost 1.3 % of validation NDCG@10, 75 % of
            the tower alone 4.3 %).
        begin_fraction, end_fraction: the schedule ramps sparsity from 0 to the target
            between these fractions of the fine-tuning steps; the rest fine-tunes at the
            target.
        frequency: steps between mask updates (tfmot's default of 100 never prunes a short
            fine-tuning run).
        prune_item_table: also prune the item table (the larger part of a bundle).
        min_weights: layers with fewer weights stay dense (norms, biases, tiny kernels).
    """

    target_sparsity: float = 0.75
    table_sparsity: float | None = None
    begin_fraction: float = 0.0
    end_fraction: float = 0.7
    frequency: int = 10
    prune_item_table: bool = True
    min_weights: int = 256

    def __post_init__(self) -> None:
        for name in ("target_sparsity", "table_sparsity"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"expected 0 < {name} < 1, got {value}")
        if not 0.0 <= self.begin_fraction < self.end_fraction <= 1.0:
            raise ValueError(
                "expected 0 <= begin_fraction < end_fraction <= 1, got "
                f"{self.begin_fraction} and {self.end_fraction}"
            )
        if self.frequency < 1:
            raise ValueError(f"expected frequency >= 1, got {self.frequency}")

    @property
    def item_table_sparsity(self) -> float:
        """The table's target: `table_sparsity`, or `target_sparsity` when that is None."""
        return self.target_sparsity if self.table_sparsity is None else self.table_sparsity


@dataclass(frozen=True)
class ClusteringConfig:
    """Weight clustering: every clustered kernel ends with at most ``num_clusters`` values.

    Attributes:
        num_clusters: distinct values per clustered weight tensor.
        cluster_item_table: also cluster the item table (its N x D values share
            ``num_clusters`` centroids, which gzip well and survive row-wise int8).
        min_weights: layers with fewer weights stay unclustered.
        preserve_sparsity: keep the zeros of an earlier pruning step (tfmot's
            sparsity-preserving clustering): zeros stay zero and the other values share
            the clusters, so a pruned kernel also gzips its fewer distinct values.
    """

    num_clusters: int = 16
    cluster_item_table: bool = True
    min_weights: int = 256
    preserve_sparsity: bool = False

    def __post_init__(self) -> None:
        if self.num_clusters < 2:
            raise ValueError(f"expected num_clusters >= 2, got {self.num_clusters}")
