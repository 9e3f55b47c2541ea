"""The scoring graph built on the device: scores, top-K order, filters and table swaps."""

from __future__ import annotations

import numpy as np
import pytest
from _sdk_fixtures import GENRES, item_ids, items_metadata, write_tiny_bundle

from pocketrec.sdk import TABLE_DTYPES, Filters, ItemTable, Recommender
from pocketrec.sdk._runtime import model_op_types
from pocketrec.sdk._scorer import BATCH_ROWS, GRAPH_MIN_ITEMS, Scorer, scorer_model

# The dynamic-range kernels quantize the user vector to int8: a score may move by about
# half a step of it per dimension, well under 2% of the largest score.
TOLERANCE = {"float32": 1e-5, "float16": 1e-5, "int8": 2e-2, "int4": 2e-2}
KERNELS = ("graph", "numpy")


def _table(num_items: int, dim: int, dtype: str, seed: int = 0) -> ItemTable:
    vectors = np.random.default_rng(seed).standard_normal((num_items, dim)).astype(np.float32)
    vectors[5] = 0.0  # an all-zero row: scale 0 for the integer forms
    vectors[7:12] = vectors[6]  # tied rows
    return ItemTable.quantize(vectors, dtype)


def _brute_force_top(scores: np.ndarray, k: int, banned=(), allowed=None) -> list[int]:
    scores = scores.astype(np.float64)
    if allowed is not None:
        kept = np.full_like(scores, -np.inf)
        kept[list(allowed)] = scores[list(allowed)]
        scores = kept
    scores[list(banned)] = -np.inf
    order = np.lexsort((np.arange(scores.size), -scores))
    return [int(r) for r in order[:k] if np.isfinite(scores[r])]


@pytest.mark.parametrize("dim", [64, 33])
@pytest.mark.parametrize("dtype", TABLE_DTYPES)
def test_graph_scores_match_the_dequantized_table(dtype: str, dim: int) -> None:
    table = _table(3000, dim, dtype)
    scorer = Scorer(table, kernel="graph")
    expected_ops = ["FULLY_CONNECTED", "ADD", "TOPK_V2"]
    if dtype == "float16":
        expected_ops.insert(0, "DEQUANTIZE")
    assert model_op_types(scorer.model) == expected_ops
    for seed in range(3):
        user = np.random.default_rng(seed + 10).standard_normal(dim).astype(np.float32)
        reference = user @ table.dequantized().T
        scores = scorer.scores(user)
        assert scores.shape == (3000,) and scores.dtype == np.float32
        np.testing.assert_allclose(
            scores, reference, rtol=0, atol=TOLERANCE[dtype] * np.abs(reference).max()
        )


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", TABLE_DTYPES)
def test_score_batch_rows_are_exactly_the_kernels_scores_of_each_user(
    dtype: str, kernel: str
) -> None:
    table = _table(3000, 33, dtype, seed=3)
    scorer = Scorer(table, kernel=kernel)
    # More users than one batch call takes: a full chunk and a zero-padded partial one.
    users = np.random.default_rng(5).standard_normal((BATCH_ROWS + 7, 33)).astype(np.float32)
    batch = scorer.score_batch(users)
    assert batch.shape == (len(users), 3000) and batch.dtype == np.float32
    for user, row in zip(users, batch, strict=True):
        if kernel == "graph":
            np.testing.assert_array_equal(row, scorer.scores(user))
        else:  # BLAS sums a matrix product in another order than a vector product
            np.testing.assert_allclose(row, scorer.scores(user), rtol=0, atol=1e-5 * row.max())
    assert scorer.score_batch(users[:0]).shape == (0, 3000)
    with pytest.raises(ValueError, match=r"user_vectors must have shape \[B, 33\]"):
        scorer.score_batch(users[:, :8])


@pytest.mark.parametrize("dtype", TABLE_DTYPES)
def test_the_batch_graph_is_the_fully_connected_alone(dtype: str) -> None:
    ops = model_op_types(scorer_model(_table(2000, 8, dtype), batch=BATCH_ROWS))
    assert ops == (["DEQUANTIZE"] if dtype == "float16" else []) + ["FULLY_CONNECTED"]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", TABLE_DTYPES)
