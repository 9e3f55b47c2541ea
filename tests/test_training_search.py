"""The search tower: trained on pseudo-queries, shipped as an optional bundle file, served."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _training_fixtures import tiny_model_config, tiny_split, tiny_train_config

from pocketrec.data import load, synthetic
from pocketrec.errors import BundleError
from pocketrec.evaluation import leave_last_out
from pocketrec.sdk import Bundle, Recommender
from pocketrec.sdk._text import QueryEncoding, words
from pocketrec.sdk.search import SEARCH_TOWER_FILE, SearchSettings, SearchTower
from pocketrec.training import TrainedModel, train
from pocketrec.training.export import export_bundle
from pocketrec.training.search import (
    SearchTowerConfig,
    add_search_tower,
    pseudo_query,
    query_tokens,
)

ENCODING = QueryEncoding(buckets=512, max_tokens=12)


@pytest.fixture(scope="module")
def trained() -> TrainedModel:
    return train(tiny_split(), tiny_model_config(), tiny_train_config(epochs=1))


@pytest.fixture(scope="module")
def towered(trained, tmp_path_factory):
    """The tiny model's bundle with a search tower trained for three epochs, and the tower."""
    path = export_bundle(trained, tmp_path_factory.mktemp("b") / "bundle", split=tiny_split())
    config = SearchTowerConfig(
        encoding=ENCODING, epochs=3, examples_per_user=12, learning_rate=1e-2
    )
    return add_search_tower(Bundle.open(path), trained, tiny_split(), config)


def test_pseudo_queries_come_from_the_items_genres_and_title_words():
    rng = np.random.default_rng(0)
    queries = {pseudo_query("The Lost Adventure (1995)", ["Sci-Fi"], rng) for _ in range(200)}
    title_words = {"lost", "adventure"}
    kinds = {
        "genre" if q == "Sci-Fi" else "title" if set(words(q)) <= title_words else "typo"
        for q in queries
    }
    assert kinds == {"genre", "title", "typo"}
    assert not any(w in {"the", "1995"} for q in queries for w in words(q))
    assert pseudo_query(None, [], rng) is None


def test_training_lowers_the_loss_and_the_tflite_matches_keras(towered, trained):
    bundle, tower = towered
    assert tower.losses[-1] < tower.losses[0]
    users = trained.user_vectors([np.array([0, 1, 2]), np.array([], np.int32)])
    queries = ["adventure", "sci fi"]
    device = SearchTower(bundle.search_tower, ENCODING, bundle.embedding_dim)
    np.testing.assert_allclose(
        device.vectors(queries, users), tower.vectors(queries, users), rtol=1e-4, atol=1e-5
    )
    # Training feeds the device tokenizer's ids.
    assert query_tokens(["Sci-Fi advnture"], ENCODING)[0].tolist() == ENCODING.token_ids(
        ["sci", "fi", "advnture"]
    )


def test_bundle_ships_the_tower_with_golden_outputs_checked_on_open(towered, tmp_path):
    bundle, _ = towered
    manifest = bundle.manifest
    assert SEARCH_TOWER_FILE in manifest["files"]
    assert manifest["search"]["tower"]["encoding"]["buckets"] == ENCODING.buckets
    bundle.save(tmp_path / "b")
    reopened = Bundle.open(tmp_path / "b")
    assert reopened.search_tower == bundle.search_tower
    path = (tmp_path / "b").resolve() / "manifest.json"
    document = json.loads(path.read_text())
    golden = document["search"]["tower"]["golden"]
    golden["search_vectors"][0][0] += 1.0
    path.write_text(json.dumps(document))
    with pytest.raises(BundleError, match="search tower golden"):
        Bundle.open(tmp_path / "b")


