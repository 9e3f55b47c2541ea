"""What the compression steps work on, and the fine-tuning loop they share.

A bundle is a user tower plus a table of item vectors. `ModelParts` holds both in
trainable form: the item tower is folded into its output table (one vector per item), so
pruning or clustering the table changes exactly the bytes that ship.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from pocketrec.compression._configs import FineTuneConfig
from pocketrec.errors import CompressionError
from pocketrec.evaluation import Split
from pocketrec.sdk.contract import HISTORY_INPUT, MASK_INPUT
from pocketrec.training.convert import user_tower_shape
from pocketrec.training.fit import make_windows, seen_pairs
from pocketrec.training.model import user_tower_from_encoder

ITEM_TABLE_LAYER = "item_table"


@dataclass(frozen=True)
class ModelParts:
    """A user tower and the item table beside it, ready to compress.

    Attributes:
        user_tower: tf_keras functional model, inputs ``history`` float32 ``[B, L, D]`` and
            ``mask`` float32 ``[B, L]``, output ``[B, D]`` (docs/architecture.md).
        item_vectors: float32 ``[N, D]``, row ``i`` = item tower output of item index ``i``.
        encoder: the sequence encoder the user tower is cut from (``[B, L, D]`` output,
            one user vector per position), when there is one: fine-tuning then predicts
            the next item at every position, as training does; otherwise it predicts the
            item after the whole history from the user tower.
        quantization_aware: the tower carries fake-quant nodes (from
            `quantization_aware`); convert it with int8 post-training quantization.
        steps: names of the steps applied so far, oldest first.
        cold_start_vector: float32 ``[D]``, the user vector of an empty history
            (`pocketrec.training.cold_start`), when the model has one.
    """

    user_tower: tf_keras.Model
    item_vectors: np.ndarray
    encoder: tf_keras.Model | None = None
    quantization_aware: bool = False
    steps: tuple[str, ...] = ()
    cold_start_vector: np.ndarray | None = None

    def __post_init__(self) -> None:
        require_tf_keras(self.user_tower)
        vectors = np.asarray(self.item_vectors)
        _, dim = user_tower_shape(self.user_tower)
        if vectors.ndim != 2 or vectors.shape[1] != dim:
            raise ValueError(
                f"expected item_vectors float32 [N, {dim}] to match the user tower's D={dim}, "
                f"got shape {list(vectors.shape)}"
            )

    @property
    def history_length(self) -> int:
        """``L``, the number of history items the user tower reads."""
        return user_tower_shape(self.user_tower)[0]

    @property
    def num_items(self) -> int:
        return int(self.item_vectors.shape[0])

    @property
    def network(self) -> tf_keras.Model:
        """What fine-tuning trains: the encoder when there is one, else the user tower."""
        return self.encoder if self.encoder is not None else self.user_tower

    def with_step(
        self,
        name: str,
        network: tf_keras.Model,
        item_vectors: np.ndarray | None = None,
        **changes: Any,
    ) -> ModelParts:
        """A copy with a new `network` (and table), ``name`` appended to `steps`."""
        if self.encoder is not None:
            changes.update(encoder=network, user_tower=user_tower_from_encoder(network))
        else:
            changes.update(user_tower=network)
        if item_vectors is not None:
            changes["item_vectors"] = item_vectors
        return replace(self, steps=(*self.steps, name), **changes)


def require_tf_keras(model: object) -> None:
    """Raise `CompressionError` unless ``model`` is a tf_keras (Keras 2) model."""
    if isinstance(model, tf_keras.Model):
        return
    kind = f"{type(model).__module__}.{type(model).__qualname__}"
    if type(model).__module__.startswith("keras"):
        raise CompressionError(
            f"expected a tf_keras (Keras 2) model, got {kind} (Keras 3). "
            "tensorflow-model-optimization only prunes, clusters and quantizes Keras 2 models: "
            "set TF_USE_LEGACY_KERAS=1 before importing TensorFlow and build the model with "
            "tf_keras (pocketrec.training does)"
        )
    raise CompressionError(f"expected a tf_keras functional model, got {kind}")


def private_copy(model: tf_keras.Model) -> tf_keras.Model:
    """A clone of ``model`` with its own layers and a copy of its weights.

    Raises `CompressionError` naming the layer that cannot be rebuilt from its config.
    """
    current: list[str] = []

    def clone(layer: tf_keras.layers.Layer) -> tf_keras.layers.Layer:
        current[:] = [f"{layer.name} ({type(layer).__name__})"]
        return layer.__class__.from_config(layer.get_config())

    try:
        cloned = tf_keras.models.clone_model(model, clone_function=clone)
    except (TypeError, ValueError, NotImplementedError) as error:
        where = current[0] if current else model.name
        raise CompressionError(
            f"cannot rebuild layer {where} of {model.name!r} from its config: {error}. "
            "Give the layer a get_config() that returns its constructor arguments and "
            "register it with tf_keras.saving.register_keras_serializable()"
        ) from error
    copy_weights(model, cloned)
    return cloned


def rewrap(
    model: tf_keras.Model, wrap: Callable[[tf_keras.layers.Layer], tf_keras.layers.Layer]
) -> tf_keras.Model:
    """A model over ``model``'s own layers with ``wrap`` applied to each (tfmot wrappers).

    The layers are shared, not copied: pass a `private_copy`.
    """
    return tf_keras.models.clone_model(model, clone_function=wrap)


def copy_weights(source: tf_keras.Model, target: tf_keras.Model) -> None:
    """Copies weights layer by layer (matched by name) from ``source`` into ``target``."""
    by_name = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        if layer.weights:
            layer.set_weights(by_name[layer.name].get_weights())


# Layer type -> names of the weights a tfmot registry acts on (e.g. ``("kernel",)``).
WeightRegistry = dict[type, tuple[str, ...]]


def in_registry(layer: tf_keras.layers.Layer, registry: WeightRegistry, min_weights: int) -> bool:
    """Whether ``layer`` is of a type in ``registry`` with at least ``min_weights`` weights."""
    return type(layer) in registry and layer.count_params() >= min_weights


def registry_weights(
    network: tf_keras.Model, registry: WeightRegistry, min_weights: int
) -> list[tuple[str, np.ndarray]]:
    """``("layer/weight", values)`` of each weight of ``network`` that ``registry`` names."""
    found = []
    for layer in network.layers:
        if not in_registry(layer, registry, min_weights):
            continue
        for weight in layer.weights:
            short = weight.name.split("/")[-1].split(":")[0]
            if short in registry[type(layer)]:
                found.append((f"{layer.name}/{short}", weight.numpy()))
    return found


def parts_from_stripped(
    parts: ModelParts, step: str, stripped: tf_keras.Model, network_name: str
) -> ModelParts:
    """New parts from a fine-tuning model whose tfmot wrappers were stripped.

    The network inside ``stripped`` (called ``network_name``) is copied into a private
    copy of ``parts.network`` with its original layers; the table comes from the stripped
    `ITEM_TABLE_LAYER`.
    """
    network = private_copy(parts.network)
    copy_weights(stripped.get_layer(network_name), network)
    table = stripped.get_layer(ITEM_TABLE_LAYER).get_weights()[0].astype(np.float32)
    return parts.with_step(step, network, table)


def window_batches(
    split: Split, history_length: int, batch_size: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless shuffled batches of training windows (`pocketrec.training.make_windows`).

    Yields:
        items int32 ``[B, L]`` (0 at padding) and targets int32 ``[B, L]``, the next item
        at each position (-1 at padding); the last position is always a real one.
    """
    items, targets = make_windows(split.train, history_length, max(1, history_length // 2))
    if len(items) == 0:
        raise CompressionError(
            "fine-tuning needs users with at least 2 train items; the split has none"
        )
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(items))
        for start in range(0, len(order) - batch_size + 1, batch_size) or [0]:
            chosen = order[start : start + batch_size]
            yield items[chosen], targets[chosen]


def build_fine_tune_model(
    network: tf_keras.Model, table: tf_keras.layers.Layer, history_length: int
) -> tf_keras.Model:
    """items int32 ``[B, L]``, mask ``[B, L]`` -> ``network``'s output for their vectors.

    The history vectors come from ``table``, which also scores the items (in `fine_tune`),
    as on the device where both come from the shipped table.
    """
    rows = tf_keras.Input((history_length,), dtype=tf.int32, name="items")
    mask = tf_keras.Input((history_length,), dtype=tf.float32, name=MASK_INPUT)
    history = table(rows) * mask[:, :, None]
    outputs = network({HISTORY_INPUT: history, MASK_INPUT: mask})
    return tf_keras.Model([rows, mask], outputs, name="fine_tune")


def item_table_layer(parts: ModelParts, *, trainable: bool) -> tf_keras.layers.Embedding:
    """An Embedding initialised from ``parts.item_vectors`` (the folded item tower)."""
    return tf_keras.layers.Embedding(
        parts.num_items,
        parts.item_vectors.shape[1],
        embeddings_initializer=tf_keras.initializers.Constant(
            np.asarray(parts.item_vectors, dtype=np.float32)
        ),
        trainable=trainable,
        name=ITEM_TABLE_LAYER,
    )


def fine_tune(
    parts: ModelParts,
    network: tf_keras.Model,
    table: tf_keras.layers.Layer,
    split: Split,
    config: FineTuneConfig,
    callbacks: list[tf_keras.callbacks.Callback] | None = None,
) -> tf_keras.Model:
    """Trains ``network`` (and ``table``) on the next-item objective of training.

    Softmax cross-entropy over every item of the next item, at every position of the
    training windows when ``parts`` has an encoder, else at the last one; the items already
    in the window are not candidates, as in training (``TrainConfig.exclude_seen``). ``callbacks``
    (e.g. tfmot's ``UpdatePruningStep``) get ``on_train_begin``, ``on_train_batch_begin``
    per step and ``on_epoch_end``. Like training, it turns on TensorFlow's op determinism
    for the rest of the process.

    Returns:
        The fine-tuning model (``table`` and ``network`` inside it, trained in place).
    """
    sequence = parts.encoder is not None
    model = build_fine_tune_model(network, table, parts.history_length)
    all_items = tf.range(parts.num_items)
    tf.random.set_seed(config.seed)
    # Deterministic kernels sum in another order than the default ones: without them a
    # fresh process and one that trained first would fine-tune to different weights.
    tf.config.experimental.enable_op_determinism()
    optimizer = tf_keras.optimizers.Adam(config.learning_rate)

    window = tf.TensorSpec([None, parts.history_length], tf.int32)

    # A fixed signature: the seen pairs change in number every batch, which would otherwise
    # trace a new graph per step.
    @tf.function(input_signature=[window, window, tf.TensorSpec([None, 2], tf.int32)])
    def step(items: tf.Tensor, targets: tf.Tensor, seen: tf.Tensor) -> tf.Tensor:
        mask = tf.cast(targets >= 0, tf.float32)
        with tf.GradientTape() as tape:
            outputs = model([items, mask], training=True)
            vectors = table(all_items, training=True)
            if sequence:
                real = targets >= 0
                outputs, labels = tf.boolean_mask(outputs, real), tf.boolean_mask(targets, real)
            else:
                labels = targets[:, -1]
            logits = tf.matmul(outputs, vectors, transpose_b=True)
            logits = tf.tensor_scatter_nd_update(logits, seen, tf.fill([tf.shape(seen)[0]], -1e9))
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            )
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    callback_list = tf_keras.callbacks.CallbackList(callbacks or [], model=model)
    batches = window_batches(split, parts.history_length, config.batch_size, config.seed)
    callback_list.on_train_begin()
    loss = 0.0
    for index in range(config.steps):
        callback_list.on_train_batch_begin(index)
        items, targets = next(batches)
        seen = seen_pairs(items, targets) if sequence else _window_items(items, targets)
        loss = float(step(tf.constant(items), tf.constant(targets), tf.constant(seen)))
        if not np.isfinite(loss):
            raise CompressionError(
                f"fine-tuning diverged at step {index} (loss {loss}); lower "
                "FineTuneConfig.learning_rate"
            )
    callback_list.on_epoch_end(0)
    return model


def _window_items(items: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(window, item) pairs of each window's real items: seen when predicting its last."""
    rows, columns = np.nonzero(targets >= 0)
    return np.stack([rows, items[rows, columns]], axis=1).astype(np.int32)
