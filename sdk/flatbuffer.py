"""Pieces for writing LiteRT ``.tflite`` flatbuffers with the ``flatbuffers`` package.

The device builds its scoring graph with them (`pocketrec.sdk._scorer`) and widens float16
weights for the GPU (`expand_float16_weights`); training rewrites converted models with
them. None of it needs TensorFlow.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

FILE_IDENTIFIER = b"TFL3"
# The schema asks for constant buffers aligned to 16 bytes (``force_align: 16``), which the
# generated Python packer does not honour.
BUFFER_ALIGNMENT = 16


class AlignedBuffer(schema.BufferT):
    """A constant buffer whose bytes start on a 16-byte boundary of the file."""

    def __init__(self, data: np.ndarray | None) -> None:
        super().__init__()
        self.data = data

    def Pack(self, builder: flatbuffers.Builder) -> int:
        data = None
        if self.data is not None and self.data.nbytes:
            raw = memoryview(np.ascontiguousarray(self.data)).cast("B")
            builder.StartVector(1, len(raw), BUFFER_ALIGNMENT)
            builder.head -= len(raw)
            builder.Bytes[builder.head : builder.head + len(raw)] = raw
            data = builder.EndVector()
        schema.BufferStart(builder)
        if data is not None:
            schema.BufferAddData(builder, data)
        return schema.BufferEnd(builder)


def operator_code(builtin: int) -> schema.OperatorCodeT:
    """The operator-code entry of builtin op ``builtin``, version 1.

    The schema's older int8 field holds a placeholder (127) for codes past it, as the
    converter writes them; `builtin_code` reads either form back.
    """
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = 1
    return code


def builtin_code(code: schema.OperatorCodeT) -> int:
    """The builtin op of an operator-code entry: the larger of the schema's two fields."""
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def expand_float16_weights(model: bytes) -> bytes:
    """``model`` with each float16 constant that a DEQUANTIZE widens stored as float32 and
    that DEQUANTIZE removed; unchanged (the same object) when it has none.

    LiteRT's WebGPU accelerator leaves DEQUANTIZE to the CPU (measured on an NVIDIA GPU,
    ai-edge-litert 2.3), splitting a float16 export into pieces. Widening float16 is exact,
    so the expanded model computes the same values; it costs memory (the float16 copies
    stay), not download bytes. A model whose constants live after the flatbuffer (past
    2 GB) is returned as is.
    """
    parsed = schema.ModelT.InitFromPackedBuf(model, 0)
    if any(buffer.offset for buffer in parsed.buffers):
        return model
    dequantize = {
        index
        for index, code in enumerate(parsed.operatorCodes)
        if builtin_code(code) == schema.BuiltinOperator.DEQUANTIZE
    }
    changed = False
    for subgraph in parsed.subgraphs:
        kept = []
        for op in subgraph.operators:
            source = subgraph.tensors[op.inputs[0]] if op.opcodeIndex in dequantize else None
            data = None if source is None else parsed.buffers[source.buffer].data
            if source is None or source.type != schema.TensorType.FLOAT16 or data is None:
                kept.append(op)
                continue
            target = subgraph.tensors[op.outputs[0]]
            widened = np.frombuffer(np.asarray(data, np.uint8).tobytes(), np.float16)
            target.buffer = len(parsed.buffers)
            parsed.buffers.append(AlignedBuffer(widened.astype(np.float32)))
            changed = True
        subgraph.operators = kept
    if not changed:
        return model
    parsed.buffers = [AlignedBuffer(buffer.data) for buffer in parsed.buffers]
    builder = flatbuffers.Builder(len(model) * 2)
    builder.Finish(parsed.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())
