"""The tf_keras dual encoder: an item tower and a user tower (docs/architecture.md).

The item tower maps an item index (and the item's genre multi-hot) to an item vector
``[D]``; the table of all item vectors is what the SDK ships. The user tower reads the item
vectors of the last ``L`` history items, right-aligned with zero padding, and returns the
user vector ``[D]``; the score of item ``i`` is ``dot(user_vector, item_table[i])``.

The user tower is built from plain Keras layers (``Dense``, ``LayerNormalization``,
``Dropout``) and float tensor ops so that tfmot can prune, cluster and quantize it and the
LiteRT GPU delegate runs it: no bool tensors, no recurrent ops by default.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import dataclasses
import math
import re
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

ENCODERS = ("attention", "mean", "gru", "linear")

# Added to the attention logits of masked keys: their weight shrinks by e^-30 (nothing at
# float precision). A larger constant would also work in float16, but it would stretch the
# int8 range of the logits and flatten every real logit to one value.
_MASKED_LOGIT = -30.0

_WORD = re.compile(r"\w+")

# Layer names the closed-form fit (training.closed_form) writes into.
ITEM_EMBEDDING = "item_embedding"
GENRE_PROJECTION = "genre_projection"
TITLE_WORDS = "title_words"
LINEAR_PROJECTION = "linear_projection"
FOLLOW_VECTORS = "follow_vectors"
_MEAN_DROPOUT = "mean_dropout"
_MEAN_PROJECTION = "mean_projection"
_OUTPUT_NORM = "output_norm"
# Suffixes of a folded block's merged attention kernels (`fold_attention`).
_QUERY_KEY = "_query_key"
_VALUE_OUTPUT = "_value_output"


@dataclass(frozen=True)
class ModelConfig:
    """Shape and kind of the dual encoder.

    Attributes:
        embedding_dim: D, the size of item and user vectors.
        history_length: L, the number of most recent history items the user tower reads.
        encoder: ``"attention"`` (causal self-attention blocks with learned positions,
            SASRec-like), ``"mean"`` (masked mean and a dense layer), ``"gru"`` or
            ``"linear"`` (masked mean times a matrix: what the closed-form fit of
            ``objective="ease"`` fills in).
        num_blocks: self-attention blocks (``"attention"`` only).
        num_heads: attention heads; must divide ``embedding_dim``.
        ffn_dim: width of the feed-forward layer of each block (at most ``2 * D`` keeps
            the user tower far smaller than the item table).
        dropout: dropout rate of the user tower during training.
        use_genres: add a dense projection of the genre multi-hot to each item vector when
            the data has genres.
        use_titles: add the mean embedding of the title's hashed words to each item vector.
        title_buckets: hash buckets of title words (bucket 0 is padding).
        title_words: at most this many distinct words of each title are read.
        id_dropout: during training, the share of items whose id vector is dropped, so
            that the features part learns to place them too.
        follow_window: the user tower adds the *follow vectors* of this many most recent
            history items (`pocketrec.training.follow`); 0: none. The follow fit sets it
            after training; the table then carries the follow vectors as ``D`` more
            columns that only the user tower reads (the user vector is zero there).
    """

    embedding_dim: int = 64
    history_length: int = 50
    encoder: str = "attention"
    num_blocks: int = 2
    num_heads: int = 1
    ffn_dim: int = 128
    dropout: float = 0.3
    use_genres: bool = True
    use_titles: bool = True
    title_buckets: int = 2048
    title_words: int = 8
    id_dropout: float = 0.1
    follow_window: int = 0

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"expected encoder in {ENCODERS}, got {self.encoder!r}")
        for name in (
            "embedding_dim",
            "history_length",
            "num_blocks",
            "num_heads",
            "ffn_dim",
            "title_words",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"expected {name} >= 1, got {getattr(self, name)}")
        if self.embedding_dim % self.num_heads:
            raise ValueError(
                f"expected num_heads to divide embedding_dim, got num_heads={self.num_heads} "
                f"and embedding_dim={self.embedding_dim}"
            )
        for name in ("dropout", "id_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"expected 0 <= {name} < 1, got {getattr(self, name)}")
        if self.title_buckets < 2:
            raise ValueError(f"expected title_buckets >= 2, got {self.title_buckets}")
        if not 0 <= self.follow_window <= self.history_length:
            raise ValueError(
                f"expected 0 <= follow_window <= history_length ({self.history_length}), "
                f"got {self.follow_window}"
            )
        if self.follow_window and self.encoder not in ("attention", "gru"):
            raise ValueError(
                f"follow vectors need a sequence encoder (attention or gru), got "
                f"encoder={self.encoder!r} with follow_window={self.follow_window}"
            )

    @property
    def table_dim(self) -> int:
        """Columns of the item table: ``D``, and ``D`` more for the follow vectors."""
        return self.embedding_dim * (2 if self.follow_window else 1)

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Rebuild a config from :meth:`to_dict` output; unknown keys are refused."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown ModelConfig keys {unknown}; expected some of {sorted(known)}"
            )
        return cls(**values)


@tf_keras.saving.register_keras_serializable(package="pocketrec")
class SequenceEmbedding(tf_keras.layers.Layer):
    """Input rows of the attention encoder: ``[B, L, D]`` history and ``[B, L]`` mask.

    Real rows are the item vectors scaled by ``sqrt(D)``; padding rows are a learned
    padding vector instead of zeros. Each row gets a learned position vector (position
    ``L-1`` is the newest item). Zero rows would give layer norm a zero variance, and its
    ``rsqrt`` a range that int8 calibration cannot represent.
    """

    def build(self, input_shape: list[tf.TensorShape]) -> None:
        length, dim = int(input_shape[0][1]), int(input_shape[0][2])
        self.positions = self.add_weight(
            name="positions",
            shape=(length, dim),
            initializer=tf_keras.initializers.RandomNormal(stddev=0.05),
        )
        self.padding = self.add_weight(
            name="padding",
            shape=(dim,),
            initializer=tf_keras.initializers.RandomNormal(stddev=0.05),
        )
        super().build(input_shape)

    def call(self, inputs: list[tf.Tensor]) -> tf.Tensor:
        history, mask = inputs
        keep = mask[:, :, None]
        scale = math.sqrt(float(history.shape[-1]))
        return history * (keep * scale) + (1.0 - keep) * self.padding + self.positions


def title_word_ids(titles: Sequence[str | None], config: ModelConfig) -> np.ndarray:
    """int32 ``[N, title_words]``: hashed word ids of each title (0 pads, ids from 1).

    Words are NFKC-normalised, lower-cased runs of letters and digits (the year of a
    MovieLens title is a word too); a stable hash (CRC-32) puts each word in one of
    ``title_buckets - 1`` buckets, so words never seen in training still get an id.
    """
    ids = np.zeros((len(titles), config.title_words), dtype=np.int32)
    for row, title in enumerate(titles):
        words = _WORD.findall(unicodedata.normalize("NFKC", title or "").lower())
        for column, word in enumerate(dict.fromkeys(words)):
            if column == config.title_words:
                break
            ids[row, column] = zlib.crc32(word.encode("utf-8")) % (config.title_buckets - 1) + 1
    return ids


def build_feature_encoder(num_genres: int, config: ModelConfig) -> tf_keras.Model:
    """The item features part of the item tower: what embeds an item the model never saw.

    Inputs ``genres`` float32 ``[B, G]`` (multi-hot) and ``words`` int32 ``[B, W]``
    (`title_word_ids`) -> float32 ``[B, D]``: a projection of the genres plus the mean
    embedding of the title words. Without features (``use_genres``/``use_titles`` off or
    none in the data) it returns zeros.
    """
    genres = tf_keras.Input(shape=(num_genres,), dtype=tf.float32, name="genres")
    words = tf_keras.Input(shape=(config.title_words,), dtype=tf.int32, name="words")
    parts = []
    if config.use_genres and num_genres > 0:
        parts.append(
            tf_keras.layers.Dense(config.embedding_dim, use_bias=False, name=GENRE_PROJECTION)(
                genres
            )
        )
    if config.use_titles:
        parts.append(
            mean_embedding(words, config.title_buckets, config.embedding_dim, 0.05, TITLE_WORDS)
        )
    if not parts:
        parts.append(
            tf.zeros_like(tf.cast(words[:, :1], tf.float32)) * tf.zeros([config.embedding_dim])
        )
    vector = tf.add_n(parts)
    return tf_keras.Model(
        inputs={"genres": genres, "words": words}, outputs=vector, name="feature_encoder"
    )


def mean_embedding(ids: tf.Tensor, buckets: int, dim: int, stddev: float, name: str) -> tf.Tensor:
    """``[B, dim]``: the mean of an ``Embedding(buckets, dim)``'s rows for the ids > 0 of
    each row of ``ids`` int32 ``[B, T]`` (0 pads; a row of padding gives zeros)."""
    embedded = tf_keras.layers.Embedding(
        buckets,
        dim,
        embeddings_initializer=tf_keras.initializers.RandomNormal(stddev=stddev),
        name=name,
    )(ids)
    present = tf.cast(ids > 0, tf.float32)[:, :, None]
    count = tf.maximum(tf.reduce_sum(present, axis=1), 1.0)
    return tf.reduce_sum(embedded * present, axis=1) / count


def build_item_tower(
    num_items: int,
    config: ModelConfig,
    item_genres: np.ndarray | None = None,
    item_words: np.ndarray | None = None,
) -> tf_keras.Model:
    """Item tower: input ``item`` int32 ``[B]`` -> item vectors float32 ``[B, D]``.

    The vector is a learned vector per training id plus `build_feature_encoder` over the
    item's features, which frozen lookup tables hold: ``item_genres`` (float32 ``[N, G]``
    multi-hot) and ``item_words`` (int32 ``[N, W]``, `title_word_ids`). During training
    ``config.id_dropout`` drops whole id vectors; after it, `fit_item_features` refits the
    features part so that features alone place an item: how an item the model never saw
    gets its vector.
    """
    if num_items < 1:
        raise ValueError(f"expected num_items >= 1, got {num_items}")
    genres = np.zeros((num_items, 0), np.float32) if item_genres is None else item_genres
    genres = np.asarray(genres, dtype=np.float32)
    words = (
        np.zeros((num_items, config.title_words), np.int32)
        if item_words is None
        else np.asarray(item_words, dtype=np.int32)
    )
    if genres.shape[0] != num_items or words.shape != (num_items, config.title_words):
        raise ValueError(
            f"expected item_genres with {num_items} rows and item_words of shape "
            f"({num_items}, {config.title_words}), got {genres.shape} and {words.shape}"
        )
    item = tf_keras.Input(shape=(), dtype=tf.int32, name="item")
    vector = tf_keras.layers.Embedding(
        num_items,
        config.embedding_dim,
        embeddings_initializer=tf_keras.initializers.RandomNormal(stddev=0.05),
        name=ITEM_EMBEDDING,
    )(item)
    if config.id_dropout > 0:
        vector = tf_keras.layers.Dropout(
            config.id_dropout, noise_shape=(None, 1), name="id_dropout"
        )(vector)
    features = build_feature_encoder(genres.shape[1], config)
    feature_vector = features(
        {
            "genres": _frozen_lookup(item, genres, "item_genres"),
            "words": tf.cast(
                _frozen_lookup(item, words.astype(np.float32), "item_words"), tf.int32
            ),
        }
    )
    vector = vector + feature_vector
    if config.follow_window:
        zeros = np.zeros((num_items, config.embedding_dim), np.float32)
        vector = tf.concat([vector, _frozen_lookup(item, zeros, FOLLOW_VECTORS)], axis=-1)
    return tf_keras.Model(inputs=item, outputs=vector, name="item_tower")


def _frozen_lookup(item: tf.Tensor, rows: np.ndarray, name: str) -> tf.Tensor:
    if rows.shape[1] == 0:
        return tf.zeros_like(tf.cast(item, tf.float32))[:, None] * tf.zeros([0])
    return tf_keras.layers.Embedding(
        rows.shape[0],
        rows.shape[1],
        embeddings_initializer=tf_keras.initializers.Constant(rows),
        trainable=False,
        name=name,
    )(item)


def build_sequence_encoder(config: ModelConfig, *, folded: bool = False) -> tf_keras.Model:
    """Sequence encoder: ``history`` ``[B, L, D]``, ``mask`` ``[B, L]`` -> ``[B, L, D]``.

    The output at position ``t`` depends only on positions ``<= t`` (causal), so one pass
    over a window trains next-item prediction for every prefix. Its last position is the
    user vector; :func:`user_tower_from_encoder` cuts the user tower out of it.
    ``folded``: one-head attention blocks with merged kernels (`fold_attention`, which
    fills them from a trained encoder).
    """
    length, dim = config.history_length, config.embedding_dim
    history = tf_keras.Input(shape=(length, config.table_dim), dtype=tf.float32, name="history")
    mask = tf_keras.Input(shape=(length,), dtype=tf.float32, name="mask")
    own = history[:, :, :dim] if config.follow_window else history
    if config.encoder == "attention":
        sequence = _attention_encoder(own, mask, config, folded)
    elif config.encoder == "mean":
        sequence = _mean_encoder(own, mask, config)
    elif config.encoder == "linear":
        sequence = _linear_encoder(own, mask, config)
    else:
        sequence = _gru_encoder(own, mask, config)
    if config.follow_window:
        sequence = _add_follow(sequence, history[:, :, dim:], mask, config.follow_window)
    return tf_keras.Model(
        inputs={"history": history, "mask": mask}, outputs=sequence, name="sequence_encoder"
    )


def user_tower_from_encoder(encoder: tf_keras.Model) -> tf_keras.Model:
    """User tower sharing ``encoder``'s layers: inputs ``history``, ``mask`` -> ``[B, D]``.

    The user vector is the encoder's output at the last (most recent) position. For the
    mean and linear encoders that is the layers after the mean applied to the mean of the
    whole window, built directly: the causal ``L x L`` matrix (640 KB of float32 constants
    at L = 400) and the other positions' work stay out of the shipped model.
    """
    names = [layer.name for layer in encoder.layers]
    if _MEAN_PROJECTION in names or LINEAR_PROJECTION in names:
        history, mask = encoder.input["history"], encoder.input["mask"]
        summed = tf.reduce_sum(history * mask[:, :, None], axis=1)
        vector = summed / tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)
        for name in (_MEAN_DROPOUT, _MEAN_PROJECTION, LINEAR_PROJECTION):
            if name in names:
                vector = encoder.get_layer(name)(vector)
        if _OUTPUT_NORM in names:  # built for [B, L, D]: its axis is 2
            vector = _last_position(encoder.get_layer(_OUTPUT_NORM)(vector[:, None, :]))
        return tf_keras.Model(inputs=encoder.input, outputs=vector, name="user_tower")
    user_vector = _last_position(encoder.output)
    return tf_keras.Model(inputs=encoder.input, outputs=user_vector, name="user_tower")


def _last_position(sequence: tf.Tensor) -> tf.Tensor:
    """``sequence[:, -1, :]`` without ``shrink_axis_mask``, which LiteRT's GPU accelerator and
    XNNPACK leave to the CPU: a slice that keeps the axis, then a reshape."""
    return tf.reshape(sequence[:, -1:, :], [-1, sequence.shape[-1]])


def build_user_tower(config: ModelConfig) -> tf_keras.Model:
    """A fresh user tower: ``history`` float32 ``[B, L, D]``, ``mask`` ``[B, L]`` -> ``[B, D]``."""
    return user_tower_from_encoder(build_sequence_encoder(config))


def _causal_mask(length: int) -> np.ndarray:
    # allowed[t, s] = 1 where key s is not after query t.
    return np.tril(np.ones((length, length), dtype=np.float32))


def _attention_encoder(
    history: tf.Tensor, mask: tf.Tensor, config: ModelConfig, folded: bool
) -> tf.Tensor:
    dim, heads = config.embedding_dim, config.num_heads
    head_dim = dim // heads
    if folded and heads != 1:
        raise ValueError(f"folded attention needs num_heads=1, got {heads}")
    x = SequenceEmbedding(name="sequence_embedding")([history, mask])
    x = tf_keras.layers.Dropout(config.dropout, name="input_dropout")(x)
    # [B, L, L]: a query may attend to real items that are not newer than itself. A query
    # with no allowed key (padding, empty history) gets uniform weights instead of NaN.
    allowed = _causal_mask(config.history_length)[None] * mask[:, None, :]
    logit_bias = (1.0 - allowed) * _MASKED_LOGIT
    if heads > 1:
        logit_bias = logit_bias[:, None]  # [B, 1, L, L], broadcast over heads
    for block in range(config.num_blocks):
        name = _block_name(block)
        h = tf_keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_attention_norm")(x)
        if folded:  # the key and value are h itself; the scale is in the query's kernel
            query = _per_row(tf_keras.layers.Dense(dim, name=f"{name}{_QUERY_KEY}"), h)
            weights = tf.nn.softmax(tf.matmul(query, h, transpose_b=True) + logit_bias, axis=-1)
            attended = tf.matmul(weights, h)
            output = tf_keras.layers.Dense(dim, name=f"{name}{_VALUE_OUTPUT}")
        else:
            query = _split_heads(
                _per_row(tf_keras.layers.Dense(dim, name=f"{name}_query"), h), heads
            )
            key = _split_heads(_per_row(tf_keras.layers.Dense(dim, name=f"{name}_key"), h), heads)
            value = _split_heads(
                _per_row(tf_keras.layers.Dense(dim, name=f"{name}_value"), h), heads
            )
            logits = tf.matmul(query, key, transpose_b=True) * (1.0 / math.sqrt(head_dim))
            weights = tf.nn.softmax(logits + logit_bias, axis=-1)
            attended = _merge_heads(tf.matmul(weights, value), heads, dim)
            output = tf_keras.layers.Dense(dim, name=f"{name}_output")
        attended = _per_row(output, attended)
        x = x + tf_keras.layers.Dropout(config.dropout, name=f"{name}_attention_dropout")(attended)
        h = tf_keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ffn_norm")(x)
        h = _per_row(
            tf_keras.layers.Dense(config.ffn_dim, activation="relu", name=f"{name}_ffn_in"), h
        )
        h = _per_row(tf_keras.layers.Dense(dim, name=f"{name}_ffn_out"), h)
        x = x + tf_keras.layers.Dropout(config.dropout, name=f"{name}_ffn_dropout")(h)
    return tf_keras.layers.LayerNormalization(epsilon=1e-6, name=_OUTPUT_NORM)(x)


def _block_name(block: int) -> str:
    """The prefix of attention block ``block``'s layer names."""
    return f"block{block}"


