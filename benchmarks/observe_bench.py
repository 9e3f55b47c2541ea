"""How long `HistoryStore.append` (what `Recommender.observe` calls) takes on a file store.

`python -m pocketrec.benchmarks.observe_bench` (or `python benchmarks/observe_bench.py`)
appends ``--events`` events to a fresh file store in a temporary folder, once for one user
and once spread over ``--users`` users, and prints microseconds per event (best of
``--repeats`` runs: the least disturbed by other processes on the machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pocketrec.sdk import HistoryStore


def append_us_per_event(path: Path, events: int, users: int, max_events: int) -> float:
    """Microseconds per `append` of ``events`` events round-robin over ``users`` users."""
    names = [f"user{u}" for u in range(users)]
    with HistoryStore(path, max_events=max_events) as store:
        start = time.perf_counter()
        for i in range(events):
            store.append(names[i % users], f"item{i % 1682}", 1_700_000_000.0 + i)
        elapsed = time.perf_counter() - start
    return elapsed / events * 1e6


def main(argv: Sequence[str] | None = None) -> None:
    """Prints the machine, then µs/event for one user and for many users."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per run")
    parser.add_argument("--users", type=int, default=1000, help="users of the many-user run")
    parser.add_argument("--max-events", type=int, default=1000, help="events kept per user")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; best is shown")
    args = parser.parse_args(argv)
    print(
        f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, "
        f"{platform.machine()}, OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
    )
    for users in (1, args.users):
        runs = []
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"history{repeat}.db"
                runs.append(append_us_per_event(path, args.events, users, args.max_events))
        print(
            f"append, file store, {args.events} events, {users} user(s), "
            f"max_events={args.max_events}: {min(runs):.1f} µs/event "
            f"(runs: {', '.join(f'{r:.1f}' for r in runs)})"
        )


if __name__ == "__main__":
    main()
