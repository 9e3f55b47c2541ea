"""UserTower on the real LiteRT interpreter with tiny converted Keras towers."""

from __future__ import annotations

import numpy as np
import pytest
from _sdk_fixtures import (
    DIM,
    HISTORY_LENGTH,
    fixed_batch_tower,
    nan_on_empty_tower,
    user_tower,
    wrong_signature_tower,
)

from pocketrec.errors import BundleError
from pocketrec.sdk import UserTower, model_op_types


def _inputs(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    history = rng.standard_normal((batch, HISTORY_LENGTH, DIM)).astype(np.float32)
    mask = (rng.random((batch, HISTORY_LENGTH)) > 0.3).astype(np.float32)
    mask[0] = 0.0  # one empty history in every batch
    history *= mask[..., None]
    return history, mask


def test_user_tower_matches_keras_for_a_batch() -> None:
    tower = user_tower()
    runtime = UserTower(tower.tflite, num_threads=2)
    assert (runtime.history_length, runtime.dim) == (HISTORY_LENGTH, DIM)
    history, mask = _inputs(6)
    out = runtime.run(history, mask)
    assert out.shape == (6, DIM)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, tower.keras_user_vectors(history, mask), atol=1e-5)
    # The batch result equals running each history alone.
    single = np.concatenate([runtime.run(history[i : i + 1], mask[i : i + 1]) for i in range(6)])
    np.testing.assert_allclose(out, single, atol=1e-6)


def test_model_fixed_to_batch_one_falls_back_to_one_history_per_call() -> None:
    tflite, reference = fixed_batch_tower()
    runtime = UserTower(tflite)
    history, mask = _inputs(4, seed=1)
    np.testing.assert_allclose(
        runtime.run(history, mask), reference.keras_user_vectors(history, mask), atol=1e-5
    )
    # Once the fallback is chosen it keeps working.
    np.testing.assert_allclose(
        runtime.run(history[:3], mask[:3]),
        reference.keras_user_vectors(history[:3], mask[:3]),
        atol=1e-5,
    )


def test_signature_with_other_input_names_is_refused_naming_expected_and_found() -> None:
    with pytest.raises(BundleError, match=r"history float32.*found inputs \['items', 'weights'\]"):
        UserTower(wrong_signature_tower())


def test_model_of_another_history_length_is_refused() -> None:
    with pytest.raises(
        BundleError, match=r"expected history \[B, 7, D\].*found history float32 \[-1, 5, 8\]"
    ):
        UserTower(user_tower().tflite, history_length=7)


def test_bytes_that_are_not_a_model_are_refused() -> None:
    with pytest.raises(BundleError, match=r"not a loadable \.tflite"):
        UserTower(b"definitely not a flatbuffer")


def test_non_finite_user_vectors_raise_a_bundle_error_naming_empty_histories() -> None:
    runtime = UserTower(nan_on_empty_tower())
    history, mask = _inputs(3)
    with pytest.raises(BundleError, match=r"NaN or infinite vectors for 1 of 3 .*1 of them empty"):
        runtime.run(history, mask)


def test_inputs_of_the_wrong_shape_are_a_caller_mistake() -> None:
    runtime = UserTower(user_tower().tflite)
    with pytest.raises(ValueError, match=r"history must have shape \[B, 5, 8\]"):
        runtime.run(np.zeros((1, 4, DIM), np.float32), np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="num_threads"):
        UserTower(user_tower().tflite, num_threads=0)


def test_op_types_lists_the_builtin_ops_of_the_model() -> None:
    ops = model_op_types(user_tower().tflite)
    assert "FULLY_CONNECTED" in ops
    assert "TANH" in ops
    assert UserTower(user_tower().tflite).op_types == ops
