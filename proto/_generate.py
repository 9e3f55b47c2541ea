"""Generates the Python code of `sync.proto` with the pinned grpcio-tools (a dev dependency).

`python -m pocketrec.proto._generate` rewrites `sync_pb2.py`, `sync_pb2.pyi` and
`sync_pb2_grpc.py` beside this file; `tests/test_sync_proto.py` fails when they are stale.
protoc names modules after the proto's path (`pocketrec/sync/v1/sync.proto`), so the one
import between the generated modules is pointed at this package.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILE = "pocketrec/sync/v1/sync.proto"
GENERATED = ("sync_pb2.py", "sync_pb2.pyi", "sync_pb2_grpc.py")
_PROTOC_IMPORT = "from pocketrec.sync.v1 import sync_pb2"
_PACKAGE_IMPORT = "from pocketrec.proto import sync_pb2"


def generate() -> dict[str, bytes]:
    """The generated files' contents, ``{file name: bytes}``.

    Raises:
        RuntimeError: if protoc fails (its message is kept).
    """
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as out:
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                f"--grpc_python_out={out}",
                str(PROTO_ROOT / PROTO_FILE),
            ]
        )
        if status != 0:
            raise RuntimeError(f"protoc failed on {PROTO_FILE} with status {status}")
        produced = Path(out) / Path(PROTO_FILE).parent
        files = {name: (produced / name).read_bytes() for name in GENERATED}
    grpc_module = files["sync_pb2_grpc.py"].decode("utf-8")
    if _PROTOC_IMPORT not in grpc_module:
        raise RuntimeError(f"expected {_PROTOC_IMPORT!r} in the generated gRPC module")
    files["sync_pb2_grpc.py"] = grpc_module.replace(_PROTOC_IMPORT, _PACKAGE_IMPORT).encode()
    return files


def main() -> int:
    for name, data in generate().items():
        (PROTO_ROOT / name).write_bytes(data)
        print(f"wrote {PROTO_ROOT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
