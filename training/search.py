"""The search tower: a query encoder combined with the user vector, trained on pseudo-queries.

Personalised search scores ``r(q, u, v) = h_qᵀ M(h_u, h_v)``. With ``M`` bilinear that is a
dot product in ``h_v``, so one vector per (query, user) scores the whole item table:

    h_q = MLP(mean of the embeddings of the query's token ids)
    search_vector = W h_q + (G h_q + g) ⊙ user_vector

``W`` says what the query asks for, the gate ``G h_q + g`` how much of the user's taste each
dimension keeps (``g`` starts at 1: the user vector as step 1 used it). Token ids are the
device tokenizer's (`pocketrec.sdk._text.QueryEncoding`: hashed words and character
n-grams), so training and the device agree. The user vector comes from the trained user
tower, and the item table is frozen: bundles, their compression, the sync and the top-K
scorer are unchanged; the tower is one more small file (``search_tower.tflite``).

Training data are pseudo-queries made from the target item of each training prefix: one of
its genres, one or two words of its title, or a title word with one typo, with the prefix's
user vector. The loss is a full softmax over the frozen item table plus a softmax over the
query's lexical matches alone (those search re-ranks). A share of examples
replaces the user vector with the cold-start one (or zeros), so the tower also serves users
with no history. The prefix's own items leave the softmax, as they leave search results.

A real search log (a loader `query_col`, `pocketrec.evaluation.Split.queries`) replaces
the pseudo-query of every training event that has a logged query: the tower learns what
users really type, and events without one still get pseudo-queries, so a log where few
events came from search still trains.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
import tf_keras

from pocketrec import _log
from pocketrec.evaluation import QUERY_KINDS, Split, content_words, typo
from pocketrec.sdk import Bundle
from pocketrec.sdk._text import QueryEncoding, words
from pocketrec.sdk.search import (
    QUERY_INPUT,
    SEARCH_OUTPUT,
    SEARCH_SIGNATURE,
    SEARCH_TOWER_QUANTIZATIONS,
    USER_INPUT,
    Searcher,
    SearchSettings,
)
from pocketrec.training._trained import TrainedModel
from pocketrec.training.convert import convert_signature
from pocketrec.training.export import items_metadata
from pocketrec.training.model import mean_embedding

# Added to the logits of the prefix's items (seen by the user), which leave the softmax.
_SEEN_LOGIT = -1e9


@dataclass(frozen=True)
class SearchTowerConfig:
    """Shape and training of the search tower.

    Attributes:
        encoding: how queries become token ids (buckets size the embedding table).
        token_dim: width of the token embeddings.
        hidden_dim: width of the query MLP.
        epochs, batch_size, learning_rate: Adam over the pseudo-queries.
        examples_per_user: training prefixes drawn per user (each epoch draws new queries).
        user_dropout: share of examples whose user vector is replaced by the cold-start one.
        seed: draws prefixes, queries and initial weights.
    """

    encoding: QueryEncoding = field(default_factory=QueryEncoding)
    token_dim: int = 32
    hidden_dim: int = 64
    epochs: int = 6
    batch_size: int = 256
    learning_rate: float = 3e-3
    examples_per_user: int = 64
    user_dropout: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("token_dim", "hidden_dim", "epochs", "batch_size", "examples_per_user"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0 <= self.user_dropout < 1:
            raise ValueError(f"user_dropout must be in [0, 1), got {self.user_dropout!r}")


def build_search_tower(dim: int, config: SearchTowerConfig) -> tf_keras.Model:
    """``query`` int32 ``[B, T]`` and ``user_vector`` float32 ``[B, D]`` -> ``[B, D]``."""
    encoding = config.encoding
    query = tf_keras.Input(shape=(encoding.max_tokens,), dtype=tf.int32, name=QUERY_INPUT)
    user = tf_keras.Input(shape=(dim,), dtype=tf.float32, name=USER_INPUT)
    mean = mean_embedding(query, encoding.buckets, config.token_dim, 0.1, "query_tokens")
    hidden = tf_keras.layers.Dense(config.hidden_dim, activation="relu", name="query_hidden")(mean)
    asked = tf_keras.layers.Dense(dim, name="query_vector")(hidden)
    gate = tf_keras.layers.Dense(
        dim, kernel_initializer="zeros", bias_initializer="ones", name="user_gate"
    )(hidden)
    return tf_keras.Model(
        inputs={QUERY_INPUT: query, USER_INPUT: user},
        outputs=asked + gate * user,
        name="search_tower",
    )


def pseudo_query(title: str | None, genres: Sequence[str], rng: np.random.Generator) -> str | None:
    """A query a user looking for this item might type, of a kind drawn among those its
    metadata allows: one of its genres, one or two content words of its title, or a title
    word of 4+ letters with one typo. None when the item has no genre and no title word."""
    content = content_words(title)
    long_words = [w for w in content if len(w) >= 4]
    allowed = {"genre": bool(genres), "title": bool(content), "typo": bool(long_words)}
    kinds = [k for k in QUERY_KINDS if allowed[k]]
    if not kinds:
        return None
    chosen = kinds[int(rng.integers(0, len(kinds)))]
    if chosen == "genre":
        return str(genres[int(rng.integers(0, len(genres)))])
    if chosen == "title":
        count = min(len(content), int(rng.integers(1, 3)))
        start = int(rng.integers(0, len(content) - count + 1))
        return " ".join(content[start : start + count])
    return typo(long_words[int(rng.integers(0, len(long_words)))], rng)


@dataclass(frozen=True)
class TrainedSearchTower:
    """A trained search tower, its config, and its loss per epoch."""

    model: tf_keras.Model
    config: SearchTowerConfig
    losses: list[float]

    def vectors(self, queries: Sequence[str], user_vectors: np.ndarray) -> np.ndarray:
        """Search vectors float32 ``[B, D]`` (Keras, for evaluation before conversion)."""
        tokens = query_tokens(queries, self.config.encoding)
        users = np.asarray(user_vectors, np.float32)
        return np.asarray(self.model({QUERY_INPUT: tokens, USER_INPUT: users}, training=False))

    def tflite(self, quantization: str = "float32") -> bytes:
        """The tower as a ``.tflite`` with signature `SEARCH_SIGNATURE` (dynamic batch).

        Args:
            quantization: ``"float32"`` or ``"dynamic"`` (int8 weights, float kernels).

        Raises:
            ValueError: for another quantization.
            ConversionError: if the converter fails.
        """
        if quantization not in SEARCH_TOWER_QUANTIZATIONS:
            raise ValueError(
                f"quantization must be one of {', '.join(SEARCH_TOWER_QUANTIZATIONS)}; "
                f"got {quantization!r}"
            )
        model = self.model
        tokens, dim = self.config.encoding.max_tokens, int(model.output.shape[-1])

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, tokens], tf.int32, name=QUERY_INPUT),
                tf.TensorSpec([None, dim], tf.float32, name=USER_INPUT),
            ]
        )
        def search_vector(query: tf.Tensor, user_vector: tf.Tensor) -> dict[str, tf.Tensor]:
            out = model({QUERY_INPUT: query, USER_INPUT: user_vector}, training=False)
            return {SEARCH_OUTPUT: out}

        def configure(converter: tf.lite.TFLiteConverter) -> None:
            if quantization == "dynamic":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]

        return convert_signature(
            search_vector,
            model.variables,
            SEARCH_SIGNATURE,
            configure,
            f"converting the search tower ({quantization})",
        )


def query_tokens(queries: Sequence[str], encoding: QueryEncoding) -> np.ndarray:
    """int32 ``[B, T]``: the token ids the device computes for each query."""
    ids = [encoding.token_ids(words(q)) for q in queries]
    return np.asarray(ids, np.int32).reshape(len(queries), encoding.max_tokens)


def train_search_tower(
    trained: TrainedModel, split: Split, config: SearchTowerConfig | None = None
) -> TrainedSearchTower:
    """Trains a search tower on ``split``'s training sequences against ``trained``'s frozen
    item table and user tower.

    Raises:
        ValueError: if the split's items are not the model's.
    """
    config = config or SearchTowerConfig()
    if list(split.item_ids) != trained.item_ids.tolist():
        raise ValueError(
            f"expected the split the model was trained on ({trained.num_items} items in its "
            f"order), got one with {split.num_items} items"
        )
    rng = np.random.default_rng(config.seed)
    tf_keras.utils.set_random_seed(config.seed)
    table = trained.item_table()
    items = tf.constant(table.dequantized())
    prefixes, targets, logged = _training_prefixes(split, config.examples_per_user, rng)
    _log.LOGGER.info(
        "search tower: user vectors of %d training prefixes (%d with a logged query)",
        len(prefixes),
        sum(q is not None for q in logged),
    )
    users = trained.user_vectors(prefixes, table)
    cold = (
        np.zeros(table.dim, np.float32)
        if trained.cold_start_vector is None
        else trained.cold_start_vector
    )
    genres = [
        [trained.genre_names[g] for g in np.flatnonzero(row > 0)] for row in trained.item_genres
    ]
    # Search ranks only the lexical matches of a query: a second softmax over them alone.
    searcher = Searcher.of(
        items_metadata(trained) or [{}] * trained.num_items, SearchSettings(), None
    )
    model = build_search_tower(table.dim, config)
    optimizer = tf_keras.optimizers.Adam(config.learning_rate)

    @tf.function
    def step(
        tokens: tf.Tensor, user: tf.Tensor, target: tf.Tensor, seen: tf.Tensor, other: tf.Tensor
    ) -> tf.Tensor:
        with tf.GradientTape() as tape:
            vector = model({QUERY_INPUT: tokens, USER_INPUT: user}, training=True)
            logits = tf.matmul(vector, items, transpose_b=True) + seen
            full = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=logits)
            matched = tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=target, logits=logits + other
            )
            loss = tf.reduce_mean(full + matched)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss

    losses = []
    for epoch in range(config.epochs):
        queries = [
            query if query is not None else pseudo_query(trained.titles[t], genres[t], rng) or ""
            for t, query in zip(targets.tolist(), logged, strict=True)
        ]
        tokens = query_tokens(queries, config.encoding)
        matches = [searcher.lexical(words(q))[0] for q in queries]
        epoch_users = users.copy()
        epoch_users[rng.random(len(users)) < config.user_dropout] = cold
        order = rng.permutation(len(targets))
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            # The prefix's items are out of the softmax: search, like recommend, never
            # returns them, so the tower need not push them down.
            seen = np.zeros((len(batch), table.num_items), np.float32)
            other = np.full((len(batch), table.num_items), _SEEN_LOGIT, np.float32)
            for i, example in enumerate(batch.tolist()):
                seen[i, prefixes[example]] = _SEEN_LOGIT
                other[i, matches[example]] = 0.0
                other[i, targets[example]] = 0.0
            loss = step(tokens[batch], epoch_users[batch], targets[batch], seen, other)
            total += float(loss) * len(batch)
        losses.append(total / len(order))
        _log.LOGGER.info("search tower epoch %d: loss %.4f", epoch + 1, losses[-1])
    return TrainedSearchTower(model, config, losses)


def _training_prefixes(
    split: Split, per_user: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], np.ndarray, list[str | None]]:
    """Up to ``per_user`` (prefix, next item, its logged query or None) of each training
    sequence; events with a logged query are drawn first (they are the scarcer signal)."""
    prefixes, targets, logged = [], [], []
    logs = split.queries.train if split.queries is not None else None
    for user, sequence in enumerate(split.train):
        if len(sequence) < 2:
            continue
        queries = logs[user] if logs is not None else [None] * len(sequence)
        ends = np.arange(1, len(sequence))
        has_query = np.asarray([_usable(queries[end]) for end in ends.tolist()])
        if len(ends) > per_user and has_query.any():
            # Random order, those with a query first.
            shuffled = rng.permutation(ends)
            ranked = shuffled[np.argsort(~has_query[shuffled - 1], kind="stable")]
            ends = np.sort(ranked[:per_user])
        elif len(ends) > per_user:
            ends = np.sort(rng.choice(ends, per_user, replace=False))
        for end in ends.tolist():
            prefixes.append(sequence[:end])
            targets.append(int(sequence[end]))
            query = queries[end]
            logged.append(query if _usable(query) else None)
    return prefixes, np.asarray(targets, np.int32), logged


def _usable(query: str | None) -> bool:
    """Whether a logged query has a word the tokenizer keeps."""
    return query is not None and bool(words(query))


def add_search_tower(
    bundle: Bundle,
    trained: TrainedModel,
    split: Split,
    config: SearchTowerConfig | None = None,
    *,
    quantization: str = "float32",
) -> tuple[Bundle, TrainedSearchTower]:
    """``bundle`` with a search tower trained for it (the bundle's items must be the model's).

    Raises:
        ValueError: if the bundle holds other items than the model.
    """
    if list(bundle.item_ids) != trained.item_ids.tolist():
        raise ValueError(
            f"the bundle holds {len(bundle.item_ids)} items that are not the model's "
            f"{trained.num_items} in order; pass the bundle exported from this model"
        )
    tower = train_search_tower(trained, split, config)
    with_tower = bundle.with_search_tower(
        tower.tflite(quantization), tower.config.encoding, quantization=quantization
    )
    return with_tower, tower
