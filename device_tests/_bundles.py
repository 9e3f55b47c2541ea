"""Which bundles the device tests run: given ones, or recipes built on the spot."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_RECIPES = ("float32", "int8+int8-table", "gpu-float16")


def bundle_names() -> list[str]:
    given = os.environ.get("POCKETREC_DEVICE_BUNDLES")
    if not given:
        return list(DEFAULT_RECIPES)
    root = Path(given)
    if (root / "manifest.json").is_file():
        return [str(root)]
    return sorted(str(p) for p in root.iterdir() if (p / "manifest.json").is_file())
