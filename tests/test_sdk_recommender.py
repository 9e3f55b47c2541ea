"""Recommender end to end: Keras parity, histories, threads, CLI, and no TensorFlow."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from _sdk_fixtures import (
    HISTORY_LENGTH,
    NUM_ITEMS,
    item_ids,
    item_vectors,
    run_in_threads,
    user_tower,
    write_tiny_bundle,
)

from pocketrec.cli import main
from pocketrec.errors import BundleError
from pocketrec.sdk import (
    TABLE_DTYPES,
    Bundle,
    HistoryStore,
    ItemTable,
    Recommendation,
    Recommender,
    RecommenderOptions,
    encode_histories,
)

SDK_DIR = Path(__file__).resolve().parents[1] / "sdk"
FORBIDDEN = ("tensorflow", "tf_keras", "tensorflow_model_optimization", "keras")
FORBIDDEN_POCKETREC = ("pocketrec.training", "pocketrec.compression")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return write_tiny_bundle(tmp_path_factory.mktemp("bundle") / "bundle")


@pytest.fixture
def recommender(bundle):
    with Recommender.open(bundle) as rec:
        yield rec


def _keras_scores(histories: list[list[int]], table: ItemTable) -> np.ndarray:
    history, mask = encode_histories(table, histories, HISTORY_LENGTH)
    return user_tower().keras_user_vectors(history, mask) @ table.dequantized().T


def _rows(ids: list[str]) -> list[int]:
    row_of = {item_id: row for row, item_id in enumerate(item_ids())}
    return [row_of[i] for i in ids]


def _reference_top(scores: np.ndarray, k: int, banned: list[int] = ()) -> list[str]:
    scores = scores.astype(np.float64).copy()
    scores[list(banned)] = -np.inf
    return [item_ids()[r] for r in np.argsort(-scores, kind="stable")[:k]]


HISTORIES = [[], [3], [5, 1, 9], list(range(12)), [39, 38, 0, 0, 7]]


def test_sdk_scores_equal_keras_scores_for_a_float32_bundle(recommender) -> None:
    table = ItemTable.quantize(item_vectors(), "float32")
    scores = recommender.score_rows([np.asarray(h, dtype=np.int32) for h in HISTORIES])
    assert scores.shape == (len(HISTORIES), NUM_ITEMS)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, _keras_scores(HISTORIES, table), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", TABLE_DTYPES)
def test_sdk_scores_use_the_compressed_table(tmp_path, dtype: str) -> None:
    path = write_tiny_bundle(tmp_path / "b", dtype=dtype)
    table = ItemTable.quantize(item_vectors(), dtype)
    with Recommender.open(path) as rec:
        scores = rec.score_rows(HISTORIES)
        vectors = rec.user_vectors(HISTORIES)
    assert vectors.shape == (len(HISTORIES), table.dim)
    assert rec.table.dtype == dtype
    assert rec.history_length == HISTORY_LENGTH
    np.testing.assert_allclose(scores, _keras_scores(HISTORIES, table), rtol=1e-4, atol=1e-4)


def test_recommend_returns_the_top_k_with_titles_and_skips_seen_items(recommender) -> None:
    history = ["m5", "m1", "m9"]
    scores = _keras_scores([_rows(history)], ItemTable.quantize(item_vectors(), "float32"))[0]
    result = recommender.recommend(history, k=4)
    assert result.unknown_items == 0
    assert result.item_ids == _reference_top(scores, 4, banned=_rows(history))
    first = result.items[0]
    assert isinstance(first, Recommendation)
    assert first.title == f"Movie {first.item_id[1:]}"
    np.testing.assert_allclose(
        [r.score for r in result.items], scores[_rows(result.item_ids)], atol=1e-4
    )


def test_recommend_can_include_seen_items_and_exclude_others(recommender) -> None:
    everything = recommender.recommend(["m5"], k=NUM_ITEMS, exclude_seen=False)
    assert sorted(everything.item_ids) == sorted(item_ids())
    best = everything.item_ids[0]
    result = recommender.recommend(["m5"], k=NUM_ITEMS, exclude_seen=False, exclude=[best, "zz"])
    assert result.item_ids == everything.item_ids[1:]


def test_unknown_history_items_are_counted_and_ignored(recommender) -> None:
    with_unknown = recommender.recommend(["x1", "m5", "x2", "m1", "x3"], k=5)
    known_only = recommender.recommend(["m5", "m1"], k=5)
    assert with_unknown.unknown_items == 3
    assert with_unknown.items == known_only.items


def test_empty_history_gives_the_models_top_k_for_an_all_zero_mask(recommender) -> None:
    scores = _keras_scores([[]], ItemTable.quantize(item_vectors(), "float32"))[0]
    assert recommender.recommend(k=5).item_ids == _reference_top(scores, 5)
    assert recommender.recommend([], k=5).item_ids == _reference_top(scores, 5)


def test_a_bundles_cold_start_vector_serves_empty_and_all_unknown_histories(tmp_path) -> None:
    prior = np.random.default_rng(7).standard_normal(item_vectors().shape[1]).astype(np.float32)
    path = write_tiny_bundle(tmp_path / "cold", extra={"cold_start_vector": prior.tolist()})
    expected = _reference_top(item_vectors() @ prior, 5)
    with Recommender.open(path) as rec:
        assert rec.recommend(k=5).item_ids == expected
        assert rec.recommend(["unknown-1", "unknown-2"], k=5).item_ids == expected
        known = rec.recommend(["m5", "m1"], k=5).item_ids
    scores = _keras_scores([_rows(["m5", "m1"])], ItemTable.quantize(item_vectors(), "float32"))
    assert known == _reference_top(scores[0], 5, _rows(["m5", "m1"]))
    broken = write_tiny_bundle(tmp_path / "broken", extra={"cold_start_vector": [1.0, 2.0]})
    with pytest.raises(BundleError, match="cold_start_vector must be"):
        Recommender.open(broken)


def test_only_the_last_history_length_items_reach_the_model(recommender) -> None:
    history = [f"m{i}" for i in range(HISTORY_LENGTH + 4)]
    full = recommender.recommend(history, k=5, exclude_seen=False)
    recent = recommender.recommend(history[-HISTORY_LENGTH:], k=5, exclude_seen=False)
    assert full.items == recent.items


def test_observe_is_seen_by_the_very_next_recommend(recommender) -> None:
    assert recommender.recommend(user="ann", k=5) == recommender.recommend(k=5)
    recommender.observe("ann", "m3")
    assert recommender.recommend(user="ann", k=5) == recommender.recommend(["m3"], k=5)
    recommender.observe("ann", "m7", timestamp=1_700_000_000.0)
    assert recommender.recommend(user="ann", k=5) == recommender.recommend(["m3", "m7"], k=5)


def test_history_argument_follows_the_users_stored_history(recommender) -> None:
    recommender.observe("bob", "m2")
    combined = recommender.recommend(["m8"], user="bob", k=5)
    assert combined == recommender.recommend(["m2", "m8"], k=5)
    # The history argument is not stored.
    assert recommender.recommend(user="bob", k=5) == recommender.recommend(["m2"], k=5)


def test_history_persists_across_reopen_and_is_bounded(bundle, tmp_path) -> None:
    db = tmp_path / "history.db"
    with Recommender.open(bundle, history_path=db, max_history_events=3) as rec:
        for item in ["m1", "m2", "m3", "m4", "m5"]:
            rec.observe("cat", item)
        expected = rec.recommend(["m3", "m4", "m5"], k=6)
        assert rec.recommend(user="cat", k=6) == expected
    with Recommender.open(bundle, history_path=db, max_history_events=3) as rec:
        assert rec.recommend(user="cat", k=6) == expected
    with HistoryStore(db) as store:
        assert store.recent("cat", 10) == ["m3", "m4", "m5"]


def test_many_threads_get_the_same_results_as_one(bundle) -> None:
    histories = [[f"m{(7 * i + j) % NUM_ITEMS}" for j in range(i % 8)] for i in range(24)]
    with Recommender.open(bundle, interpreter_pool_size=3) as rec:
        serial = [rec.recommend(h, k=5) for h in histories]
        results: list[tuple[int, object]] = []

        def worker(t: int) -> None:
            # Each thread walks the histories from a different start, so calls interleave.
            order = [(t * 3 + i) % len(histories) for i in range(len(histories))]
            for _ in range(5):
                for i in order:
                    results.append((i, rec.recommend(histories[i], k=5)))
                rec.score_rows([[t, t + 1]])

        errors = run_in_threads(worker, 8)
    assert errors == []
    assert len(results) == 8 * 5 * len(histories)
    for i, result in results:
        assert result == serial[i]


def test_open_refuses_a_corrupt_bundle(bundle, tmp_path) -> None:
    broken = Path(shutil.copytree(bundle, tmp_path / "broken"))
    model = broken / "user_tower.tflite"
    model.write_bytes(model.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(BundleError, match="sha256"):
        Recommender.open(broken)


def test_open_without_verify_skips_checksums_and_the_golden_check(bundle, tmp_path) -> None:
    copy = Path(shutil.copytree(bundle, tmp_path / "copy"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["golden"]["user_vectors"][0][0] += 1.0
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="golden self-check failed"):
        Recommender.open(copy)
    with Recommender.open(copy, verify=False) as rec:
        assert len(rec.recommend(k=3).items) == 3


def test_options_are_validated(bundle) -> None:
    with pytest.raises(ValueError, match="interpreter_pool_size"):
        Recommender.create_from_options(RecommenderOptions(bundle, interpreter_pool_size=0))
    with pytest.raises(ValueError, match="num_threads"):
        Recommender.open(bundle, num_threads=0)


def test_close_is_idempotent_and_later_calls_raise_value_error(bundle) -> None:
    rec = Recommender.create_from_options(RecommenderOptions(bundle))
    assert rec.item_ids == item_ids()
    assert rec.manifest["item_count"] == NUM_ITEMS
    rec.manifest["item_count"] = 0  # a copy: the recommender keeps its own
    assert rec.manifest["item_count"] == NUM_ITEMS
    rec.close()
    rec.close()
    with pytest.raises(ValueError, match="closed"):
        rec.recommend(["m1"])
    with pytest.raises(ValueError, match="closed"):
        rec.observe("u", "m1")


def test_bad_recommend_arguments_raise_clear_errors(recommender) -> None:
    with pytest.raises(ValueError, match="k must be"):
        recommender.recommend(["m1"], k=0)
    with pytest.raises(TypeError, match="not one str"):
        recommender.recommend("m1")
    with pytest.raises(TypeError, match="not one str"):
        recommender.recommend(["m1"], exclude="m2")
    with pytest.raises(TypeError, match="history must be a sequence of item ids, not bytes"):
        recommender.recommend(b"50")
    with pytest.raises(TypeError, match="history must be a sequence of item ids, got int"):
        recommender.recommend(50)
    with pytest.raises(TypeError, match="exclude must be a sequence of item ids, got NoneType"):
        recommender.recommend(["m1"], exclude=None)
    with pytest.raises(TypeError, match=r"history\[1\] must be a str .* got float"):
        recommender.recommend(["m1", 2.0])
    with pytest.raises(ValueError, match="lone surrogate"):
        recommender.recommend(user="\ud800")
    with pytest.raises(TypeError, match="bundle must be a Bundle or a bundle directory path"):
        Recommender.open(None)


def test_int_ids_are_the_same_items_as_their_str_everywhere(tmp_path) -> None:
    ids = [str(i) for i in range(NUM_ITEMS)]
    bundle = write_tiny_bundle(tmp_path / "b", item_ids=ids)
    with Recommender.open(bundle) as rec:
        assert rec.recommend([3, 7], k=5) == rec.recommend(["3", "7"], k=5)
        top = rec.recommend(["3"], k=1).item_ids[0]
        assert top not in rec.recommend(["3"], k=5, exclude=[int(top)]).item_ids
        rec.observe(11, 5)
        assert rec.recommend(user="11", k=5) == rec.recommend(["5"], k=5)


def test_the_model_reads_only_the_last_history_length_stored_events(bundle) -> None:
    with Recommender.open(bundle) as rec:
        for i in range(50):
            rec.observe("dan", f"gone-{i}")  # items a later catalog dropped
        for item in ["m1", "m2", "m3", "m4", "m5"][:HISTORY_LENGTH]:
            rec.observe("dan", item)
        result = rec.recommend(user="dan", k=5)
        assert result.unknown_items == 0
        assert result == rec.recommend(["m1", "m2", "m3", "m4", "m5"][:HISTORY_LENGTH], k=5)


def test_exclude_seen_covers_every_stored_event_of_the_user(bundle) -> None:
    with Recommender.open(bundle) as rec:
        everything = rec.recommend(k=NUM_ITEMS).item_ids
        old = everything[0]
        rec.observe("eve", old)
        for i in range(HISTORY_LENGTH):
            rec.observe("eve", f"m{(i * 7 + 3) % NUM_ITEMS}")
        assert old not in rec.recommend(user="eve", k=NUM_ITEMS).item_ids
        assert old in rec.recommend(user="eve", k=NUM_ITEMS, exclude_seen=False).item_ids


def test_forget_deletes_the_users_history(bundle) -> None:
    with Recommender.open(bundle) as rec:
        rec.observe("fay", "m3")
        rec.forget("fay")
        assert rec.recommend(user="fay", k=5) == rec.recommend(k=5)


def test_swap_serves_the_new_bundle_while_threads_recommend(bundle, tmp_path) -> None:
    other = Bundle.open(write_tiny_bundle(tmp_path / "other", dtype="int8"))
    with Recommender.open(bundle) as rec:
        histories = [[f"m{(3 * i + j) % NUM_ITEMS}" for j in range(i % 5)] for i in range(12)]
        before = [rec.recommend(h, k=5) for h in histories]
        with Recommender.open(other) as reference:
            after = [reference.recommend(h, k=5) for h in histories]
        assert before != after
        swapped = threading.Event()
        results: list[tuple[int, object, bool]] = []

        def worker(t: int) -> None:
            for round_ in range(40):
                for i in range((t + round_) % len(histories), len(histories), 3):
                    done = swapped.is_set()
                    results.append((i, rec.recommend(histories[i], k=5), done))

        def swapper(t: int) -> None:
            if t == 0:
                rec.swap(other)
                swapped.set()
            else:
                worker(t)

        assert run_in_threads(swapper, 5) == []
        assert rec.bundle is other
        for i, result, done in results:
            # Each call saw one whole bundle; once the swap returned, only the new one.
            assert result in ((after[i],) if done else (before[i], after[i]))
        assert rec.recommend(histories[4], k=5) == after[4]


def test_swap_refuses_a_corrupt_bundle_and_keeps_serving_the_old_one(bundle, tmp_path) -> None:
    broken = Path(shutil.copytree(bundle, tmp_path / "broken"))
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["golden"]["user_vectors"][0][0] += 1.0
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with Recommender.open(bundle) as rec:
        expected = rec.recommend(["m1"], k=3)
        with pytest.raises(BundleError, match="golden self-check failed"):
            rec.swap(broken)
        assert rec.recommend(["m1"], k=3) == expected


def test_a_bundle_received_as_bytes_serves_like_its_directory(bundle) -> None:
    received = Bundle.from_bytes(Bundle.open(bundle).to_bytes())
    with Recommender.open(received) as from_memory, Recommender.open(bundle) as from_disk:
        assert from_memory.recommend(["m2", "m9"], k=6) == from_disk.recommend(["m2", "m9"], k=6)


def test_a_new_catalog_for_the_same_model_swaps_in(bundle) -> None:
    with Recommender.open(bundle) as rec:
        current = rec.bundle
        table = ItemTable.quantize(item_vectors(NUM_ITEMS + 2, seed=3), "float32")
        catalog = current.with_items(table, [*item_ids(), "new-1", "new-2"])
        rec.swap(catalog)
        assert rec.item_ids[-2:] == ["new-1", "new-2"]
        assert rec.recommend(["new-1"], k=3).unknown_items == 0
        with pytest.raises(ValueError, match="reads 8-d item vectors"):
            current.with_items(ItemTable.quantize(item_vectors(dim=4), "float32"), item_ids())


def _cli(argv: list[str]) -> int:
    return main(argv)


def test_cli_recommend_prints_items_with_titles_and_scores(bundle, capsys) -> None:
    assert _cli(["recommend", str(bundle), "--history", "m5", "m1", "--k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].lstrip().startswith("1.")
    assert "Movie" in lines[0]


def test_cli_recommend_prints_json_for_a_stored_user(bundle, tmp_path, capsys) -> None:
    db = tmp_path / "history.db"
    with HistoryStore(db) as store:
        store.append("dan", "m4")
    code = _cli(
        ["recommend", str(bundle), "--user", "dan", "--history-db", str(db), "--k", "2", "--json"]
    )
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    with Recommender.open(bundle) as rec:
        expected = rec.recommend(["m4"], k=2)
    assert [item["item_id"] for item in document["items"]] == expected.item_ids
    assert document["items"][0]["title"] == expected.items[0].title
    assert document["unknown_items"] == 0


def test_cli_recommend_reports_a_broken_bundle_without_a_traceback(tmp_path, capsys) -> None:
    assert _cli(["recommend", str(tmp_path), "--history", "m1"]) == 2
    assert "is not a bundle" in capsys.readouterr().err


def test_cli_recommend_help_works(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _cli(["recommend", "--help"])
    assert exit_info.value.code == 0
    assert "--history-db" in capsys.readouterr().out


def test_recommending_never_imports_tensorflow(bundle) -> None:
    script = f"""
import argparse, sys
from pocketrec.sdk import Recommender
from pocketrec.cli import main
with Recommender.open({str(bundle)!r}) as rec:
    rec.observe("u", "m1")
    assert len(rec.recommend(user="u", k=3).items) == 3
    rec.score_rows([[1, 2]])
assert main(["recommend", {str(bundle)!r}, "--history", "m1"]) == 0
loaded = [m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r}
          or m.startswith({FORBIDDEN_POCKETREC!r})]
print("FORBIDDEN:", loaded)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "FORBIDDEN: []" in done.stdout, done.stdout


def test_sdk_sources_import_nothing_heavy() -> None:
    # Catches lazy imports in branches the subprocess test does not reach.
    for path in sorted(SDK_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
                assert not name.startswith(FORBIDDEN_POCKETREC), f"{path.name} imports {name}"