def fold_attention(encoder: tf_keras.Model, config: ModelConfig) -> tf_keras.Model:
    """``encoder`` (built from ``config``) with each block's four attention kernels merged
    into two: the same outputs from a quarter fewer tower weights, two fewer matmuls a block.

    With one head as wide as the model, a logit is ``(h Wq + bq) (h Wk + bk)ᵀ / sqrt(D)``
    and the attended row ``softmax · (h Wv + bv) Wo + bo``: only ``Wq Wkᵀ`` and ``Wv Wo``
    matter. ``bk`` adds the same amount to all of a query's logits, which softmax ignores;
    a query's weights sum to 1, so ``bv`` moves into the output bias. What is left prunes
    and quantizes as the model it computes, without two factors that each must keep it.

    Returns:
        A new encoder built with ``folded=True`` and its own weights, or ``encoder`` itself
        when there is nothing to merge (other encoders; several heads, where the merged
        kernels would be ``D x D`` per head).
    """
    if config.encoder != "attention" or config.num_heads != 1:
        return encoder
    folded = build_sequence_encoder(config, folded=True)
    own = {layer.name: layer for layer in encoder.layers}
    scale = 1.0 / math.sqrt(config.embedding_dim)
    for layer in folded.layers:
        if layer.name in own and layer.weights:
            layer.set_weights(own[layer.name].get_weights())
    for block in range(config.num_blocks):
        name = _block_name(block)
        query, query_bias = own[f"{name}_query"].get_weights()
        key, _ = own[f"{name}_key"].get_weights()
        value, value_bias = own[f"{name}_value"].get_weights()
        output, output_bias = own[f"{name}_output"].get_weights()
        folded.get_layer(f"{name}{_QUERY_KEY}").set_weights(
            [query @ key.T * scale, query_bias @ key.T * scale]
        )
        folded.get_layer(f"{name}{_VALUE_OUTPUT}").set_weights(
            [value @ output, output_bias + value_bias @ output]
        )
    return folded


