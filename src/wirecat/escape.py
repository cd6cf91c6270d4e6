"""Peer text made safe where it is rendered: one helper per medium.

Peer-controlled text (nicks, rooms, messages, file names, reasons, user names) is hostile
wherever it lands. It is escaped once, at the boundary where it is shown:

- :func:`for_terminal` before printing it for a person (``wirecat chat``, ``ls``, error
  lines, ``serve``'s listener table). ``connect``/``listen`` stay byte-exact pipes, as nc is.
- :func:`for_log` before writing it into a *text* log line (JSON logs escape by themselves).
- HTML is the page's business: it renders peer text with ``textContent``, never markup.

What is made visible: C0 controls (``\\x00``-``\\x1f`` except TAB where allowed), DEL, C1
controls (``\\x80``-``\\x9f``, which include CSI and OSC on some terminals), the line and
paragraph separators U+2028/U+2029, bidirectional controls (U+061C, U+200E/U+200F,
U+202A-U+202E, U+2066-U+2069; Unicode TR #9, and CVE-2021-42574 "Trojan Source"), zero-width
characters (U+200B-U+200D, U+2060, U+FEFF) and tag characters (U+E0000-U+E007F). Each is
shown as a Python-style escape (``\\x1b``, ``\\u202e``, ``\\U000e0041``), so nothing can
forge a line, move the cursor, set a window title (OSC 0), write the clipboard (OSC 52) or
reorder what a reader sees. A backslash is left alone: the escapes are for people to read,
not to be decoded.

Pure functions on ``str``; no I/O. Model: the ``repr`` of ``str``, restricted to what a
terminal or a log line must not receive raw.
"""

from __future__ import annotations

import re

__all__ = ["UNSAFE", "for_log", "for_terminal", "is_safe"]

#: Every code point made visible: controls, separators, bidi, zero-width and tag characters.
_RANGES = r"\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\U000e0000-\U000e007f"
UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f" + _RANGES + "]")
_UNSAFE_WITH_TAB = re.compile(r"[\x00-\x1f" + _RANGES + "]")


def _visible(match: re.Match[str]) -> str:
    cp = ord(match.group())
    if cp <= 0xFF:
        return f"\\x{cp:02x}"
    if cp <= 0xFFFF:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def for_terminal(text: str, *, keep_tab: bool = True) -> str:
    """Return ``text`` with every unsafe code point (see :data:`UNSAFE`) shown as an escape.

    Args:
        text: peer-controlled text (str; decode bytes first, ``errors="replace"``).
        keep_tab: leave TAB as is (it moves the cursor only forward); False escapes it too.

    Returns:
        The same text when it is already safe (no copy), else an escaped copy.
    """
    pattern = UNSAFE if keep_tab else _UNSAFE_WITH_TAB
    if pattern.search(text) is None:
        return text
    return pattern.sub(_visible, text)


def for_log(value: object) -> str:
    """Return ``str(value)`` made safe for one text log line: newlines, TAB, ESC and the
    other unsafe code points are escaped, so a peer cannot forge a line or reach the
    operator's terminal."""
    return for_terminal(value if isinstance(value, str) else str(value), keep_tab=False)


def is_safe(text: str) -> bool:
    """True when ``text`` contains nothing :func:`for_terminal` would escape (TAB allowed)."""
    return UNSAFE.search(text) is None
