"""Personalised search and explanations: tokenizer, text index, bundle file, ranking, CLI."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from _sdk_fixtures import (
    HISTORY_LENGTH,
    item_ids,
    item_vectors,
    user_tower,
    write_tiny_bundle,
)

from pocketrec.cli import main
from pocketrec.errors import BundleError
from pocketrec.sdk import Bundle, ItemTable, Recommender
from pocketrec.sdk._text import TextSettings, normalize, word_ngrams, words
from pocketrec.sdk._text_index import TextIndex
from pocketrec.sdk.search import TEXT_INDEX_FILE, Searcher, SearchSettings

TITLES = [
    "Space Adventure",
    "Space Cowboys",
    "Love in Paris",
    "Paris, Texas",
    "The Lost Adventure",
    "Amélie",
    "Star Wars",
    "Star Trek",
]
GENRES = [["Sci-Fi"], ["Western"], ["Romance"], ["Drama"], ["Adventure"], ["Comedy"], ["Sci-Fi"]]


def catalog_items(n: int = 40) -> list[dict]:
    """Named items first, then filler titles; one genre each."""
    items = []
    for i in range(n):
        title = TITLES[i] if i < len(TITLES) else f"Filler {i}"
        items.append({"title": title, "genres": GENRES[i % len(GENRES)]})
    return items


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return Bundle.build(
        model=user_tower().tflite,
        table=ItemTable.quantize(item_vectors(), "float32"),
        item_ids=item_ids(),
        history_length=HISTORY_LENGTH,
        items_metadata=catalog_items(),
    )


# -- tokenizer ------------------------------------------------------------------------------


def test_normalize_folds_width_case_and_accents():
    assert normalize("\uff21m\u00e9lie \u00c9T\u00c9") == "amelie ete"  # fullwidth A
    assert words("Sci-Fi: Amélie's_Day (1995)") == ["sci", "fi", "amelie", "s", "day", "1995"]


def test_ngram_ids_are_crc32_of_padded_grams_so_every_process_agrees():
    settings = TextSettings(ngram=3, buckets=1000)
    expected = [zlib.crc32(g.encode()) % 1000 for g in ("#ab", "abc", "bc#")]
    assert word_ngrams("abc", settings) == list(dict.fromkeys(expected))
    assert word_ngrams("a", settings) == [zlib.crc32(b"#a#") % 1000]


def test_text_settings_refuse_another_hash_and_bad_numbers():
    with pytest.raises(ValueError, match="hash"):
        TextSettings.from_dict({"ngram": 3, "buckets": 10, "hash": "md5"})
    with pytest.raises(ValueError, match="ngram"):
        TextSettings(ngram=0)


# -- the index --------------------------------------------------------------------------------


def test_index_bytes_are_deterministic_and_read_back_to_the_same_scores():
    items = catalog_items()
    built = TextIndex.build(items, TextSettings())
    data = built.to_bytes()
    assert TextIndex.build(items, TextSettings()).to_bytes() == data
    read = TextIndex.from_bytes(data, num_items=len(items), settings=TextSettings())
    for query in (["space"], ["paris", "love"], ["advnture"]):
        a = built.scorer(k1=1.2, b=0.75, ngram_weight=0.3).scores(query)
        b = read.scorer(k1=1.2, b=0.75, ngram_weight=0.3).scores(query)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_index_for_other_items_or_settings_is_refused():
    data = TextIndex.build(catalog_items(), TextSettings()).to_bytes()
    with pytest.raises(BundleError, match="built for 40 items"):
        TextIndex.from_bytes(data, num_items=41, settings=TextSettings())
    with pytest.raises(BundleError, match="built for"):
        TextIndex.from_bytes(data, num_items=40, settings=TextSettings(buckets=7))
    with pytest.raises(BundleError, match="not a version"):
        TextIndex.from_bytes(b"X" * 40, num_items=40, settings=TextSettings())


def test_bm25_ranks_the_item_holding_both_words_first_and_typos_still_match():
    searcher = Searcher.of(catalog_items(), SearchSettings(), None)
    rows, scores = searcher.lexical(words("lost adventure"))
    assert rows[np.argmax(scores)] == 4
    rows, scores = searcher.lexical(words("adventrue"))  # two letters swapped
    assert set(rows[scores >= scores.max() * 0.5].tolist()) >= {0, 4}
    assert searcher.lexical(words("zzzz"))[0].size == 0


def test_matched_names_exact_words_and_typos_of_words_the_catalog_lacks():
    searcher = Searcher.of(catalog_items(), SearchSettings(), None)
    assert searcher.matched(["paris", "love"], [2, 3]) == [["paris", "love"], ["paris"]]
    assert searcher.matched(["advnture", "spac"], [0, 4]) == [["advnture", "spac"], ["advnture"]]


# -- the bundle file --------------------------------------------------------------------------


def test_bundle_ships_a_checksummed_text_index_that_reopens(tmp_path, bundle):
    settings = SearchSettings(alpha=0.7, b=0.3)
    shipped = bundle.with_search(settings, text_index=True)
    manifest = shipped.manifest
    assert TEXT_INDEX_FILE in manifest["files"] and manifest["search"]["alpha"] == 0.7
    shipped.save(tmp_path / "b")
    reopened = Bundle.open(tmp_path / "b")
    assert reopened.text_index == shipped.text_index
    assert reopened.search_settings == settings
    (tmp_path / "b" / TEXT_INDEX_FILE).write_bytes(b"corrupt")
    with pytest.raises(BundleError, match="sha256"):
        Bundle.open(tmp_path / "b")


def test_bundle_without_index_builds_it_on_first_search_with_the_same_results(bundle):
    shipped = bundle.with_search(text_index=True)
    assert bundle.text_index is None
    with Recommender.open(bundle) as plain, Recommender.open(shipped) as indexed:
        for query in ("space", "paris love", "advnture"):
            assert plain.search(query, k=5) == indexed.search(query, k=5)


def test_new_catalog_rebuilds_the_index_so_new_titles_are_found(bundle):
    shipped = bundle.with_search(text_index=True)
    items = [{k: v for k, v in item.items() if k != "id"} for item in shipped.items]
    items[10]["title"] = "Zebra Crossing"
    updated = shipped.with_items(shipped.table, list(shipped.item_ids), items)
    assert updated.text_index != shipped.text_index
    with Recommender.open(shipped) as recommender:
        assert recommender.search("zebra").items == []
        recommender.swap(updated)
        assert recommender.search("zebra").item_ids == [shipped.item_ids[10]]


def test_bundle_rebuilt_from_parts_regenerates_the_index_byte_for_byte(bundle):
    shipped = bundle.with_search(text_index=True)
    rebuilt = Bundle.from_parts(shipped.manifest, shipped.model, shipped.table, shipped.items)
    assert rebuilt.text_index == shipped.text_index


def test_malformed_search_settings_in_a_manifest_are_refused(tmp_path, bundle):
    bundle.save(tmp_path / "b")
    path = (tmp_path / "b").resolve() / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["search"] = {"alpha": -1}
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="search"):
        Bundle.open(tmp_path / "b", verify=False)


# -- Recommender.search ------------------------------------------------------------------------


def test_blank_query_is_exactly_recommend(bundle):
    with Recommender.open(bundle) as recommender:
        history = ["m1", "m5", "m9"]
        expected = recommender.recommend(history, k=7)
        for query in ("", "   ", "?!"):
            assert recommender.search(query, history=history, k=7) == expected


def test_search_returns_only_matches_and_honours_exclusions_and_filters(bundle):
    with Recommender.open(bundle) as recommender:
        found = recommender.search("paris", k=10)
        assert set(found.item_ids) == {"m2", "m3"}
        assert recommender.search("paris", exclude=["m2"]).item_ids == ["m3"]
        assert recommender.search("paris", history=["m3"]).item_ids == ["m2"]
        from pocketrec.sdk import Filters

        assert recommender.search("paris", filters=Filters(allow=["m3"])).item_ids == ["m3"]
        with pytest.raises(TypeError, match="query must be a str"):
            recommender.search(None)  # type: ignore[arg-type]


def test_history_reorders_broad_matches_by_the_user_vector(bundle):
    """With alpha large, a broad query's matches follow the dense score recommend uses."""
    broad = bundle.with_search(SearchSettings(alpha=1000.0))
    with Recommender.open(broad) as recommender:
        history = ["m0", "m7", "m14"]
        found = recommender.search("sci fi", history=history, exclude_seen=False, k=10)
        vector = recommender.user_vectors([[0, 7, 14]])[0]
        rows = [recommender.item_ids.index(i) for i in found.item_ids]
        dense = recommender.table.vectors(rows) @ vector
        assert list(dense) == sorted(dense, reverse=True)


