"""The `pocketrec` console script: every subcommand is registered and handled here.

Registration needs only argparse and `pocketrec.data`; each handler imports the heavy
packages (TensorFlow through `pocketrec.training`, tfmot through `pocketrec.compression`)
when it runs, so `pocketrec --help` and `pocketrec recommend` never load TensorFlow.
Before any of that, a handler checks that its extra is installed and that its ``--out``
can be written, so a mistake costs seconds and prints one line, not a traceback.

Results go to stdout; progress and runtime messages go to stderr through
`pocketrec._log` (``--quiet``: errors only; ``--verbose``: everything, runtime chatter
included).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import signal
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pocketrec import _log
from pocketrec.data import add_data_arguments, load_from_args
from pocketrec.errors import PocketrecError

if TYPE_CHECKING:
    from pocketrec.compression import CompressionResult, Recipe
    from pocketrec.data import Interactions
    from pocketrec.evaluation import Split
    from pocketrec.sdk import Recommender
    from pocketrec.training import TrainConfig, TrainingRun

# The extras a command needs, as (importable module, what it is, extra that installs it);
# each extra includes the ones before it.
_TENSORFLOW = (
    ("tensorflow", "TensorFlow", "train"),
    ("tf_keras", "tf_keras", "train"),
    ("tensorboard", "TensorBoard", "train"),
    ("flatbuffers", "flatbuffers", "train"),
)
_TFMOT = (
    ("tensorflow_model_optimization", "TensorFlow Model Optimization", "compression"),
    ("tree", "dm-tree", "compression"),
)
_MATPLOTLIB = (("matplotlib", "matplotlib", "bench"),)
_SERVER = (
    ("grpc_health", "grpc health checking", "server"),
    ("grpc_reflection", "grpc reflection", "server"),
)

# ESC sequences (CSI, OSC, two-byte), then every remaining C0/C1 control and DEL.
_ESCAPE_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?|\x9b[0-?]*[ -/]*[@-~]"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class CommandError(Exception):
    """A command refused to run; the message says why and what to do (exit status 2)."""


# -- the parser ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The `pocketrec` parser with every subcommand (imports nothing heavy)."""
    parser = argparse.ArgumentParser(
        prog="pocketrec",
        description="Train, compress and run on-device recommenders.",
    )
    _add_verbosity(parser, default=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in (
        _register_demo,
        _register_train,
        _register_export,
        _register_compress,
        _register_recommend,
        _register_search,
        _register_sync,
        _register_embed_items,
        _register_bench,
        _register_bench_sync,
        _register_bench_latency,
        _register_bench_cold,
        _register_bench_search,
        _register_train_search,
        _register_keys,
        _register_publish,
        _register_rollout,
        _register_rollback,
        _register_pin,
        _register_devices,
        _register_events,
        _register_token,
        _register_serve,
    ):
        register(subparsers)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser, *, default: Any) -> None:
    # On the main parser and on every subcommand (`pocketrec train ... --quiet` works too);
    # the subcommands' SUPPRESS default keeps them from overwriting the main parser's value.
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="log everything, runtime (TensorFlow, LiteRT) messages included",
    )
    group.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="print results and errors only"
    )


