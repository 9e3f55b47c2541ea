"""Cold start: the empty-history prior, and the measurement of new users and new items."""

from __future__ import annotations

import numpy as np
import pytest
from _training_fixtures import tiny_split

from pocketrec.benchmarks.cold_bench import (
    ColdBenchConfig,
    cold_markdown,
    run_cold_bench,
    without_items,
)
from pocketrec.training.cold_start import cold_start_vector


def test_cold_start_vector_ranks_items_by_users_recent_choices() -> None:
    vectors = np.random.default_rng(0).standard_normal((20, 32)).astype(np.float32)
    # Old events favour item 0; the latest ones item 7, then item 3.
    histories = [np.array([0, 0, 7, 3], np.int32)] * 3 + [np.array([0, 0, 7], np.int32)] * 2
    prior = cold_start_vector(vectors, histories, recent=2, steps=2000)
    assert prior.shape == (32,) and prior.dtype == np.float32
    assert list(np.argsort(-(vectors @ prior))[:2]) == [7, 3]
    assert not cold_start_vector(vectors, [np.zeros(0, np.int32)]).any()


def test_without_items_renumbers_rows_and_drops_held_out_events_and_targets() -> None:
    split = tiny_split()
    held = np.array([0, 5, 9])
    reduced = without_items(split, held)
    kept = np.setdiff1d(np.arange(split.num_items), held)
    assert list(reduced.item_ids) == list(split.item_ids[kept])
    for before, after in zip(split.train, reduced.train, strict=True):
        assert list(reduced.item_ids[after]) == [
            split.item_ids[i] for i in before if i not in set(held)
        ]
    for stage in ("valid", "test"):
        before, after = split.targets(stage), reduced.targets(stage)
        gone = np.isin(before, held) | (before < 0)
        assert (after[gone] == -1).all()
        assert list(reduced.item_ids[after[~gone]]) == list(split.item_ids[before[~gone]])


def test_cold_bench_refuses_a_holdout_share_outside_zero_to_one() -> None:
    for holdout in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="holdout"):
            run_cold_bench(tiny_split(), ColdBenchConfig(holdout=holdout, epochs=1))


def test_cold_bench_reports_new_users_and_new_items_beside_their_baselines() -> None:
    results = run_cold_bench(tiny_split(), ColdBenchConfig(holdout=0.2, epochs=1))
    assert set(results["new_users"]) == {"model, empty history", "cold-start vector", "popularity"}
    assert set(results["new_items"]) == {
        "model, features only",
        "popularity (oracle counts)",
        "random",
    }
    held_targets = {m["targets"] for m in results["new_items"].values()}
    assert len(held_targets) == 1 and held_targets.pop() > 0
    for table in ("new_users", "new_items"):
        for metrics in results[table].values():
            assert 0.0 <= metrics["ndcg@10"] <= metrics["hr@10"] <= 1.0
    assert "features only" in cold_markdown(results)
