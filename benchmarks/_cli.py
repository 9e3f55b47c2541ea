"""`pocketrec bench`: the quantization benchmark."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from pocketrec.benchmarks.bench import add_arguments, run

    parser = subparsers.add_parser(
        "bench",
        help="size × accuracy × latency of every compression recipe (table + plot)",
        description=(
            "Trains (or loads) the float model, builds every compression recipe, and "
            "measures each bundle with the on-device runtime: bytes raw and gzip, "
            "HR@10/NDCG@10/MRR on the test split, user-tower and recommend latency "
            "p50/p99 at one thread, load time and peak RSS; baselines as rows. Writes "
            "results.json, results.md and pareto.png into --out."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