def test_top_k_with_exclusions_and_allow_lists_equals_brute_force_over_the_kernels_scores(
    dtype: str, kernel: str
) -> None:
    table = _table(2500, 33, dtype, seed=1)
    scorer = Scorer(table, kernel=kernel)
    rng = np.random.default_rng(2)
    for trial in range(6):
        user = rng.standard_normal(33).astype(np.float32)
        scores = scorer.scores(user)
        banned = set(rng.choice(2500, size=50 * trial, replace=False).tolist())
        allowed = None if trial % 2 else set(rng.choice(2500, size=300, replace=False).tolist())
        for k in (1, 10, 40):
            rows, values = scorer.top_k(user, k, banned=banned, allowed=allowed)
            assert rows.tolist() == _brute_force_top(scores, k, banned, allowed)
            np.testing.assert_array_equal(values, scores[rows])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", TABLE_DTYPES)
def test_ties_across_the_k_boundary_go_to_the_lower_rows(dtype: str, kernel: str) -> None:
    vectors = np.full((3000, 16), -0.1, dtype=np.float32)
    vectors[100:3000:7] = 0.5  # 415 rows with the best score, spread over the table
    scorer = Scorer(ItemTable.quantize(vectors, dtype), kernel=kernel)
    rows, values = scorer.top_k(np.ones(16, dtype=np.float32), 10, banned={107})
    assert rows.tolist() == [100, *range(114, 171, 7)]
    assert len(set(values.tolist())) == 1


@pytest.mark.parametrize("kernel", KERNELS)
def test_fewer_rows_than_k_come_back_when_the_filters_leave_fewer(kernel: str) -> None:
    scorer = Scorer(_table(2000, 8, "int8"), kernel=kernel)
    user = np.ones(8, dtype=np.float32)
    rows, _ = scorer.top_k(user, 10, banned={3}, allowed={1, 2, 3})
    assert sorted(rows.tolist()) == [1, 2]
    # The mask is reset after each call: an unfiltered call sees every row again.
    assert len(scorer.top_k(user, 2000)[0]) == 2000


def test_small_tables_are_scored_by_numpy_and_large_ones_by_the_graph() -> None:
    for dtype, threshold in GRAPH_MIN_ITEMS.items():
        assert Scorer(_table(threshold - 1, 8, dtype)).kernel == "numpy"
        assert Scorer(_table(threshold, 8, dtype)).kernel == "graph"
    with pytest.raises(ValueError, match="kernel must be"):
        Scorer(_table(10, 8, "int8"), kernel="gpu")


@pytest.fixture(scope="module")
def large_int8_bundle(tmp_path_factory):
    """The tiny tower over a catalog large enough for the graph."""
    num_items = 3000
    vectors = np.random.default_rng(4).standard_normal((num_items, 8)).astype(np.float32)
    return write_tiny_bundle(
        tmp_path_factory.mktemp("large") / "bundle",
        table=ItemTable.quantize(vectors, "int8"),
        item_ids=item_ids(num_items),
        items_metadata=items_metadata(num_items),
    )


def test_recommend_on_a_graph_scored_catalog_equals_brute_force(large_int8_bundle) -> None:
    with Recommender.open(large_int8_bundle) as rec:
        ids = rec.item_ids
        reference_scorer = Scorer(rec.table, kernel="graph")
        comedy = {r for r in range(len(ids)) if r % 3 == GENRES.index("Comedy")}
        for history in ([], ["m3", "m40"], ["m7", "m1", "m2999"]):
            rows = [ids.index(i) for i in history]
            user = rec.user_vectors([rows])[0]
            scores = reference_scorer.scores(user)
            result = rec.recommend(history, k=10, exclude=["m0", "m1"])
            assert result.item_ids == [ids[r] for r in _brute_force_top(scores, 10, {0, 1, *rows})]
            genre = Filters(where=lambda item: item["genres"] == ["Comedy"])
            result = rec.recommend(history, k=10, filters=genre)
            assert result.item_ids == [
                ids[r] for r in _brute_force_top(scores, 10, set(rows), comedy)
            ]


