"""Quantization-aware training (tfmot) of the user tower's Dense layers."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from dataclasses import dataclass

import tensorflow_model_optimization as tfmot
import tf_keras

from pocketrec.compression._configs import FineTuneConfig
from pocketrec.compression._parts import (
    ModelParts,
    fine_tune,
    item_table_layer,
    private_copy,
    rewrap,
)
from pocketrec.errors import CompressionError
from pocketrec.evaluation import Split


@dataclass(frozen=True)
class QuantizationAwareConfig:
    """Which layers learn their int8 ranges during fine-tuning.

    Attributes:
        layer_types: layer classes annotated for QAT; tfmot's default 8-bit scheme
            supports ``Dense`` (``Embedding`` and custom layers are not supported by it).
    """

    layer_types: tuple[type, ...] = (tf_keras.layers.Dense,)


def quantization_aware(
    parts: ModelParts,
    split: Split,
    fine_tune_config: FineTuneConfig | None = None,
    config: QuantizationAwareConfig | None = None,
) -> ModelParts:
    """Fine-tunes the user tower with fake int8 quantization of its Dense layers.

    The item table stays as it is (quantize it with the SDK's row-wise formats). The
    returned tower carries fake-quant nodes: convert it with ``"int8"``
    post-training quantization, which reads the learned ranges.

    Raises:
        CompressionError: tfmot cannot quantize a layer (the message names it and the fix).
    """
    config = config or QuantizationAwareConfig()
    fine_tune_config = fine_tune_config or FineTuneConfig()
    if parts.quantization_aware:
        raise ValueError("the user tower is already quantization-aware; apply QAT once")

    def annotate(layer: tf_keras.layers.Layer) -> tf_keras.layers.Layer:
        if isinstance(layer, config.layer_types):
            return tfmot.quantization.keras.quantize_annotate_layer(layer)
        return layer

    annotated = rewrap(private_copy(parts.network), annotate)
    try:
        with tfmot.quantization.keras.quantize_scope():
            network = tfmot.quantization.keras.quantize_apply(annotated)
    except (ValueError, RuntimeError, TypeError) as error:
        raise CompressionError(
            f"tfmot cannot make {parts.network.name!r} quantization-aware: {error}. "
            "Annotate only layers tfmot's default 8-bit scheme supports "
            "(QuantizationAwareConfig.layer_types, Dense by default), or give the layer a "
            "tfmot QuantizeConfig"
        ) from error
    fine_tune(parts, network, item_table_layer(parts, trainable=False), split, fine_tune_config)
    return parts.with_step("qat", network, quantization_aware=True)
