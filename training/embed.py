"""Item vectors for new or changed items of a trained model: what `pocketrec publish` takes.

The item tower adds a learned vector per training id to a vector of the item's features
(genres and title words). A known id with new metadata gets its vector again; an id the
model never saw gets the features' vector alone, which training fits by ridge regression
onto the trained vectors (`pocketrec.training.item_features`). So new items reach
devices through the sync without a new model.
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
from pocketrec.training.model import FOLLOW_VECTORS

ID_EMBEDDING_LAYER = "item_embedding"


@dataclass(frozen=True)
class EmbeddedItems:
    """Item vectors and their metadata, one per item, in input order.

    Attributes:
        item_ids: the items embedded.
        vectors: float32 ``[N, D]``, the item tower's output.
        metadata: per item its metadata (``title``, ``genres``, ...) without ``"id"``.
        new_ids: the ids the model never saw (embedded from their features alone).
    """

    item_ids: list[str]
    vectors: np.ndarray
    metadata: list[dict[str, Any]]
    new_ids: list[str]

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


def embed_items(trained: TrainedModel, items: Iterable[Mapping[str, Any]]) -> EmbeddedItems:
    """The item tower's vectors for ``items`` (``{"id", "title"?, "genres"?: [names], ...}``).

    A known id keeps its training title and genres where the item does not give them, so
    its vector equals `TrainedModel.item_vectors`'s row; a new id is embedded from the
    title and genres it gives. The other keys are metadata, passed through.

    Raises:
        DataError: for a genre name the model does not know, a title that is not text, a
            new id with neither title nor genres, or a duplicate id.
    """
    row_of = {str(item_id): row for row, item_id in enumerate(trained.item_ids)}
    genre_of = {name: column for column, name in enumerate(trained.genre_names)}
    no_genres = np.zeros(len(genre_of), np.float32)
    ids: list[str] = []
    rows: list[int | None] = []
    multi_hot: list[np.ndarray] = []
    titles: list[str | None] = []
    metadata: list[dict[str, Any]] = []
    seen: set[str] = set()
    for item in items:
        item_id = str(item["id"])
        if item_id in seen:
            raise DataError(f"item {item_id!r} is listed twice")
        seen.add(item_id)
        row = row_of.get(item_id)
        meta = {key: value for key, value in item.items() if key not in ("id", "vector")}
        trained_genres = no_genres if row is None else trained.item_genres[row]
        multi_hot.append(_genres(meta.get("genres"), trained_genres, genre_of, item_id))
        title = meta.get("title", None if row is None else trained.titles[row])
        if title is not None and not isinstance(title, str):
            raise DataError(f'item {item_id!r}: "title" must be text, got {title!r}')
        if row is None and title is None and not multi_hot[-1].any():
            raise DataError(
                f"item {item_id!r} is new to the model and has neither a title nor genres: "
                "its vector comes from its features, so give it at least one"
            )
        ids.append(item_id)
        rows.append(row)
        titles.append(title)
        metadata.append(meta)
    vectors = _item_vectors(trained, rows, multi_hot, titles)
    new_ids = [item_id for item_id, row in zip(ids, rows, strict=True) if row is None]
    return EmbeddedItems(ids, vectors, metadata, new_ids)


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


def _item_vectors(
    trained: TrainedModel,
    rows: Sequence[int | None],
    multi_hot: list[np.ndarray],
    titles: list[str | None],
) -> np.ndarray:
    if not rows:
        return np.zeros((0, trained.config.table_dim), np.float32)
    vectors = trained.feature_vectors(np.stack(multi_hot), titles)
    embeddings = trained.item_tower.get_layer(ID_EMBEDDING_LAYER).get_weights()[0]
    dim = trained.config.embedding_dim
    # A known item keeps its follow vector; a new one has none (zeros) until retraining.
    follow = (
        trained.item_tower.get_layer(FOLLOW_VECTORS).get_weights()[0]
        if trained.config.follow_window
        else None
    )
    for index, row in enumerate(rows):
        if row is not None:
            vectors[index, :dim] += embeddings[row]
            if follow is not None:
                vectors[index, dim:] = follow[row]
    return vectors
