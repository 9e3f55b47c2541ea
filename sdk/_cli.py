"""The ``pocketrec recommend`` subcommand. Only argparse at import time: the SDK loads lazily."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``recommend`` to the ``pocketrec`` command line."""
    parser = subparsers.add_parser(
        "recommend",
        help="recommend items from a bundle on this device (no TensorFlow)",
        description=(
            "Recommend items from a bundle for a history of item ids, or for a user whose "
            "events are stored in a history database. With both, the given history follows "
            "the stored one."
        ),
    )
    parser.add_argument("bundle", metavar="BUNDLE", help="bundle directory")
    parser.add_argument(
        "--history", nargs="+", metavar="ID", default=None, help="item ids, oldest first"
    )
    parser.add_argument("--user", metavar="U", help="user whose stored history to use")
    parser.add_argument(
        "--history-db", metavar="PATH", help="SQLite history database (needed with --user)"
    )
    parser.add_argument("--k", type=int, default=10, help="how many items (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=_recommend)


def _recommend(args: argparse.Namespace) -> int:
    import json
    import sys

    from pocketrec.errors import PocketrecError
    from pocketrec.sdk.recommender import Recommender

    if args.user is not None and args.history_db is None:
        print("error: --user needs --history-db PATH (where the events are)", file=sys.stderr)
        return 2
    try:
        with Recommender.open(
            args.bundle, num_threads=args.threads, history_path=args.history_db
        ) as recommender:
            result = recommender.recommend(args.history, user=args.user, k=args.k)
    except (PocketrecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        document = {
            "items": [
                {"item_id": r.item_id, "score": r.score, "title": r.title} for r in result.items
            ],
            "unknown_items": result.unknown_items,
        }
        print(json.dumps(document, indent=2))
        return 0
    if result.unknown_items:
        print(
            f"note: {result.unknown_items} history ids are not in the bundle and were ignored",
            file=sys.stderr,
        )
    for rank, r in enumerate(result.items, start=1):
        title = r.title if r.title is not None else "(no title)"
        print(f"{rank:>3}. {r.score:9.4f}  {r.item_id:<12} {title}")
    return 0
