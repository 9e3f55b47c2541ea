"""Item vectors for new or changed items of a trained model: what `pocketrec publish` takes.

The item tower adds a learned vector per training id to a projection of the item's genres.
A known id with new genres gets its vector again; an id the model never saw has no learned
vector, so this tower cannot embed it (an item tower over item features alone could).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pocketrec.errors import DataError
from pocketrec.sdk.catalog import read_items_jsonl
from pocketrec.training._trained import TrainedModel

ID_EMBEDDING_LAYER = "item_embedding"
GENRE_PROJECTION_LAYER = "genre_projection"


@dataclass(frozen=True)
class EmbeddedItems:
    """Item vectors and their metadata, one per item, in input order.

    Attributes:
        item_ids: the items embedded.
        vectors: float32 ``[N, D]``, the item tower's output.
        metadata: per item its metadata (``title``, ``genres``, ...) without ``"id"``.
        unknown_ids: ids that were skipped because the model never saw them.
    """

    item_ids: list[str]
    vectors: np.ndarray
    metadata: list[dict[str, Any]]
    unknown_ids: list[str]

    def write_jsonl(self, path: str | Path) -> Path:
        """One JSON object per line: ``{"id", "vector": [...], <metadata>}``."""
        out = Path(path)
        with out.open("w", encoding="utf-8") as f:
            for item_id, vector, meta in zip(
                self.item_ids, self.vectors, self.metadata, strict=True
            ):
                line = {"id": item_id, "vector": [float(v) for v in vector], **meta}
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
        return out


def embed_items(
    trained: TrainedModel, items: Iterable[Mapping[str, Any]], *, skip_unknown: bool = False
) -> EmbeddedItems:
    """The item tower's vectors for ``items`` (``{"id", "genres"?: [names], ...}``).

    Genres absent from an item keep the ones the model was trained with; the other keys
    are metadata, passed through. The vector of a known id with its training genres equals
    `TrainedModel.item_vectors`'s row.

    Raises:
        DataError: for an id the model never saw (unless ``skip_unknown``), a genre name
            it does not know, or a duplicate id.
    """
    row_of = {str(item_id): row for row, item_id in enumerate(trained.item_ids)}
    genre_of = {name: column for column, name in enumerate(trained.genre_names)}
    ids: list[str] = []
    rows: list[int] = []
    multi_hot: list[np.ndarray] = []
    metadata: list[dict[str, Any]] = []
    unknown: list[str] = []
    seen: set[str] = set()
    for item in items:
        item_id = str(item["id"])
        if item_id in seen:
            raise DataError(f"item {item_id!r} is listed twice")
        seen.add(item_id)
        if item_id not in row_of:
            unknown.append(item_id)
            continue
        row = row_of[item_id]
        meta = {key: value for key, value in item.items() if key not in ("id", "vector")}
        multi_hot.append(_genres(meta.get("genres"), trained.item_genres[row], genre_of, item_id))
        ids.append(item_id)
        rows.append(row)
        metadata.append(meta)
    if unknown and not skip_unknown:
        raise DataError(
            f"{len(unknown)} ids are new to the model ({unknown[:5]}): its item tower adds a "
            "vector learned for each training id, so it cannot embed them yet. Retrain with "
            "them, or pass --skip-unknown to embed the others"
        )
    vectors = _item_tower(trained, rows, multi_hot)
    return EmbeddedItems(ids, vectors, metadata, unknown)


def read_embedded_jsonl(path: str | Path) -> EmbeddedItems:
    """What `EmbeddedItems.write_jsonl` wrote.

    Raises:
        DataError: for a line without a finite numeric ``"vector"`` of the common length.
    """
    items = read_items_jsonl(path, vectors=True)
    metadata = [{k: v for k, v in item.items() if k not in ("id", "vector")} for item in items]
    vectors = np.asarray([item["vector"] for item in items], np.float32)
    return EmbeddedItems([item["id"] for item in items], vectors, metadata, [])


def _genres(
    names: object, trained_row: np.ndarray, genre_of: Mapping[str, int], item_id: str
) -> np.ndarray:
    if names is None:
        return np.asarray(trained_row, np.float32)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f'item {item_id!r}: "genres" must be a list of genre names')
    unknown = [n for n in names if n not in genre_of]
    if unknown:
        raise DataError(
            f"item {item_id!r} names genres {unknown} the model does not know; it knows "
            f"{sorted(genre_of)}"
        )
    row = np.zeros(len(genre_of), np.float32)
    row[[genre_of[n] for n in names]] = 1.0
    return row


def _item_tower(
    trained: TrainedModel, rows: Sequence[int], multi_hot: list[np.ndarray]
) -> np.ndarray:
    tower = trained.item_tower
    embeddings = tower.get_layer(ID_EMBEDDING_LAYER).get_weights()[0]
    vectors = embeddings[np.asarray(rows, dtype=np.int64)].astype(np.float32)
    layer_names = {layer.name for layer in tower.layers}
    if GENRE_PROJECTION_LAYER in layer_names and rows:
        (kernel,) = tower.get_layer(GENRE_PROJECTION_LAYER).get_weights()
        vectors += np.stack(multi_hot) @ kernel
    return vectors
