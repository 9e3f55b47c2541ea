"""Pieces for writing LiteRT ``.tflite`` flatbuffers with the ``flatbuffers`` package.

The device builds its scoring graph with them (`pocketrec.sdk._scorer`), and training
rewrites converted models with them; neither needs TensorFlow.
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
