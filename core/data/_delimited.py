"""A loader for any delimited user/item/time file."""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import math
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np

from pocketrec.data._interactions import Interactions
from pocketrec.errors import DataError

Column = int | str

# Tried in order on the first line when no delimiter is given.
_DELIMITERS = ("\t", "::", ",", ";", "|")

# Header words for the id columns, after lower-casing and dropping `_`, `-`, `.` and spaces;
# each also counts with an `id` or `s` suffix ("user_id", "movieId", "items").
_USER_WORDS = ("user", "customer", "client", "visitor", "member", "account", "session", "reviewer")
_ITEM_WORDS = (
    "item", "movie", "product", "article", "sku", "asin", "isbn", "track", "song", "book",
    "video", "content", "post", "artist",
)  # fmt: skip
_USER_NAME = re.compile(rf"^(uid|({'|'.join(_USER_WORDS)})(id|s)?)$")
_ITEM_NAME = re.compile(rf"^(iid|({'|'.join(_ITEM_WORDS)})(id|s)?)$")


def load_delimited(
    path: str | Path,
    *,
    user_col: Column = 0,
    item_col: Column = 1,
    time_col: Column | None = None,
    weight_col: Column | None = None,
    query_col: Column | None = None,
    delimiter: str | None = None,
    header: bool | None = None,
    string_ids: bool = False,
    encoding: str = "utf-8",
) -> Interactions:
    """Reads interactions from a delimited text file.

    Single-character delimiters (comma, tab, ...) are read as CSV: a field may be quoted
    (`"Heat, The"`), and the quotes are not part of the value. `::` and whitespace split
    plainly. A UTF-8 byte order mark is dropped.

    Args:
        path: the file.
        user_col, item_col, time_col, weight_col: a column, by 0-based index or by header
            name. Without `time_col` the file order is the time order.
        query_col: optional column of the search query that led to the event (a search
            log of (user, query, item, time)); an empty or missing field is an event
            without a query. A query of several words needs a real delimiter (tab, comma,
            ...): whitespace would split it.
            The queries land in `Interactions.queries`, and the search tower trains on them.
        delimiter: the field separator; detected from the first line when None (tab, `::`,
            comma, semicolon, `|`, else whitespace).
        header: whether the first line names the columns. When None, it does if any
            column is given by name; or the ids (without `string_ids`) of the first line
            are not numbers; or its time or weight field is not a number (or ISO date)
            while the second line's is; or its user and item fields are id column names
            ("user", "user_id", "userId", "customer", "item", "movieId", "product", "sku",
            ...). Pass True or False where that guess cannot tell.
        string_ids: keep ids as strings instead of requiring integers.
        encoding: the text encoding of the file.

    Returns:
        The interactions in file order. Lines with too few fields are skipped and counted
        in `Interactions.skipped`.

    Raises:
        DataError: a missing or empty file, an unknown column, a non-numeric id (unless
            `string_ids`), a timestamp that is neither a number nor an ISO date, a weight
            that is not a number, a NaN or infinite timestamp or weight (refused rather
            than skipped: it would silently reorder the split), or broken CSV quoting; each
            names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no interaction file at {path}: pass an existing file or directory")
    text = _read_text(path, encoding)
    first_line = next((line for line in text.split("\n") if line.strip()), None)
    if first_line is None:
        raise DataError(f"{path} is empty: expected one interaction per line")
    if delimiter is None:
        delimiter = _detect_delimiter(first_line)
    records = _records(text, delimiter, path)
    head = list(itertools.islice(records, 2))
    if not head:
        raise DataError(f"{path} has no interactions: every line is blank or has only empty fields")
    first_fields = head[0][1]
    if header is None:
        header = _looks_like_header(
            first_fields,
            head[1][1] if len(head) > 1 else None,
            user_col=user_col,
            item_col=item_col,
            time_col=time_col,
            weight_col=weight_col,
            query_col=query_col,
            string_ids=string_ids,
        )
    names = first_fields if header else []
    rows = itertools.chain(head[1:] if header else head, records)

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
    query_i = resolve(query_col, "query")
    assert user_i is not None and item_i is not None
    # A line may end before an optional query field: that event had no query.
    needed = max(i for i in (user_i, item_i, time_i, weight_i) if i is not None) + 1

    users: list[object] = []
    items: list[object] = []
    times: list[float] = []
    weights: list[float] = []
    queries: list[str | None] = []
    lines = 0
    malformed = 0
    parse_id = str if string_ids else int
    for number, fields in rows:
        lines += 1
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
            weights.append(_parse_weight(fields[weight_i], path, number))
        if query_i is not None:
            queries.append(fields[query_i] or None if query_i < len(fields) else None)
    if lines == 0:
        raise DataError(f"{path} has a header line but no interactions")
    if not users:
        raise DataError(
            f"{path}: none of {lines} lines has the {needed} fields needed; check "
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
        queries=np.asarray(queries, dtype=object) if query_i is not None else None,
    )


def _read_text(path: Path, encoding: str) -> str:
    # utf-8-sig drops a byte order mark, which would otherwise stick to the first field.
    try:
        is_utf8 = codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        raise ValueError(f"unknown encoding {encoding!r}; pass e.g. 'utf-8' or 'latin-1'") from None
    try:
        return path.read_text(encoding="utf-8-sig" if is_utf8 else encoding)
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path} is not valid {encoding} text ({error}); pass encoding='latin-1' "
            "(--encoding) or the file's real encoding"
        ) from error


def _records(text: str, delimiter: str, path: Path) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, stripped fields) of each non-blank line."""
    if len(delimiter) == 1 and delimiter != " ":
        reader = csv.reader(
            io.StringIO(text), delimiter=delimiter, skipinitialspace=True, strict=True
        )
        start = 1
        try:
            for row in reader:
                if row and any(field.strip() for field in row):
                    yield start, [field.strip() for field in row]
                start = reader.line_num + 1
        except csv.Error as error:
            raise DataError(
                f"{path}:{start}: broken CSV quoting ({error}); close the quoted field, put "
                f"nothing between a closing quote and the next {delimiter!r}, or pass the "
                "real delimiter"
            ) from None
        return
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield number, _split(line, delimiter)


