"""The `pocketrec` console script.

Each area registers its own subcommands from a light `_cli` module; heavy imports
(TensorFlow, tfmot) happen inside the command that needs them, so `pocketrec recommend`
stays TensorFlow-free.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

_COMMAND_MODULES = (
    "pocketrec._demo_cli",
    "pocketrec.training._cli",
    "pocketrec.compression._cli",
    "pocketrec.sdk._cli",
    "pocketrec.benchmarks._cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pocketrec",
        description="Train, compress and run on-device recommenders.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
