"""The sync contract: generated code in step with sync.proto, and readable on its own."""

from __future__ import annotations

from pathlib import Path

from pocketrec.proto import _generate, sync_pb2

PROTO = Path(_generate.__file__).resolve().parent / _generate.PROTO_FILE


def test_generated_code_is_what_the_pinned_grpcio_tools_makes_of_sync_proto() -> None:
    stale = [
        name
        for name, data in _generate.generate().items()
        if (PROTO.parents[3] / name).read_bytes() != data
    ]
    assert stale == [], f"{stale} are stale: run python -m pocketrec.proto._generate"


def test_the_proto_documents_its_byte_layouts_and_algorithms() -> None:
    text = PROTO.read_text(encoding="utf-8")
    for term in ("little-endian", "SHA-256", "Ed25519", "UTF-8", "binary16", "nibble"):
        assert term in text
    assert sync_pb2.DESCRIPTOR.package == "pocketrec.sync.v1"
    service = sync_pb2.DESCRIPTOR.services_by_name["CatalogSync"]
    assert [m.name for m in service.methods] == ["GetManifest", "SyncItems", "DownloadModel"]
