from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from pocketrec.data import DataError, Interactions, ItemInfo, synthetic
from pocketrec.errors import PocketrecError
from pocketrec.evaluation import (
    EASE,
    ItemKNN,
    LastItem,
    Popularity,
    evaluate,
    leave_last_out,
    metrics_table,
    paired_change,
    run_baselines,
    target_ranks,
)


def log(rows, info=None):
    users, items, times = zip(*rows, strict=True)
    return Interactions(
        users=np.array(users),
        items=np.array(items),
        timestamps=np.array(times, dtype=float),
        items_info=info or {},
    )


def test_split_sorts_by_time_keeps_file_order_on_ties_and_first_duplicate():
    split = leave_last_out(
        log(
            [
                (1, 30, 5), (1, 10, 1), (1, 20, 1),  # 10 then 20 on the tie: file order
                (1, 10, 6),  # a repeat of item 10 keeps its first event
                (1, 40, 7), (1, 50, 8),
                (2, 10, 1), (2, 60, 2),  # two events: dropped
            ]
        )
    )  # fmt: skip
    assert split.users.tolist() == ["1"]
    assert split.item_ids.tolist() == ["10", "20", "30"]
    assert split.train[0].tolist() == [0, 1, 2]
    assert split.valid.tolist() == [-1] and split.test.tolist() == [-1]
    assert split.stats == {
        "duplicates_removed": 1,
        "users_dropped_under_3_events": 1,
        "valid_targets_outside_universe": 1,
        "test_targets_outside_universe": 1,
    }


def test_split_describe_names_every_count_in_aligned_lines():
    split = leave_last_out(log([(1, 1, 1), (1, 2, 2), (1, 2, 3), (1, 3, 4), (1, 4, 5)]))
    split.stats["sampled_users"] = 1234
    lines = split.describe().splitlines()
    assert [line.rsplit(maxsplit=1) for line in lines] == [
        ["users", "1"],
        ["items", "2"],
        ["repeated (user, item) events removed", "1"],
        ["users dropped (under 3 events)", "0"],
        ["validation targets not in any train history", "1"],
        ["test targets not in any train history", "1"],
        ["sampled users", "1,234"],
    ]
    assert len({len(line) for line in lines}) == 1, "values are right-aligned in one column"
    assert split.stats["duplicates_removed"] == 1, "stats stay data"


def test_split_targets_inside_universe_and_test_history_includes_valid_item():
    split = leave_last_out(
        log(
            [(1, 1, 1), (1, 2, 2), (1, 3, 3), (1, 4, 4), (2, 3, 1), (2, 4, 2), (2, 1, 3)],
            info={"1": ItemInfo("One", ("a",)), "3": ItemInfo("Three", ("a", "b"))},
        )
    )
    # universe: train parts {1,2} and {3}
    assert split.item_ids.tolist() == ["1", "2", "3"]
    assert split.valid.tolist() == [2, -1] and split.test.tolist() == [-1, 0]
    assert [h.tolist() for h in split.histories("test")] == [[0, 1, 2], [2]]
    assert split.titles == ["One", None, "Three"]
    assert split.genre_names == ["a", "b"]
    assert split.item_genres.tolist() == [[1, 0], [0, 0], [1, 1]]


def test_split_refuses_logs_where_no_user_has_three_events():
    with pytest.raises(DataError, match="3 or more"):
        leave_last_out(log([(1, 1, 1), (1, 2, 2)]))


def test_ranks_average_ties_and_skip_excluded_items():
    scores = np.array([[5.0, 3.0, 3.0, 3.0, 9.0, 1.0]])
    ranks = target_ranks(scores.copy(), np.array([1]), [np.array([4])])
    # item 0 is above; items 1,2,3 tie at positions 1..3 -> mean 2; item 4 excluded
    assert ranks.tolist() == [2.0]


def test_ranks_refuse_a_nan_target_score():
    with pytest.raises(PocketrecError, match="non-finite"):
        target_ranks(np.array([[np.nan, 1.0]]), np.array([0]), [np.array([], int)])


def make_split():
    # User u sees 8 of 12 items, starting at 2u: every item lands in some train part.
    rows = [(u, (2 * u + step) % 12, step) for u in range(6) for step in range(8)]
    return leave_last_out(log(rows))


def test_evaluate_matches_hand_computed_metrics():
    split = make_split()
    target_of = {
        tuple(history.tolist()): target
        for history, target in zip(split.histories("test"), split.test.tolist(), strict=True)
    }

    def score_fn(histories):
        # Puts two unseen items above each user's target: rank 2 (0-based) for everyone.
        scores = np.zeros((len(histories), split.num_items), dtype=np.float32)
        for row, history in enumerate(histories):
            target = target_of[tuple(history.tolist())]
            unseen = [i for i in range(split.num_items) if i not in history and i != target]
            scores[row, unseen[:2]] = 2.0
            scores[row, target] = 1.0
        return scores

    metrics = evaluate(score_fn, split, "test")
    assert metrics.users == 6
    assert metrics.hr_at_10 == 1.0
    assert metrics.ndcg_at_10 == pytest.approx(1 / math.log2(4))
    assert metrics.mrr == pytest.approx(1 / 3)


