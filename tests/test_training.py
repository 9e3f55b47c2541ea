"""Dual encoder, training loop, save/load and export, on tiny synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _training_fixtures import (
    DIM,
    HISTORY_LENGTH,
    random_inputs,
    tiny_model_config,
    tiny_split,
    tiny_train_config,
)

from pocketrec.errors import DataError
from pocketrec.evaluation import EASE, BaselineResult, Popularity, evaluate, run_baselines
from pocketrec.sdk import Recommender, encode_histories, read_manifest
from pocketrec.training import (
    SEARCH_SPACE,
    ModelConfig,
    TrainConfig,
    TrainedModel,
    build_item_tower,
    build_sequence_encoder,
    build_user_tower,
    export_bundle,
    make_windows,
    title_word_ids,
    train,
    tune,
    user_tower_from_encoder,
)
from pocketrec.training.item_features import RIDGE_GRID
from pocketrec.training.model import fold_attention
from pocketrec.training.pipeline import baseline_lead


@pytest.fixture(scope="module")
def tensorboard_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tensorboard")


@pytest.fixture(scope="module")
def trained(tensorboard_dir: Path) -> TrainedModel:
    """One tiny model for the module: 6 epochs, patience 2."""
    config = tiny_train_config(epochs=6, patience=2, tensorboard_dir=str(tensorboard_dir))
    return train(tiny_split(), tiny_model_config(), config)


def test_windows_right_align_each_input_with_the_item_that_follows_it() -> None:
    sequence = np.arange(10, 18, dtype=np.int32)  # 8 items: 7 (input, next) pairs
    items, targets = make_windows([sequence, np.array([5, 6, 7], np.int32)], length=4, stride=2)
    # Windows end at the newest input and every 2 inputs before it, until one reaches the
    # oldest input; the short sequence is padded on the left.
    np.testing.assert_array_equal(
        items, [[13, 14, 15, 16], [11, 12, 13, 14], [0, 10, 11, 12], [0, 0, 5, 6]]
    )
    np.testing.assert_array_equal(
        targets, [[14, 15, 16, 17], [12, 13, 14, 15], [-1, 11, 12, 13], [-1, -1, 6, 7]]
    )


def test_windows_skip_sequences_without_a_next_item() -> None:
    items, targets = make_windows([np.array([3], np.int32)], length=4, stride=4)
    assert items.shape == targets.shape == (0, 4)


def test_config_rejects_heads_that_do_not_divide_the_dimension() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        ModelConfig(embedding_dim=10, num_heads=3)


def test_train_config_rejects_unknown_loss() -> None:
    with pytest.raises(ValueError, match="loss"):
        TrainConfig(loss="hinge").validate()


def test_configs_reject_an_unknown_objective_and_out_of_range_item_features() -> None:
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(objective="pairs").validate()
    with pytest.raises(ValueError, match="id_dropout"):
        ModelConfig(id_dropout=1.0)
    with pytest.raises(ValueError, match="title_buckets"):
        ModelConfig(title_buckets=1)
    with pytest.raises(ValueError, match="title_words"):
        ModelConfig(title_words=0)


@pytest.mark.parametrize("encoder", ["attention", "mean", "gru", "linear"])
def test_user_tower_gives_finite_vectors_for_empty_histories(encoder: str) -> None:
    tower = build_user_tower(tiny_model_config(encoder=encoder))
    history = np.zeros((3, HISTORY_LENGTH, DIM), np.float32)
    mask = np.zeros((3, HISTORY_LENGTH), np.float32)
    vectors = np.asarray(tower({"history": history, "mask": mask}))
    assert vectors.shape == (3, DIM)
    assert np.isfinite(vectors).all()


@pytest.mark.parametrize("encoder", ["attention", "mean", "gru", "linear"])
def test_user_tower_is_the_encoders_last_position(encoder: str) -> None:
    # The mean and linear towers pool the window directly instead of slicing the causal
    # encoder; both must give the same vector.
    encoder_model = build_sequence_encoder(tiny_model_config(encoder=encoder))
    tower = user_tower_from_encoder(encoder_model)
    history, mask = random_inputs(HISTORY_LENGTH + 1, HISTORY_LENGTH, DIM)
    inputs = {"history": history, "mask": mask}
    np.testing.assert_allclose(
        np.asarray(tower(inputs)), np.asarray(encoder_model(inputs))[:, -1], atol=1e-5
    )


@pytest.mark.parametrize("encoder", ["attention", "mean", "gru", "linear"])
def test_encoder_output_at_a_position_ignores_later_items(encoder: str) -> None:
    encoder_model = build_sequence_encoder(tiny_model_config(encoder=encoder))
    history, mask = random_inputs(4, HISTORY_LENGTH, DIM)
    mask[:] = 1.0
    changed = history.copy()
    changed[:, 5:] += 1.0
    before = np.asarray(encoder_model({"history": history, "mask": mask}))
    after = np.asarray(encoder_model({"history": changed, "mask": mask}))
    np.testing.assert_allclose(before[:, :5], after[:, :5], atol=1e-5)
    assert not np.allclose(before[:, 5:], after[:, 5:])


def test_attention_user_vector_ignores_padding_rows() -> None:
    tower = build_user_tower(tiny_model_config())
    history, mask = random_inputs(HISTORY_LENGTH + 1, HISTORY_LENGTH, DIM)
    noisy = history + (1.0 - mask)[:, :, None] * 5.0
    np.testing.assert_allclose(
        np.asarray(tower({"history": history, "mask": mask})),
        np.asarray(tower({"history": noisy, "mask": mask})),
        atol=1e-4,
    )


@pytest.mark.parametrize("follow_window", [0, 2])
def test_folding_the_attention_keeps_every_position_with_fewer_weights(follow_window: int) -> None:
    config = tiny_model_config(num_heads=1, num_blocks=2, follow_window=follow_window)
    encoder = build_sequence_encoder(config)
    rng = np.random.default_rng(0)
    for layer in encoder.layers:  # fresh biases are zeros: give every weight a value
        layer.set_weights([w + rng.normal(0.0, 0.3, w.shape) for w in layer.get_weights()])
    weights = encoder.get_weights()
    history, mask = random_inputs(HISTORY_LENGTH + 1, HISTORY_LENGTH, config.table_dim)
    inputs = {"history": history, "mask": mask}

    folded = fold_attention(encoder, config)

    np.testing.assert_allclose(np.asarray(folded(inputs)), np.asarray(encoder(inputs)), atol=1e-4)
    # Per block, two D x D kernels and two biases fewer.
    merged = 2 * config.num_blocks * (DIM * DIM + DIM)
    assert folded.count_params() == encoder.count_params() - merged
    for before, after in zip(weights, encoder.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("changes", [{"encoder": "mean"}, {"encoder": "gru"}, {"num_heads": 2}])
def test_folding_leaves_encoders_without_one_head_attention_alone(changes: dict) -> None:
    config = tiny_model_config(**changes)
    encoder = build_sequence_encoder(config)
    assert fold_attention(encoder, config) is encoder
    if "num_heads" in changes:
        with pytest.raises(ValueError, match="num_heads=1"):
            build_sequence_encoder(config, folded=True)


def test_item_tower_adds_genres_and_title_words_only_when_asked() -> None:
    split = tiny_split()

    def feature_layers(**changes: object) -> list[str]:
        tower = build_item_tower(split.num_items, tiny_model_config(**changes), split.item_genres)
        assert tower(np.arange(4, dtype=np.int32)).shape == (4, DIM)
        return [layer.name for layer in tower.get_layer("feature_encoder").layers]

    assert {"genre_projection", "title_words"} <= set(feature_layers())
    assert "genre_projection" not in feature_layers(use_genres=False)
    assert "title_words" not in feature_layers(use_titles=False)


def test_title_words_hash_stably_into_buckets_and_pad_with_zero() -> None:
    config = tiny_model_config(title_buckets=64, title_words=4)
    ids = title_word_ids(["Toy Story (1995)", "toy STORY", None, "a b c d e f"], config)
    assert ids.shape == (4, 4) and ids.dtype == np.int32
    assert (ids[0, :2] == ids[1, :2]).all() and ids[0, 2] > 0 and ids[1, 2] == 0
    assert (ids[2] == 0).all() and (ids[3] > 0).all()
    assert ids.max() < 64 and (title_word_ids(["Toy Story (1995)"], config) == ids[:1]).all()


def test_trained_model_scores_every_item_from_the_float32_table(trained: TrainedModel) -> None:
    split = tiny_split()
    histories = split.histories("valid")[:5]
    vectors = trained.item_vectors()
    table_dim = trained.config.table_dim
    assert vectors.shape == (split.num_items, table_dim) and vectors.dtype == np.float32
    history, mask = encode_histories(trained.item_table(), histories, HISTORY_LENGTH)
    users = np.asarray(trained.user_tower({"history": history, "mask": mask}))
    scores = trained.score(histories)
    assert scores.shape == (5, split.num_items) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, users @ vectors.T, rtol=1e-5, atol=1e-5)


def test_training_learns_more_than_popularity(trained: TrainedModel) -> None:
    split = tiny_split()
    popularity = Popularity()
    popularity.fit(split)
    model = evaluate(trained.score, split, "valid").ndcg_at_10
    assert model > evaluate(popularity.score, split, "valid").ndcg_at_10


def test_training_keeps_the_best_validation_epoch(trained: TrainedModel) -> None:
    history = trained.history
    best = int(np.argmax([record["valid/ndcg@10"] for record in history]))
    assert trained.best_epoch == history[best]["epoch"]
    assert trained.train_config["follow_vectors"]["tried"]["0"] == history[best]["valid/ndcg@10"]
    restored = evaluate(trained.score, tiny_split(), "valid").ndcg_at_10
    assert restored == pytest.approx(trained.best_valid_ndcg, abs=1e-9)
    # Stopped after `patience` epochs without improvement, or at the last epoch.
    assert len(history) == 6 or len(history) == trained.best_epoch + 2


def test_training_writes_tensorboard_scalars(trained: TrainedModel, tensorboard_dir: Path) -> None:
    import tensorflow as tf

    files = list(tensorboard_dir.glob("events.out.tfevents.*"))
    assert files
    tags: dict[str, list[int]] = {}
    for file in files:
        for event in tf.compat.v1.train.summary_iterator(str(file)):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    assert tags["train/loss"] == [record["epoch"] for record in trained.history]
    assert "valid/ndcg@10" in tags and "valid/hr@10" in tags


def test_same_seed_gives_same_weights_and_another_seed_does_not() -> None:
    split = tiny_split()

    def weights(seed: int) -> list[np.ndarray]:
        model = train(split, tiny_model_config(), tiny_train_config(epochs=1, seed=seed))
        return model.item_tower.get_weights() + model.encoder.get_weights()

    first, again, other = weights(3), weights(3), weights(4)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_small_catalog_uses_full_softmax_and_large_one_in_batch_softmax() -> None:
    split = tiny_split()
    full = train(split, tiny_model_config(), tiny_train_config(epochs=1))
    sampled = train(
        split, tiny_model_config(), tiny_train_config(epochs=1, full_softmax_max_items=10)
    )
    assert full.train_config["softmax"] == "full"
    assert sampled.train_config["softmax"] == "sampled"
    assert np.isfinite(sampled.history[0]["train/loss"])
    assert np.isfinite(sampled.score(split.histories("valid")[:3])).all()


def test_save_and_load_give_the_same_scores(trained: TrainedModel, tmp_path: Path) -> None:
    histories = tiny_split().histories("test")[:7]
    loaded = TrainedModel.load(trained.save(tmp_path / "model"))
    np.testing.assert_array_equal(loaded.score(histories), trained.score(histories))
    assert loaded.config == trained.config
    assert loaded.history == trained.history
    assert loaded.item_ids.tolist() == trained.item_ids.tolist()
    assert loaded.titles == trained.titles


def test_load_refuses_a_directory_without_a_model(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a saved pocketrec model"):
        TrainedModel.load(tmp_path)


def test_exported_bundle_scores_like_the_trained_model(
    trained: TrainedModel, tmp_path: Path
) -> None:
    split = tiny_split()
    bundle = export_bundle(trained, tmp_path / "bundle", split=split)
    histories = split.histories("test")
    with Recommender.open(bundle) as recommender:
        np.testing.assert_allclose(
            recommender.score_rows(histories), trained.score(histories), atol=1e-4
        )
    manifest = read_manifest(bundle)
    assert manifest["history_length"] == HISTORY_LENGTH
    assert manifest["table"]["dtype"] == "float32"
    assert manifest["metrics"]["valid"]["ndcg@10"] == pytest.approx(trained.best_valid_ndcg)
    items = json.loads((bundle / "items.json").read_text())
    assert "genre" in json.dumps(items)


def test_auto_objective_trains_sequence_and_ease_and_keeps_the_best_on_validation() -> None:
    model = train(tiny_split(), tiny_model_config(), tiny_train_config(objective="auto", epochs=2))
    candidates = model.train_config["objective_candidates"]
    assert set(candidates) == {"sequence", "ease"}
    assert set(model.train_config["objective_seconds"]) == {"sequence", "ease"}
    chosen = max(candidates, key=candidates.get)
    assert model.best_valid_ndcg == candidates[chosen]
    encoders = {"sequence": "attention", "set": "mean", "ease": "linear"}
    assert model.config.encoder == encoders[chosen]
    assert model.train_config["objective"] == chosen


def test_auto_objective_trains_the_set_model_when_ease_cannot_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No memory for EASE: the set model is the order-free candidate instead.
    monkeypatch.setattr("pocketrec.evaluation._baselines.MEMORY_SHARE", 0.0)
    model = train(tiny_split(), tiny_model_config(), tiny_train_config(objective="auto", epochs=1))
    assert set(model.train_config["objective_candidates"]) == {"sequence", "set"}
    assert set(model.train_config["objective_seconds"]) == {"sequence", "ease", "set"}


def test_ease_objective_at_full_rank_ranks_as_ease_does() -> None:
    # With rank = catalog size and L = the longest history, the linear tower's scores are
    # EASE's divided by the history length: the same ranking for every user.
    split = tiny_split()
    longest = max(len(items) for items in split.histories("test"))
    config = tiny_model_config(embedding_dim=split.num_items, history_length=longest)
    model = train(split, config, tiny_train_config(objective="ease"))
    assert model.config.encoder == "linear"
    ease = EASE()
    ease.fit(split, l2=model.train_config["ease_l2"])
    histories = split.histories("test")
    expected = ease.score(histories) / np.array([[len(h)] for h in histories])
    np.testing.assert_allclose(model.score(histories), expected, atol=2e-4)
    assert evaluate(model.score_fn(), split, "valid").ndcg_at_10 == pytest.approx(
        model.best_valid_ndcg
    )
    # The table is the orthonormal eigenbasis; the features were fitted into it.
    table = model.item_vectors()
    np.testing.assert_allclose(table.T @ table, np.eye(split.num_items), atol=1e-4)
    features = model.feature_vectors(split.item_genres, split.titles)
    assert np.abs(features).sum() > 0 and not np.allclose(features, table)


def test_ease_objective_picks_rank_and_ridge_on_validation() -> None:
    split = tiny_split()
    model = train(split, tiny_model_config(), tiny_train_config(objective="ease"))
    assert model.train_config["rank"] in (DIM // 4, DIM // 2, DIM)
    assert model.train_config["feature_ridge"] in RIDGE_GRID
    assert model.config.embedding_dim == model.train_config["rank"]
    assert model.cold_start_vector is not None
    assert model.cold_start_vector.shape == (model.config.embedding_dim,)


def test_seen_items_of_each_position_are_the_windows_items_up_to_it() -> None:
    from pocketrec.training.fit import seen_pairs

    items = np.array([[0, 0, 4, 7, 9], [3, 5, 6, 2, 1]], np.int32)
    targets = np.array([[-1, -1, 7, 9, 8], [5, 6, 2, 1, 0]], np.int32)
    pairs = {tuple(p) for p in seen_pairs(items, targets).tolist()}
    # Window 0 has 3 real positions (rows 0-2 of the logits), window 1 five (rows 3-7).
    assert {(0, 4), (1, 4), (1, 7), (2, 4), (2, 7), (2, 9)} <= pairs
    assert (0, 7) not in pairs and (3, 3) in pairs and (7, 2) in pairs and (3, 5) not in pairs
    assert len(pairs) == 6 + 15


def test_tune_with_no_budget_is_the_default_training() -> None:
    split = tiny_split()
    config = tiny_train_config(epochs=1)
    tuned = tune(split, 0.0, tiny_model_config(), config)
    plain = train(split, tiny_model_config(), config)
    (trial,) = tuned.train_config["tune"]["trials"]
    assert trial["changes"] == {}
    assert trial["valid_ndcg@10"] == pytest.approx(plain.best_valid_ndcg)
    np.testing.assert_allclose(tuned.item_vectors(), plain.item_vectors(), atol=1e-6)


def test_tune_keeps_the_best_trial_on_validation() -> None:
    # A small space and a budget no machine exhausts: the trials do not depend on speed.
    space = {"dropout": (0.1, 0.2, 0.3)}
    model = tune(tiny_split(), 3600.0, tiny_model_config(), tiny_train_config(epochs=1), space)
    trials = model.train_config["tune"]["trials"]
    assert len(trials) == 3
    changes = [json.dumps(trial["changes"], sort_keys=True) for trial in trials]
    assert len(set(changes)) == len(changes)
    best = max(trials, key=lambda trial: trial["valid_ndcg@10"])
    assert model.best_valid_ndcg == pytest.approx(best["valid_ndcg@10"])
    for name, value in best["changes"].items():
        assert name in SEARCH_SPACE["sequence"]
        field = name.removeprefix("train.")
        kept = (
            model.train_config[field] if name.startswith("train.") else getattr(model.config, field)
        )
        assert kept == value


def test_tune_skips_settings_the_configs_refuse_and_stops_when_the_space_is_done() -> None:
    # Three heads do not divide D 32: that proposal is skipped, 48 trains, and then no
    # untried proposal is left however long the budget.
    config = tiny_model_config(embedding_dim=24, num_heads=3)
    model = tune(
        tiny_split(), 3600.0, config, tiny_train_config(epochs=1), {"embedding_dim": (32, 48)}
    )
    trials = model.train_config["tune"]["trials"]
    assert [trial["changes"] for trial in trials] == [{}, {"embedding_dim": 48}]


def test_tune_refuses_a_negative_budget_and_unknown_settings() -> None:
    with pytest.raises(ValueError, match="budget_seconds >= 0"):
        tune(tiny_split(), -1.0)
    with pytest.raises(ValueError, match=r"unknown settings \['train.epoch'\]"):
        tune(tiny_split(), 0.0, space={"train.epoch": (1, 2)})
    with pytest.raises(ValueError, match=r"settings \['dropout'\] in space have no values"):
        tune(tiny_split(), 0.0, space={"dropout": ()})
    with pytest.raises(ValueError, match="space has no settings"):
        tune(tiny_split(), 0.0, space={})


def test_the_lead_is_over_the_baseline_best_on_validation_with_a_paired_error():
    split = tiny_split()
    baselines = run_baselines(split, progress=False)
    measured = {name: r for name, r in baselines.items() if r.test is not None}
    best = max(measured.values(), key=lambda r: r.valid.ndcg_at_10)
    worst = min(measured.values(), key=lambda r: r.test.ndcg_at_10)
    assert best.name != worst.name
    # The best baseline itself: no lead, and no error since every user scores the same.
    same = baseline_lead(baselines, best.test)
    assert (same.baseline, same.change, same.error) == (best.name, 0.0, 0.0)
    lead = baseline_lead(baselines, worst.test)
    assert lead.baseline == best.name and lead.users == worst.test.users
    assert lead.change == pytest.approx(worst.test.ndcg_at_10 / best.test.ndcg_at_10 - 1)
    assert lead.error > 0
    assert f"{lead.change:+.1%} ± {lead.error:.1%}" in lead.describe()
    # A skipped baseline has nothing to compare; with none measured there is no lead.
    skipped = {"ease": BaselineResult("ease", {}, None, None, skipped="over the budget")}
    assert baseline_lead({**measured, **skipped}, worst.test) == lead
    assert baseline_lead(skipped, worst.test) is None
