"""Tiny data, a tiny trained model and odd models for the compression tests."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import dataclasses

import numpy as np
import tensorflow as tf
import tf_keras

from pocketrec.compression import FineTuneConfig, Recipe
from pocketrec.data import synthetic
from pocketrec.evaluation import Split, leave_last_out
from pocketrec.training import ModelConfig, TrainConfig, TrainedModel
from pocketrec.training.fit import train

# The CLI test rebuilds this split from `--synthetic USERS --synthetic-items N --seed S`.
USERS, ITEMS, SEED = 150, 60, 0
MODEL_CONFIG = ModelConfig(embedding_dim=32, history_length=8, ffn_dim=64, dropout=0.1)
FINE_TUNE = FineTuneConfig(steps=12, batch_size=32)


def tiny_split() -> Split:
    """About 150 users over 60 items, with sequential structure to learn."""
    return leave_last_out(synthetic(num_users=USERS, num_items=ITEMS, seed=SEED))


def tiny_trained(split: Split) -> TrainedModel:
    """An attention dual encoder (D=32, L=8) trained for two epochs: a few seconds."""
    return train(
        split,
        MODEL_CONFIG,
        TrainConfig(epochs=2, batch_size=64, seed=SEED, progress=False, objective="sequence"),
    )


def quick(recipe: Recipe) -> Recipe:
    """``recipe`` with a fine-tuning short enough for tests."""
    clustering = None if recipe.cluster_fine_tune is None else FINE_TUNE
    return dataclasses.replace(recipe, fine_tune=FINE_TUNE, cluster_fine_tune=clustering)


def keras3_user_tower(length: int = 8, dim: int = 32) -> object:
    """A Keras 3 model with the contract's inputs: what tfmot cannot prune."""
    import keras

    history = keras.Input((length, dim), name="history")
    mask = keras.Input((length,), name="mask")
    pooled = keras.layers.GlobalAveragePooling1D()(history)
    return keras.Model({"history": history, "mask": mask}, keras.layers.Dense(dim)(pooled))


class ScaledDense(tf_keras.layers.Layer):
    """A custom layer with an array argument and no get_config: it cannot be cloned."""

    def __init__(self, scale: np.ndarray, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.scale = scale
        self.dense = tf_keras.layers.Dense(len(scale))

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return self.scale * self.dense(inputs)


def uncloneable_user_tower(length: int = 8, dim: int = 32) -> tf_keras.Model:
    """A tf_keras user tower with a `ScaledDense` layer named ``scaled``."""
    history = tf_keras.Input((length, dim), name="history")
    mask = tf_keras.Input((length,), name="mask")
    pooled = tf.reduce_sum(history * mask[:, :, None], axis=1)
    return tf_keras.Model(
        {"history": history, "mask": mask},
        ScaledDense(np.full(dim, 2.0, np.float32), name="scaled")(pooled),
    )


def random_vectors(num_items: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    """float32 ``[num_items, dim]`` item vectors."""
    return np.random.default_rng(seed).normal(0, 0.1, (num_items, dim)).astype(np.float32)