def _split(line: str, delimiter: str) -> list[str]:
    if delimiter == " ":
        return line.split()
    return [field.strip() for field in line.split(delimiter)]


def _detect_delimiter(line: str) -> str:
    for candidate in _DELIMITERS:
        if candidate in line:
            return candidate
    return " "


def _looks_like_header(
    first: list[str],
    second: list[str] | None,
    *,
    user_col: Column,
    item_col: Column,
    time_col: Column | None,
    weight_col: Column | None,
    query_col: Column | None,
    string_ids: bool,
) -> bool:
    """The `header=None` rule of `load_delimited`."""
    columns = (user_col, item_col, time_col, weight_col, query_col)
    if any(isinstance(c, str) for c in columns):
        return True

    def field(fields: list[str] | None, column: Column | None) -> str | None:
        if fields is None or not isinstance(column, int) or column >= len(fields):
            return None
        return fields[column]

    user, item = field(first, user_col), field(first, item_col)
    if not string_ids and not all(_is_number(f) for f in (user, item) if f is not None):
        return True
    for column, is_value in ((time_col, _is_time), (weight_col, _is_number)):
        here, below = field(first, column), field(second, column)
        if here is not None and below is not None and not is_value(here) and is_value(below):
            return True
    return (
        user is not None
        and item is not None
        and bool(_USER_NAME.match(_header_word(user)))
        and bool(_ITEM_NAME.match(_header_word(item)))
    )


def _header_word(name: str) -> str:
    return re.sub(r"[\s_.\-]", "", name.lower())


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_time(text: str) -> bool:
    if _is_number(text):
        return True
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _parse_weight(text: str, path: Path, number: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}:{number}: the weight {text!r} is not a number") from None
    return _finite(value, text, "weight", path, number)


def _parse_time(text: str, path: Path, number: int) -> float:
    if _is_number(text):
        return _finite(float(text), text, "timestamp", path, number)
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise DataError(
            f"{path}:{number}: the timestamp {text!r} is neither a number nor an ISO date"
        ) from None


def _finite(value: float, text: str, role: str, path: Path, number: int) -> float:
    if not math.isfinite(value):
        raise DataError(
            f"{path}:{number}: the {role} {text!r} is not finite; give every line a real "
            f"{role} or remove the line"
        )
    return value
