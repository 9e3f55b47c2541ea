"""User tower -> TFLite conversion, checked with the real LiteRT interpreter."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from _training_fixtures import random_inputs, tiny_model_config
from ai_edge_litert.interpreter import Interpreter

from pocketrec.errors import ConversionError
from pocketrec.training import build_user_tower, to_tflite

# D = 32 and an FFN of 64 give weights of 2048 values: above the 1024 below which the
# converter leaves weights unquantized.
CONFIG = tiny_model_config(embedding_dim=32, ffn_dim=64, history_length=8)
L, D = CONFIG.history_length, CONFIG.embedding_dim


@functools.cache
def tower():
    import tf_keras

    tf_keras.utils.set_random_seed(1)
    return build_user_tower(CONFIG)


def keras_vectors(model, history: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.asarray(model({"history": history, "mask": mask}, training=False))


def run_tflite(model: bytes, history: np.ndarray, mask: np.ndarray) -> np.ndarray:
    runner = Interpreter(model_content=model).get_signature_runner("user_vector")
    return runner(history=history, mask=mask)["user_vector"]


def large_tensor_dtypes(interpreter: Interpreter) -> set[np.dtype]:
    """dtypes of the tensors of at least 256 values: weights and activations."""
    return {
        np.dtype(d["dtype"])
        for d in interpreter.get_tensor_details()
        if int(np.prod(d["shape"])) >= 256
    }


def test_float32_model_has_the_user_vector_signature_and_matches_keras() -> None:
    history, mask = random_inputs(9, L, D)
    model = to_tflite(tower())
    interpreter = Interpreter(model_content=model)
    assert interpreter.get_signature_list() == {
        "user_vector": {"inputs": ["history", "mask"], "outputs": ["user_vector"]}
    }
    runner = interpreter.get_signature_runner("user_vector")
    inputs = runner.get_input_details()
    assert inputs["history"]["dtype"] == np.float32
    assert inputs["mask"]["dtype"] == np.float32
    assert list(inputs["history"]["shape_signature"]) == [-1, L, D]
    assert list(inputs["mask"]["shape_signature"]) == [-1, L]
    output = runner(history=history, mask=mask)["user_vector"]
    assert output.dtype == np.float32
    np.testing.assert_allclose(output, keras_vectors(tower(), history, mask), atol=1e-5)
    assert large_tensor_dtypes(interpreter) == {np.dtype(np.float32)}


@pytest.mark.parametrize(
    ("quantization", "weight_dtype", "tolerance"),
    [("dynamic", np.int8, 0.1), ("float16", np.float16, 0.01), ("int8", np.int8, 0.35)],
)
def test_quantized_models_store_smaller_weights_and_keep_float_io(
    quantization: str, weight_dtype: type, tolerance: float
) -> None:
    history, mask = random_inputs(18, L, D, seed=2)

    def representative():
        for row in range(len(history)):
            yield {"history": history[row : row + 1], "mask": mask[row : row + 1]}

    model = to_tflite(
        tower(),
        quantization=quantization,
        representative_data=representative if quantization == "int8" else None,
    )
    interpreter = Interpreter(model_content=model)
    runner = interpreter.get_signature_runner("user_vector")
    assert runner.get_input_details()["history"]["dtype"] == np.float32
    assert runner.get_output_details()["user_vector"]["dtype"] == np.float32
    # Activations stay float32 except with "int8", so an int8 or float16 tensor is a weight.
    assert np.dtype(weight_dtype) in large_tensor_dtypes(interpreter)
    output = runner(history=history, mask=mask)["user_vector"]
    expected = keras_vectors(tower(), history, mask)
    # The output is layer-normalized (unit scale per row), so an absolute bound is fair.
    assert np.isfinite(output).all()
    assert np.abs(output - expected).mean() < tolerance


def test_fixed_batch_size_is_kept_in_the_signature() -> None:
    history, mask = random_inputs(1, L, D)
    model = to_tflite(tower(), batch_size=1)
    runner = Interpreter(model_content=model).get_signature_runner("user_vector")
    assert list(runner.get_input_details()["history"]["shape_signature"]) == [1, L, D]
    np.testing.assert_allclose(
        runner(history=history, mask=mask)["user_vector"],
        keras_vectors(tower(), history, mask),
        atol=1e-5,
    )


def test_inner_tensors_lose_their_names_and_constants_stay_aligned() -> None:
    from ai_edge_litert import schema_py_generated as schema

    model = to_tflite(tower())
    interpreter = Interpreter(model_content=model)
    runner = interpreter.get_signature_runner("user_vector")
    io_tensors = {d["index"] for d in runner.get_input_details().values()} | {
        d["index"] for d in runner.get_output_details().values()
    }
    named = {d["index"] for d in interpreter.get_tensor_details() if d["name"]}
    assert named == io_tensors
    parsed = schema.Model.GetRootAs(model, 0)
    starts = []
    for index in range(parsed.BuffersLength()):
        table = parsed.Buffers(index)._tab
        field = table.Offset(4)  # Buffer.data
        if field and table.VectorLen(field):
            starts.append(table.Vector(field))
    assert len(starts) >= 8  # the kernels, biases and norms of the block
    assert all(start % 16 == 0 for start in starts)


@pytest.mark.parametrize("per_channel", [True, False])
def test_int8_weight_scales_per_channel_or_per_tensor(per_channel: bool) -> None:
    history, mask = random_inputs(18, L, D, seed=3)

    def representative():
        for row in range(len(history)):
            yield {"history": history[row : row + 1], "mask": mask[row : row + 1]}

    model = to_tflite(
        tower(), quantization="int8", representative_data=representative, per_channel=per_channel
    )
    interpreter = Interpreter(model_content=model)
    scale_counts = {
        len(d["quantization_parameters"]["scales"])
        for d in interpreter.get_tensor_details()
        if d["dtype"] == np.int8 and len(d["shape"]) == 2 and min(d["shape"]) >= D
    }
    assert scale_counts == ({D, CONFIG.ffn_dim} if per_channel else {1})
    output = run_tflite(model, history, mask)
    assert np.abs(output - keras_vectors(tower(), history, mask)).mean() < 0.35


@pytest.mark.parametrize("encoder", ["mean", "gru", "linear"])
def test_other_encoders_convert_and_match_keras(encoder: str) -> None:
    model = build_user_tower(tiny_model_config(encoder=encoder))
    history, mask = random_inputs(5, 8, 16)
    np.testing.assert_allclose(
        run_tflite(to_tflite(model), history, mask),
        keras_vectors(model, history, mask),
        atol=1e-5,
    )


def test_unknown_quantization_is_refused() -> None:
    with pytest.raises(ValueError, match="quantization"):
        to_tflite(tower(), quantization="int4")


def test_int8_without_representative_data_is_refused() -> None:
    with pytest.raises(ValueError, match="representative_data"):
        to_tflite(tower(), quantization="int8")


def test_model_without_contract_inputs_is_refused() -> None:
    import tf_keras

    inputs = tf_keras.Input((L, D), name="items")
    model = tf_keras.Model(inputs, tf_keras.layers.GlobalAveragePooling1D()(inputs))
    with pytest.raises(ValueError, match="history"):
        to_tflite(model)


def test_converter_failure_is_raised_as_compression_error_with_its_message() -> None:
    import tensorflow as tf
    import tf_keras

    # A matrix determinant has no TFLite builtin kernel.
    history = tf_keras.Input((L, L), name="history")
    mask = tf_keras.Input((L,), name="mask")
    output = tf.linalg.det(history)[:, None] * mask
    model = tf_keras.Model({"history": history, "mask": mask}, output)
    with pytest.raises(ConversionError, match="MatrixDeterminant"):
        to_tflite(model)