def test_evaluate_returns_each_users_rank_so_models_compare_user_by_user():
    split = make_split()
    user_of = {tuple(h.tolist()): row for row, h in enumerate(split.histories("valid"))}

    def score_fn(histories):
        # User row u gets u unseen items above the target: rank u (0-based).
        scores = np.zeros((len(histories), split.num_items), dtype=np.float32)
        for row, history in enumerate(histories):
            user = user_of[tuple(history.tolist())]
            target = split.valid[user]
            unseen = [i for i in range(split.num_items) if i not in history and i != target]
            scores[row, unseen[:user]] = 2.0
            scores[row, target] = 1.0
        return scores

    metrics = evaluate(score_fn, split, "valid", batch_size=4)
    assert metrics.ranks.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert metrics.user_rows.tolist() == list(range(split.num_users))
    assert metrics.user_ndcg(10) == pytest.approx([1 / math.log2(r + 2) for r in range(6)])
    assert metrics.user_ndcg(2).mean() == pytest.approx((1 + 1 / math.log2(3)) / 6)
    assert metrics.user_ndcg(10).mean() == pytest.approx(metrics.ndcg_at_10)
    assert json.loads(json.dumps(metrics.as_dict())) == metrics.as_dict()
    assert "ranks" not in metrics.as_dict()
    with pytest.raises(ValueError, match="read-only"):
        metrics.ranks[0] = 9.0


def test_paired_change_is_relative_to_the_reference_and_its_error_ignores_shared_user_spread():
    rng = np.random.default_rng(0)
    reference = rng.uniform(0.0, 1.0, 400)
    # The same shift for every user: exact, however much the users differ.
    assert paired_change(reference, reference - 0.05) == pytest.approx(
        (-0.05 / reference.mean(), 0.0), abs=1e-12
    )
    assert paired_change(reference, reference) == (0.0, 0.0)
    noise = rng.normal(0.0, 0.1, 400)
    change, error = paired_change(reference, reference + noise)
    assert change == pytest.approx(noise.mean() / reference.mean())
    assert error == pytest.approx(noise.std(ddof=1) / math.sqrt(400) / reference.mean())
    # Four times the users, half the error.
    _, error_4x = paired_change(np.tile(reference, 4), np.tile(reference + noise, 4))
    assert error_4x == pytest.approx(error / 2, rel=0.01)


def test_paired_change_refuses_unpaired_figures_and_a_reference_without_signal():
    with pytest.raises(ValueError, match="same two or more users"):
        paired_change(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="same two or more users"):
        paired_change(np.ones(1), np.ones(1))
    with pytest.raises(PocketrecError, match="relative change is undefined"):
        paired_change(np.zeros(3), np.ones(3))


def test_evaluate_rejects_scores_of_the_wrong_shape():
    split = make_split()
    with pytest.raises(PocketrecError, match="one score per item"):
        evaluate(lambda h: np.zeros((len(h), 2)), split, "valid")


def test_popularity_scores_train_counts():
    split = make_split()
    model = Popularity()
    model.fit(split)
    scores = model.score([np.array([0])])
    assert scores[0].tolist() == split.item_popularity().tolist()


def test_last_item_scores_follow_counts_of_the_latest_item():
    split = make_split()
    model = LastItem()
    model.fit(split, window=1)
    row = model.score([np.array([3])])[0]
    # Item 3 is followed by item 4 in the train parts of users 0 and 1.
    assert row.argmax() == split.item_index["4"]
    assert row[split.item_index["4"]] == pytest.approx(2, abs=1e-2)


def user_item_matrix(split):
    x = np.zeros((split.num_users, split.num_items))
    for u, items in enumerate(split.train):
        x[u, items] = 1
    return x


@pytest.mark.parametrize("solver", ["dense", "dual"])
def test_ease_matches_the_closed_form(solver):
    split = make_split()
    model = EASE()
    model.fit(split, l2=3.0, solver=solver)
    x = user_item_matrix(split)
    p = np.linalg.inv(x.T @ x + 3.0 * np.eye(split.num_items))
    b = np.eye(split.num_items) - p / np.diag(p)
    np.fill_diagonal(b, 0)
    history = np.array([0, 2])
    np.testing.assert_allclose(model.score([history])[0], b[history].sum(0), atol=1e-4)


@pytest.fixture(scope="module")
def wide_split():
    # Fewer users than items: the case the users × users solver is for.
    split = leave_last_out(synthetic(120, 300, seed=3))
    assert split.num_users < split.num_items
    return split


