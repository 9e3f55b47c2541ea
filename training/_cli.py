"""`pocketrec train` and `pocketrec export`. TensorFlow is imported only when they run."""

from __future__ import annotations

import argparse

MODEL_SUBDIR = "model"
TENSORBOARD_SUBDIR = "tensorboard"
METRICS_FILE = "metrics.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``train`` and ``export`` to the ``pocketrec`` command line."""
    from pocketrec.data import add_data_arguments

    train = subparsers.add_parser(
        "train",
        help="train the dual encoder and compare it with the baselines",
        description=(
            "Splits the data (temporal leave-last-out), trains the dual encoder with early "
            "stopping on validation NDCG@10, prints its metrics beside the tuned baselines, "
            f"and saves the model in RUN_DIR/{MODEL_SUBDIR}, TensorBoard logs in "
            f"RUN_DIR/{TENSORBOARD_SUBDIR} and the metrics in RUN_DIR/{METRICS_FILE}."
        ),
    )
    add_data_arguments(train, required=True)
    train.add_argument("--out", required=True, metavar="RUN_DIR", help="where the run goes")
    train.add_argument("--epochs", type=int, help="maximum epochs (default: TrainConfig)")
    train.add_argument(
        "--encoder",
        choices=("attention", "mean", "gru"),
        default="attention",
        help="user tower encoder (default: attention)",
    )
    train.add_argument("--dim", type=int, default=64, help="embedding dimension D (default 64)")
    train.add_argument(
        "--history-length", type=int, default=50, help="history items L the model reads"
    )
    train.add_argument(
        "--no-baselines", action="store_true", help="skip training and tuning the baselines"
    )
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=_train)

    export = subparsers.add_parser(
        "export",
        help="write a trained model as a float32 bundle for the SDK",
        description=(
            "Converts the user tower of a `pocketrec train` run to TFLite, computes the item "
            "table with the item tower, and writes a bundle that `pocketrec recommend` opens."
        ),
    )
    export.add_argument(
        "--model", required=True, metavar="RUN_DIR", help="a `pocketrec train --out` directory"
    )
    export.add_argument("--out", required=True, metavar="BUNDLE", help="bundle directory")
    export.add_argument("--model-version", help="version text for the manifest")
    export.set_defaults(func=_export)


def _train(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from pocketrec.data import load_from_args
    from pocketrec.errors import PocketrecError
    from pocketrec.evaluation import evaluate, leave_last_out, metrics_table, run_baselines
    from pocketrec.training import ModelConfig, TrainConfig, train

    out = Path(args.out)
    try:
        model_config = ModelConfig(
            embedding_dim=args.dim, history_length=args.history_length, encoder=args.encoder
        )
        train_config = TrainConfig(
            seed=args.seed,
            tensorboard_dir=str(out / TENSORBOARD_SUBDIR),
            progress=not args.quiet,
        )
        if args.epochs is not None:
            train_config.epochs = args.epochs
        train_config.validate()
        interactions = load_from_args(args)
        print(f"data: {interactions.summary()}")
        split = leave_last_out(interactions)
        print(f"split: {split.num_users:,} users, {split.num_items:,} items; {split.stats}")
        trained = train(split, model_config, train_config)
    except (PocketrecError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    trained.save(out / MODEL_SUBDIR)
    valid = evaluate(trained.score, split, "valid")
    test = evaluate(trained.score, split, "test")
    rows = {}
    if not args.no_baselines:
        rows = {
            name: (r.valid, r.test)
            for name, r in run_baselines(split, progress=not args.quiet).items()
        }
    rows[f"pocketrec ({model_config.encoder})"] = (valid, test)
    (out / METRICS_FILE).write_text(
        json.dumps({"valid": valid.as_dict(), "test": test.as_dict()}, indent=2),
        encoding="utf-8",
    )
    print(metrics_table(rows))
    print(f"best epoch {trained.best_epoch}; model: {out / MODEL_SUBDIR}")
    print(f"tensorboard --logdir {out / TENSORBOARD_SUBDIR}")
    return 0


def _export(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from pocketrec.errors import PocketrecError
    from pocketrec.training import TrainedModel
    from pocketrec.training.export import export_bundle

    run_dir = Path(args.model)
    model_dir = run_dir / MODEL_SUBDIR if (run_dir / MODEL_SUBDIR).is_dir() else run_dir
    metrics_file = model_dir.parent / METRICS_FILE
    metrics = (
        json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else None
    )
    try:
        trained = TrainedModel.load(model_dir)
        bundle = export_bundle(trained, args.out, metrics=metrics, model_version=args.model_version)
    except (PocketrecError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"bundle: {bundle}")
    return 0
