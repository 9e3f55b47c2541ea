"""A loader for any delimited user/item/time file."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np

from pocketrec.data._interactions import Interactions
from pocketrec.errors import DataError

Column = int | str

# Tried in order on the first line when no delimiter is given.
_DELIMITERS = ("\t", "::", ",", ";", "|")


def load_delimited(
    path: str | Path,
    *,
    user_col: Column = 0,
    item_col: Column = 1,
    time_col: Column | None = None,
    weight_col: Column | None = None,
    delimiter: str | None = None,
    header: bool | None = None,
    string_ids: bool = False,
    encoding: str = "utf-8",
) -> Interactions:
    """Reads interactions from a delimited text file.

    Args:
        path: the file.
        user_col, item_col, time_col, weight_col: a column, by 0-based index or by header
            name. Without `time_col` the file order is the time order.
        delimiter: the field separator; detected from the first line when None (tab, `::`,
            comma, semicolon, `|`, else whitespace).
        header: whether the first line names the columns; detected when None (a first line
            whose id fields are not numbers is a header).
        string_ids: keep ids as strings instead of requiring integers.
        encoding: the text encoding of the file.

    Returns:
        The interactions in file order. Lines with too few fields are skipped and counted
        in `Interactions.skipped`.

    Raises:
        DataError: a missing or empty file, an unknown column, a non-numeric id (unless
            `string_ids`), or a timestamp that is neither a number nor an ISO date.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no interaction file at {path}: pass an existing file or directory")
    try:
        lines = path.read_text(encoding=encoding).splitlines()
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path} is not valid {encoding} text ({error}); pass encoding='latin-1' "
            "(--encoding) or the file's real encoding"
        ) from error
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise DataError(f"{path} is empty: expected one interaction per line")

    if delimiter is None:
        delimiter = _detect_delimiter(numbered[0][1])
    first_fields = _split(numbered[0][1], delimiter)
    named = any(isinstance(c, str) for c in (user_col, item_col, time_col, weight_col))
    if header is None:
        if named:
            header = True
        elif string_ids:
            header = False
        else:
            id_fields = [first_fields[c] for c in (user_col, item_col) if c < len(first_fields)]
            header = not all(_is_number(field) for field in id_fields)
    names = first_fields if header else []
    if header:
        numbered = numbered[1:]
        if not numbered:
            raise DataError(f"{path} has a header line but no interactions")

    def resolve(column: Column | None, role: str) -> int | None:
        if column is None:
            return None
        if isinstance(column, str):
            if column not in names:
                raise DataError(
                    f"{path}: no column named {column!r} for the {role}; the header has {names}"
                )
            return names.index(column)
        if column < 0 or column >= len(first_fields):
            raise DataError(
                f"{path}: the {role} column {column} does not exist; lines have "
                f"{len(first_fields)} fields (0..{len(first_fields) - 1}) split by "
                f"{delimiter!r}"
            )
        return column

    user_i = resolve(user_col, "user")
    item_i = resolve(item_col, "item")
    time_i = resolve(time_col, "timestamp")
    weight_i = resolve(weight_col, "weight")
    assert user_i is not None and item_i is not None
    needed = max(i for i in (user_i, item_i, time_i, weight_i) if i is not None) + 1

    users: list[object] = []
    items: list[object] = []
    times: list[float] = []
    weights: list[float] = []
    malformed = 0
    parse_id = str if string_ids else int
    for number, line in numbered:
        fields = _split(line, delimiter)
        if len(fields) < needed:
            malformed += 1
            continue
        try:
            user, item = parse_id(fields[user_i]), parse_id(fields[item_i])
        except ValueError:
            raise DataError(
                f"{path}:{number}: ids must be integers, got user {fields[user_i]!r}, item "
                f"{fields[item_i]!r}; pass string_ids=True (--string-ids) for string ids, "
                "or check the column options"
            ) from None
        users.append(user)
        items.append(item)
        if time_i is not None:
            times.append(_parse_time(fields[time_i], path, number))
        if weight_i is not None:
            weights.append(_parse_float(fields[weight_i], "weight", path, number))
    if not users:
        raise DataError(
            f"{path}: none of {len(numbered)} lines has the {needed} fields needed; check "
            f"the delimiter (got {delimiter!r})"
        )
    dtype = np.str_ if string_ids else np.int64
    return Interactions(
        users=np.asarray(users, dtype=dtype),
        items=np.asarray(items, dtype=dtype),
        timestamps=(
            np.asarray(times, dtype=np.float64)
            if time_i is not None
            else np.arange(len(users), dtype=np.float64)
        ),
        weights=np.asarray(weights, dtype=np.float32) if weight_i is not None else None,
        source=str(path),
        skipped={"malformed lines": malformed} if malformed else {},
    )


def _split(line: str, delimiter: str) -> list[str]:
    if delimiter == " ":
        return line.split()
    return [field.strip() for field in line.split(delimiter)]


def _detect_delimiter(line: str) -> str:
    for candidate in _DELIMITERS:
        if candidate in line:
            return candidate
    return " "


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_float(text: str, role: str, path: Path, number: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{path}:{number}: the {role} {text!r} is not a number") from None


def _parse_time(text: str, path: Path, number: int) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise DataError(
            f"{path}:{number}: the timestamp {text!r} is neither a number nor an ISO date"
        ) from None