def test_results_explain_query_words_and_the_history_items_whose_removal_costs_most(bundle):
    with Recommender.open(bundle) as recommender:
        history = ["m0", "m1", "m8", "m9"]
        result = recommender.search("lost advnture", history=history, k=3).items[0]
        assert result.item_id == "m4"
        query = [r.value for r in result.because if r.kind == "query"]
        assert query == ["lost", "advnture"]
        reasons = [r for r in result.because if r.kind == "history"]
        rows = [0, 1, 8, 9]
        vectors = recommender.user_vectors([rows, *([r for r in rows if r != j] for j in rows)])
        scores = vectors @ item_vectors()[4]
        drops = {f"m{j}": scores[0] - scores[1 + n] for n, j in enumerate(rows)}
        assert reasons, "some history item must raise the result's score"
        for reason in reasons:
            assert reason.weight == pytest.approx(drops[reason.value], rel=1e-4, abs=1e-6)
        assert [r.weight for r in reasons] == sorted((r.weight for r in reasons), reverse=True)
        assert all(r.weight > 0 for r in reasons)
        assert recommender.recommend(k=2).items[0].because == ()


def test_explain_false_skips_history_reasons_but_not_the_ranking_or_query_words(bundle):
    with Recommender.open(bundle) as recommender:
        history = ["m0", "m1", "m8", "m9"]
        explained = recommender.search("lost advnture", history=history, k=3)
        quiet = recommender.search("lost advnture", history=history, k=3, explain=False)
        assert [(r.item_id, r.score) for r in quiet.items] == [
            (r.item_id, r.score) for r in explained.items
        ]
        assert all(r.kind == "query" for item in quiet.items for r in item.because)
        assert [r.value for r in quiet.items[0].because] == ["lost", "advnture"]
        plain = recommender.recommend(history, k=3, explain=False)
        assert plain.item_ids == recommender.recommend(history, k=3).item_ids
        assert all(item.because == () for item in plain.items)


