"""Tiny user towers and bundles for the SDK tests.

TensorFlow is imported only inside the builders, once per process (results are cached),
so SDK tests that need no model never pay for it.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pocketrec.sdk import ItemTable, write_bundle

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HISTORY_LENGTH = 5
DIM = 8
NUM_ITEMS = 40
GENRES = ("Action", "Comedy", "Drama")


@dataclass(frozen=True)
class TinyTower:
    """A converted user tower and the Keras model it came from."""

    tflite: bytes
    keras_model: Any

    def keras_user_vectors(self, history: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The Keras model's output float32 ``[B, D]``."""
        return np.asarray(self.keras_model({"history": history, "mask": mask}), np.float32)


def _tf() -> Any:
    import tensorflow as tf

    return tf


def _convert(fn: Any, module: Any) -> bytes:
    """SavedModel with ``signatures={"user_vector": fn}`` → ``.tflite`` bytes."""
    tf = _tf()
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures={"user_vector": fn})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["user_vector"])
        return converter.convert()


@functools.cache
def user_tower() -> TinyTower:
    """Masked mean of the history, then a Dense layer: the contract with a dynamic batch."""
    tf = _tf()
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    history = keras.Input((HISTORY_LENGTH, DIM), name="history")
    mask = keras.Input((HISTORY_LENGTH,), name="mask")

    def masked_mean(inputs: list[Any]) -> Any:
        values, weights = inputs
        total = tf.reduce_sum(values * weights[..., None], axis=1)
        # max(count, 1) keeps an empty history (all-zero mask) finite.
        count = tf.maximum(tf.reduce_sum(weights, axis=1, keepdims=True), 1.0)
        return total / count

    mean = keras.layers.Lambda(masked_mean)([history, mask])
    # A random bias gives an empty history its own, non-zero user vector.
    user = keras.layers.Dense(
        DIM, activation="tanh", bias_initializer="random_normal", name="user_vector"
    )(mean)
    model = keras.Model({"history": history, "mask": mask}, user)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, HISTORY_LENGTH, DIM], tf.float32, name="history"),
            tf.TensorSpec([None, HISTORY_LENGTH], tf.float32, name="mask"),
        ]
    )
    def serve(history: Any, mask: Any) -> dict[str, Any]:
        return {"user_vector": model({"history": history, "mask": mask})}

    module = tf.Module()
    module.model = model
    return TinyTower(_convert(serve, module), model)


@functools.cache
def fixed_batch_tower() -> tuple[bytes, TinyTower]:
    """The same math as `user_tower` but converted with batch 1 and a batch-1 reshape.

    Returns the ``.tflite`` (which cannot be resized to a larger batch) and the dynamic
    tower it mirrors.
    """
    tf = _tf()
    reference = user_tower()

    @tf.function(
        input_signature=[
            tf.TensorSpec([1, HISTORY_LENGTH, DIM], tf.float32, name="history"),
            tf.TensorSpec([1, HISTORY_LENGTH], tf.float32, name="mask"),
        ]
    )
    def serve(history: Any, mask: Any) -> dict[str, Any]:
        flat = tf.reshape(history, [1, HISTORY_LENGTH * DIM])
        restored = tf.reshape(flat, [1, HISTORY_LENGTH, DIM])
        return {"user_vector": reference.keras_model({"history": restored, "mask": mask})}

    module = tf.Module()
    module.model = reference.keras_model
    return _convert(serve, module), reference


@functools.cache
def wrong_signature_tower() -> bytes:
    """A model whose signature is ``user_vector`` but whose inputs are ``items``/``weights``."""
    tf = _tf()

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, HISTORY_LENGTH, DIM], tf.float32, name="items"),
            tf.TensorSpec([None, HISTORY_LENGTH], tf.float32, name="weights"),
        ]
    )
    def serve(items: Any, weights: Any) -> dict[str, Any]:
        return {"user_vector": tf.reduce_sum(items * weights[..., None], axis=1)}

    return _convert(serve, tf.Module())


@functools.cache
def nan_on_empty_tower() -> bytes:
    """A masked mean that divides by the raw count: NaN for an all-zero mask."""
    tf = _tf()

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, HISTORY_LENGTH, DIM], tf.float32, name="history"),
            tf.TensorSpec([None, HISTORY_LENGTH], tf.float32, name="mask"),
        ]
    )
    def serve(history: Any, mask: Any) -> dict[str, Any]:
        total = tf.reduce_sum(history * mask[..., None], axis=1)
        return {"user_vector": total / tf.reduce_sum(mask, axis=1, keepdims=True)}

    return _convert(serve, tf.Module())


def item_vectors(num_items: int = NUM_ITEMS, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """Random float32 ``[num_items, dim]`` item vectors."""
    return np.random.default_rng(seed).standard_normal((num_items, dim)).astype(np.float32)


def item_ids(num_items: int = NUM_ITEMS) -> list[str]:
    """External ids ``"m0"``, ``"m1"``, ... (deliberately not row numbers)."""
    return [f"m{i}" for i in range(num_items)]


def items_metadata(num_items: int = NUM_ITEMS) -> list[dict[str, Any]]:
    """A title and one genre per item."""
    return [{"title": f"Movie {i}", "genres": [GENRES[i % 3]]} for i in range(num_items)]


def write_tiny_bundle(out_dir: Path, *, dtype: str = "float32", **kwargs: Any) -> Path:
    """A bundle of the tiny tower with a ``dtype`` item table of `NUM_ITEMS` items."""
    arguments: dict[str, Any] = {
        "model": user_tower().tflite,
        "table": ItemTable.quantize(item_vectors(), dtype),
        "item_ids": item_ids(),
        "history_length": HISTORY_LENGTH,
        "items_metadata": items_metadata(),
        "metrics": {"recall@10": 0.5},
    }
    arguments.update(kwargs)
    return write_bundle(out_dir, **arguments)


def run_in_threads(work: Callable[[int], None], count: int) -> list[BaseException]:
    """Runs ``work(t)`` for ``t`` in ``range(count)``, one thread each; returns what they raised."""
    errors: list[BaseException] = []

    def guarded(t: int) -> None:
        try:
            work(t)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors
