"""The one id rule: str ids, int converted, everything else a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from pocketrec.sdk._ids import item_id, item_ids, user_id


def test_str_ids_pass_through_and_int_ids_are_converted_with_str() -> None:
    assert item_id("50") == "50"
    assert item_id("Amélie (2001)") == "Amélie (2001)"
    assert item_id(257) == "257"
    assert item_id(np.int64(257)) == "257"
    assert user_id(0) == "0"
    assert user_id("alice") == "alice"


def test_a_str_subclass_such_as_numpy_str_becomes_a_plain_str() -> None:
    converted = item_id(np.str_("50"))
    assert converted == "50"
    assert type(converted) is str


@pytest.mark.parametrize(
    "value", [b"50", None, 50.0, True, False, np.bool_(True), np.float32(1.0), ["50"]]
)
def test_anything_but_str_or_int_is_a_type_error_naming_the_value(value: object) -> None:
    with pytest.raises(TypeError, match="item id must be a str") as caught:
        item_id(value)
    assert repr(value) in str(caught.value)


def test_bytes_and_integral_floats_get_a_hint_on_the_fix() -> None:
    with pytest.raises(TypeError, match="decode it first"):
        item_id(b"50")
    with pytest.raises(TypeError, match=r"pass str\(50\)"):
        item_id(50.0)


def test_an_empty_id_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="user id must be a non-empty str"):
        user_id("")


def test_a_lone_surrogate_is_a_value_error_naming_the_id() -> None:
    with pytest.raises(ValueError, match=r"item id 'ab\\ud800' holds a lone surrogate"):
        item_id("ab\ud800")
    with pytest.raises(ValueError, match=r"user id '\\udcff' holds a lone surrogate"):
        user_id("\udcff")


def test_exclude_of_int_ids_is_converted() -> None:
    assert item_ids([257, "12", np.int32(3)], "exclude") == ["257", "12", "3"]
    assert item_ids(np.array([1, 2]), "exclude") == ["1", "2"]


def test_any_iterable_of_ids_is_accepted_in_order() -> None:
    assert item_ids(("b", "a")) == ["b", "a"]
    assert item_ids(f"i{n}" for n in range(3)) == ["i0", "i1", "i2"]
    assert item_ids([]) == []


def test_history_of_one_str_is_rejected_not_read_character_by_character() -> None:
    with pytest.raises(TypeError, match=r"history must be a sequence of item ids, not one str: "):
        item_ids("50")
    with pytest.raises(TypeError, match=r"pass \['50'\]"):
        item_ids("50")


def test_history_of_bytes_is_rejected_not_read_byte_by_byte() -> None:
    with pytest.raises(TypeError, match=r"history must be a sequence of item ids, not bytes"):
        item_ids(b"50")
    with pytest.raises(TypeError, match="not bytearray"):
        item_ids(bytearray(b"50"))


def test_history_of_one_int_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"history must be a sequence of item ids, got int 50"):
        item_ids(50)


def test_exclude_none_is_a_type_error_the_caller_passes_empty_instead() -> None:
    with pytest.raises(TypeError, match=r"exclude must be a sequence .* got NoneType None"):
        item_ids(None, "exclude")


def test_a_bad_element_is_named_by_its_position() -> None:
    with pytest.raises(TypeError, match=r"history\[1\] must be a str .* got float 1.5"):
        item_ids(["a", 1.5])
    with pytest.raises(ValueError, match=r"exclude\[2\] must be a non-empty str"):
        item_ids(["a", "b", ""], "exclude")
    with pytest.raises(ValueError, match=r"history\[0\] '\\ud800' holds a lone surrogate"):
        item_ids(["\ud800"])
