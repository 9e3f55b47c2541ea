"""ItemTable storage forms and encode_histories, against NumPy references."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pocketrec.errors import BundleError
from pocketrec.sdk import TABLE_DTYPES, ItemTable, encode_histories


def _vectors(n: int = 300, d: int = 13, seed: int = 1) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    vectors[3] = 0.0  # an all-zero row must survive quantization
    vectors[4] *= 100.0  # rows of very different norms get their own scales
    return vectors


def _reference_dequantized(vectors: np.ndarray, dtype: str) -> np.ndarray:
    """Independent NumPy statement of each stored form."""
    if dtype == "float32":
        return vectors
    if dtype == "float16":
        return vectors.astype(np.float16).astype(np.float32)
    levels = {"int8": 127, "int4": 7}[dtype]
    scale = _six_bit_ceiling(np.abs(vectors).max(axis=1, keepdims=True) / levels)
    q = np.round(np.divide(vectors, scale, out=np.zeros_like(vectors), where=scale > 0))
    return (q * scale).astype(np.float32)


def _six_bit_ceiling(scales: np.ndarray) -> np.ndarray:
    """``scales`` rounded up to a multiple of 2^-5 of their leading power of two."""
    nonzero = np.where(scales > 0, scales, 1.0)
    step = 2.0 ** (np.floor(np.log2(nonzero)) - 5)
    return np.where(scales > 0, np.ceil(nonzero / step) * step, 0.0).astype(np.float32)


@pytest.mark.parametrize("dtype", TABLE_DTYPES)
def test_dequantized_matches_numpy_reference(dtype: str) -> None:
    vectors = _vectors()
    table = ItemTable.quantize(vectors, dtype)
    np.testing.assert_allclose(
        table.dequantized(), _reference_dequantized(vectors, dtype), rtol=1e-6, atol=1e-6
    )
    assert table.num_items == 300
    assert table.dim == 13
    assert table.dtype == dtype


@pytest.mark.parametrize("dtype", TABLE_DTYPES)
@pytest.mark.parametrize("batch", [1, 600])
def test_scores_equal_dot_products_with_dequantized_table(dtype: str, batch: int) -> None:
    # More rows than one scoring block for both batch sizes, so block edges are covered.
    vectors = _vectors(n=9000, d=13)
    table = ItemTable.quantize(vectors, dtype)
    users = np.random.default_rng(2).standard_normal((batch, 13)).astype(np.float32)
    expected = users.astype(np.float64) @ table.dequantized().astype(np.float64).T
    scores = table.scores(users)
    assert scores.dtype == np.float32
    assert scores.shape == (batch, 9000)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(("dtype", "levels"), [("int8", 127), ("int4", 7)])
def test_integer_round_trip_error_is_at_most_half_a_step(dtype: str, levels: int) -> None:
    vectors = _vectors()
    table = ItemTable.quantize(vectors, dtype)
    step = table.scales.astype(np.float32)[:, None]
    # Rounded up to 6 significant bits, a step is at most 2^-5 coarser than max|row| / levels.
    smallest = np.abs(vectors).max(axis=1, keepdims=True) / levels
    assert (step >= smallest).all()
    assert (step <= smallest * (1 + 2.0**-5)).all()
    error = np.abs(table.dequantized() - vectors)
    assert (error <= step / 2 + 1e-6 * step).all()
    np.testing.assert_array_equal(table.dequantized()[3], 0.0)


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_scales_keep_six_significant_bits(dtype: str) -> None:
    rng = np.random.default_rng(4)
    users = rng.standard_normal((50, 13)).astype(np.float32)
    for table in (
        ItemTable.quantize(_vectors(), dtype),
        ItemTable.quantize(_vectors(), dtype, users=users),
    ):
        scales = table.scales.astype(np.float32)
        assert (scales > 0).any()
        np.testing.assert_array_equal(scales, _six_bit_ceiling(scales))


# Coarse int4 steps gain most from clipping; int8's are fine already.
@pytest.mark.parametrize(("dtype", "levels", "kept"), [("int8", 127, 0.99), ("int4", 7, 0.9)])
def test_users_choose_scales_that_keep_their_scores(dtype: str, levels: int, kept: float) -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_t(3, size=(300, 13)).astype(np.float32)  # heavy tails to clip
    vectors[3] = 0.0
    # Users concentrated on a few directions, as trained user vectors are.
    users = (rng.standard_normal((500, 4)) @ rng.standard_normal((4, 13))).astype(np.float32)
    plain = ItemTable.quantize(vectors, dtype)
    fitted = ItemTable.quantize(vectors, dtype, users=users)

    def score_errors(table: ItemTable) -> np.ndarray:
        return ((users @ (table.dequantized() - vectors).T) ** 2).sum(axis=0)

    # Each row's candidates include the unclipped scale (float16 rounding aside).
    assert (score_errors(fitted) <= score_errors(plain) * (1 + 1e-3) + 1e-6).all()
    assert score_errors(fitted).sum() < kept * score_errors(plain).sum()
    assert (fitted.scales <= plain.scales).all()
    assert (fitted.scales >= plain.scales * np.float16(0.5) * (1 - 1e-3)).all()
    assert (fitted.scales < plain.scales).any()
    np.testing.assert_array_equal(fitted.dequantized()[3], 0.0)
    nonzero = fitted.scales > 0
    steps = fitted.dequantized()[nonzero] / fitted.scales[nonzero, None].astype(np.float32)
    assert np.abs(np.round(steps)).max() <= levels


def test_users_are_checked() -> None:
    vectors = _vectors()
    with pytest.raises(ValueError, match="float16 table has none"):
        ItemTable.quantize(vectors, "float16", users=np.ones((2, 13)))
    with pytest.raises(ValueError, match=r"expected users \[U >= 1, 13\]"):
        ItemTable.quantize(vectors, "int8", users=np.ones((2, 5)))
    with pytest.raises(ValueError, match=r"expected users \[U >= 1, 13\]"):
        ItemTable.quantize(vectors, "int8", users=np.ones((0, 13)))
    with pytest.raises(ValueError, match="users contain NaN"):
        ItemTable.quantize(vectors, "int4", users=np.full((2, 13), np.nan))


def test_float16_round_trip_error_is_within_half_precision() -> None:
    vectors = _vectors()
    error = np.abs(ItemTable.quantize(vectors, "float16").dequantized() - vectors)
    assert (error <= np.abs(vectors) * 2.0**-11 + 1e-7).all()


@pytest.mark.parametrize(
    ("dtype", "expected_bytes"),
    [
        ("float32", 300 * 13 * 4),
        ("float16", 300 * 13 * 2),
        ("int8", 300 * 13 + 300 * 2),
        ("int4", 300 * 7 + 300 * 2),
    ],
)
def test_nbytes_counts_stored_arrays_and_scales(dtype: str, expected_bytes: int) -> None:
    assert ItemTable.quantize(_vectors(), dtype).nbytes == expected_bytes


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_scales_are_float16_unless_a_row_needs_float32(tmp_path, dtype: str) -> None:
    vectors = _vectors()
    entry = ItemTable.quantize(vectors, dtype).save(tmp_path)
    assert np.load(tmp_path / entry["files"]["scales"]).dtype == np.float16

    vectors[5] *= 1e-7  # max|row| / levels is below float16's normal range
    table = ItemTable.quantize(vectors, dtype)
    entry = table.save(tmp_path)
    assert np.load(tmp_path / entry["files"]["scales"]).dtype == np.float32
    assert table.nbytes == ItemTable.quantize(_vectors(), dtype).nbytes + 300 * 2
    levels = {"int8": 127, "int4": 7}[dtype]
    step = np.abs(vectors[5]).max() / levels
    assert np.abs(table.dequantized()[5] - vectors[5]).max() <= step / 2 * (1 + 1e-5)


def test_int4_file_packs_two_offset_nibbles_per_byte_low_first(tmp_path) -> None:
    vectors = np.array([[7.0, -7.0, 1.0]], dtype=np.float32)
    entry = ItemTable.quantize(vectors, "int4").save(tmp_path)
    values = np.load(tmp_path / entry["files"]["values"])
    assert values.dtype == np.uint8
    assert values.shape == (1, 2)
    # column 0: 7+8=15 low, column 1: -7+8=1 high; column 2: 1+8=9 low, pad 0+8=8 high.
    assert values.tolist() == [[15 | (1 << 4), 9 | (8 << 4)]]


@pytest.mark.parametrize("dtype", TABLE_DTYPES)
@pytest.mark.parametrize("mmap", [True, False])
def test_save_then_load_gives_the_same_table(tmp_path, dtype: str, mmap: bool) -> None:
    table = ItemTable.quantize(_vectors(), dtype)
    entry = table.save(tmp_path)
    json.dumps(entry)  # the entry goes into manifest.json
    assert entry["dtype"] == dtype
    assert entry["shape"] == [300, 13]
    assert all((tmp_path / name).is_file() for name in entry["files"].values())
    loaded = ItemTable.load(tmp_path, entry, mmap=mmap)
    np.testing.assert_array_equal(loaded.dequantized(), table.dequantized())
    users = np.ones((2, 13), dtype=np.float32)
    np.testing.assert_array_equal(loaded.scores(users), table.scores(users))
    assert loaded.nbytes == table.nbytes


def test_load_refuses_values_of_the_wrong_shape(tmp_path) -> None:
    entry = ItemTable.quantize(_vectors(), "int8").save(tmp_path)
    entry["shape"] = [301, 13]
    with pytest.raises(BundleError, match=r"expected int8 \[301, 13\].*found int8 \[300, 13\]"):
        ItemTable.load(tmp_path, entry)


def test_load_refuses_a_missing_scales_file(tmp_path) -> None:
    entry = ItemTable.quantize(_vectors(), "int4").save(tmp_path)
    (tmp_path / entry["files"]["scales"]).unlink()
    with pytest.raises(BundleError, match="missing"):
        ItemTable.load(tmp_path, entry)


def test_quantize_rejects_unknown_dtype_and_non_finite_vectors() -> None:
    with pytest.raises(ValueError, match="dtype must be one of"):
        ItemTable.quantize(_vectors(), "int2")
    bad = _vectors()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ItemTable.quantize(bad, "int8")


def test_scores_rejects_user_vectors_of_the_wrong_dimension() -> None:
    with pytest.raises(ValueError, match=r"\[B, 13\]"):
        ItemTable.quantize(_vectors(), "int8").scores(np.ones((2, 12), np.float32))


def test_vectors_returns_dequantized_rows_and_rejects_out_of_range_rows() -> None:
    table = ItemTable.quantize(_vectors(), "int4")
    np.testing.assert_array_equal(table.vectors([5, 0, 5]), table.dequantized()[[5, 0, 5]])
    with pytest.raises(ValueError, match=r"\[0, 300\)"):
        table.vectors([300])


def test_encode_histories_right_aligns_the_most_recent_items() -> None:
    vectors = _vectors(n=10, d=4)
    table = ItemTable.quantize(vectors, "float32")
    history, mask = encode_histories(table, [[1, 2], [], [0, 1, 2, 3, 4, 5]], 4)
    assert history.shape == (3, 4, 4)
    assert history.dtype == mask.dtype == np.float32
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(history[0, 2:], vectors[[1, 2]])
    np.testing.assert_array_equal(history[0, :2], 0.0)
    np.testing.assert_array_equal(history[1], 0.0)
    # Longer than L: the last L items, oldest first, most recent at position L-1.
    np.testing.assert_array_equal(history[2], vectors[[2, 3, 4, 5]])


def test_encode_histories_uses_the_dequantized_table() -> None:
    table = ItemTable.quantize(_vectors(n=10, d=4), "int4")
    history, _ = encode_histories(table, [np.array([7, 8], dtype=np.int32)], 3)
    np.testing.assert_array_equal(history[0, 1:], table.dequantized()[[7, 8]])


def test_encode_histories_rejects_bad_rows_and_lengths() -> None:
    table = ItemTable.quantize(_vectors(n=10, d=4), "float32")
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        encode_histories(table, [[1, 10]], 3)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        encode_histories(table, [[-1]], 3)
    with pytest.raises(ValueError, match="history_length"):
        encode_histories(table, [[1]], 0)
