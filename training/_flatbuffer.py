"""Rewrites of a converted LiteRT flatbuffer that change its bytes, not its results."""

from __future__ import annotations

import flatbuffers
from ai_edge_litert import schema_py_generated as schema

from pocketrec.sdk.flatbuffer import FILE_IDENTIFIER, AlignedBuffer

# The converter records its options here; no runtime reads it.
_CONVERSION_METADATA = b"CONVERSION_METADATA"


def strip_names(model: bytes) -> bytes:
    """``model`` without the names of its inner tensors and without conversion metadata.

    The converter names every tensor after the TensorFlow op it came from (about 40 bytes
    each, 7 KB for a user tower). Signatures and the tensors they name keep their names,
    so signature runners and ``get_input_details`` see the same model. A model whose
    constants live after the flatbuffer (buffer offsets, used past 2 GB) is returned as is.
    """
    parsed = schema.ModelT.InitFromPackedBuf(model, 0)
    if any(buffer.offset for buffer in parsed.buffers):
        return model
    kept = {
        (signature.subgraphIndex, tensor.tensorIndex)
        for signature in parsed.signatureDefs or []
        for tensor in (signature.inputs or []) + (signature.outputs or [])
    }
    for index, subgraph in enumerate(parsed.subgraphs):
        for tensor_index, tensor in enumerate(subgraph.tensors):
            if (index, tensor_index) not in kept:
                tensor.name = None
    parsed.metadata = [m for m in parsed.metadata or [] if m.name != _CONVERSION_METADATA]
    parsed.buffers = [AlignedBuffer(buffer.data) for buffer in parsed.buffers]
    builder = flatbuffers.Builder(len(model))
    builder.Finish(parsed.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())
