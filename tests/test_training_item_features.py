"""The item tower's features part, refitted to place items the model never saw."""

from __future__ import annotations

import numpy as np
import pytest
from _training_fixtures import tiny_model_config, tiny_split, tiny_train_config

from pocketrec.training import TrainedModel, train
from pocketrec.training.item_features import RIDGE_GRID, fit_item_features


@pytest.fixture(scope="module")
def trained() -> TrainedModel:
    return train(tiny_split(), tiny_model_config(), tiny_train_config(follow=False))


def test_training_refits_the_features_and_keeps_every_known_items_vector(
    trained: TrainedModel,
) -> None:
    assert trained.train_config["feature_ridge"] in RIDGE_GRID
    before = trained.item_vectors()
    fit_item_features(trained, tiny_split())
    np.testing.assert_allclose(trained.item_vectors(), before, atol=1e-5)


def test_a_new_item_lands_where_its_features_put_the_known_items(trained: TrainedModel) -> None:
    split = tiny_split()
    genres = split.item_genres.astype(np.float64)
    # Item vectors that are exactly a function of the genres: a new item of genre g
    # belongs at row g of `by_genre`.
    by_genre = np.random.default_rng(1).normal(size=(genres.shape[1], trained.config.embedding_dim))
    strength = fit_item_features(trained, split, genres @ by_genre)
    new = trained.feature_vectors(np.eye(genres.shape[1]), ["Brand New"] * genres.shape[1])
    cosine = np.sum(new * by_genre, axis=1) / np.linalg.norm(new, axis=1)
    cosine /= np.linalg.norm(by_genre, axis=1)
    assert strength == min(RIDGE_GRID)
    assert cosine.min() > 0.95
    np.testing.assert_allclose(trained.item_vectors(), genres @ by_genre, atol=1e-4)


def test_vectors_the_features_do_not_explain_get_the_strongest_ridge(
    trained: TrainedModel,
) -> None:
    split = tiny_split()
    noise = np.random.default_rng(2).normal(size=(split.num_items, trained.config.embedding_dim))
    assert fit_item_features(trained, split, noise) == max(RIDGE_GRID)
    new = trained.feature_vectors(split.item_genres[:5], ["Brand New"] * 5)
    # Shrunk towards zero: a new item does not pretend to know where it belongs.
    assert np.linalg.norm(new, axis=1).max() < 0.5 * np.linalg.norm(noise, axis=1).min()
    np.testing.assert_allclose(trained.item_vectors(), noise, atol=1e-4)
