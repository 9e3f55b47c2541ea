"""``python -m pocketrec.device_tests [BUNDLE ...]``: the device suite's JSON report.

Without a BUNDLE it builds small bundles where TensorFlow is installed
(``pocketrec[compression]``), else runs the ones it ships; ``--shipped`` always runs the
shipped ones. The report goes to stdout (and ``--out``); the exit status is 1 when a
present accelerator failed its golden check.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from pocketrec._log import configured, filtered_native_stderr
from pocketrec.device_tests._bundles import (
    build_bundles,
    bundles_in,
    can_build,
    shipped_bundles,
)
from pocketrec.device_tests._suite import run_suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pocketrec.device_tests", description=__doc__)
    parser.add_argument("bundles", nargs="*", type=Path, help="bundles, or folders of bundles")
    parser.add_argument("--shipped", action="store_true", help="run the shipped bundles")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per accelerator")
    args = parser.parse_args(argv)
    with configured(), filtered_native_stderr(), tempfile.TemporaryDirectory() as scratch:
        if args.bundles:
            bundles = [b for root in args.bundles for b in bundles_in(root)]
        elif args.shipped or not can_build():
            bundles = shipped_bundles()
        else:
            bundles = list(build_bundles(Path(scratch)).values())
        report = run_suite(bundles, calls=args.calls)
        if not args.bundles and not args.shipped:
            report["bundles_source"] = "built" if can_build() else "shipped"
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