def _add_follow(sequence: tf.Tensor, follow: tf.Tensor, mask: tf.Tensor, window: int) -> tf.Tensor:
    # Position t adds the follow vectors of items t, t-1, ... (weights 1, 1/2, ...; the
    # last-item baseline's) as a banded matmul, and gets zeros where the table's follow
    # columns are, so that scores stay user vector . item vector.
    length = int(sequence.shape[1])
    band = sum(np.eye(length, k=-age, dtype=np.float32) * 0.5**age for age in range(window))
    followed = tf.matmul(band[None], follow * mask[:, :, None])
    return tf.pad(sequence + followed, [[0, 0], [0, 0], [0, int(sequence.shape[2])]])


def _per_row(layer: tf_keras.layers.Layer, x: tf.Tensor) -> tf.Tensor:
    # [B, L, D] -> [B * L, D] -> layer -> [B, L, D']. A Dense layer on a 3-D input computes
    # its output shape at run time (about six shape ops each); with L known, two reshapes.
    length = int(x.shape[1])
    rows = layer(tf.reshape(x, [-1, int(x.shape[2])]))
    return tf.reshape(rows, [-1, length, int(rows.shape[-1])])


def _split_heads(x: tf.Tensor, heads: int) -> tf.Tensor:
    # [B, L, D] -> [B, H, L, D / H]; one head stays [B, L, D] (no slicing ops in the model).
    length, dim = int(x.shape[1]), int(x.shape[2])
    if heads == 1:
        return x
    x = tf.reshape(x, [-1, length, heads, dim // heads])
    return tf.transpose(x, [0, 2, 1, 3])


def _merge_heads(x: tf.Tensor, heads: int, dim: int) -> tf.Tensor:
    # [B, H, L, D / H] -> [B, L, D]
    if heads == 1:
        return x
    length = int(x.shape[2])
    x = tf.transpose(x, [0, 2, 1, 3])
    return tf.reshape(x, [-1, length, dim])


def _causal_mean(history: tf.Tensor, mask: tf.Tensor, length: int) -> tf.Tensor:
    # Causal masked mean as a matmul with a lower-triangular matrix: one float op that the
    # GPU delegate supports, unlike cumsum.
    causal = _causal_mask(length)
    summed = tf.matmul(causal[None], history * mask[:, :, None])
    counts = tf.matmul(causal[None], mask[:, :, None])
    return summed / tf.maximum(counts, 1.0)


def _linear_encoder(history: tf.Tensor, mask: tf.Tensor, config: ModelConfig) -> tf.Tensor:
    # u = mean(history vectors) @ W: scores x·Q·W·Qᵀ / |x|, a low-rank item-item model
    # in the dot-product form (training.closed_form fills Q and W).
    mean = _causal_mean(history, mask, config.history_length)
    return tf_keras.layers.Dense(config.embedding_dim, use_bias=False, name=LINEAR_PROJECTION)(mean)


def _mean_encoder(history: tf.Tensor, mask: tf.Tensor, config: ModelConfig) -> tf.Tensor:
    mean = _causal_mean(history, mask, config.history_length)
    mean = tf_keras.layers.Dropout(config.dropout, name=_MEAN_DROPOUT)(mean)
    projected = tf_keras.layers.Dense(config.embedding_dim, name=_MEAN_PROJECTION)(mean)
    return tf_keras.layers.LayerNormalization(epsilon=1e-6, name=_OUTPUT_NORM)(projected)


def _gru_encoder(history: tf.Tensor, mask: tf.Tensor, config: ModelConfig) -> tf.Tensor:
    # Right alignment puts padding first, so the GRU runs over zero rows before the real
    # items and needs no Keras mask (a bool mask breaks the GPU delegate).
    x = tf_keras.layers.Dropout(config.dropout, name="gru_dropout")(history * mask[:, :, None])
    x = tf_keras.layers.GRU(config.embedding_dim, return_sequences=True, unroll=True, name="gru")(x)
    return tf_keras.layers.LayerNormalization(epsilon=1e-6, name=_OUTPUT_NORM)(x)
