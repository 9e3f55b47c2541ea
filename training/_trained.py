"""`TrainedModel`: the two towers of a training run, their config, and the item metadata."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from pocketrec.errors import DataError
from pocketrec.evaluation import ScoreFn
from pocketrec.sdk import ItemTable, encode_histories
from pocketrec.training.model import (
    ModelConfig,
    build_item_tower,
    build_sequence_encoder,
    fold_attention,
    title_word_ids,
    user_tower_from_encoder,
)

FORMAT = "pocketrec-trained-model"
FORMAT_VERSION = 2
CONFIG_FILE = "model.json"
WEIGHTS_FILE = "weights.npz"
ITEMS_FILE = "items.npz"
# Users per user-tower call when scoring: bounds the [B, L, D] input and [B, N] scores.
_SCORE_BATCH = 512
# Items per item-tower call when building the table.
_ITEM_BATCH = 65_536


class TrainedModel:
    """A trained dual encoder and what is needed to ship it.

    ``D`` below is `ModelConfig.table_dim`: the embedding dim, twice it with follow vectors.

    Attributes:
        item_tower: tf_keras model, ``item`` int32 ``[B]`` -> float32 ``[B, D]``.
        encoder: tf_keras model, ``history`` ``[B, L, D]``, ``mask`` ``[B, L]`` -> the
            output at every position ``[B, L, D]`` (what training fits).
        user_tower: the encoder's last position, ``[B, D]``; shares the encoder's layers.
        config: the `ModelConfig` the towers were built from.
        item_ids: str ``[N]``, external id of each item row.
        item_genres: float32 ``[N, G]`` genre multi-hot; ``genre_names`` names the columns.
        titles: title of each item row (None where unknown).
        history: one dict per epoch (``train/loss``, ``valid/ndcg@10``, ...).
        best_epoch: the epoch whose weights were kept (0 when unknown).
        cold_start_vector: float32 ``[D]``, the user vector of a user with no known history
            (`pocketrec.training.cold_start`); None when not fitted.
        train_config: the `TrainConfig` as a dict, plus ``"softmax"``: ``"full"`` or
            ``"sampled"``, the loss that was used, and ``"feature_ridge"``: the strength
            of the features part's refit (`pocketrec.training.item_features`).
    """

    def __init__(
        self,
        item_tower: tf_keras.Model,
        encoder: tf_keras.Model,
        config: ModelConfig,
        *,
        item_ids: Sequence[str] | np.ndarray,
        item_genres: np.ndarray | None = None,
        genre_names: Sequence[str] = (),
        titles: Sequence[str | None] | None = None,
        history: list[dict[str, float]] | None = None,
        best_epoch: int = 0,
        cold_start_vector: np.ndarray | None = None,
        train_config: dict[str, Any] | None = None,
    ) -> None:
        self.item_tower = item_tower
        self.encoder = encoder
        self.user_tower = user_tower_from_encoder(encoder)
        self.config = config
        self.item_ids = np.asarray([str(i) for i in item_ids])
        num_items = len(self.item_ids)
        self.item_genres = (
            np.zeros((num_items, 0), np.float32)
            if item_genres is None
            else np.asarray(item_genres, dtype=np.float32)
        )
        self.genre_names = list(genre_names)
        self.titles = list(titles) if titles is not None else [None] * num_items
        if self.item_genres.shape[0] != num_items or len(self.titles) != num_items:
            raise ValueError(
                f"expected item_genres and titles with one row per item ({num_items}), got "
                f"{self.item_genres.shape[0]} and {len(self.titles)}"
            )
        self.history = list(history or [])
        self.best_epoch = best_epoch
        self.cold_start_vector = (
            None if cold_start_vector is None else np.asarray(cold_start_vector, np.float32)
        )
        self.train_config = dict(train_config or {})

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def best_valid_ndcg(self) -> float:
        """Validation NDCG@10 of the model as kept: the best epoch's, or with follow vectors
        where `pocketrec.training.follow` added them (what ``auto`` and ``tune`` compare)."""
        follow = self.train_config.get("follow_vectors")
        if follow and follow["weight"]:
            return float(follow["valid"]["ndcg@10"])
        return max((record["valid/ndcg@10"] for record in self.history), default=0.0)

    def item_vectors(self) -> np.ndarray:
        """float32 ``[N, table_dim]``: the item tower's output for every item row (the
        item table; ``2D`` columns with follow vectors, `ModelConfig.table_dim`)."""
        rows = [
            self.item_tower(
                tf.range(start, min(start + _ITEM_BATCH, self.num_items)), training=False
            ).numpy()
            for start in range(0, self.num_items, _ITEM_BATCH)
        ]
        return np.concatenate(rows).astype(np.float32, copy=False)

    def folded_encoder(self) -> tf_keras.Model:
        """`encoder` with its attention kernels merged (`fold_attention`; a new model, or
        `encoder` itself when it has none to merge): the same outputs from fewer weights,
        what compression and export convert."""
        return fold_attention(self.encoder, self.config)

    def feature_vectors(self, item_genres: np.ndarray, titles: Sequence[str | None]) -> np.ndarray:
        """float32 ``[B, table_dim]``: item vectors from features alone (genre multi-hot,
        titles).

        What an item the model never saw gets: after training, the features part is a
        ridge regression from the features to the trained vectors
        (`pocketrec.training.item_features`), so these land near the items they resemble.
        Its follow vector is zeros: nothing has followed it yet.
        """
        encoder = self.item_tower.get_layer("feature_encoder")
        genres = np.asarray(item_genres, dtype=np.float32).reshape(len(titles), -1)
        words = title_word_ids(titles, self.config)
        vectors = np.array(encoder({"genres": genres, "words": words}), dtype=np.float32)
        return np.pad(vectors, [(0, 0), (0, self.config.table_dim - vectors.shape[1])])

    def item_table(self) -> ItemTable:
        """The float32 `ItemTable` of `item_vectors`, as a bundle ships it before compression."""
        return ItemTable.quantize(self.item_vectors(), "float32")

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """Scores float32 ``[B, N]`` of every item for ``B`` histories of item rows.

        History vectors come from the float32 item table through
        `pocketrec.sdk.encode_histories`, the function the device uses.
        """
        return self.score_fn()(histories)

    def score_fn(self) -> ScoreFn:
        """A ``score`` that reuses one snapshot of the item table (for many calls)."""
        table = self.item_table()
        vectors = table.dequantized()

        def score(histories: Sequence[np.ndarray]) -> np.ndarray:
            return self.user_vectors(histories, table) @ vectors.T

        return score

    def user_vectors(
        self, histories: Sequence[np.ndarray], table: ItemTable | None = None
    ) -> np.ndarray:
        """float32 ``[B, D]``: the user tower's vector for each history of item rows.

        An empty history gets `cold_start_vector` where the model has one, as on device.
        """
        table = table if table is not None else self.item_table()
        out = np.empty((len(histories), table.dim), dtype=np.float32)
        for start in range(0, len(histories), _SCORE_BATCH):
            chunk = histories[start : start + _SCORE_BATCH]
            history, mask = encode_histories(table, chunk, self.config.history_length)
            users = self.user_tower({"history": history, "mask": mask}, training=False)
            out[start : start + len(chunk)] = np.asarray(users)
        if self.cold_start_vector is not None:
            for row, items in enumerate(histories):
                if len(items) == 0:
                    out[row] = self.cold_start_vector
        return out

    def save(self, directory: str | Path) -> Path:
        """Writes config, weights and item metadata into ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = {f"item_tower/{i}": w for i, w in enumerate(self.item_tower.get_weights())}
        weights.update({f"encoder/{i}": w for i, w in enumerate(self.encoder.get_weights())})
        np.savez(directory / WEIGHTS_FILE, **weights)
        np.savez(directory / ITEMS_FILE, item_ids=self.item_ids, item_genres=self.item_genres)
        document = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_config": self.config.to_dict(),
            "train_config": self.train_config,
            "num_items": self.num_items,
            "genre_names": self.genre_names,
            "titles": self.titles,
            "history": self.history,
            "best_epoch": self.best_epoch,
            "cold_start_vector": None
            if self.cold_start_vector is None
            else self.cold_start_vector.tolist(),
        }
        (directory / CONFIG_FILE).write_text(json.dumps(document, indent=2), encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> TrainedModel:
        """Rebuilds the towers from a `save` directory and loads their weights.

        Raises:
            DataError: the directory is missing, incomplete, or from another format.
        """
        directory = Path(directory)
        missing = [
            name
            for name in (CONFIG_FILE, WEIGHTS_FILE, ITEMS_FILE)
            if not (directory / name).is_file()
        ]
        if missing:
            raise DataError(
                f"{directory} is not a saved pocketrec model: missing {missing}. Pass the "
                "directory written by TrainedModel.save (`pocketrec train --out RUN_DIR` "
                "saves it as RUN_DIR/model)"
            )
        document = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        if document.get("format") != FORMAT or document.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"expected {CONFIG_FILE} of format {FORMAT!r} version {FORMAT_VERSION}, got "
                f"{document.get('format')!r} version {document.get('format_version')!r}"
            )
        config = ModelConfig.from_dict(document["model_config"])
        with np.load(directory / ITEMS_FILE) as items:
            item_ids, item_genres = items["item_ids"], items["item_genres"]
        with np.load(directory / WEIGHTS_FILE) as stored:
            weights = {name: stored[name] for name in stored.files}
        item_tower = build_item_tower(
            len(item_ids), config, item_genres, title_word_ids(document["titles"], config)
        )
        encoder = build_sequence_encoder(config)
        for prefix, model in (("item_tower", item_tower), ("encoder", encoder)):
            try:
                model.set_weights([weights[f"{prefix}/{i}"] for i in range(len(model.weights))])
            except (KeyError, ValueError) as error:
                raise DataError(
                    f"the weights in {directory / WEIGHTS_FILE} do not fit the {prefix} "
                    f"built from {CONFIG_FILE}: {error}"
                ) from error
        return cls(
            item_tower,
            encoder,
            config,
            item_ids=item_ids,
            item_genres=item_genres,
            genre_names=document["genre_names"],
            titles=document["titles"],
            history=document["history"],
            best_epoch=document["best_epoch"],
            cold_start_vector=document["cold_start_vector"],
            train_config=document["train_config"],
        )
