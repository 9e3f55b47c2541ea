"""Interaction data: loaders, a checked download, and a synthetic generator."""

from __future__ import annotations

from pathlib import Path

from pocketrec.data._delimited import load_delimited
from pocketrec.data._fetch import default_cache_dir, fetch_movielens
from pocketrec.data._interactions import Interactions, ItemInfo
from pocketrec.data._movielens import detect_movielens, load_movielens
from pocketrec.data._options import add_data_arguments, load_from_args
from pocketrec.data._synthetic import synthetic
from pocketrec.errors import DataError


def load(path: str | Path, **options: object) -> Interactions:
    """Loads a MovieLens folder (detected from its files) or a delimited file.

    `options` go to `load_delimited` for a file; a MovieLens folder takes none.
    """
    path = Path(path)
    if path.is_dir():
        return load_movielens(path)
    if not path.exists():
        raise DataError(f"no data at {path}: pass a MovieLens folder or a delimited file")
    return load_delimited(path, **options)  # type: ignore[arg-type]


__all__ = [
    "DataError",
    "Interactions",
    "ItemInfo",
    "add_data_arguments",
    "default_cache_dir",
    "detect_movielens",
    "fetch_movielens",
    "load",
    "load_delimited",
    "load_from_args",
    "load_movielens",
    "synthetic",
]
