"""Export a trained model as an uncompressed (float32) bundle for the SDK."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pocketrec.evaluation import Split
from pocketrec.sdk import Bundle
from pocketrec.sdk.contract import COLD_START_VECTOR
from pocketrec.training._trained import TrainedModel
from pocketrec.training.convert import to_tflite
from pocketrec.training.model import user_tower_from_encoder


def items_metadata(source: TrainedModel | Split) -> list[dict[str, Any]] | None:
    """Per item row ``{"title": str, "genres": [str, ...]}`` (keys only where known).

    ``source`` is a split or a trained model (which keeps its training split's titles and
    genres). None when nothing is known. Every bundle writer (`export_bundle`,
    ``pocketrec.compression.compress``) uses this one function.
    """
    titles, names = source.titles, source.genre_names
    genres = np.asarray(source.item_genres)
    if all(title is None for title in titles) and not genres.any():
        return None
    metadata = []
    for title, row in zip(titles, genres, strict=True):
        entry: dict[str, Any] = {}
        if title is not None:
            entry["title"] = title
        if genres.shape[1]:
            entry["genres"] = [names[g] for g in np.flatnonzero(row > 0)]
        metadata.append(entry)
    return metadata


def cold_start_extra(vector: np.ndarray | None) -> dict[str, Any]:
    """The manifest ``extra`` entry that carries the cold-start vector (empty without one)."""
    if vector is None:
        return {}
    return {COLD_START_VECTOR: [float(v) for v in np.asarray(vector, np.float32)]}


def export_bundle(
    trained: TrainedModel,
    out_dir: str | Path,
    *,
    split: Split | None = None,
    metrics: Mapping[str, Any] | None = None,
    model_version: str | None = None,
) -> Path:
    """Writes ``trained`` as a float32 bundle (user tower ``.tflite`` + float32 item table).

    Args:
        trained: the model to ship.
        out_dir: the bundle directory (replaced if it already holds a bundle).
        split: the split it was trained on, for item titles and genres (default: the
            metadata saved with the model).
        metrics: recorded in the manifest (default: the best epoch's validation metrics, or the
            model's with follow vectors).
        model_version: free text for the manifest (default: derived from the model bytes).

    Returns:
        The bundle directory.
    """
    if split is not None and list(split.item_ids) != trained.item_ids.tolist():
        raise ValueError(
            f"expected a split with the model's {trained.num_items} items in the same order, "
            f"got one with {split.num_items} items; pass the split the model was trained on"
        )
    model = to_tflite(user_tower_from_encoder(trained.folded_encoder()), quantization="float32")
    if metrics is None:
        metrics = _best_valid_metrics(trained)
    bundle = Bundle.build(
        model=model,
        table=trained.item_table(),
        item_ids=trained.item_ids.tolist(),
        history_length=trained.config.history_length,
        items_metadata=items_metadata(split if split is not None else trained),
        model_version=model_version,
        metrics=metrics,
        recipe="float32",
        quantization="float32",
        accelerator="cpu",
        extra={
            "model_config": trained.config.to_dict(),
            "best_epoch": trained.best_epoch,
            **cold_start_extra(trained.cold_start_vector),
        },
    )
    return bundle.save(out_dir)


def _best_valid_metrics(trained: TrainedModel) -> dict[str, Any]:
    follow = trained.train_config.get("follow_vectors")
    if follow and follow["weight"]:
        return {"valid": follow["valid"]}
    for record in trained.history:
        if record.get("epoch") == trained.best_epoch:
            return {
                "valid": {
                    name.removeprefix("valid/"): value
                    for name, value in record.items()
                    if name.startswith("valid/")
                }
            }
    return {}