def test_score_rows_gives_the_scores_recommend_ranks_by(large_int8_bundle) -> None:
    with Recommender.open(large_int8_bundle) as rec:
        histories = [[], [3, 40], [7, 1, 2999]]
        scores = rec.score_rows(histories)
        for history, row in zip(histories, scores, strict=True):
            top = rec.recommend([rec.item_ids[r] for r in history], k=10)
            expected = _brute_force_top(row, 10, set(history))
            assert top.item_ids == [rec.item_ids[r] for r in expected]
            np.testing.assert_array_equal([i.score for i in top.items], row[expected])


def test_filters_allow_list_and_predicate_combine(tmp_path) -> None:
    with Recommender.open(write_tiny_bundle(tmp_path / "b")) as rec:
        scores = rec.score_rows([[]])[0]
        allow = ["m1", "m2", "m4", "m5", "m7", "nope"]
        drama = Filters(allow=allow, where=lambda item: item["genres"] == ["Drama"])
        result = rec.recommend(k=10, filters=drama)
        # Of the allowed ids, m2, m5 and m8... are Drama (row % 3 == 2).
        assert result.item_ids == [item_ids()[r] for r in _brute_force_top(scores, 10, (), {2, 5})]
        with pytest.raises(TypeError, match="filters must be a Filters"):
            rec.recommend(k=3, filters={"allow": allow})


def test_a_swapped_table_is_visible_to_the_next_recommend(large_int8_bundle) -> None:
    with Recommender.open(large_int8_bundle) as rec:
        user = rec.user_vectors([[]])[0]
        old_table = rec.table.dequantized()
        before = rec.recommend(k=1)
        assert before.item_ids != ["hot"]
        vectors = np.concatenate([old_table, 10.0 * user[None, :] / np.abs(user).max()])
        table = ItemTable.quantize(vectors, "int8")
        rec.swap(rec.bundle.with_items(table, [*rec.item_ids, "hot"]))
        assert rec.recommend(k=1).item_ids == ["hot"]


def test_approximate_top_k_recalls_the_exact_top_10_and_honours_exclusions() -> None:
    pytest.importorskip("hnswlib")
    from pocketrec.sdk._ann import ApproximateIndex

    table = _table(3000, 16, "int8", seed=6)
    index = ApproximateIndex(table)
    rng = np.random.default_rng(7)
    found = []
    for _ in range(20):
        user = rng.standard_normal(16).astype(np.float32)
        exact_scores = table.scores(user[None, :])[0]
        banned = set(rng.choice(3000, size=100, replace=False).tolist())
        rows, values = index.top_k(user, 10, banned=banned)
        assert len(rows) == 10 and not banned & set(rows.tolist())
        assert (np.diff(values) <= 0).all()
        np.testing.assert_allclose(values, exact_scores[rows], rtol=1e-4, atol=1e-4)
        found.append(len(set(rows.tolist()) & set(_brute_force_top(exact_scores, 10, banned))))
    assert np.mean(found) >= 9.0
    user = np.ones(16, dtype=np.float32)
    rows, _ = index.top_k(user, 10, banned={3}, allowed={1, 2, 3})
    assert sorted(rows.tolist()) == [1, 2]


def test_recommend_approximate_keeps_filters_and_exclusions(large_int8_bundle) -> None:
    pytest.importorskip("hnswlib")
    with Recommender.open(large_int8_bundle) as rec:
        comedy = Filters(where=lambda item: item["genres"] == ["Comedy"])
        for history in ([], ["m3", "m40"], ["m7", "m1", "m2999"]):
            exact = rec.recommend(history, k=10, filters=comedy)
            approximate = rec.recommend(history, k=10, filters=comedy, approximate=True)
            rows = [rec.item_ids.index(i) for i in approximate.item_ids]
            assert len(rows) == 10
            assert all(r % 3 == GENRES.index("Comedy") for r in rows)
            assert not set(history) & set(approximate.item_ids)
            assert len(set(exact.item_ids) & set(approximate.item_ids)) >= 8
