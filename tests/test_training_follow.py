"""Follow vectors (`pocketrec.training.follow`): transition counts inside the dot product."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
from _training_fixtures import tiny_model_config, tiny_split, tiny_train_config

from pocketrec.evaluation import evaluate
from pocketrec.sdk import Recommender, read_manifest
from pocketrec.training import ModelConfig, TrainedModel, export_bundle, train
from pocketrec.training.follow import (
    MIN_GAIN,
    WINDOW,
    fit_follow,
    follow_vectors,
    recent_follow,
)


@functools.cache
def plain() -> TrainedModel:
    """A tiny next-item model trained without the follow fit."""
    return train(
        tiny_split(), tiny_model_config(), tiny_train_config(objective="sequence", follow=False)
    )


@pytest.fixture(scope="module")
def followed() -> TrainedModel:
    return fit_follow(plain(), tiny_split())


def test_a_follow_vector_is_the_mean_vector_of_the_items_that_followed() -> None:
    split = dataclasses.replace(
        tiny_split(), train=[np.array(s, np.int32) for s in ([0, 1, 2], [0, 3], [1, 2])]
    )
    vectors = np.random.default_rng(0).normal(size=(split.num_items, 4)).astype(np.float32)
    follow = follow_vectors(split, vectors)
    np.testing.assert_allclose(follow[0], (vectors[1] + vectors[3]) / 2, rtol=1e-6)
    np.testing.assert_allclose(follow[1], vectors[2], rtol=1e-6)
    assert not follow[2:].any()  # nothing followed 2, 3 or any other item


def test_the_latest_items_follow_vectors_count_halving_with_age() -> None:
    follow = np.eye(5, dtype=np.float32)
    recent = recent_follow(follow, [np.array([0, 1, 2, 3]), np.array([4]), np.array([], int)])
    np.testing.assert_allclose(recent[0], [0, 0.25, 0.5, 1, 0])  # item 0 is past the window
    np.testing.assert_allclose(recent[1], [0, 0, 0, 0, 1])
    assert not recent[2].any()


def test_training_can_leave_the_follow_fit_out() -> None:
    model = plain()
    assert model.config.follow_window == 0 and "follow_vectors" not in model.train_config
    assert model.item_vectors().shape[1] == model.config.embedding_dim


def test_a_sequential_log_keeps_follow_vectors_that_gain_on_validation(
    followed: TrainedModel,
) -> None:
    record = followed.train_config["follow_vectors"]
    assert followed.config.follow_window == WINDOW and record["weight"] > 0
    assert record["tried"]["0"] == plain().best_valid_ndcg
    assert record["tried"][f"{record['weight']:g}"] >= record["tried"]["0"] * (1 + MIN_GAIN)
    # The towers reproduce what the fit measured, and the model reports it.
    split = tiny_split()
    valid = evaluate(followed.score, split, "valid").ndcg_at_10
    assert valid == pytest.approx(record["tried"][f"{record['weight']:g}"], abs=1e-6)
    assert followed.best_valid_ndcg == pytest.approx(valid, abs=1e-12)
    # The table: the item vectors, then weight x their follow vectors.
    dim = followed.config.embedding_dim
    table = followed.item_vectors()
    assert table.shape == (split.num_items, 2 * dim)
    np.testing.assert_allclose(table[:, :dim], plain().item_vectors(), rtol=1e-6)
    expected = record["weight"] * follow_vectors(split, plain().item_vectors())
    np.testing.assert_allclose(table[:, dim:], expected, rtol=1e-5, atol=1e-6)
    # User vectors are zero in the follow columns: scores stay user . item vectors.
    users = followed.user_vectors(split.histories("valid"))
    assert not users[:, dim:].any()
    assert followed.cold_start_vector is not None and not followed.cold_start_vector[dim:].any()


def test_a_log_without_transitions_leaves_the_model_as_it_was() -> None:
    split = tiny_split()
    no_pairs = dataclasses.replace(split, train=[s[-1:] for s in split.train])
    model = plain()
    assert fit_follow(model, no_pairs) is model
    assert model.train_config.pop("follow_vectors")["weight"] == 0.0
    assert model.config.follow_window == 0


def test_a_model_with_follow_vectors_saves_loads_and_ships(
    followed: TrainedModel, tmp_path: Path
) -> None:
    split = tiny_split()
    loaded = TrainedModel.load(followed.save(tmp_path / "model"))
    histories = split.histories("test")
    np.testing.assert_allclose(loaded.score(histories), followed.score(histories), atol=1e-6)
    assert loaded.best_valid_ndcg == followed.best_valid_ndcg
    bundle = export_bundle(loaded, tmp_path / "bundle", split=split)
    with Recommender.open(bundle) as recommender:
        np.testing.assert_allclose(
            recommender.score_rows(histories), followed.score(histories), atol=1e-4
        )
    manifest = read_manifest(bundle)
    assert manifest["embedding_dim"] == 2 * followed.config.embedding_dim
    assert manifest["metrics"]["valid"]["ndcg@10"] == followed.best_valid_ndcg


def test_the_cold_bench_ranks_new_users_of_a_model_with_follow_vectors(
    followed: TrainedModel,
) -> None:
    from pocketrec.benchmarks.cold_bench import new_users

    split = tiny_split()
    rankings = new_users(followed, split)
    assert set(rankings) == {"model, empty history", "cold-start vector", "popularity"}
    assert {metrics["targets"] for metrics in rankings.values()} == {int(np.sum(split.test >= 0))}


def test_follow_vectors_need_a_sequence_encoder_and_fit_the_history() -> None:
    with pytest.raises(ValueError, match="need a sequence encoder"):
        ModelConfig(encoder="mean", follow_window=3)
    with pytest.raises(ValueError, match="follow_window <= history_length"):
        ModelConfig(history_length=2, follow_window=3)
