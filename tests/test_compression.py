"""Compression recipes on a tiny trained model: Keras -> tfmot -> LiteRT -> SDK bundles."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from _compression_fixtures import (
    FINE_TUNE,
    ITEMS,
    SEED,
    USERS,
    keras3_user_tower,
    quick,
    random_vectors,
    tiny_split,
    tiny_trained,
    uncloneable_user_tower,
)

from pocketrec.compression import (
    RECIPES,
    AcceleratorReport,
    ClusteringConfig,
    CompressionResult,
    FineTuneConfig,
    ModelParts,
    PruningConfig,
    QuantizationAwareConfig,
    Recipe,
    accelerator_coverage,
    auto_compress,
    calibration_user_vectors,
    cluster,
    compress,
    evaluate_bundle,
    get_recipe,
    inspect_model,
    model_parts,
    post_training_quantize,
    prune,
    quantization_aware,
    quantize_table,
    representative_histories,
    unique_weight_counts,
    weight_sparsity,
)
from pocketrec.compression._auto import REPORT_JSON, REPORT_MARKDOWN, _paired_drop
from pocketrec.errors import CompressionError
from pocketrec.evaluation import Metrics, Split
from pocketrec.sdk import ItemTable, Recommender, encode_histories, read_manifest
from pocketrec.training import TrainedModel


@pytest.fixture(scope="module")
def split() -> Split:
    return tiny_split()


@pytest.fixture(scope="module")
def trained(split: Split) -> TrainedModel:
    return tiny_trained(split)


@pytest.fixture(scope="module")
def parts(trained: TrainedModel) -> ModelParts:
    return model_parts(trained)


@pytest.fixture(scope="module")
def weights_before(parts: ModelParts) -> list[np.ndarray]:
    return [w.copy() for w in parts.network.get_weights()] + [parts.item_vectors.copy()]


@pytest.fixture(scope="module")
def half_pruned(parts: ModelParts, split: Split) -> ModelParts:
    """The tower pruned to 50 %, the table left as trained."""
    return prune(parts, PruningConfig(0.5, prune_item_table=False), split, FINE_TUNE)


@pytest.fixture(scope="module")
def bundles(
    parts: ModelParts,
    weights_before: list[np.ndarray],
    split: Split,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, CompressionResult]:
    """Every named recipe applied once to the same parts (short fine-tuning, no evaluation)."""
    out = tmp_path_factory.mktemp("bundles")
    return {
        name: compress(
            parts, quick(recipe), out / name, split=split, measure=False, probe_gpu=False
        )
        for name, recipe in RECIPES.items()
    }


def _model_bytes(result: CompressionResult) -> bytes:
    manifest = read_manifest(result.bundle)
    return (result.bundle / manifest["model"]["file"]).read_bytes()


def _shipped_table(result: CompressionResult) -> ItemTable:
    return ItemTable.load(result.bundle, read_manifest(result.bundle)["table"], mmap=False)


# Recipes -------------------------------------------------------------------------------


def test_every_recipe_writes_a_bundle_the_sdk_opens_and_scores(
    bundles: dict[str, CompressionResult], split: Split
) -> None:
    histories = split.histories("valid")[:5]
    for name, result in bundles.items():
        with Recommender.open(result.bundle) as recommender:
            scores = recommender.score_rows(histories)
        assert scores.shape == (5, split.num_items), name
        assert np.isfinite(scores).all(), name


def test_recipes_leave_the_parts_they_compress_untouched(
    bundles: dict[str, CompressionResult], parts: ModelParts, weights_before: list[np.ndarray]
) -> None:
    after = [*parts.network.get_weights(), parts.item_vectors]
    for old, new in zip(weights_before, after, strict=True):
        np.testing.assert_array_equal(old, new)


def test_float32_bundle_scores_as_the_trained_tower_with_merged_attention_kernels(
    bundles: dict[str, CompressionResult], parts: ModelParts, trained: TrainedModel, split: Split
) -> None:
    # The parts hold the encoder with each block's query-key and value-output kernels
    # merged (fold_attention): fewer weights, the trained tower's vectors.
    names = {layer.name for layer in parts.encoder.layers}
    assert "block0_query_key" in names and "block0_key" not in names
    assert parts.encoder.count_params() < trained.encoder.count_params()
    histories = split.histories("valid")[:20]
    with Recommender.open(bundles["float32"].bundle) as recommender:
        scores = recommender.score_rows(histories)
    np.testing.assert_allclose(scores, trained.score(histories), rtol=1e-4, atol=1e-4)


def test_manifest_records_recipe_quantization_and_accelerator(
    bundles: dict[str, CompressionResult],
) -> None:
    for name, result in bundles.items():
        manifest = read_manifest(result.bundle)
        recipe = RECIPES[name]
        assert manifest["recipe"] == name
        assert manifest["model"]["quantization"] == recipe.quantization
        assert manifest["model"]["accelerator"] == recipe.accelerator
        assert manifest["table"]["dtype"] == recipe.table_dtype
        assert manifest["extra"]["compression"]["recipe"]["name"] == name


@pytest.mark.parametrize(
    ("name", "weights", "no_weights", "activations"),
    [
        ("float32", {"float32"}, {"float16", "int8"}, {"float32"}),
        ("dynamic", {"int8"}, {"float16"}, {"float32"}),
        ("float16", {"float16"}, {"float32", "int8"}, {"float32"}),
        ("int8", {"int8"}, {"float32", "float16"}, {"int8"}),
        ("qat+int8", {"int8"}, {"float32", "float16"}, {"int8"}),
        ("pruned+clustered+int8+int4-table", {"int8"}, {"float32", "float16"}, {"int8"}),
        ("clustered+int8", {"int8"}, {"float32", "float16"}, {"int8"}),
        ("gpu-float16", {"float16"}, {"float32", "int8"}, {"float32"}),
    ],
)
def test_converted_tensors_have_the_recipes_dtypes(
    bundles: dict[str, CompressionResult],
    name: str,
    weights: set[str],
    no_weights: set[str],
    activations: set[str],
) -> None:
    info = inspect_model(_model_bytes(bundles[name]))
    assert weights <= set(info.weight_dtypes)
    assert not no_weights & set(info.weight_dtypes)
    assert activations <= set(info.activation_dtypes)
    assert info.input_dtypes == {"history": "float32", "mask": "float32"}
    assert info.output_dtypes == {"user_vector": "float32"}
    assert bundles[name].model_info == info


def test_full_integer_models_keep_no_float_kernels(bundles: dict[str, CompressionResult]) -> None:
    for name in ("int8", "int8+int8-table", "qat+int8"):
        info = inspect_model(_model_bytes(bundles[name]))
        # Only the float32 boundary (QUANTIZE in, DEQUANTIZE out) stays float.
        assert info.activation_dtypes.get("float32", 0) <= 1, name
        assert info.weight_dtypes.get("float32", 0) == 0, name


@pytest.mark.parametrize(
    "name",
    [
        "int8",
        "float16",
        "int8+int8-table",
        "int8+int4-table",
        "pruned+clustered+int8+int4-table",
        "qat+int8",
    ],
)
def test_shipped_table_is_the_sdk_quantization_of_the_trained_item_vectors(
    bundles: dict[str, CompressionResult],
    trained: TrainedModel,
    parts: ModelParts,
    split: Split,
    name: str,
) -> None:
    # A recipe that fine-tunes the tower against a frozen table ships the table the
    # trained model would: fine-tuning reads it as shipped and leaves it so.
    shipped = _shipped_table(bundles[name])
    table_dtype = RECIPES[name].table_dtype
    # int4 tables keep the calibration users' scores (their scales are clipped to it).
    calibration = (
        calibration_user_vectors(parts.user_tower, trained.item_vectors(), split)
        if table_dtype == "int4"
        else None
    )
    expected = ItemTable.quantize(trained.item_vectors(), table_dtype, users=calibration)
    assert shipped.dtype == table_dtype
    np.testing.assert_array_equal(shipped.dequantized(), expected.dequantized())
    users = np.random.default_rng(0).normal(size=(3, shipped.dim)).astype(np.float32)
    np.testing.assert_allclose(
        quantize_table(trained.item_vectors(), table_dtype, calibration).scores(users),
        shipped.scores(users),
        rtol=1e-5,
        atol=1e-6,
    )


def test_pruned_recipe_prunes_then_clusters_the_tower_and_ships_an_int4_table(
    bundles: dict[str, CompressionResult],
) -> None:
    result = bundles["pruned+clustered+int8+int4-table"]
    recipe = RECIPES["pruned+clustered+int8+int4-table"]
    pruning, clustering = recipe.pruning, recipe.clustering
    assert pruning is not None and not pruning.prune_item_table
    assert clustering is not None and clustering.preserve_sparsity
    assert result.sparsity is not None and result.unique_values is not None
    tower = {k: v for k, v in result.sparsity.items() if k not in ("item_table", "overall")}
    assert tower
    # Clustering kept the pruned zeros: each kernel is its zeros and at most N values.
    assert min(tower.values()) >= pruning.target_sparsity - 0.005
    assert max(result.unique_values[name] for name in tower) <= clustering.num_clusters + 1
    assert result.steps[0].startswith(f"prune({pruning.target_sparsity:g}")
    assert result.steps[1] == f"cluster({clustering.num_clusters})"
    assert _shipped_table(result).dtype == "int4"


def test_pruning_without_the_table_leaves_it_as_trained(
    parts: ModelParts, half_pruned: ModelParts
) -> None:
    np.testing.assert_array_equal(half_pruned.item_vectors, parts.item_vectors)
    sparsity = weight_sparsity(half_pruned)
    assert sparsity["item_table"] == np.mean(parts.item_vectors == 0)
    assert min(v for k, v in sparsity.items() if k not in ("item_table", "overall")) >= 0.495


def test_tower_and_table_reach_their_own_sparsity(parts: ModelParts, split: Split) -> None:
    pruned = prune(parts, PruningConfig(target_sparsity=0.5, table_sparsity=0.9), split, FINE_TUNE)
    sparsity = weight_sparsity(pruned)
    tower = [v for k, v in sparsity.items() if k not in ("item_table", "overall")]
    assert tower
    assert all(abs(value - 0.5) < 0.01 for value in tower)
    assert sparsity["item_table"] == pytest.approx(0.9, abs=0.01)
    assert pruned.steps == ("prune(0.5, table 0.9)",)


_FINE_TUNE_IN_A_FRESH_PROCESS = """
import sys
from pocketrec.compression import FineTuneConfig, PruningConfig, model_parts, prune
from pocketrec.data import synthetic
from pocketrec.evaluation import leave_last_out
split = leave_last_out(synthetic(num_users={users}, num_items={items}, seed={seed}))
config = FineTuneConfig(steps={steps}, batch_size={batch_size})
pruned = prune(model_parts(sys.argv[1]), PruningConfig(0.5, prune_item_table=False), split, config)
print(b"".join(w.tobytes() for w in pruned.network.get_weights()).hex())
"""


def test_fine_tuning_gives_the_same_weights_in_a_fresh_process_as_after_training(
    trained: TrainedModel, split: Split, tmp_path: Path
) -> None:
    # Training (the `trained` fixture, here) turns on TensorFlow's deterministic kernels,
    # which sum in another order: `pocketrec compress` in a fresh process must still
    # reproduce the bundles of a run that trained first (the bench).
    trained.save(tmp_path / "model")
    code = _FINE_TUNE_IN_A_FRESH_PROCESS.format(
        users=USERS, items=ITEMS, seed=SEED, steps=FINE_TUNE.steps, batch_size=FINE_TUNE.batch_size
    )
    fresh = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "model")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[-1]
    config = PruningConfig(0.5, prune_item_table=False)
    here = prune(model_parts(tmp_path / "model"), config, split, FINE_TUNE)
    assert fresh == b"".join(w.tobytes() for w in here.network.get_weights()).hex()


def test_pruned_model_is_smaller_gzipped_than_the_int8_model(
    bundles: dict[str, CompressionResult],
) -> None:
    pruned = bundles["pruned+clustered+int8+int4-table"].sizes
    dense = bundles["int8+int4-table"].sizes
    assert pruned["model"]["gzip"] < dense["model"]["gzip"]
    assert pruned["model"]["raw"] == dense["model"]["raw"]


def test_clustered_recipe_leaves_at_most_n_values_per_weight(
    bundles: dict[str, CompressionResult],
) -> None:
    result = bundles["clustered+int8"]
    clusters = RECIPES["clustered+int8"].clustering.num_clusters
    assert result.unique_values is not None
    assert 0 < max(result.unique_values.values()) <= clusters
    # Each shipped int8 row holds at most `clusters` distinct values.
    shipped = _shipped_table(result)
    per_row = [np.unique(row).size for row in shipped.dequantized()]
    assert max(per_row) <= clusters


@pytest.mark.parametrize("preserve_sparsity", [True, False])
def test_clustering_a_pruned_tower_keeps_its_zeros_only_when_asked(
    half_pruned: ModelParts, split: Split, preserve_sparsity: bool
) -> None:
    config = ClusteringConfig(
        num_clusters=4, cluster_item_table=False, preserve_sparsity=preserve_sparsity
    )
    clustered = cluster(half_pruned, config, split, FINE_TUNE)
    before, after = weight_sparsity(half_pruned), weight_sparsity(clustered)
    tower = [name for name in before if name not in ("item_table", "overall")]
    assert tower
    kept = [after[name] >= before[name] for name in tower]
    assert all(kept) if preserve_sparsity else not all(kept)
    if preserve_sparsity:
        counts = unique_weight_counts(clustered)
        # The zeros and at most four shared values.
        assert max(counts[name] for name in tower) <= config.num_clusters + 1


def test_the_clustering_step_fine_tunes_with_its_own_config(
    parts: ModelParts, split: Split, tmp_path: Path
) -> None:
    # A learning rate this large overflows the loss within a few steps: only the
    # clustering step's config has it.
    recipe = Recipe(
        "clustered-apart",
        "clustering with its own fine-tuning",
        clustering=ClusteringConfig(num_clusters=4, cluster_item_table=False),
        fine_tune=FINE_TUNE,
        cluster_fine_tune=dataclasses.replace(FINE_TUNE, learning_rate=1e30),
    )
    with pytest.raises(CompressionError, match="diverged"):
        compress(parts, recipe, tmp_path / "b", split=split, measure=False, probe_gpu=False)
    # And the recipe's own fine-tuning is not the clustering step's: swapped, it runs.
    swapped = dataclasses.replace(
        recipe, fine_tune=recipe.cluster_fine_tune, cluster_fine_tune=FINE_TUNE
    )
    result = compress(parts, swapped, tmp_path / "c", split=split, measure=False, probe_gpu=False)
    assert result.steps == ("cluster(4)",)


def test_quantization_aware_recipe_learns_int8_ranges(
    bundles: dict[str, CompressionResult],
) -> None:
    result = bundles["qat+int8"]
    assert result.steps == ("qat",)
    assert result.model_info.ops.get("FULLY_CONNECTED", 0) > 0


def test_sizes_shrink_with_the_formats(bundles: dict[str, CompressionResult]) -> None:
    raw = {name: result.sizes["total"]["raw"] for name, result in bundles.items()}
    table = {name: result.sizes["table"]["raw"] for name, result in bundles.items()}
    model = {name: result.sizes["model"]["raw"] for name, result in bundles.items()}
    assert table["int8+int4-table"] < table["int8+int8-table"] < table["float16"] < table["int8"]
    assert model["int8"] < model["float16"] < model["float32"]
    assert raw["int8+int8-table"] < raw["float32"]


# Accelerators --------------------------------------------------------------------------


def test_gpu_export_has_a_fixed_batch_and_a_graph_the_gpu_takes_whole(
    bundles: dict[str, CompressionResult], trained: TrainedModel
) -> None:
    result = bundles["gpu-float16"]
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=_model_bytes(result)).get_signature_runner("user_vector")
    shape = [1, 8, trained.config.table_dim]
    assert list(runner.get_input_details()["history"]["shape_signature"]) == shape
    cover = result.accelerators
    assert cover.gpu_source == "static"
    assert cover.gpu_fully_accelerated
    assert cover.gpu_rejected == {}
    # Float16 weights reach the GPU widened (the SDK drops their DEQUANTIZEs), and the
    # user vector's slice keeps its axis: XNNPACK takes the whole graph too.
    assert cover.ops["DEQUANTIZE"] > 0
    assert cover.xnnpack_fully_delegated


def test_static_gpu_table_rejects_a_slice_that_shrinks_an_axis() -> None:
    import tensorflow as tf
    import tf_keras

    from pocketrec.training import to_tflite

    history = tf_keras.Input(shape=(4, 8), name="history")
    mask = tf_keras.Input(shape=(4,), name="mask")
    sequence = tf_keras.layers.Dense(8)(history * mask[:, :, None])
    shrinking = tf_keras.Model([history, mask], sequence[:, -1, :])
    kept = tf_keras.Model([history, mask], tf.reshape(sequence[:, -1:, :], [-1, 8]))

    cover = accelerator_coverage(to_tflite(shrinking, batch_size=1), probe_gpu=False)
    assert set(cover.gpu_rejected) == {"STRIDED_SLICE"}
    assert "shrink_axis_mask" in cover.gpu_rejected["STRIDED_SLICE"]
    assert cover.gpu_supported == cover.num_ops - 1
    assert cover.xnnpack_on_cpu_kernels == {"STRIDED_SLICE": 1}
    cover = accelerator_coverage(to_tflite(kept, batch_size=1), probe_gpu=False)
    assert cover.gpu_fully_accelerated and cover.gpu_supported == cover.num_ops


def test_int8_models_are_reported_as_cpu_only(bundles: dict[str, CompressionResult]) -> None:
    cover = bundles["int8+int8-table"].accelerators
    assert not cover.gpu_fully_accelerated
    assert "FULLY_CONNECTED" in cover.gpu_rejected
    assert "int8" in cover.gpu_rejected["FULLY_CONNECTED"]


def test_xnnpack_coverage_is_measured_against_the_graph(
    bundles: dict[str, CompressionResult],
) -> None:
    for name, result in bundles.items():
        cover: AcceleratorReport = result.accelerators
        on_cpu = sum(cover.xnnpack_on_cpu_kernels.values())
        assert 0 < cover.xnnpack_delegated <= cover.num_ops, name
        assert cover.xnnpack_delegated + on_cpu == cover.num_ops, name
        assert sum(cover.ops.values()) == cover.num_ops, name
        document = cover.to_dict()
        assert document["cpu_xnnpack"]["source"] == "measured"
        assert "NNAPI" in document["npu"] and "Android 15" in document["npu"]


def test_gpu_probe_reports_the_gpu_as_measured_or_static(
    bundles: dict[str, CompressionResult],
) -> None:
    cover = accelerator_coverage(_model_bytes(bundles["float16"]), probe_gpu=True)
    assert cover.gpu_source in ("measured", "static")
    if cover.gpu_source == "static":
        assert cover.gpu_supported is not None


# Steps and their errors ----------------------------------------------------------------


def test_prune_refuses_a_fine_tuning_too_short_for_its_schedule(
    trained: TrainedModel, split: Split
) -> None:
    with pytest.raises(ValueError, match="too short"):
        prune(model_parts(trained), PruningConfig(frequency=50), split, FineTuneConfig(steps=20))


def test_prune_without_prunable_layers_says_what_to_lower(
    trained: TrainedModel, split: Split
) -> None:
    config = PruningConfig(min_weights=10**9, prune_item_table=False)
    with pytest.raises(CompressionError, match="min_weights"):
        prune(model_parts(trained), config, split, FINE_TUNE)


def test_keras3_model_is_refused_with_the_fix() -> None:
    with pytest.raises(CompressionError, match="Keras 3") as info:
        ModelParts(keras3_user_tower(), random_vectors(ITEMS))
    assert "TF_USE_LEGACY_KERAS=1" in str(info.value)
    assert "tf_keras" in str(info.value)


def test_a_tower_that_cannot_be_rebuilt_converts_as_it_is(split: Split, tmp_path: Path) -> None:
    # Only fine-tuning needs a copy of the tower.
    parts = ModelParts(uncloneable_user_tower(), random_vectors(split.num_items))
    result = compress(parts, "int8", tmp_path / "b", split=split, measure=False, probe_gpu=False)
    with Recommender.open(result.bundle) as recommender:
        assert recommender.score_rows(split.histories("valid")[:3]).shape == (3, split.num_items)


def test_layer_that_cannot_be_rebuilt_is_named_with_the_fix(split: Split) -> None:
    parts = ModelParts(uncloneable_user_tower(), random_vectors(split.num_items))
    with pytest.raises(CompressionError, match=r"scaled \(ScaledDense\)") as info:
        prune(parts, PruningConfig(), split, FINE_TUNE)
    assert "get_config" in str(info.value)


def test_quantization_aware_names_the_layer_tfmot_cannot_quantize(
    trained: TrainedModel, split: Split
) -> None:
    import tf_keras

    norm = tf_keras.layers.LayerNormalization
    first = next(layer.name for layer in trained.encoder.layers if isinstance(layer, norm))
    config = QuantizationAwareConfig(layer_types=(norm,))
    with pytest.raises(CompressionError, match=first) as info:
        quantization_aware(model_parts(trained), split, FINE_TUNE, config)
    assert "QuantizeConfig" in str(info.value)


def test_representative_histories_are_real_histories_from_the_shipped_table(
    trained: TrainedModel, split: Split
) -> None:
    table = quantize_table(trained.item_vectors(), "int8")
    samples = list(representative_histories(split, table, 8, samples=4, seed=1)())
    assert len(samples) == 4
    histories = [h for h in split.histories("valid") if len(h)]
    chosen = np.random.default_rng(1).choice(len(histories), size=4, replace=False)
    history, mask = encode_histories(table, [histories[i] for i in chosen], 8)
    for row, sample in enumerate(samples):
        np.testing.assert_array_equal(sample["history"], history[row : row + 1])
        np.testing.assert_array_equal(sample["mask"], mask[row : row + 1])


def test_int8_conversion_without_calibration_data_is_refused(trained: TrainedModel) -> None:
    with pytest.raises(ValueError, match="representative"):
        post_training_quantize(trained.user_tower, "int8")


@pytest.mark.parametrize(
    "changes",
    [{"target_sparsity": 1.0}, {"table_sparsity": 0.0}, {"end_fraction": 0.0}, {"frequency": 0}],
)
def test_pruning_config_refuses_values_out_of_range(changes: dict[str, float]) -> None:
    name = next(iter(changes))
    with pytest.raises(ValueError, match=name):
        PruningConfig(**changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"quantization": "int4"}, "quantization must be one of"),
        ({"table_dtype": "int2"}, "table_dtype must be one of"),
        ({"quantization_aware": True}, "needs quantization='int8'"),
        ({"accelerator": "gpu", "quantization": "int8"}, "compute in float"),
        ({"accelerator": "npu"}, "accelerator"),
        ({"pruning": PruningConfig(), "clustering": ClusteringConfig()}, "preserve_sparsity"),
        ({"cluster_fine_tune": FineTuneConfig()}, "does not cluster"),
    ],
)
def test_inconsistent_recipes_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Recipe("bad", "inconsistent", **changes)  # type: ignore[arg-type]


def test_unknown_recipe_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="pruned\\+clustered\\+int8"):
        get_recipe("int3")


def test_compress_refuses_a_split_of_other_items(trained: TrainedModel, tmp_path: Path) -> None:
    from pocketrec.data import synthetic
    from pocketrec.evaluation import leave_last_out

    wrong = leave_last_out(synthetic(num_users=50, num_items=30, seed=3))
    with pytest.raises(ValueError, match="the split has"):
        compress(trained, "float32", tmp_path / "b", split=wrong, measure=False)


# Accuracy-aware selection --------------------------------------------------------------


def test_auto_keeps_the_smallest_bundle_within_budget_and_rejects_the_rest(
    trained: TrainedModel, split: Split, tmp_path: Path
) -> None:
    # Pruning 98% of every weight with a near-zero learning rate ruins the ranking.
    ruinous = Recipe(
        "ruinous",
        "98% pruning without real fine-tuning",
        "float32",
        pruning=PruningConfig(target_sparsity=0.98),
        fine_tune=FineTuneConfig(steps=12, batch_size=32, learning_rate=1e-9),
    )
    budget = 0.05
    report = auto_compress(
        model_parts(trained),
        tmp_path,
        split=split,
        max_ndcg_drop=budget,
        candidates=["float16", ruinous],
        probe_gpu=False,
    )
    by_name = {c.name: c for c in report.candidates}
    assert by_name["ruinous"].ndcg_drop > budget
    assert not by_name["ruinous"].kept
    assert "exceeds the budget" in by_name["ruinous"].reason
    fitting = [c for c in report.candidates if c.ndcg_drop is not None and c.ndcg_drop <= budget]
    base_gzip = report.baseline.payload("gzip")
    smaller = [c for c in fitting if c.result.payload("gzip") < base_gzip]
    expected = min(smaller, key=lambda c: c.result.payload("gzip")).name if smaller else "float32"
    assert report.selected == expected
    assert sum(c.kept for c in report.candidates) == (0 if expected == "float32" else 1)

    document = json.loads((tmp_path / REPORT_JSON).read_text())
    assert document["selected"] == report.selected
    candidate = {c["name"]: c for c in document["candidates"]}["float16"]
    for part in ("model", "table", "total"):
        assert set(candidate["result"]["sizes"][part]) == {"raw", "gzip"}
    for stage in ("valid", "test"):
        assert {"hr@10", "ndcg@10"} <= set(candidate["result"]["metrics"][stage])
    markdown = (tmp_path / REPORT_MARKDOWN).read_text()
    assert "| ruinous |" in markdown and "exceeds the budget" in markdown
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| recipe | model raw"))
    header, _, *rows = lines[start : lines.index("", start)]
    assert "| valid NDCG drop | test NDCG drop |" in header
    assert len(rows) == 3  # float32, float16, ruinous
    assert all(row.count(" | ") == header.count(" | ") for row in rows)
    # Drops and their errors, on both stages, come from the SDK's scores of the bundles.
    base_metrics = evaluate_bundle(tmp_path / "float32", split)
    float16_metrics = evaluate_bundle(tmp_path / "float16", split)
    float16 = by_name["float16"]
    for stage, drop, se in (
        ("valid", float16.ndcg_drop, float16.ndcg_drop_se),
        ("test", float16.test_ndcg_drop, float16.test_ndcg_drop_se),
    ):
        base_users = base_metrics[stage].user_ndcg(10)
        assert base_users.mean() == pytest.approx(report.baseline.ndcg_at_10(stage))
        differences = base_users - float16_metrics[stage].user_ndcg(10)
        assert drop == pytest.approx(differences.mean() / base_users.mean(), abs=1e-9)
        assert se == pytest.approx(
            differences.std(ddof=1) / np.sqrt(len(differences)) / base_users.mean()
        )


# Command line --------------------------------------------------------------------------


def test_cli_module_imports_no_tensorflow() -> None:
    code = (
        "import sys; from pocketrec.cli import build_parser; build_parser()\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_lists_recipes(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["--list-recipes"]) == 0
    listed = capsys.readouterr().out
    for name in RECIPES:
        assert name in listed


def test_cli_compresses_a_saved_run_into_a_bundle(
    trained: TrainedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trained.save(tmp_path / "run" / "model")
    args = ["--model", str(tmp_path / "run"), "--recipe", "float16", "--out"]
    args += [str(tmp_path / "bundle"), "--json"]
    args += ["--synthetic", str(USERS), "--synthetic-items", str(ITEMS), "--seed", str(SEED)]
    assert _cli(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["recipe"]["name"] == "float16"
    assert read_manifest(tmp_path / "bundle")["recipe"] == "float16"
    assert printed["metrics"]["valid"]["users"] > 0


def test_cli_fine_tune_steps_override_every_fine_tuning_of_the_recipe(
    trained: TrainedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trained.save(tmp_path / "run" / "model")
    recipe = "pruned+clustered+int8+int4-table"
    args = ["--model", str(tmp_path / "run"), "--recipe", recipe, "--out"]
    args += [str(tmp_path / "bundle"), "--json", "--fine-tune-steps", "20"]
    args += ["--synthetic", str(USERS), "--synthetic-items", str(ITEMS), "--seed", str(SEED)]
    assert _cli(args) == 0
    printed = json.loads(capsys.readouterr().out)["recipe"]
    assert printed["fine_tune"]["steps"] == printed["cluster_fine_tune"]["steps"] == 20
    named = RECIPES[recipe]
    assert printed["fine_tune"]["learning_rate"] == named.fine_tune.learning_rate
    assert named.cluster_fine_tune is not None
    assert printed["cluster_fine_tune"]["learning_rate"] == named.cluster_fine_tune.learning_rate


def test_cli_without_data_says_what_to_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(["--model", str(tmp_path), "--recipe", "int8", "--out", str(tmp_path)]) == 2
    assert "--data" in capsys.readouterr().err


def _cli(argv: list[str]) -> int:
    from pocketrec.cli import main

    return main(["compress", *argv])


def test_a_drop_against_a_float32_bundle_that_ranks_nothing_is_a_compression_error() -> None:
    def bundle(ranks: list[float]) -> Any:
        metrics = Metrics(
            users=len(ranks),
            hr={10: 0.0},
            ndcg={10: 0.0},
            mrr=0.0,
            ranks=np.asarray(ranks),
            user_rows=np.arange(len(ranks)),
        )
        return SimpleNamespace(metrics={"valid": metrics}, ndcg_at_10=lambda stage: 0.0)

    with pytest.raises(CompressionError, match=r"NDCG@10 0\.0 on valid; a relative drop"):
        _paired_drop(bundle([40.0, 50.0, 60.0]), bundle([0.0, 1.0, 2.0]), "valid")