def _subcommand(
    subparsers: argparse._SubParsersAction, name: str, handler: Callable[..., int], **kwargs: Any
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, **kwargs)
    _add_verbosity(parser, default=argparse.SUPPRESS)
    parser.set_defaults(func=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns its exit status (2: a reported error)."""
    args = build_parser().parse_args(argv)
    verbosity = _log.VERBOSE if args.verbose else _log.QUIET if args.quiet else _log.NORMAL
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_log.configured(verbosity))
            if verbosity < _log.VERBOSE:
                stack.enter_context(_log.filtered_native_stderr())
            return int(args.func(args) or 0)
    except (CommandError, PocketrecError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# -- shared checks and output ----------------------------------------------------------


def require_extras(command: str, *groups: Sequence[tuple[str, str, str]]) -> None:
    """Raises `CommandError` naming the extra to install when a needed module is missing.

    Checked with `importlib.util.find_spec`, which locates a module without importing it.
    """
    for group in groups:
        for module, what, extra in group:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                needed = groups[-1][0][2]  # the command's own extra includes the others
                raise CommandError(
                    f"pocketrec {command} needs {what}: pip install 'pocketrec[{needed}]'"
                    + ("" if extra == needed else f" (or at least 'pocketrec[{extra}]')")
                )


def writable_dir(path: str | Path, *, parent: bool = False) -> Path:
    """Creates ``path`` (or only its parent) and proves it writable with a probe file.

    Run before loading data or TensorFlow, so an unwritable ``--out`` fails at once.
    ``parent=True`` is for outputs that are replaced as a whole (bundles).
    """
    given = Path(path)
    directory = given.parent if parent else given
    if given.exists() and not given.is_dir():
        raise CommandError(f"cannot write to {given}: it is a file; pass a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise CommandError(
            f"cannot write to {given}: {reason} ({directory}); pass a writable --out"
        ) from error
    return given


def printable(text: object) -> str:
    """``text`` without terminal escape sequences or control characters (C0, C1, DEL).

    Item titles and ids come from data files and bundles: printed raw, an ESC sequence in
    one could rewrite the terminal.
    """
    cleaned = _ESCAPE_SEQUENCE.sub("", str(text))
    return _CONTROL.sub(lambda m: " " if m.group() in "\t\n\r" else "", cleaned)


def _train_config(**overrides: Any) -> TrainConfig:
    from pocketrec.training import TrainConfig

    return TrainConfig(**{name: value for name, value in overrides.items() if value is not None})


# -- demo -----------------------------------------------------------------------------


def _register_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "demo",
        _demo,
        help="data -> train -> evaluate vs baselines -> bundle -> on-device recommendations",
        description=(
            "Runs the whole path: loads --data (else downloads MovieLens 100K, else "
            "generates a synthetic log, saying which), trains the dual encoder, evaluates "
            "it beside the baselines, exports a bundle, opens it with the TensorFlow-free "
            "SDK and prints recommendations."
        ),
    )
    parser.add_argument("--data", help="a MovieLens folder or a delimited file")
    parser.add_argument("--out", default="runs/demo", help="where the run and bundle go")
    parser.add_argument("--epochs", type=int, default=None, help="override training epochs")
    parser.add_argument("--seed", type=int, default=0)


def _demo(args: argparse.Namespace) -> int:
    require_extras("demo", _TENSORFLOW)
    started = time.perf_counter()
    out = writable_dir(args.out)
    log = _demo_data(args.data)
    print(f"data: {printable(log.summary())}")
    from pocketrec.evaluation import evaluate, leave_last_out, metrics_table

    split = leave_last_out(log)
    print("split:\n" + textwrap.indent(split.describe(), "  "))

    from pocketrec.sdk import Recommender
    from pocketrec.training import ModelConfig, run_training

    run = run_training(
        split,
        ModelConfig(),
        _train_config(seed=args.seed, epochs=args.epochs),
        out,
        baselines=True,
        bundle=True,
    )
    assert run.bundle is not None
    # A fresh on-device history each run, so the printed recommendations are reproducible.
    history = out / "history.sqlite"
    history.unlink(missing_ok=True)
    with Recommender.open(run.bundle, history_path=str(history)) as recommender:
        on_device = evaluate(recommender.score_rows, split, "test")
        rows = run.table_rows("pocketrec (Keras)")
        rows["pocketrec bundle (LiteRT)"] = (None, on_device)
        _show_recommendations(recommender, split)
    print()
    print("Full-ranking metrics, temporal leave-last-out (test = last event per user):")
    print(metrics_table(rows))
    _print_lead(run, "pocketrec (Keras)")
    print(f"\nbundle: {run.bundle}  tensorboard: {run.tensorboard_dir}")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


def _print_lead(run: TrainingRun, label: str) -> None:
    lead = run.lead()
    if lead is not None:
        print(f"{label}, {lead.describe()}")


def _demo_data(data: str | None) -> Interactions:
    from pocketrec.data import DataError, fetch_movielens, load, synthetic

    if data is not None:
        return load(data)
    try:
        return load(fetch_movielens("100k"))
    except DataError as error:
        _log.LOGGER.warning(
            "MovieLens 100K is not available (%s); using a synthetic log instead (pass "
            "--data PATH for real data)",
            error,
        )
        return synthetic(num_users=1000, num_items=1500)


def _show_recommendations(recommender: Recommender, split: Split) -> None:
    histories = split.histories("test")
    for user in range(min(3, split.num_users)):
        user_id = str(split.users[user])
        history = [str(split.item_ids[i]) for i in histories[user]]
        print(f"\nuser {printable(user_id)} recently:")
        for item in history[-5:]:
            print(f"    {_split_title(split, item)}")
        for item in history:
            recommender.observe(user_id, item)
        print("  recommended:")
        _print_scored(recommender.recommend(user=user_id, k=5).items)
    user_id = str(split.users[0])
    newest = recommender.recommend(user=user_id, k=1).items[0].item_id
    recommender.observe(user_id, newest)
    print(f"\nuser {printable(user_id)} watches {_split_title(split, newest)}; next:")
    _print_scored(recommender.recommend(user=user_id, k=5).items)
    print("\na new user, no history yet (the bundle's cold-start vector):")
    _print_scored(recommender.recommend(k=5).items)


def _print_scored(items: Sequence[Any]) -> None:
    for rec in items:
        print(f"    {rec.score:7.3f}  {printable(rec.title or rec.item_id)}")


def _split_title(split: Split, item: str) -> str:
    return printable(split.titles[split.item_index[item]] or item)


# -- train and export -----------------------------------------------------------------


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "train",
        _train,
        help="train the dual encoder and compare it with the baselines",
        description=(
            "Splits the data (temporal leave-last-out), trains the dual encoder with early "
            "stopping on validation NDCG@10, prints its metrics beside the tuned baselines, "
            "and saves the model in RUN_DIR/model, TensorBoard logs in RUN_DIR/tensorboard "
            "and the metrics in RUN_DIR/metrics.json."
        ),
    )
    add_data_arguments(parser, required=True)
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="where the run goes")
    parser.add_argument("--epochs", type=int, help="maximum epochs (default: TrainConfig)")
    parser.add_argument(
        "--objective",
        choices=("auto", "sequence", "set", "ease"),
        help="sequence: next item in time order; set: any held-out item of the user's "
        "set, order ignored; ease: a low-rank EASE solved in closed form; auto (default): "
        "train sequence and ease (set when ease cannot run), keep the best on validation",
    )
    parser.add_argument(
        "--encoder",
        choices=("attention", "mean", "gru"),
        default="attention",
        help="user tower encoder of the sequence objective (default: attention)",
    )
    parser.add_argument("--dim", type=int, default=64, help="embedding dimension D (default 64)")
    parser.add_argument(
        "--history-length", type=int, default=50, help="history items L the model reads"
    )
    parser.add_argument(
        "--no-baselines", action="store_true", help="skip training and tuning the baselines"
    )
    parser.add_argument(
        "--tune",
        type=_minutes,
        metavar="MINUTES",
        help="after the default training, try other settings of the winning objective "
        "while MINUTES last and keep the best on validation",
    )


def _train(args: argparse.Namespace) -> int:
    require_extras("train", _TENSORFLOW)
    out = writable_dir(args.out)
    from pocketrec.evaluation import leave_last_out, metrics_table
    from pocketrec.training import ModelConfig, run_training

    model_config = ModelConfig(
        embedding_dim=args.dim, history_length=args.history_length, encoder=args.encoder
    )
    train_config = _train_config(seed=args.seed, epochs=args.epochs, objective=args.objective)
    train_config.validate()
    interactions = load_from_args(args)
    print(f"data: {printable(interactions.summary())}")
    split = leave_last_out(interactions)
    print("split:\n" + textwrap.indent(split.describe(), "  "))
    run = run_training(
        split,
        model_config,
        train_config,
        out,
        baselines=not args.no_baselines,
        tune_seconds=None if args.tune is None else 60 * args.tune,
    )
    label = f"pocketrec ({run.trained.config.encoder})"
    print(metrics_table(run.table_rows(label)))
    _print_lead(run, label)
    print(f"best epoch {run.trained.best_epoch}; model: {run.model_dir}")
    print(f"tensorboard --logdir {run.tensorboard_dir}")
    return 0


def _register_export(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "export",
        _export,
        help="write a trained model as a float32 bundle for the SDK",
        description=(
            "Converts the user tower of a `pocketrec train` run to TFLite, computes the item "
            "table with the item tower, and writes a bundle that `pocketrec recommend` opens."
        ),
    )
    parser.add_argument(
        "--model", required=True, metavar="RUN_DIR", help="a `pocketrec train --out` directory"
    )
    parser.add_argument("--out", required=True, metavar="BUNDLE", help="bundle directory")
    parser.add_argument("--model-version", help="version text for the manifest")


def _export(args: argparse.Namespace) -> int:
    require_extras("export", _TENSORFLOW)
    out = writable_dir(args.out, parent=True)
    from pocketrec.training import TrainedModel, export_bundle
    from pocketrec.training.pipeline import METRICS_FILE

    model_dir = _model_dir(Path(args.model))
    metrics_file = model_dir.parent / METRICS_FILE
    metrics = (
        json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else None
    )
    trained = TrainedModel.load(model_dir)
    bundle = export_bundle(trained, out, metrics=metrics, model_version=args.model_version)
    print(f"bundle: {bundle}")
    return 0


def _model_dir(path: Path) -> Path:
    # `pocketrec train --out RUN_DIR` saves the model under RUN_DIR/model.
    return path / "model" if (path / "model").is_dir() else path


# -- compress -------------------------------------------------------------------------


def _register_compress(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "compress",
        _compress,
        help="compress a trained model into bundles (prune, cluster, quantize, auto-select)",
        description=(
            "Compress a trained model with a named recipe (--recipe) into a bundle, or build "
            "every candidate recipe and keep the smallest bundle whose NDCG@10 drop on "
            "validation stays within --max-ndcg-drop (--auto), writing report.json and "
            "report.md. Accuracy is measured with the on-device runtime (LiteRT). Pass the "
            "data the model was trained on (--data or --synthetic) to rebuild its split."
        ),
    )
    parser.add_argument(
        "--model", metavar="RUN_DIR", help="training run directory (or its model/ folder)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--recipe", metavar="NAME", help="recipe to apply (see --list-recipes)")
    mode.add_argument("--auto", action="store_true", help="try the candidates, keep the smallest")
    mode.add_argument("--list-recipes", action="store_true", help="print the recipes and exit")
    parser.add_argument("--out", metavar="DIR", help="bundle directory (--recipe) or report dir")
    parser.add_argument(
        "--max-ndcg-drop",
        type=float,
        default=0.01,
        metavar="F",
        help="largest relative NDCG@10 drop vs float32 on validation (default 0.01)",
    )
    parser.add_argument(
        "--candidates",
        metavar="NAMES",
        help="comma-separated recipes for --auto (default: all but float32)",
    )
    parser.add_argument(
        "--size-metric",
        choices=("gzip", "raw"),
        default="gzip",
        help="bundle size compared by --auto (default gzip: what a download costs)",
    )
    parser.add_argument(
        "--fine-tune-steps", type=int, metavar="N", help="override the steps of every fine-tuning"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_data_arguments(parser)


def _compress(args: argparse.Namespace) -> int:
    require_extras("compress", _TENSORFLOW, _TFMOT)
    if args.list_recipes:
        from pocketrec.compression import list_recipes

        for recipe in list_recipes():
            print(
                f"{recipe.name:16} model {recipe.quantization:8} table {recipe.table_dtype:8} "
                f"{recipe.accelerator:4} {recipe.description}"
            )
        return 0
    if args.model is None or args.out is None or not (args.recipe or args.auto):
        raise CommandError(
            "pass --model RUN_DIR, --out and either --recipe NAME or --auto (or --list-recipes)"
        )
    if args.data is None and args.synthetic is None:
        raise CommandError(
            "pass the data the model was trained on (--data PATH or "
            "--synthetic USERS with the same --seed): fine-tuning, int8 calibration and "
            "evaluation need its split"
        )
    out = writable_dir(args.out, parent=not args.auto)

    from pocketrec.compression import auto_compress, compress, default_candidates, get_recipe
    from pocketrec.evaluation import leave_last_out
    from pocketrec.training import TrainedModel

    trained = TrainedModel.load(_model_dir(Path(args.model)))
    split = leave_last_out(load_from_args(args))
    if not args.auto:
        result = compress(trained, _tuned(get_recipe(args.recipe), args), out, split=split)
        if args.json:
            print(json.dumps(result.to_dict(), indent=2))
        else:
            _print_compression(result)
        return 0
    names = args.candidates.split(",") if args.candidates else None
    if names is None and args.fine_tune_steps is not None:
        names = list(default_candidates())
    report = auto_compress(
        trained,
        out,
        split=split,
        max_ndcg_drop=args.max_ndcg_drop,
        candidates=None if names is None else [_tuned(get_recipe(n), args) for n in names],
        size_metric=args.size_metric,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.to_markdown())
        print(f"\nselected {report.selected}: {report.selected_result.bundle}")
    return 0


def _tuned(recipe: Recipe, args: argparse.Namespace) -> Recipe:
    if args.fine_tune_steps is None or not recipe.fine_tunes:
        return recipe
    import dataclasses

    steps = args.fine_tune_steps
    clustering = recipe.cluster_fine_tune
    return dataclasses.replace(
        recipe,
        fine_tune=dataclasses.replace(recipe.fine_tune, steps=steps),
        cluster_fine_tune=None
        if clustering is None
        else dataclasses.replace(clustering, steps=steps),
    )


def _print_compression(result: CompressionResult) -> None:
    sizes = result.sizes
    print(f"bundle {result.bundle} (recipe {result.recipe.name})")
    for part in ("model", "table", "total"):
        print(f"  {part:6} {sizes[part]['raw']:>10,} B raw  {sizes[part]['gzip']:>10,} B gzip")
    for stage, metrics in result.metrics.items():
        print(f"  {stage:6} ndcg@10 {metrics.ndcg_at_10:.4f}  hr@10 {metrics.hr_at_10:.4f}")
    if result.sparsity is not None:
        print(f"  sparsity {result.sparsity['overall']:.3f} overall")
    if result.unique_values is not None:
        print(f"  distinct values per clustered weight <= {max(result.unique_values.values())}")
    print(f"  accelerators: {result.accelerators.summary()}")


# -- recommend ------------------------------------------------------------------------


def _register_recommend(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "recommend",
        _recommend,
        help="recommend items from a bundle on this device (no TensorFlow)",
        description=(
            "Recommend items from a bundle for a history of item ids, or for a user whose "
            "events are stored in a history database. With both, the given history follows "
            "the stored one. Each item says which history items it is most like."
        ),
    )
    _add_serving_arguments(parser)


def _register_search(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "search",
        _search,
        help="search a bundle's items by text, ordered for a user (no TensorFlow)",
        description=(
            "Finds the items whose text (title, genres, any text metadata) matches QUERY, "
            "typos included, and orders them by the bundle's mix of text match and the "
            "user's taste (--history and/or --user, as recommend). An empty QUERY is "
            "recommend. Each item says which query words it matched and which history "
            "items it is most like."
        ),
    )
    _add_serving_arguments(parser, query=True)


def _add_serving_arguments(parser: argparse.ArgumentParser, *, query: bool = False) -> None:
    """The arguments `recommend` and `search` share (BUNDLE first, then search's QUERY)."""
    parser.add_argument("bundle", metavar="BUNDLE", help="bundle directory")
    if query:
        parser.add_argument("query", metavar="QUERY", help='search text, e.g. "space adventure"')
    parser.add_argument(
        "--history",
        nargs="+",
        metavar="ID",
        default=None,
        help="item ids, oldest first (spaces or commas between them)",
    )
    parser.add_argument("--user", metavar="U", help="user whose stored history to use")
    parser.add_argument(
        "--history-db", metavar="PATH", help="SQLite history database (needed with --user)"
    )
    parser.add_argument("--k", type=int, default=10, help="how many items (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _recommend(args: argparse.Namespace) -> int:
    return _serve_results(
        args, lambda recommender, history: recommender.recommend(history, user=args.user, k=args.k)
    )


def _search(args: argparse.Namespace) -> int:
    return _serve_results(
        args,
        lambda recommender, history: recommender.search(
            args.query, user=args.user, history=history, k=args.k
        ),
    )


def _serve_results(args: argparse.Namespace, call: Callable[[Recommender, Any], Any]) -> int:
    """Opens the bundle, runs ``call(recommender, history)`` and prints its results."""
    from pocketrec.sdk import Recommender

    if args.user is not None and args.history_db is None:
        raise CommandError("--user needs --history-db PATH (where the events are)")
    history = None
    if args.history is not None:
        history = [i for value in args.history for i in value.split(",") if i]
    with Recommender.open(
        args.bundle, num_threads=args.threads, history_path=args.history_db
    ) as recommender:
        result = call(recommender, history)
    if args.json:
        # json.dumps escapes every control character: the document is safe as it is.
        document = {
            "items": [
                {
                    "item_id": r.item_id,
                    "score": r.score,
                    "title": r.title,
                    "because": [dataclasses.asdict(reason) for reason in r.because],
                }
                for r in result.items
            ],
            "unknown_items": result.unknown_items,
        }
        print(json.dumps(document, indent=2))
        return 0
    if result.unknown_items:
        _log.LOGGER.warning(
            "%d history ids are not in the bundle and were ignored", result.unknown_items
        )
    for rank, r in enumerate(result.items, start=1):
        title = printable(r.title) if r.title is not None else "(no title)"
        why = _because(r.because)
        print(f"{rank:>3}. {r.score:9.4f}  {printable(r.item_id):<12} {title}{why}")
    return 0


def _because(reasons: Sequence[Any]) -> str:
    """``  (matches "space"; because you watched A, B)`` from a result's reasons, or ""."""
    parts = []
    words = [f'"{printable(r.value)}"' for r in reasons if r.kind == "query"]
    if words:
        parts.append("matches " + ", ".join(words))
    watched = [printable(r.title or r.value) for r in reasons if r.kind == "history"]
    if watched:
        parts.append("because you watched " + ", ".join(watched))
    return f"  ({'; '.join(parts)})" if parts else ""


def _register_sync(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "sync",
        _sync,
        help="bring a device's bundle up to a sync server's signed versions (no TensorFlow)",
        description=(
            "Asks the server for the latest signed model and catalog of a family, downloads "
            "what changed (resumable), checks signatures, digests and the golden self-check, "
            "and swaps the new bundle into DEVICE_DIR/bundle atomically. Creates DEVICE_DIR "
            "when it is empty."
        ),
    )
    parser.add_argument("device_dir", metavar="DEVICE_DIR", help="the device's sync directory")
    parser.add_argument("--server", required=True, metavar="HOST:PORT", help="the sync server")
    parser.add_argument("--token", required=True, help="this device's token (pocketrec token)")
    parser.add_argument(
        "--public-key", required=True, metavar="KEY", help="publisher public key: hex or a file"
    )
    parser.add_argument("--family", required=True, help="the model family to follow")
    parser.add_argument(
        "--deadline", type=float, default=30.0, metavar="S", help="seconds per call (default 30)"
    )
    parser.add_argument(
        "--allow-rollback", action="store_true", help="accept older signed versions on purpose"
    )


def _sync(args: argparse.Namespace) -> int:
    from pocketrec.sdk.sync import SyncClient

    with SyncClient(
        args.server,
        token=args.token,
        public_key=args.public_key,
        family=args.family,
        device_dir=args.device_dir,
        deadline_s=args.deadline,
        allow_rollback=args.allow_rollback,
    ) as client:
        result = client.sync()
    state = "updated to" if result.changed else "already at"
    print(
        f"{state} model {result.model_version}, catalog {result.catalog_version}: {result.bundle}"
    )
    if result.changed:
        kind = "snapshot" if result.snapshot else "delta"
        print(
            f"  {kind}: {result.rows:,} rows, {result.deleted:,} deleted, "
            f"{result.batch_bytes + result.model_bytes:,} bytes in {result.seconds:.2f} s"
        )
    return 0


def _register_embed_items(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "embed-items",
        _embed_items,
        help="item vectors of new or changed items for `pocketrec publish --items`",
        description=(
            "Runs the item tower of a `pocketrec train` run on the items of ITEMS_FILE (JSON "
            'Lines: {"id": ..., "title": ..., "genres": [...], <metadata>} per line; a known '
            "id keeps its trained title and genres where absent) and writes them with their "
            "vectors to --out. An id the model never saw is embedded from its title and "
            "genres alone, so new items need no new model."
        ),
    )
    parser.add_argument("run", metavar="RUN", help="a `pocketrec train --out` directory")
    parser.add_argument("items", metavar="ITEMS_FILE", help="JSON Lines of items")
    parser.add_argument("--out", required=True, metavar="FILE", help="JSON Lines with vectors")


def _embed_items(args: argparse.Namespace) -> int:
    require_extras("embed-items", _TENSORFLOW)
    out = writable_dir(args.out, parent=True) / Path(args.out).name
    from pocketrec.sdk.catalog import read_items_jsonl
    from pocketrec.training import TrainedModel
    from pocketrec.training.embed import embed_items

    items = read_items_jsonl(args.items)
    trained = TrainedModel.load(_model_dir(Path(args.run)))
    embedded = embed_items(trained, items)
    embedded.write_jsonl(out)
    print(
        f"wrote {len(embedded.item_ids):,} item vectors to {out} ({len(embedded.new_ids):,} "
        "new to the model, embedded from their title and genres)"
    )
    return 0


def _register_bench_sync(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "bench-sync",
        _bench_sync,
        help="time and bytes of a full and a delta sync on loopback",
        description=(
            "Publishes a synthetic catalog to a real sync server on 127.0.0.1 (real SQLite "
            "store), syncs a device from nothing, then publishes a copy with --changed of "
            "the rows changed and syncs the delta. Prints seconds, rows and bytes, vector "
            "bytes and total bytes each divided by the same rows as float32."
        ),
    )
    parser.add_argument("--items", type=int, default=100_000, help="catalog size (100000)")
    parser.add_argument("--dim", type=int, default=64, help="vector dimension (64)")
    parser.add_argument(
        "--dtype", default="int8", help="table form: float32, float16, int8, int4 (int8)"
    )
    parser.add_argument(
        "--changed", type=float, default=0.01, help="share of rows changed for the delta"
    )
    parser.add_argument("--out", metavar="DIR", help="also write sync.json and sync.md here")


def _bench_sync(args: argparse.Namespace) -> int:
    require_extras("bench-sync", _TENSORFLOW, _SERVER)
    out = writable_dir(args.out) if args.out else None
    from pocketrec.benchmarks.sync_bench import SyncBenchConfig
    from pocketrec.benchmarks.sync_bench import main as bench_main

    config = SyncBenchConfig(items=args.items, dim=args.dim, dtype=args.dtype, changed=args.changed)
    return bench_main(config, out)


def _register_bench_search(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "bench-search",
        _bench_search,
        help="personalised search quality and latency on the leave-last-out split",
        description=(
            "Makes a query per user from the held-out item (one of its genres, one or two "
            "title words, a title word with one typo), ranks the bundle's text matches by "
            "BM25 alone, BM25 + popularity and BM25 + the user vector, tunes each one's "
            "alpha and BM25 b on validation, and prints test NDCG@10/HR@10 per query kind, "
            "search and recommend p50, and the issue's targets. A search log read with "
            "--query-col adds the queries users really typed (kind 'logged')."
        ),
    )
    parser.add_argument("bundle", metavar="BUNDLE", help="a bundle trained on --data")
    # --data with --query-col adds the log's own queries (kind "logged"); --seed picks
    # query words and typos.
    add_data_arguments(parser, required=True, synthetic=False)
    parser.add_argument("--out", metavar="DIR", help="also write search.json here")
    parser.add_argument(
        "--save",
        action="store_true",
        help="write the tuned settings and text_index.bin into BUNDLE",
    )


def _bench_search(args: argparse.Namespace) -> int:
    out = writable_dir(args.out) if args.out else None
    from pocketrec.benchmarks.search_bench import SearchBenchConfig
    from pocketrec.benchmarks.search_bench import main as bench_main
    from pocketrec.data._options import delimited_options

    config = SearchBenchConfig(
        bundle=Path(args.bundle),
        data=args.data,
        load_options=delimited_options(args),
        seed=args.seed,
    )
    return bench_main(config, out, save=args.save)


def _register_train_search(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "train-search",
        _train_search,
        help="train a search tower for a trained run and add it to its bundle",
        description=(
            "Trains the search tower (pocketrec.training.search: a query encoder over the "
            "device tokenizer's hashed words and n-grams, combined with the user vector) on "
            "pseudo-queries made from each training target's genres and title (or the real "
            "query of each event of a search log read with --query-col), against the "
            "run's frozen item table and user tower, and writes it into BUNDLE as "
            "search_tower.tflite with its golden outputs (or into --out). Then `pocketrec "
            "bench-search BUNDLE --save` tunes and saves the mix."
        ),
    )
    parser.add_argument("run", metavar="RUN_DIR", help="a `pocketrec train --out` directory")
    parser.add_argument(
        "--bundle", required=True, metavar="BUNDLE", help="the bundle exported from RUN_DIR"
    )
    add_data_arguments(parser, required=True)
    parser.add_argument("--epochs", type=int, help="training epochs (default 6)")
    parser.add_argument(
        "--quantization",
        choices=("float32", "dynamic"),
        default="dynamic",
        help="dynamic (default: int8 weights, a quarter of the bytes; on ML-100K it searched "
        "as well as float32) or float32",
    )
    parser.add_argument("--out", metavar="BUNDLE_OUT", help="write here instead of BUNDLE")


def _train_search(args: argparse.Namespace) -> int:
    require_extras("train-search", _TENSORFLOW)
    out = writable_dir(args.out or args.bundle, parent=True)
    from pocketrec.evaluation import leave_last_out
    from pocketrec.sdk import Bundle
    from pocketrec.training import TrainedModel
    from pocketrec.training.search import SearchTowerConfig, add_search_tower

    bundle = Bundle.open(args.bundle)
    trained = TrainedModel.load(_model_dir(Path(args.run)))
    split = leave_last_out(load_from_args(args))
    config = SearchTowerConfig(seed=args.seed)
    if args.epochs is not None:
        config = dataclasses.replace(config, epochs=args.epochs)
    with_tower, tower = add_search_tower(
        bundle, trained, split, config, quantization=args.quantization
    )
    with_tower.save(out)
    size = len(with_tower.search_tower or b"")
    print(
        f"search tower: {size:,} bytes ({args.quantization}), loss per epoch "
        f"{', '.join(f'{v:.3f}' for v in tower.losses)}; bundle: {out}"
    )
    return 0


def _register_bench_latency(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "bench-latency",
        _bench_latency,
        help="recommend latency at catalog scale, per table dtype, against baselines",
        description=(
            "Serves synthetic catalogs (--sizes items x 64) with each table dtype, each in a "
            "process of its own, and prints recommend p50/p99, tower, scoring, build time, "
            "RSS and top-10 agreement; then the baselines (a TFLite graph with the table "
            "baked in, float32 and int8; numpy; TensorFlow brute force; TensorFlow ones "
            "skipped without the train extra), our scoring ÷ each, and the latency targets "
            "as PASS/FAIL. One thread throughout; notes whether OPENBLAS_CORETYPE is set."
        ),
    )
    parser.add_argument("--sizes", type=int, nargs="+", help="catalog sizes (10000 100000 1000000)")
    parser.add_argument("--dtypes", nargs="+", help="table dtypes (float32 float16 int8 int4)")
    parser.add_argument("--calls", type=int, default=1000, help="timed calls per figure (1000)")
    parser.add_argument(
        "--calls-1m", type=int, default=300, help="timed calls at >= 1M items (300)"
    )
    parser.add_argument("--baselines", nargs="*", help="baselines to run (all; none with no names)")
    parser.add_argument("--bundle", help="also time recommend on this bundle directory")
    parser.add_argument(
        "--approximate",
        action="store_true",
        help="also time recommend(approximate=True) on the int8 rows (needs the ann extra)",
    )
    parser.add_argument("--out", metavar="DIR", help="also write latency.json and latency.md here")


def _bench_latency(args: argparse.Namespace) -> int:
    out = writable_dir(args.out) if args.out else None
    from pocketrec.benchmarks.latency_bench import LatencyConfig, run_latency, write_results

    defaults = LatencyConfig()
    config = LatencyConfig(
        sizes=args.sizes or defaults.sizes,
        dtypes=args.dtypes or defaults.dtypes,
        calls=args.calls,
        calls_1m=args.calls_1m,
        baselines=defaults.baselines if args.baselines is None else args.baselines,
        bundle=Path(args.bundle) if args.bundle else None,
        approximate=args.approximate,
    )
    results = run_latency(config, report=lambda line: print(line, flush=True))
    if out is not None:
        write_results(results, out)
        print(f"wrote {out / 'latency.json'} and {out / 'latency.md'}")
    return 0


def _register_bench_cold(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "bench-cold",
        _bench_cold,
        help="cold start, measured: users with no history and items the model never saw",
        description=(
            "Trains with the defaults and ranks every test target for a user with an empty "
            "history (the model's empty-history output, the bundle's cold-start vector, "
            "popularity); then holds --holdout of the items out of training, trains again, "
            "and ranks each held-out test target among the held-out items by their "
            "features-only vectors (title words, genres) against their popularity."
        ),
    )
    add_data_arguments(parser, required=True)
    parser.add_argument("--holdout", type=float, default=0.1, help="share of items held out")
    parser.add_argument("--epochs", type=int, help="training epochs (default: TrainConfig)")
    parser.add_argument("--out", metavar="DIR", help="also write cold.json and cold.md here")


def _bench_cold(args: argparse.Namespace) -> int:
    require_extras("bench-cold", _TENSORFLOW)
    out = writable_dir(args.out) if args.out else None
    from pocketrec.benchmarks.cold_bench import (
        ColdBenchConfig,
        cold_markdown,
        run_cold_bench,
        write_cold_results,
    )
    from pocketrec.evaluation import leave_last_out

    split = leave_last_out(load_from_args(args))
    config = ColdBenchConfig(seed=args.seed, holdout=args.holdout, epochs=args.epochs)
    results = run_cold_bench(split, config)
    print(cold_markdown(results), end="")
    print(f"{results['seconds']:.0f} s, seed {results['seed']}")
    if out is not None:
        write_cold_results(results, out)
        print(f"wrote {out / 'cold.json'} and {out / 'cold.md'}")
    return 0


# -- bench ----------------------------------------------------------------------------


def _register_bench(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "bench",
        _bench,
        help="size × accuracy × latency of every compression recipe (table + plot)",
        description=(
            "Trains (or loads) the float model, builds every compression recipe, and "
            "measures each bundle with the on-device runtime: bytes raw and gzip, "
            "HR@10/NDCG@10/MRR on the test split, user-tower and recommend latency "
            "p50/p99 at one thread, load time and peak RSS; baselines as rows. Writes "
            "results.json, results.md and pareto.png into --out."
        ),
    )
    add_data_arguments(parser, required=True)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--model", help="reuse a saved training run instead of training")
    parser.add_argument("--recipes", nargs="+", help="recipes to build (default: all)")
    parser.add_argument("--quick", action="store_true", help="a small sample, for CI")
    parser.add_argument("--calls", type=int, default=1000, help="timed calls per figure")
    parser.add_argument("--epochs", type=int, help="training epochs")
    parser.add_argument(
        "--seeds",
        type=_seed_list,
        metavar="S1,S2,...",
        help="train, compress and evaluate once per seed and report mean ± std "
        "(default: the one --seed); latency is measured for the first seed only",
    )
    parser.add_argument("--no-baselines", action="store_true")


def _minutes(text: str) -> float:
    """``"2.5"`` -> 2.5, for `--tune`: a number of minutes, 0 or more."""
    try:
        minutes = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of minutes, got {text!r}") from None
    if not minutes >= 0:
        raise argparse.ArgumentTypeError(f"expected minutes >= 0, got {text!r}")
    return minutes


def _seed_list(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2), for `--seeds`."""
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 0,1,2, got {text!r}"
        ) from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds {text!r} repeat a seed; give each seed once")
    return seeds


def _bench(args: argparse.Namespace) -> int:
    require_extras("bench", _TENSORFLOW, _TFMOT, _MATPLOTLIB)
    out = writable_dir(args.out)
    from pocketrec.benchmarks.bench import BenchConfig, results_markdown, run_benchmark

    results = run_benchmark(
        load_from_args(args),
        BenchConfig(
            out=out,
            recipes=args.recipes,
            model_dir=_model_dir(Path(args.model)) if args.model else None,
            quick=args.quick,
            calls=args.calls,
            epochs=args.epochs,
            seeds=args.seeds if args.seeds is not None else (args.seed,),
            baselines=not args.no_baselines,
        ),
    )
    print(results_markdown(results))
    print(f"wrote {out / 'results.json'}, results.md, pareto.png")
    return 0


# -- sync: keys, publish, rollout, devices, events, tokens, serve ---------------------------

PRIVATE_KEY_FILE = "publisher.key"
PUBLIC_KEY_FILE = "publisher.pub"


def _register_keys(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "keys",
        _keys,
        help="make the publisher's Ed25519 key pair that signs every synced version",
        description=(
            "`keys generate --out DIR` writes DIR/publisher.key (PEM, readable by you only: "
            "keep it off devices and servers that need not publish) and DIR/publisher.pub "
            "(the public key in hex, what devices are given), and prints the public key."
        ),
    )
    parser.add_argument("action", choices=("generate",))
    parser.add_argument("--out", required=True, metavar="DIR", help="where the key pair goes")


def _keys(args: argparse.Namespace) -> int:
    from pocketrec.sdk.catalog import generate_key, private_key_pem, public_key_hex

    out = writable_dir(args.out)
    private, public = out / PRIVATE_KEY_FILE, out / PUBLIC_KEY_FILE
    for path in (private, public):
        if path.exists():
            raise CommandError(
                f"{path} exists; refusing to replace a publisher key (devices trust it). "
                "Pick another --out"
            )
    key = generate_key()
    descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(private_key_pem(key))
    public.write_text(public_key_hex(key) + "\n", encoding="utf-8")
    print(f"wrote {private} and {public}; public key: {public_key_hex(key)}")
    return 0


def _add_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, metavar="DB", help="the sync store (SQLite)")
    parser.add_argument("--family", required=True, metavar="F", help="model family, e.g. movies")


def _register_publish(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "publish",
        _publish,
        help="publish a bundle, or item vectors, as the next signed sync version",
        description=(
            "Publishes BUNDLE into the sync store: a new model version with its whole table "
            "when the model or table form is new, else a new catalog version holding only "
            'the changed rows. With --items (JSON Lines of {"id", "vector", metadata}, '
            "as `pocketrec embed-items` writes) and --delete, updates the latest catalog "
            "instead. Every version is signed with --key. With --fraction, the new version "
            "goes to that share of the family's devices first (`pocketrec rollout` widens it)."
        ),
    )
    parser.add_argument("bundle", nargs="?", metavar="BUNDLE", help="bundle directory")
    _add_store_arguments(parser)
    parser.add_argument("--key", required=True, metavar="KEYFILE", help="publisher.key (PEM)")
    parser.add_argument("--items", metavar="FILE", help="item vectors to add or replace")
    parser.add_argument("--delete", nargs="+", default=[], metavar="ID", help="ids to remove")
    _add_fraction_argument(parser, "share of devices served the new version first")


def _add_fraction_argument(parser: argparse.ArgumentParser, what: str, **kwargs: Any) -> None:
    parser.add_argument("--fraction", type=float, metavar="F", help=f"{what}, in (0, 1]", **kwargs)


def _publish(args: argparse.Namespace) -> int:
    require_extras("publish", _SERVER)
    if (args.bundle is None) == (args.items is None and not args.delete):
        raise CommandError("pass either BUNDLE or --items FILE and/or --delete ID ...")
    from pocketrec.sdk import Bundle
    from pocketrec.sdk.catalog import load_private_key, read_items_jsonl
    from pocketrec.server import SQLiteStore, publish, publish_items

    key = load_private_key(Path(args.key))
    items = read_items_jsonl(args.items, vectors=True) if args.items is not None else []
    bundle = Bundle.open(args.bundle) if args.bundle is not None else None
    fraction = 1.0 if args.fraction is None else args.fraction
    with SQLiteStore(args.store) as store:
        if bundle is not None:
            result = publish(store, bundle, args.family, key, fraction=fraction)
        else:
            result = publish_items(
                store, args.family, items, key, delete=args.delete, fraction=fraction
            )
    staged = result.published and fraction < 1
    print(result.summary() + (f", served to {fraction:.0%} of devices" if staged else ""))
    return 0


def _existing_store(path: str) -> Path:
    """``path`` when it is a file: control commands never create an empty store."""
    if not Path(path).is_file():
        raise CommandError(f"{path} does not exist; pass the --store the server serves")
    return Path(path)


def _register_rollout(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "rollout",
        _rollout,
        help="widen or narrow the share of devices served a catalog version",
        description=(
            "Serves --catalog-version to --fraction of the family's devices: a stable hashed "
            "share, so widening only adds devices. A device outside every partial rollout "
            "runs the newest version rolled out to all (fraction 1)."
        ),
    )
    _add_store_arguments(parser)
    parser.add_argument("--catalog-version", required=True, type=int, metavar="V")
    _add_fraction_argument(parser, "share of devices served it", required=True)


def _rollout(args: argparse.Namespace) -> int:
    require_extras("rollout", _SERVER)
    from pocketrec.server import SQLiteStore, set_rollout

    with SQLiteStore(_existing_store(args.store)) as store:
        set_rollout(store, args.family, args.catalog_version, args.fraction)
    print(
        f"family {printable(args.family)}: catalog version {args.catalog_version} is served to "
        f"{args.fraction:.0%} of devices"
    )
    return 0


def _register_rollback(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "rollback",
        _rollback,
        help="publish an earlier catalog version's content again, as the next version",
        description=(
            "Devices refuse older signed versions, so a rollback signs the rows (and model) "
            "of an earlier catalog version as the family's next version, served to every "
            "device. Default --to: the newest version before the latest that every device "
            "was served."
        ),
    )
    _add_store_arguments(parser)
    parser.add_argument("--key", required=True, metavar="KEYFILE", help="publisher.key (PEM)")
    parser.add_argument("--to", type=int, metavar="V", help="the catalog version to go back to")


def _rollback(args: argparse.Namespace) -> int:
    require_extras("rollback", _SERVER)
    from pocketrec.sdk.catalog import load_private_key
    from pocketrec.server import SQLiteStore, rollback

    key = load_private_key(Path(args.key))
    with SQLiteStore(_existing_store(args.store)) as store:
        result = rollback(store, args.family, key, args.to)
    print(result.summary())
    return 0


def _register_pin(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "pin",
        _pin,
        help="hold a device at a catalog version, or release it",
        description=(
            "Pins --device to --catalog-version whatever is published or rolled out, until "
            "--clear. A device refuses a version older than its own unless its app allows "
            "rollback."
        ),
    )
    _add_store_arguments(parser)
    parser.add_argument("--device", required=True, metavar="NAME", help="the device's name")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--catalog-version", type=int, metavar="V")
    target.add_argument("--clear", action="store_true", help="remove the device's pin")


def _pin(args: argparse.Namespace) -> int:
    require_extras("pin", _SERVER)
    from pocketrec.server import SQLiteStore, pin

    with SQLiteStore(_existing_store(args.store)) as store:
        pin(store, args.family, args.device, None if args.clear else args.catalog_version)
    where = "released" if args.clear else f"pinned to catalog version {args.catalog_version}"
    print(f"device {printable(args.device)} of family {printable(args.family)}: {where}")
    return 0


def _register_devices(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "devices",
        _devices,
        help="list a family's devices: versions they run, last seen, pin, rollout bucket",
        description=(
            "One line per device with a token for --family: the model and catalog versions "
            "it last said it runs, when it last called, its pin, and its rollout bucket (it "
            "is served a partially rolled out version when bucket < fraction)."
        ),
    )
    _add_store_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _devices(args: argparse.Namespace) -> int:
    require_extras("devices", _SERVER)
    from pocketrec.server import SQLiteStore, devices

    with SQLiteStore(_existing_store(args.store)) as store:
        listed = devices(store, args.family)
    rows = [
        {
            "device": status.name,
            "model_version": status.running_model_version,
            "catalog_version": status.running_catalog_version,
            "last_seen_at": status.last_seen_at,
            "pinned_catalog_version": status.pinned_catalog_version,
            "bucket": round(status.bucket, 4),
            "revoked": status.revoked,
        }
        for status in listed
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'device':24} {'model':>5} {'catalog':>7}  {'last seen':25} {'pin':>5} {'bucket':>6}")
    for row in rows:
        pinned = "-" if row["pinned_catalog_version"] is None else row["pinned_catalog_version"]
        print(
            f"{printable(row['device'])[:24]:24} {row['model_version']:>5} "
            f"{row['catalog_version']:>7}  {row['last_seen_at'] or 'never':25} {pinned:>5} "
            f"{row['bucket']:>6.4f}" + ("  revoked" if row["revoked"] else "")
        )
    return 0


def _register_events(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "events",
        _events,
        help="export the events devices uploaded, or delete a user's",
        description=(
            "`events export --out FILE` writes the family's events as CSV (user, item, "
            "timestamp, model_version, catalog_version) for `pocketrec train --data FILE "
            "--string-ids --time-col timestamp`. `events delete --user U` deletes every event "
            "of U (the pseudonym devices send), from every device."
        ),
    )
    parser.add_argument("action", choices=("export", "delete"))
    _add_store_arguments(parser)
    parser.add_argument("--out", metavar="FILE", help="export: the CSV file to write")
    parser.add_argument("--user", metavar="U", help="delete: the user whose events go")


def _events(args: argparse.Namespace) -> int:
    require_extras("events", _SERVER)
    needed = "--out" if args.action == "export" else "--user"
    if getattr(args, needed[2:]) is None:
        raise CommandError(f"`pocketrec events {args.action}` needs {needed}")
    from pocketrec.server import SQLiteStore, delete_user_events, export_events

    store_path = _existing_store(args.store)
    if args.action == "export":
        out = writable_dir(args.out, parent=True)
        with SQLiteStore(store_path) as store:
            count = export_events(store, args.family, out)
        print(f"wrote {count} events to {out}")
        return 0
    with SQLiteStore(store_path) as store:
        count = delete_user_events(store, args.family, args.user)
    print(f"deleted {count} events of user {printable(args.user)}")
    return 0


def _register_token(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "token",
        _token,
        help="issue or revoke a device's bearer token for the sync server",
        description=(
            "`token issue` prints a new token for --device once (the store keeps only its "
            "sha256); `token revoke` revokes every token of --device."
        ),
    )
    parser.add_argument("action", choices=("issue", "revoke"))
    _add_store_arguments(parser)
    parser.add_argument("--device", required=True, metavar="NAME", help="the device's name")


def _token(args: argparse.Namespace) -> int:
    require_extras("token", _SERVER)
    from pocketrec.server import SQLiteStore, issue_token, revoke_token

    with SQLiteStore(args.store) as store:
        if args.action == "issue":
            print(issue_token(store, args.family, args.device))
        else:
            count = revoke_token(store, args.family, args.device)
            print(f"revoked {count} tokens of device {printable(args.device)}")
    return 0


def _register_serve(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "serve",
        _serve,
        help="serve the sync store to devices over gRPC (with health and reflection)",
        description=(
            "Serves CatalogSync (proto/pocketrec/sync/v1/sync.proto), grpc.health.v1 and "
            "server reflection from --store until SIGINT or SIGTERM, then drains running "
            "streams. Plaintext: put TLS in front of it beyond a trusted network."
        ),
    )
    parser.add_argument("--store", required=True, metavar="DB", help="the sync store (SQLite)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=50051, help="port (0: any free one)")
    parser.add_argument(
        "--grace", type=float, default=10.0, metavar="S", help="seconds to drain on stop"
    )
    parser.add_argument(
        "--chunk-bytes",
        type=int,
        default=None,
        metavar="N",
        help="most bytes per streamed chunk (default and maximum 1 MiB)",
    )


def _serve(args: argparse.Namespace) -> int:
    require_extras("serve", _SERVER)
    from pocketrec.server import SQLiteStore, serve

    if not Path(args.store).is_file():
        raise CommandError(
            f"{args.store} does not exist; publish a bundle into it first (pocketrec publish)"
        )
    stop = threading.Event()
    previous = {
        number: signal.signal(number, lambda *_: stop.set())
        for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        with SQLiteStore(args.store) as store:
            chunking = {} if args.chunk_bytes is None else {"chunk_bytes": args.chunk_bytes}
            server = serve(store, args.host, args.port, **chunking)
            print(f"serving on {server.address}", flush=True)
            stop.wait()
            _log.LOGGER.info("stopping: draining running calls for up to %s s", args.grace)
            server.stop(args.grace)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
