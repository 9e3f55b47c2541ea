"""Shared fixtures: where MovieLens 100K lives (never inside the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def ml100k_path() -> Path:
    return Path(os.environ.get("POCKETREC_ML100K", REPO.parent / "shared" / "data" / "ml-100k"))


@pytest.fixture(scope="session")
def ml100k() -> Path:
    path = ml100k_path()
    if not (path / "u.data").is_file():
        pytest.skip(f"MovieLens 100K not found at {path}; set POCKETREC_ML100K")
    return path
