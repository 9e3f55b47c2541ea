"""`embed_items`: vectors of changed items from a trained model's item tower."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _training_fixtures import tiny_model_config, tiny_split, tiny_train_config

from pocketrec.errors import DataError
from pocketrec.sdk.catalog import read_items_jsonl
from pocketrec.training import TrainedModel, train
from pocketrec.training.embed import embed_items, read_embedded_jsonl


@pytest.fixture(scope="module")
def trained() -> TrainedModel:
    return train(tiny_split(), tiny_model_config(), tiny_train_config(epochs=1))


def test_known_items_get_exactly_the_item_towers_vectors(trained) -> None:
    ids = [str(i) for i in trained.item_ids[:5]]
    embedded = embed_items(trained, [{"id": i, "rating": "PG"} for i in ids])
    np.testing.assert_allclose(embedded.vectors, trained.item_vectors()[:5], rtol=1e-5, atol=1e-6)
    assert embedded.metadata[0] == {"rating": "PG"}
    retitled = embed_items(trained, [{"id": ids[0], "title": "Another Title"}])
    assert not np.allclose(retitled.vectors[0], embedded.vectors[0])


def test_new_genres_move_a_known_items_vector(trained) -> None:
    item = str(trained.item_ids[0])
    names = trained.genre_names
    current = [names[g] for g in np.flatnonzero(trained.item_genres[0])]
    other = [n for n in names if n not in current][:1]
    before = embed_items(trained, [{"id": item}]).vectors[0]
    after = embed_items(trained, [{"id": item, "genres": other}]).vectors[0]
    assert not np.allclose(before, after)


def test_ids_the_model_never_saw_are_embedded_from_their_title_and_genres(trained) -> None:
    known = str(trained.item_ids[0])
    genres = [trained.genre_names[g] for g in np.flatnonzero(trained.item_genres[0])]
    items = [
        {"id": known},
        {"id": "brand-new", "title": "Brand New (2026)", "genres": genres},
        {"id": "twin", "title": trained.titles[0], "genres": genres},
    ]
    embedded = embed_items(trained, items)
    assert embedded.item_ids == [known, "brand-new", "twin"]
    assert embedded.new_ids == ["brand-new", "twin"]
    # A new item with a known item's features gets exactly their vector, without the id's.
    features = trained.feature_vectors(trained.item_genres[:1], [trained.titles[0]])[0]
    np.testing.assert_allclose(embedded.vectors[2], features, rtol=1e-5, atol=1e-6)
    assert not np.allclose(embedded.vectors[1], embedded.vectors[2])
    with pytest.raises(DataError, match="neither a title nor genres"):
        embed_items(trained, [{"id": "bare"}])
    with pytest.raises(DataError, match=r"genres .* the model does not know"):
        embed_items(trained, [{"id": known, "genres": ["Opera"]}])


def test_embedded_items_round_trip_through_json_lines(trained, tmp_path) -> None:
    source = tmp_path / "items.jsonl"
    source.write_text("\n".join(json.dumps({"id": str(i)}) for i in trained.item_ids[:3]))
    embedded = embed_items(trained, read_items_jsonl(source))
    again = read_embedded_jsonl(embedded.write_jsonl(tmp_path / "vectors.jsonl"))
    assert again.item_ids == embedded.item_ids
    np.testing.assert_allclose(again.vectors, embedded.vectors, rtol=1e-6)
    (tmp_path / "bad.jsonl").write_text('{"id": "1"}\nnot json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not JSON"):
        read_items_jsonl(tmp_path / "bad.jsonl")
