"""Command-line options shared by every command that reads interaction data."""

from __future__ import annotations

import argparse
from typing import Any

from pocketrec.data._interactions import Interactions


def add_data_arguments(
    parser: argparse.ArgumentParser, *, required: bool = False, synthetic: bool = True
) -> None:
    """Adds `--data`, `--synthetic` and the delimited-file options to a parser.

    With ``synthetic=False`` there is no `--synthetic`: `--data` names the real log (for
    commands that need the data a bundle was trained on).
    """
    group = parser.add_argument_group("data")
    data_help = "a MovieLens folder (100K, 1M or latest) or any delimited user/item/time file"
    if synthetic:
        source = group.add_mutually_exclusive_group(required=required)
        source.add_argument("--data", metavar="PATH", help=data_help)
        source.add_argument(
            "--synthetic",
            type=int,
            metavar="USERS",
            help="generate a synthetic log with this many users instead of reading data",
        )
        group.add_argument("--synthetic-items", type=int, default=2000, metavar="N")
    else:
        group.add_argument("--data", metavar="PATH", required=required, help=data_help)
    group.add_argument("--delimiter", help="field separator (default: detected)")
    group.add_argument("--user-col", default="0", help="user column: index or header name")
    group.add_argument("--item-col", default="1", help="item column: index or header name")
    group.add_argument("--time-col", help="timestamp column (default: file order is time)")
    group.add_argument("--weight-col", help="optional weight/rating column")
    group.add_argument(
        "--query-col",
        help="optional search-query column of a (user, query, item, time) search log; "
        "the search tower trains on its queries and bench-search scores them",
    )
    group.add_argument(
        "--header",
        choices=("auto", "yes", "no"),
        default="auto",
        help="whether the first line names the columns",
    )
    group.add_argument("--string-ids", action="store_true", help="ids are strings, not integers")
    group.add_argument("--encoding", default="utf-8")
    group.add_argument("--seed", type=int, default=0, help="random seed")


def load_from_args(args: argparse.Namespace) -> Interactions:
    """Loads what `add_data_arguments` options describe (synthetic when no --data)."""
    from pocketrec.data import load, synthetic

    if args.data is None:
        return synthetic(
            num_users=args.synthetic or 1000, num_items=args.synthetic_items, seed=args.seed
        )
    return load(args.data, **delimited_options(args))


def delimited_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `load_delimited` keyword arguments of `add_data_arguments` options (a command
    that loads later, e.g. in a benchmark config, passes them to `pocketrec.data.load`)."""

    def column(value: str | None) -> int | str | None:
        return None if value is None else int(value) if value.isdigit() else value

    return {
        "user_col": column(args.user_col),
        "item_col": column(args.item_col),
        "time_col": column(args.time_col),
        "weight_col": column(args.weight_col),
        "query_col": column(args.query_col),
        "delimiter": args.delimiter,
        "header": {"auto": None, "yes": True, "no": False}[args.header],
        "string_ids": args.string_ids,
        "encoding": args.encoding,
    }
