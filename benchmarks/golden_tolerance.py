"""How far LiteRT's CPU kernels really differ, per quantization: the golden self-check's bound.

`python -m pocketrec.benchmarks.golden_tolerance` trains a default-sized dual encoder on a
synthetic log, converts its user tower with every quantization, and runs real histories
through the three CPU kernel sets LiteRT has (XNNPACK, the optimized builtins, the
reference builtins) at one and two threads. It prints, per kernel set, the largest
user-vector deviation from XNNPACK at one thread (what the SDK runs and `Bundle.build`
records), relative to ``max(1, max|vector|)`` (the golden check's rule), the tolerance the
SDK uses, and how many of 40 re-signed single-byte weight corruptions each
tolerance lets through, beside how many of them are harmful (they change the top-10 of
more than 5% of the histories) and how many harmful ones the check accepts. The golden
histories are the ones `Bundle.build` picks by default.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from pocketrec.errors import BundleError
from pocketrec.sdk import GOLDEN_TOLERANCE, Bundle, ItemTable, UserTower, encode_histories
from pocketrec.sdk.bundle import check_golden
from pocketrec.sdk.contract import HISTORY_INPUT, MASK_INPUT, SIGNATURE_KEY, USER_VECTOR_OUTPUT

# A corruption is harmful when it changes the top-10 of more than this share of histories.
HARMFUL_SHARE = 0.05
RESOLVERS = {
    "xnnpack": OpResolverType.AUTO,
    "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    "reference": OpResolverType.BUILTIN_REF,
}


def run(model: bytes, history: np.ndarray, mask: np.ndarray, resolver: Any, threads: int):
    interpreter = Interpreter(
        model_content=model, num_threads=threads, experimental_op_resolver_type=resolver
    )
    runner = interpreter.get_signature_runner(SIGNATURE_KEY)
    out = [
        runner(**{HISTORY_INPUT: history[i : i + 1], MASK_INPUT: mask[i : i + 1]})[
            USER_VECTOR_OUTPUT
        ]
        for i in range(len(history))
    ]
    return np.concatenate(out).astype(np.float64)


def top_10(vectors: np.ndarray, table: ItemTable) -> np.ndarray:
    return np.argsort(-table.scores(vectors.astype(np.float32)), axis=1, kind="stable")[:, :10]


def relative_deviation(a: np.ndarray, b: np.ndarray) -> float:
    scale = np.maximum(1.0, np.abs(b).max(axis=1))
    return float((np.abs(a - b).max(axis=1) / scale).max())


def corrupt(model: bytes, rng: np.random.Generator) -> bytes:
    """``model`` with one byte of one large constant buffer set to another value."""
    data = bytearray(model)
    root = schema.Model.GetRootAs(data, 0)
    buffers = [root.Buffers(i).DataAsNumpy() for i in range(root.BuffersLength())]
    weights = [b for b in buffers if isinstance(b, np.ndarray) and b.size >= 256]
    chosen = weights[rng.integers(len(weights))]
    index = rng.integers(chosen.size)
    chosen[index] = (int(chosen[index]) + rng.integers(1, 256)) % 256
    return bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--items", type=int, default=800)
    parser.add_argument("--histories", type=int, default=300)
    parser.add_argument("--corruptions", type=int, default=40)
    args = parser.parse_args()

    from pocketrec.compression import post_training_quantize, representative_histories
    from pocketrec.data import synthetic
    from pocketrec.evaluation import leave_last_out
    from pocketrec.training import ModelConfig, TrainConfig, train, user_tower_from_encoder

    split = leave_last_out(synthetic(num_users=args.users, num_items=args.items, seed=0))
    trained = train(
        split, ModelConfig(), TrainConfig(epochs=2, progress=False, objective="sequence")
    )
    table = ItemTable.quantize(trained.item_vectors(), "float32")
    length = trained.config.history_length
    histories = [h for h in split.histories("test")][: args.histories]
    history, mask = encode_histories(table, histories, length)
    ids = [str(i) for i in split.item_ids]
    rng = np.random.default_rng(0)
    print(
        f"{'quantization':12} {'xnnpack':>10} {'builtin':>10} {'reference':>10} {'tolerance':>10} "
        "corruptions accepted"
    )
    for quantization in GOLDEN_TOLERANCE:
        representative = (
            representative_histories(split, table, length) if quantization == "int8" else None
        )
        tower = user_tower_from_encoder(trained.folded_encoder())  # as bundles ship it
        model = post_training_quantize(tower, quantization, representative)
        outputs = {
            (name, threads): run(model, history, mask, resolver, threads)
            for name, resolver in RESOLVERS.items()
            for threads in (1, 2)
        }
        reference = outputs["xnnpack", 1]
        deviation = {
            kernels: max(
                relative_deviation(o, reference) for (k, _), o in outputs.items() if k == kernels
            )
            for kernels in RESOLVERS
        }
        bundle = Bundle.build(
            model=model,
            table=table,
            item_ids=ids,
            history_length=length,
            quantization=quantization,
        )
        top = top_10(reference, table)
        accepted = {"now": 0, "before": 0, "harmful": 0, "harmful accepted": 0}
        for _ in range(args.corruptions):
            tampered = Bundle(bundle.manifest, corrupt(model, rng), table, bundle.items, source="")
            try:
                tower = UserTower(tampered.model, history_length=length, dim=table.dim)
            except BundleError:
                continue  # no longer a loadable model: refused on open
            changed = (
                top_10(run(tampered.model, history, mask, RESOLVERS["xnnpack"], 1), table) != top
            ).any(axis=1)
            harmful = changed.mean() > HARMFUL_SHARE
            accepted["harmful"] += harmful
            for name, tolerance in (("now", None), ("before", 5e-2)):
                try:
                    check_golden(tampered, tower, tolerance=tolerance)
                except BundleError:
                    continue
                accepted[name] += 1
                if name == "now":
                    accepted["harmful accepted"] += harmful
        print(
            f"{quantization:12} {deviation['xnnpack']:10.2e} {deviation['builtin']:10.2e} "
            f"{deviation['reference']:10.2e} "
            f"{GOLDEN_TOLERANCE[quantization]:10.0e} "
            f"{accepted['now']}/{args.corruptions} (at 5e-2: {accepted['before']}); "
            f"harmful {accepted['harmful']}, of them accepted {accepted['harmful accepted']}"
        )


if __name__ == "__main__":
    main()
