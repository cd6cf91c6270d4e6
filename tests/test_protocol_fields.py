"""protocols/_fields.py: one set of JSON field rules (types, byte limits) for every protocol."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wirecat.errors import FieldError, InvalidMessage
from wirecat.protocols._fields import (
    byte_length_over,
    get_int,
    get_opt_int,
    get_opt_str,
    get_str,
    get_str_list,
)


@given(st.text(), st.integers(min_value=0, max_value=64))
def test_byte_length_over_matches_the_encoding(text: str, limit: int) -> None:
    assert byte_length_over(text, limit) == (len(text.encode("utf-8", "surrogatepass")) > limit)


def test_strings() -> None:
    obj = {"type": "say", "a": "é" * 3, "n": None, "i": 3, "c": "a\x1bb"}
    assert get_str(obj, "a", max_bytes=6) == "é" * 3
    with pytest.raises(FieldError, match="longer than 5 bytes") as info:
        get_str(obj, "a", max_bytes=5)
    assert info.value.field == "a" and info.value.code == "bad_shape"
    assert isinstance(info.value, InvalidMessage)
    with pytest.raises(FieldError, match="'say' needs a string field 'n'"):
        get_str(obj, "n", what="'say'")
    with pytest.raises(FieldError, match="must be a string"):
        get_str(obj, "i")
    assert get_opt_str(obj, "n") is None and get_opt_str(obj, "absent") is None
    with pytest.raises(FieldError) as info:
        get_str(obj, "c", printable=True)
    assert info.value.code == "control_chars"
    with pytest.raises(FieldError, match="shorter than 1 bytes"):
        get_opt_str({"t": ""}, "t", min_bytes=1)


def test_ints_and_lists() -> None:
    obj = {"i": 5, "b": True, "l": ["a", "b"], "m": ["a", 1]}
    assert get_int(obj, "i", low=0, high=5) == 5
    with pytest.raises(FieldError, match="out of range"):
        get_int(obj, "i", high=4)
    with pytest.raises(FieldError):
        get_int(obj, "b")  # true is not an integer
    assert get_opt_int(obj, "absent") is None
    assert get_str_list(obj, "l") == ("a", "b")
    with pytest.raises(FieldError):
        get_str_list(obj, "m")
