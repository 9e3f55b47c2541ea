"""Convert a user tower to a LiteRT (TFLite) flatbuffer with the bundle's signature.

The flatbuffer has one signature, ``user_vector``, with float32 inputs ``history``
``[B, L, D]`` and ``mask`` ``[B, L]`` and the float32 output ``user_vector`` ``[B, D]``
(``B`` dynamic unless fixed), whatever the quantization: the SDK always feeds and reads
floats.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from pocketrec.errors import ConversionError
from pocketrec.sdk.contract import (
    HISTORY_INPUT,
    MASK_INPUT,
    QUANTIZATIONS,
    SIGNATURE_KEY,
    USER_VECTOR_OUTPUT,
    RepresentativeData,
    check_choice,
)
from pocketrec.training._flatbuffer import strip_names


def user_tower_shape(user_tower: tf_keras.Model) -> tuple[int, int]:
    """The ``(history_length, embedding_dim)`` of a user tower's ``history`` input.

    Raises ``ValueError`` when the model lacks the ``history``/``mask`` inputs of the
    model contract (docs/architecture.md).
    """
    inputs = {tensor.name.split(":")[0]: tensor for tensor in user_tower.inputs}
    if set(inputs) != {HISTORY_INPUT, MASK_INPUT}:
        raise ValueError(
            f"expected a user tower with inputs {HISTORY_INPUT!r} [B, L, D] and "
            f"{MASK_INPUT!r} [B, L], got inputs {sorted(inputs)}; build it with "
            "pocketrec.training.build_user_tower"
        )
    shape = inputs[HISTORY_INPUT].shape
    if len(shape) != 3 or shape[1] is None or shape[2] is None:
        raise ValueError(
            f"expected the {HISTORY_INPUT!r} input to have shape [None, L, D] with fixed "
            f"L and D, got {list(shape)}"
        )
    return int(shape[1]), int(shape[2])


def to_tflite(
    user_tower: tf_keras.Model,
    *,
    quantization: str = "float32",
    representative_data: RepresentativeData | None = None,
    batch_size: int | None = None,
    per_channel: bool = True,
) -> bytes:
    """Convert ``user_tower`` to a TFLite flatbuffer with signature ``user_vector``.

    Inner tensors lose their names (`strip_names`): the signature and its tensors keep
    theirs, and the model computes the same values in fewer bytes.

    Args:
        user_tower: functional tf_keras model, inputs ``history`` float32 ``[B, L, D]``
            and ``mask`` float32 ``[B, L]``, output float32 ``[B, D]``.
        quantization: ``"float32"`` (no optimization), ``"dynamic"`` (int8 weights,
            float activations), ``"float16"`` (float16 weights) or ``"int8"`` (full
            integer kernels calibrated on ``representative_data``; inputs and outputs
            stay float32).
        representative_data: for ``"int8"`` only, a callable returning an iterable of
            ``{"history": float32 [1, L, D], "mask": float32 [1, L]}`` samples.
        batch_size: fixes the batch dimension (e.g. 1, which GPU delegates prefer); None
            keeps it dynamic (the SDK resizes the inputs per call).
        per_channel: ``"dynamic"`` and ``"int8"`` weights get a scale per output channel
            (the converter's default); False gives one per tensor, which saves 12 bytes a
            channel of quantization parameters and may cost accuracy.

    Returns:
        The flatbuffer bytes.

    Raises:
        ValueError: unknown ``quantization``, missing or unexpected representative data,
            or a model without the contract's inputs.
        ConversionError: the converter failed; its message is kept.
    """
    check_choice(quantization, QUANTIZATIONS, "quantization")
    if quantization == "int8" and representative_data is None:
        raise ValueError(
            "quantization='int8' calibrates activations and needs representative_data: "
            "a callable returning dicts {'history': [1, L, D], 'mask': [1, L]}"
        )
    if quantization != "int8" and representative_data is not None:
        raise ValueError(
            f"representative_data is only used by quantization='int8', got "
            f"quantization={quantization!r}; drop representative_data or use 'int8'"
        )
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"expected batch_size >= 1 or None, got {batch_size}")
    length, dim = user_tower_shape(user_tower)

    @tf.function(
        input_signature=[
            tf.TensorSpec([batch_size, length, dim], tf.float32, name=HISTORY_INPUT),
            tf.TensorSpec([batch_size, length], tf.float32, name=MASK_INPUT),
        ]
    )
    def user_vector(history: tf.Tensor, mask: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = user_tower({HISTORY_INPUT: history, MASK_INPUT: mask}, training=False)
        return {USER_VECTOR_OUTPUT: outputs}

    def configure(converter: tf.lite.TFLiteConverter) -> None:
        _configure(converter, quantization, representative_data, length, dim)
        # Per-tensor weight scales have no public converter switch.
        converter._experimental_disable_per_channel = not per_channel

    return convert_signature(
        user_vector,
        user_tower.variables,
        SIGNATURE_KEY,
        configure,
        f"TFLite conversion with quantization={quantization!r}",
    )


def convert_signature(
    function: tf.types.experimental.GenericFunction,
    variables: Sequence[tf.Variable],
    signature_key: str,
    configure: Callable[[tf.lite.TFLiteConverter], None],
    what: str,
) -> bytes:
    """``function`` (a ``tf.function`` with an input signature) as a TFLite flatbuffer
    whose only signature is ``signature_key``, inner tensor names stripped.

    ``configure`` sets the converter's quantization. Converter failures raise
    `ConversionError` naming ``what`` was converted.
    """
    # The module tracks the variables only, not the Keras model: saving a Keras model
    # traces every layer for Keras's own SavedModel metadata, which doubles the time.
    module = tf.Module()
    module.variables_ = list(variables)
    module.function = function
    with tempfile.TemporaryDirectory(prefix="pocketrec-tflite-") as saved_dir:
        try:
            tf.saved_model.save(module, saved_dir, signatures={signature_key: function})
            converter = tf.lite.TFLiteConverter.from_saved_model(
                saved_dir, signature_keys=[signature_key]
            )
            configure(converter)
            with warnings.catch_warnings():
                # int8 calibration runs the converter's own (deprecated) tf.lite.Interpreter.
                warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
                converted = bytes(converter.convert())
            return strip_names(converted)
        except ConversionError:
            raise
        except Exception as error:  # the converter raises many unrelated types
            raise ConversionError(f"{what} failed: {type(error).__name__}: {error}") from error


def _configure(
    converter: tf.lite.TFLiteConverter,
    quantization: str,
    representative_data: RepresentativeData | None,
    length: int,
    dim: int,
) -> None:
    if quantization == "float32":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        assert representative_data is not None
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.representative_dataset = lambda: _checked_samples(
            representative_data, length, dim
        )


def _checked_samples(
    representative_data: RepresentativeData, length: int, dim: int
) -> Iterator[dict[str, np.ndarray]]:
    expected = {HISTORY_INPUT: (length, dim), MASK_INPUT: (length,)}
    count = 0
    for sample in representative_data():
        if set(sample) != set(expected):
            raise ConversionError(
                f"expected representative samples with keys {sorted(expected)}, got "
                f"{sorted(sample)}"
            )
        checked = {}
        for name, tail in expected.items():
            array = np.asarray(sample[name], dtype=np.float32)
            if array.ndim == len(tail):
                array = array[None]
            if array.shape[1:] != tail:
                raise ConversionError(
                    f"expected representative {name!r} of shape [B, {', '.join(map(str, tail))}]"
                    f", got {list(array.shape)}"
                )
            checked[name] = array
        count += 1
        yield checked
    if count == 0:
        raise ConversionError("representative_data yielded no samples; give at least one")
