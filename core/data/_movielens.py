"""MovieLens loaders (100K, 1M, latest), detected from the files present."""

from __future__ import annotations

import csv
from pathlib import Path

from pocketrec.data._delimited import load_delimited
from pocketrec.data._interactions import Interactions, ItemInfo
from pocketrec.errors import DataError

# u.item's 19 genre flags, in column order, for copies without u.genre.
_ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


def detect_movielens(directory: Path) -> str | None:
    """Returns "100k", "1m", "latest", or None for a folder that is not MovieLens."""
    for name, marker in (("100k", "u.data"), ("1m", "ratings.dat"), ("latest", "ratings.csv")):
        if (directory / marker).is_file():
            return name
    return None


def load_movielens(directory: str | Path) -> Interactions:
    """Loads a MovieLens folder: ratings as implicit interactions, titles and genres."""
    directory = Path(directory)
    flavour = detect_movielens(directory)
    if flavour == "100k":
        log = load_delimited(
            directory / "u.data", delimiter="\t", header=False, time_col=3, weight_col=2
        )
        log.items_info = _ml100k_items(directory)
    elif flavour == "1m":
        log = load_delimited(
            directory / "ratings.dat",
            delimiter="::",
            header=False,
            time_col=3,
            weight_col=2,
            encoding="latin-1",
        )
        log.items_info = _ml1m_items(directory / "movies.dat")
    elif flavour == "latest":
        log = load_delimited(
            directory / "ratings.csv",
            delimiter=",",
            header=True,
            user_col="userId",
            item_col="movieId",
            time_col="timestamp",
            weight_col="rating",
        )
        log.items_info = _latest_items(directory / "movies.csv")
    else:
        raise DataError(
            f"{directory} is not a MovieLens folder: expected u.data (100K), ratings.dat (1M) "
            "or ratings.csv (latest); for another file pass the file itself"
        )
    log.source = f"MovieLens {flavour.upper()} at {directory}"
    return log


def _ml100k_items(directory: Path) -> dict[str, ItemInfo]:
    path = directory / "u.item"
    if not path.is_file():
        return {}
    genres = _ML100K_GENRES
    genre_file = directory / "u.genre"
    if genre_file.is_file():
        pairs = [line.split("|") for line in genre_file.read_text("latin-1").splitlines() if line]
        genres = tuple(name for name, _ in sorted(pairs, key=lambda pair: int(pair[1])))
    info = {}
    for line in path.read_text("latin-1").splitlines():
        fields = line.split("|")
        if len(fields) < 5 + len(genres):
            continue
        flags = fields[5 : 5 + len(genres)]
        info[fields[0]] = ItemInfo(
            title=fields[1],
            genres=tuple(g for g, flag in zip(genres, flags, strict=True) if flag == "1"),
        )
    return info


def _ml1m_items(path: Path) -> dict[str, ItemInfo]:
    if not path.is_file():
        return {}
    info = {}
    for line in path.read_text("latin-1").splitlines():
        fields = line.split("::")
        if len(fields) == 3:
            info[fields[0]] = ItemInfo(title=fields[1], genres=_genres(fields[2]))
    return info


def _latest_items(path: Path) -> dict[str, ItemInfo]:
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as file:
        return {
            row["movieId"]: ItemInfo(title=row["title"], genres=_genres(row["genres"]))
            for row in csv.DictReader(file)
        }


def _genres(field: str) -> tuple[str, ...]:
    return tuple(g for g in field.split("|") if g and g != "(no genres listed)")
