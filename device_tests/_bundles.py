"""Which bundles the device suite runs: given ones, ones it builds, or the ones it ships.

`POCKETREC_DEVICE_BUNDLES` names a folder of bundles (e.g. ``OUT/bundles`` of
``pocketrec bench``) or one bundle: that is how they run on a device that has no
TensorFlow. Without it, `build_bundles` trains a small model and compresses it with
`DEFAULT_RECIPES` where TensorFlow is installed; elsewhere the bundles shipped in this
package's ``data/`` folder (built the same way, `SHIPPED_RECIPES`) are used.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

DEFAULT_RECIPES = ("float32", "int8+int8-table", "gpu-float16")
# Shipped with the package (a few tens of KiB each): a float model for every accelerator,
# the GPU export, and an int8 one that the GPU must refuse.
SHIPPED_RECIPES = DEFAULT_RECIPES
SHIPPED = Path(__file__).resolve().parent / "data"


def bundle_names() -> list[str]:
    """Bundles named by `POCKETREC_DEVICE_BUNDLES`, else `DEFAULT_RECIPES` (to build)."""
    given = os.environ.get("POCKETREC_DEVICE_BUNDLES")
    if not given:
        return list(DEFAULT_RECIPES)
    return [str(path) for path in bundles_in(Path(given))]


def bundles_in(root: Path) -> list[Path]:
    """``root`` if it is a bundle, else the bundles directly inside it, by name."""
    if (root / "manifest.json").is_file():
        return [root]
    return sorted(p for p in root.iterdir() if (p / "manifest.json").is_file())


def shipped_bundles() -> list[Path]:
    """The bundles this package ships, one per `SHIPPED_RECIPES` entry."""
    return [SHIPPED / name for name in SHIPPED_RECIPES]


def can_build() -> bool:
    """Whether `build_bundles` can run here (``pocketrec[compression]`` is installed)."""
    return importlib.util.find_spec("tensorflow_model_optimization") is not None


def build_bundles(out: Path, recipes: tuple[str, ...] = DEFAULT_RECIPES) -> dict[str, Path]:
    """Recipe name -> bundle under ``out``, from one small synthetic training run.

    150 users, 120 items, 16-d vectors, histories of 20: seconds to train, and bundles of a
    few tens of KiB. Needs ``pocketrec[compression]`` (TensorFlow).
    """
    from pocketrec.compression import compress
    from pocketrec.data import synthetic
    from pocketrec.evaluation import leave_last_out
    from pocketrec.training import ModelConfig, TrainConfig, train

    split = leave_last_out(synthetic(num_users=150, num_items=120, seed=1))
    trained = train(
        split,
        ModelConfig(embedding_dim=16, history_length=20, ffn_dim=32),
        TrainConfig(epochs=1, seed=1, objective="sequence"),
    )
    return {
        name: compress(trained, name, out / name, split=split, measure=False).bundle
        for name in recipes
    }