def ranked(scores, histories):
    scores = scores.astype(np.float64)
    for row, history in enumerate(histories):
        scores[row, history] = -np.inf
    return scores, np.argsort(-scores, axis=1, kind="stable")


def test_ease_users_by_users_solver_scores_like_the_dense_one_and_picks_the_same_top_items(
    wide_split,
):
    histories = wide_split.histories("test")
    scores = {}
    for solver in ("dense", "dual"):
        model = EASE()
        model.fit(wide_split, l2=5.0, solver=solver)
        scores[solver] = model.score(histories)
    np.testing.assert_allclose(scores["dual"], scores["dense"], rtol=1e-4, atol=1e-5)
    dense, dense_order = ranked(scores["dense"], histories)
    _, dual_order = ranked(scores["dual"], histories)
    top = np.take_along_axis(dense, dense_order[:, :11], axis=1)
    clear = top[:, 9] - top[:, 10] > 1e-4  # no near-tie at the cut
    assert clear.mean() > 0.8
    for row in np.flatnonzero(clear):
        assert set(dual_order[row, :10]) == set(dense_order[row, :10]), row
    # Where items nearly tie, the dual solver's top 10 are as good under the dense scores.
    np.testing.assert_allclose(
        np.take_along_axis(dense, dual_order[:, :10], axis=1), top[:, :10], atol=1e-5
    )


def test_ease_takes_the_solver_that_needs_less_memory(wide_split):
    model = EASE()
    model.fit(wide_split, l2=50.0)
    assert model.solver == "dual"
    tall = leave_last_out(synthetic(300, 60, seed=1))
    model.fit(tall, l2=50.0)
    assert model.solver == "dense"


def dense_knn(split, neighbors):
    """The reference: the dense cosine matrix, each row cut to its top `neighbors`."""
    gram = user_item_matrix(split).T @ user_item_matrix(split)
    norms = np.sqrt(np.diag(gram))
    similarity = gram / np.outer(norms, norms)
    np.fill_diagonal(similarity, 0.0)
    kept = np.zeros_like(similarity)
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :neighbors]
    np.put_along_axis(kept, order, np.take_along_axis(similarity, order, axis=1), axis=1)
    return kept


@pytest.mark.parametrize("neighbors", [5, 40])
def test_itemknn_keeps_the_dense_top_neighbours_and_scores_like_the_dense_matrix(
    wide_split, neighbors
):
    reference = dense_knn(wide_split, neighbors)
    model = ItemKNN()
    model.fit(wide_split, neighbors=neighbors)
    for item in range(wide_split.num_items):
        expected = {int(j): reference[item, j] for j in np.flatnonzero(reference[item])}
        kept = model.neighbours(item)
        assert kept.keys() == expected.keys(), item
        np.testing.assert_allclose(list(kept.values()), list(expected.values()), rtol=1e-6)
    histories = wide_split.histories("valid")
    expected_scores = np.stack([reference[h].sum(0) for h in histories])
    np.testing.assert_allclose(model.score(histories), expected_scores, rtol=1e-5, atol=1e-6)


def test_a_baseline_over_the_memory_budget_is_a_skipped_result_that_says_why(wide_split):
    results = run_baselines(wide_split, ["popularity", "ease"], progress=False, memory_budget=1)
    assert results["popularity"].skipped is None and results["popularity"].test is not None
    ease = results["ease"]
    assert ease.test is None and ease.valid is None
    assert "memory budget" in ease.skipped and f"{wide_split.num_items:,} items" in ease.skipped
    popularity = results["popularity"]
    table = metrics_table({"popularity": (popularity.valid, popularity.test), "ease": ease.skipped})
    ease_line = next(line for line in table.splitlines() if line.startswith("| ease"))
    assert f"skipped: {ease.skipped}" in ease_line
    assert len({line.count("|") for line in table.splitlines()}) == 1, "cells stay aligned"


def test_item_item_baselines_without_scipy_are_skipped_rows_naming_the_extra(
    wide_split, monkeypatch
):
    monkeypatch.setitem(sys.modules, "scipy.sparse", None)  # `import scipy.sparse` fails
    results = run_baselines(wide_split, ["itemknn", "ease", "popularity"], progress=False)
    for name in ("itemknn", "ease"):
        assert "pocketrec[train]" in results[name].skipped
    assert results["popularity"].skipped is None


def test_baselines_on_movielens_rank_sequential_signal_above_popularity(ml100k):
    from pocketrec.data import load

    split = leave_last_out(load(ml100k))
    results = run_baselines(split, ["popularity", "last-item"], progress=False)
    assert results["last-item"].test.ndcg_at_10 > results["popularity"].test.ndcg_at_10
    assert results["last-item"].params["window"] in (1, 2, 3, 5, 8)
    assert (
        results["popularity"].test.users
        == split.num_users - split.stats["test_targets_outside_universe"]
    )
