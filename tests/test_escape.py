"""The one escaping helper per medium: terminal and text log."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wirecat.escape import UNSAFE, for_log, for_terminal, is_safe


def test_escapes_what_a_terminal_must_not_receive() -> None:
    hostile = "a\x1b]0;pwned\x07b\x1b]52;c;ZXZpbA==\x07\x1b[2J\x9b31m\u202eevil\u2028x\U000e0041"
    out = for_terminal(hostile)
    assert is_safe(out)
    assert "\\x1b]0;pwned\\x07" in out and "\\x9b" in out and "\\u202e" in out
    assert "\\u2028" in out and "\\U000e0041" in out


def test_safe_text_is_returned_unchanged() -> None:
    text = "héllo wörld 你好 \t tab"
    assert for_terminal(text) is text


def test_log_lines_cannot_be_forged() -> None:
    out = for_log("ann\n12:00:00 WARNING forged\tline")
    assert "\n" not in out and "\t" not in out
    assert out == "ann\\x0a12:00:00 WARNING forged\\x09line"
    assert for_log(42) == "42"


@given(st.text())
def test_any_text_comes_out_safe(text: str) -> None:
    assert UNSAFE.search(for_terminal(text)) is None
    assert "\n" not in for_log(text) and "\x1b" not in for_log(text)
