"""``pocketrec compress``: one recipe, or accuracy-aware selection, from a trained model.

Only argparse at import time: TensorFlow and tfmot load inside the command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pocketrec.compression import CompressionResult, Recipe


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``compress`` to the ``pocketrec`` command line."""
    from pocketrec.data import add_data_arguments

    parser = subparsers.add_parser(
        "compress",
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
        "--fine-tune-steps", type=int, metavar="N", help="override fine-tuning steps"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_data_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs the command; returns the exit status."""
    if args.list_recipes:
        return _list_recipes()
    if args.model is None or args.out is None or not (args.recipe or args.auto):
        print(
            "pocketrec compress: pass --model RUN_DIR, --out and either --recipe NAME or "
            "--auto (or --list-recipes)",
            file=sys.stderr,
        )
        return 2
    if args.data is None and args.synthetic is None:
        print(
            "pocketrec compress: pass the data the model was trained on (--data PATH or "
            "--synthetic USERS with the same --seed): fine-tuning, int8 calibration and "
            "evaluation need its split",
            file=sys.stderr,
        )
        return 2

    from pocketrec.compression import auto_compress, compress, get_recipe
    from pocketrec.data import load_from_args
    from pocketrec.errors import PocketrecError
    from pocketrec.evaluation import leave_last_out
    from pocketrec.training import TrainedModel

    try:
        trained = TrainedModel.load(_model_dir(Path(args.model)))
        split = leave_last_out(load_from_args(args))
        if args.auto:
            names = args.candidates.split(",") if args.candidates else None
            candidates = None if names is None else [_tuned(get_recipe(n), args) for n in names]
            if candidates is None and args.fine_tune_steps is not None:
                from pocketrec.compression import default_candidates

                candidates = [_tuned(get_recipe(n), args) for n in default_candidates()]
            report = auto_compress(
                trained,
                args.out,
                split=split,
                max_ndcg_drop=args.max_ndcg_drop,
                candidates=candidates,
                size_metric=args.size_metric,
            )
            if args.json:
                print(json.dumps(report.to_dict(), indent=2))
            else:
                print(report.to_markdown())
                print(f"\nselected {report.selected}: {report.selected_result.bundle}")
            return 0
        result = compress(trained, _tuned(get_recipe(args.recipe), args), args.out, split=split)
    except (PocketrecError, ValueError) as error:
        print(f"pocketrec compress: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_result(result)
    return 0


def _model_dir(path: Path) -> Path:
    # `pocketrec train --out RUN_DIR` saves the model under RUN_DIR/model.
    return path / "model" if (path / "model").is_dir() else path


def _tuned(recipe: Recipe, args: argparse.Namespace) -> Recipe:
    if args.fine_tune_steps is None or not recipe.fine_tunes:
        return recipe
    import dataclasses

    return dataclasses.replace(
        recipe, fine_tune=dataclasses.replace(recipe.fine_tune, steps=args.fine_tune_steps)
    )


def _list_recipes() -> int:
    from pocketrec.compression._recipes import list_recipes

    for recipe in list_recipes():
        print(
            f"{recipe.name:16} model {recipe.quantization:8} table {recipe.table_dtype:8} "
            f"{recipe.accelerator:4} {recipe.description}"
        )
    return 0


def _print_result(result: CompressionResult) -> None:
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
