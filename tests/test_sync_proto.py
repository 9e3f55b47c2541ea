"""The sync contract: generated code in step with sync.proto, and readable on its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pocketrec.proto import _generate, sync_pb2

PROTO = Path(_generate.__file__).resolve().parent / _generate.PROTO_FILE


def test_generated_code_is_what_the_pinned_grpcio_tools_makes_of_sync_proto() -> None:
    # In a process of its own: protoc crashes in one where TensorFlow was loaded.
    code = (
        "import json; from pocketrec.proto import _generate\n"
        "print(json.dumps({n: d.decode() for n, d in _generate.generate().items()}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    generated = json.loads(done.stdout)
    stale = [
        name
        for name, text in generated.items()
        if (PROTO.parents[3] / name).read_text(encoding="utf-8") != text
    ]
    assert stale == [], f"{stale} are stale: run python -m pocketrec.proto._generate"


def test_the_proto_documents_its_byte_layouts_and_algorithms() -> None:
    text = PROTO.read_text(encoding="utf-8")
    for term in ("little-endian", "SHA-256", "Ed25519", "UTF-8", "binary16", "nibble"):
        assert term in text
    assert sync_pb2.DESCRIPTOR.package == "pocketrec.sync.v1"
    service = sync_pb2.DESCRIPTOR.services_by_name["CatalogSync"]
    assert [m.name for m in service.methods] == [
        "GetManifest",
        "SyncItems",
        "DownloadModel",
        "WatchManifest",
        "UploadEvents",
        "DeleteUserEvents",
    ]