# -- CLI ----------------------------------------------------------------------------------------


def test_cli_search_prints_matches_and_because_you_watched(tmp_path, capsys):
    path = write_tiny_bundle(tmp_path / "b", items_metadata=catalog_items())
    assert main(["search", str(path), "paris", "--history", "m2,m6", "m7"]) == 0
    out = capsys.readouterr().out
    assert "Paris, Texas" in out and "Love in Paris" not in out  # m2 was watched
    assert "because you watched" in out
    assert main(["search", str(path), "paris", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert {r["item_id"] for r in document["items"]} == {"m2", "m3"}
    assert document["items"][0]["because"][0]["value"] == "paris"


def test_cli_recommend_says_why(tmp_path, capsys):
    path = write_tiny_bundle(tmp_path / "b", items_metadata=catalog_items())
    assert main(["recommend", str(path), "--history", "m2", "m6"]) == 0
    assert "because you watched" in capsys.readouterr().out


# -- faithfulness on a trained model ---------------------------------------------------------------


# -- benchmark --------------------------------------------------------------------------------


def test_bench_search_scores_the_queries_a_search_log_holds(tmp_path):
    """A (user, query, item, time) log read through the query column adds the "logged"
    kind: the queries users typed, each ranked against its own held-out item."""
    from pocketrec.benchmarks.search_bench import (
        SearchBenchConfig,
        results_markdown,
        run_search_benchmark,
    )

    ids = sorted(item_ids())  # the split orders its items by id
    titles = {item: meta["title"] for item, meta in zip(item_ids(), catalog_items(), strict=True)}
    bundle = Bundle.build(
        model=user_tower().tflite,
        table=ItemTable.quantize(item_vectors(), "float32"),
        item_ids=ids,
        history_length=HISTORY_LENGTH,
        items_metadata=[{**catalog_items()[item_ids().index(i)]} for i in ids],
    )
    bundle.save(tmp_path / "bundle")
    # 30 users, 6 events each: every item is in some train part; every other event
    # came from a search for the item's title.
    lines = ["user\tsearched\titem\twhen"]
    for user in range(30):
        for step in range(6):
            item = f"m{(user + 7 * step) % 40}"
            query = titles[item] if step % 2 else ""
            lines.append(f"u{user}\t{query}\t{item}\t{step}")
    log = tmp_path / "log.tsv"
    log.write_text("\n".join(lines) + "\n")
    options = {"user_col": "user", "item_col": "item", "time_col": "when", "string_ids": True}
    config = SearchBenchConfig(
        tmp_path / "bundle", str(log), {**options, "query_col": "searched"}, latency_calls=4
    )
    results = run_search_benchmark(config)
    assert results["kinds"] == ["genre", "title", "typo", "logged"]
    assert results["tuning_kinds"] == ["genre", "title", "typo"]  # validation events: no query
    logged = results["test"]["bm25"]["logged"]
    # The test event is each user's sixth (odd step): all 30 have a logged query.
    assert logged["queries"] == 30 and logged["hr@10"] >= 0.9
    assert "| logged | bm25 |" in results_markdown(results)
    without = run_search_benchmark(SearchBenchConfig(tmp_path / "bundle", str(log), options, 0, 4))
    assert "logged" not in without["kinds"] and "logged" not in without["test"]["bm25"]


@pytest.fixture(scope="module")
def trained_ml100k(ml100k, tmp_path_factory) -> tuple[Path, object]:
    """A bundle of the attention model trained on MovieLens 100K (5 epochs), and its split."""
    from pocketrec.data import load
    from pocketrec.evaluation import leave_last_out
    from pocketrec.training import ModelConfig, TrainConfig, run_training

    split = leave_last_out(load(ml100k))
    out = tmp_path_factory.mktemp("ml100k")
    run = run_training(
        split,
        ModelConfig(),
        TrainConfig(epochs=5, progress=False, objective="sequence"),
        out,
        baselines=False,
        bundle=True,
    )
    assert run.bundle is not None
    return run.bundle, split


def explanation_faithfulness(recommender: Recommender, split, users: int) -> float:
    """Share of (result, other history item) pairs where dropping the result's top reason
    from the history lowers its score more than dropping that other item (an item the
    model reads: one of the last ``L``), over the top-10 of the first ``users`` users."""
    length = recommender.history_length
    table = recommender.table
    row_of = {item: row for row, item in enumerate(recommender.item_ids)}
    shares = []
    for history in split.histories("test")[:users]:
        rows = history.tolist()
        read = list(dict.fromkeys(rows[-length:]))
        if len(read) < 2:
            continue
        ids = [recommender.item_ids[r] for r in rows]
        vectors = recommender.user_vectors([rows, *([r for r in rows if r != j] for j in read)])
        for result in recommender.recommend(ids, k=10).items:
            reasons = [r for r in result.because if r.kind == "history"]
            if not reasons:
                continue
            scores = vectors @ table.vectors([row_of[result.item_id]])[0]
            drops = scores[0] - scores[1:]
            top = read.index(row_of[reasons[0].value])
            shares.append(float(np.mean(np.delete(drops, top) < drops[top])))
    return float(np.mean(shares))


def test_removing_the_top_explaining_item_lowers_the_score_more_than_a_random_one(trained_ml100k):
    """Chance is 0.5; issue 14 asks for 0.8. Reasons are measured score drops among the
    most similar history items (`pocketrec.sdk._explain`): 0.91 on the demo's bundle."""
    bundle, split = trained_ml100k
    with Recommender.open(bundle) as recommender:
        share = explanation_faithfulness(recommender, split, users=150)
    print(f"explanation faithfulness on ML-100K: {share:.3f}")
    assert share >= 0.8
