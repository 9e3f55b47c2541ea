"""Cold start: the empty-history prior, and the measurement of new users and new items."""

from __future__ import annotations

import numpy as np
import pytest
from _training_fixtures import tiny_split

from pocketrec.benchmarks.cold_bench import (
    ColdBenchConfig,
    cold_markdown,
    compared_rankings,
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
    markdown = cold_markdown(results)
    assert "features only" in markdown
    for table, reference in (
        ("new_users", "popularity"),
        ("new_items", "popularity (oracle counts)"),
    ):
        base = results[table][reference]
        assert "vs_reference" not in base
        for name, metrics in results[table].items():
            if name == reference or base["ndcg@10"] == 0:
                continue
            versus = metrics["vs_reference"]
            assert versus["reference"] == reference
            assert versus["change"] == pytest.approx(metrics["ndcg@10"] / base["ndcg@10"] - 1)
            assert f"{versus['change']:+.1%} ± {versus['se']:.1%}" in markdown


def test_rankings_are_compared_with_the_reference_target_by_target() -> None:
    ranks = {
        "popularity": np.array([0.0, 20.0, 3.0, 50.0]),
        "better": np.array([0.0, 1.0, 3.0, 50.0]),
        "same": np.array([0.0, 20.0, 3.0, 50.0]),
    }
    compared = compared_rankings(ranks, "popularity")
    assert "vs_reference" not in compared["popularity"]
    gain = 1 / np.log2(3)  # the second target moves from rank 20 to rank 1
    base = (1 + 1 / np.log2(5)) / 4
    better = compared["better"]["vs_reference"]
    assert better["change"] == pytest.approx(gain / 4 / base)
    assert better["se"] == pytest.approx(np.std([0, gain, 0, 0], ddof=1) / 2 / base)
    assert compared["same"]["vs_reference"] == {"reference": "popularity", "change": 0.0, "se": 0.0}
    # A reference that scored nothing leaves no relative change to report.
    nothing = compared_rankings(
        {"popularity": np.array([30.0, 40.0]), "x": np.zeros(2)}, "popularity"
    )
    assert "vs_reference" not in nothing["x"]
