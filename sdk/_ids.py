"""The one rule for user and item ids, so the store and the `Recommender` agree on them.

An id is a non-empty ``str`` that UTF-8 can encode (no lone surrogates such as
``"\\ud800"``: SQLite and the bundle's JSON could not store them). An ``int`` is accepted
and converted with ``str()`` (``257`` -> ``"257"``), because MovieLens-style ids are often
read as numbers; numpy integers count as ``int`` (they are `numbers.Integral`). Everything
else, ``bool`` (``True`` is not item ``"1"``), ``float`` (``50.0`` is not ``"50"``),
``bytes``, ``None`` and numpy booleans included, is a `TypeError`.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable


def item_id(value: object, what: str = "item id") -> str:
    """``value`` as an id ``str`` (an ``int`` becomes ``str(value)``).

    Args:
        value: the id to check.
        what: how the error messages call it (``"user id"``, ``"exclude[2]"``...).

    Raises:
        TypeError: if ``value`` is neither a ``str`` nor an ``int`` (``bool`` is not an int).
        ValueError: if ``value`` is an empty string or holds a lone surrogate.
    """
    if type(value) is str and value.isascii():  # the common case, checked in one step
        if value:
            return value
        raise ValueError(f"{what} must be a non-empty str, got ''")
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{what} must be a non-empty str, got ''")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{what} {value!r} holds a lone surrogate {value[exc.start]!r} at index "
                f"{exc.start}, which cannot be stored; decode the bytes it came from with "
                "errors='replace' or fix the source"
            ) from None
        return str.__str__(value)  # a plain str, also for subclasses such as numpy.str_
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    raise TypeError(
        f"{what} must be a str (or an int, converted with str()), got "
        f"{type(value).__name__} {value!r}{_hint(value)}"
    )


def item_ids(values: object, what: str = "history") -> list[str]:
    """Each id of the iterable ``values``, checked by `item_id`, in order.

    ``None`` is rejected: the caller decides whether a missing sequence means empty and
    passes ``()`` then.

    Raises:
        TypeError: if ``values`` is one ``str``/``bytes`` (it would be read character by
            character), an ``int``, ``None`` or not iterable, or if an element is not an id.
        ValueError: if an element is an empty string or holds a lone surrogate.
    """
    if isinstance(values, str):
        raise TypeError(f"{what} must be a sequence of item ids, not one str: pass [{values!r}]")
    if isinstance(values, (bytes, bytearray, memoryview)):
        decoded = bytes(values).decode("utf-8", "replace")
        raise TypeError(
            f"{what} must be a sequence of item ids, not {type(values).__name__} "
            f"{values!r}: decode it and pass a list of str, e.g. [{decoded!r}]"
        )
    if not isinstance(values, Iterable):
        raise TypeError(
            f"{what} must be a sequence of item ids, got {type(values).__name__} "
            f"{values!r}{'; pass () for none' if values is None else f': pass [{values!r}]'}"
        )
    return [item_id(value, f"{what}[{index}]") for index, value in enumerate(values)]


def user_id(value: object) -> str:
    """``value`` as a user id ``str``: the same rule as `item_id`.

    Raises:
        TypeError: if ``value`` is neither a ``str`` nor an ``int``.
        ValueError: if ``value`` is an empty string or holds a lone surrogate.
    """
    return item_id(value, "user id")


def _hint(value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        return "; decode it first, e.g. value.decode('utf-8')"
    if isinstance(value, float) and value.is_integer():
        return f"; pass str({int(value)}) if {int(value)} is the id"
    return ""
