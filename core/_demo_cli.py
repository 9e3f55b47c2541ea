"""`pocketrec demo`: the whole pipeline on real (or synthetic) data, in one command."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
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
    parser.set_defaults(func=run)


def _load(data: str | None):
    from pocketrec.data import DataError, fetch_movielens, load, synthetic

    if data is not None:
        return load(data)
    try:
        return load(fetch_movielens("100k"))
    except DataError as error:
        print(f"MovieLens 100K is not available ({error}).")
        print("Using a synthetic log instead (pass --data PATH for real data).")
        return synthetic(num_users=1000, num_items=1500)


def run(args: argparse.Namespace) -> int:
    from pocketrec.evaluation import leave_last_out, metrics_table, run_baselines

    started = time.perf_counter()
    out = Path(args.out)
    log = _load(args.data)
    print(f"data: {log.summary()}")
    split = leave_last_out(log)
    print(f"split: {split.num_users:,} users, {split.num_items:,} items; {split.stats}")

    print("baselines (tuned on validation) ...")
    baselines = run_baselines(split)

    from pocketrec.training import ModelConfig, TrainConfig, export_bundle, train

    train_config = TrainConfig(seed=args.seed, tensorboard_dir=str(out / "tensorboard"))
    if args.epochs is not None:
        train_config.epochs = args.epochs
    trained = train(split, ModelConfig(), train_config)
    trained.save(out / "model")

    from pocketrec.evaluation import evaluate

    model_valid = evaluate(trained.score, split, "valid")
    model_test = evaluate(trained.score, split, "test")
    bundle = export_bundle(
        trained,
        out / "bundle",
        split=split,
        metrics={"valid": model_valid.as_dict(), "test": model_test.as_dict()},
    )

    from pocketrec.sdk import Recommender

    # A fresh on-device history each run, so the printed recommendations are reproducible.
    history = out / "history.sqlite"
    history.unlink(missing_ok=True)
    with Recommender.open(bundle, history_path=str(history)) as recommender:
        on_device = evaluate(recommender.score_rows, split, "test")
        rows = {name: (r.valid, r.test) for name, r in baselines.items()}
        rows["pocketrec (Keras)"] = (model_valid, model_test)
        rows["pocketrec bundle (LiteRT)"] = (None, on_device)
        _show_recommendations(recommender, split)
    print()
    print("Full-ranking metrics, temporal leave-last-out (test = last event per user):")
    print(metrics_table(rows))
    print(f"\nbundle: {bundle}  tensorboard: {out / 'tensorboard'}")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


def _show_recommendations(recommender, split) -> None:
    titles = split.titles
    histories = split.histories("test")
    for user in range(min(3, split.num_users)):
        history = [str(split.item_ids[i]) for i in histories[user]]
        print(f"\nuser {split.users[user]} recently:")
        for item in history[-5:]:
            print(f"    {_title(titles, split, item)}")
        for item in history:
            recommender.observe(str(split.users[user]), item)
        result = recommender.recommend(user=str(split.users[user]), k=5)
        print("  recommended:")
        for rec in result.items:
            print(f"    {rec.score:7.3f}  {rec.title or rec.item_id}")
    user = str(split.users[0])
    newest = next(r.item_id for r in recommender.recommend(user=user, k=1).items)
    recommender.observe(user, newest)
    print(f"\nuser {user} watches {_title(titles, split, newest)}; next recommendations:")
    for rec in recommender.recommend(user=user, k=5).items:
        print(f"    {rec.score:7.3f}  {rec.title or rec.item_id}")


def _title(titles, split, item: str) -> str:
    return titles[split.item_index[item]] or item