def test_search_scores_by_the_towers_vector_and_without_it_by_the_users(towered):
    bundle, _ = towered
    plain = bundle.with_search_tower(None)
    assert plain.search_tower is None and "tower" not in plain.manifest["search"]
    history = list(bundle.item_ids[:4])
    query = bundle.items[10]["genres"][0]
    with Recommender.open(bundle) as recommender:
        user = recommender.user_vectors([[0, 1, 2, 3]])
        tower = SearchTower(bundle.search_tower, ENCODING, bundle.embedding_dim)
        vector = tower.vectors([query], user)[0]
        # With a large alpha the matches follow the search vector's dense score.
        broad = bundle.with_search(SearchSettings(alpha=1000.0))
        recommender.swap(broad)
        found = recommender.search(query, history=history, k=5)
        rows = [recommender.item_ids.index(i) for i in found.item_ids]
        dense = recommender.table.vectors(rows) @ vector
        assert list(dense) == sorted(dense, reverse=True)
    with Recommender.open(plain.with_search(broad.search_settings)) as recommender:
        without = recommender.search(query, history=history, k=5)
        rows = [recommender.item_ids.index(i) for i in without.item_ids]
        dense = recommender.table.vectors(rows) @ user[0]
        assert list(dense) == sorted(dense, reverse=True)


def test_new_catalog_and_rebuilt_parts_keep_the_tower(towered):
    bundle, _ = towered
    items = [{k: v for k, v in item.items() if k != "id"} for item in bundle.items]
    updated = bundle.with_items(bundle.table, list(bundle.item_ids), items)
    assert updated.search_tower == bundle.search_tower
    updated.verify()
    parts = (bundle.manifest, bundle.model, bundle.table, bundle.items)
    rebuilt = Bundle.from_parts(*parts, search_tower=bundle.search_tower)
    assert rebuilt.search_tower == bundle.search_tower
    # Without the tower's bytes (a model version published before towers shipped) the
    # bundle is rebuilt without it and searches with the user vector.
    synced = Bundle.from_parts(*parts)
    assert synced.search_tower is None and synced.search_tower_settings is None
    with Recommender.open(synced) as recommender:
        assert recommender.search(bundle.items[0]["title"], k=3).items


def test_a_logged_query_word_that_always_led_to_one_item_is_learned(trained, towered, tmp_path):
    """A real (user, query, item, time) log through the loader's query column: every event
    of one mid-popularity item came from searching a word no title or genre holds."""
    split = tiny_split()
    item = int(np.argsort(-split.item_popularity(), kind="stable")[8])
    item_id = int(split.item_ids[item])
    # The tiny split's own log (same users, items and times), written with a query column.
    log = synthetic(num_users=80, num_items=50, mean_events=14, num_clusters=5, num_genres=4)
    events = zip(log.users.tolist(), log.items.tolist(), log.timestamps.tolist(), strict=True)
    lines = ["user,item,time,query"] + [
        f"{u},{i},{t:.0f},{'zorblax' if i == item_id else ''}" for u, i, t in events
    ]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    logged = leave_last_out(
        load(tmp_path / "log.csv", user_col="user", item_col="item", time_col="time",
             query_col="query")
    )  # fmt: skip
    assert logged.item_ids.tolist() == split.item_ids.tolist()
    config = SearchTowerConfig(
        encoding=ENCODING, epochs=12, examples_per_user=12, learning_rate=1e-2
    )
    _, tower = add_search_tower(towered[0], trained, logged, config)
    users = trained.user_vectors(split.histories("test")[:40])
    table = trained.item_table().dequantized()

    def top_share(vectors: np.ndarray) -> float:
        return float(np.mean(np.argmax(vectors @ table.T, axis=1) == item))

    learned = top_share(tower.vectors(["zorblax"] * len(users), users))
    without_logs = top_share(towered[1].vectors(["zorblax"] * len(users), users))
    print(f"'zorblax' ranks its item first for {learned:.0%} (without the log {without_logs:.0%})")
    assert learned >= 0.8 and learned > without_logs


def test_cli_train_search_is_documented_and_refuses_a_run_without_a_model(tmp_path, capsys):
    from pocketrec.cli import build_parser, main

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train-search", "--help"])
    assert "search_tower.tflite" in capsys.readouterr().out.replace("\n", " ")
    code = main(["train-search", str(tmp_path), "--bundle", str(tmp_path), "--synthetic", "20"])
    assert code != 0
    assert "manifest.json" in capsys.readouterr().err
