"""Unicode rules for chat text and nicks (sans-I/O): what may not look like something else.

- Text: characters that reorder, hide or break lines (bidi controls, U+2028/U+2029, zero-width
  and tag characters) are refused, so a message cannot pass for a server notice or hide what
  it says (UTS #39 section 3.1 / PRECIS FreeformClass "disallowed" spirit, RFC 8264). ZWJ and
  ZWNJ stay allowed: emoji sequences and several scripts need them.
- Nicks: ASCII nicks keep :data:`~wirecat.protocols.chat.NICK_RE`; others must pass the PRECIS
  UsernameCasePreserved profile (RFC 8265 3.4, via ``precis-i18n``) and are compared
  case-insensitively (UsernameCaseMapped, RFC 8265 3.3).
- Confusables: :func:`skeleton` maps a nick to a form shared by the nicks it can be
  mistaken for (UTS #39 section 4 skeletons, from the confusables data of
  ``confusable-homoglyphs``: each character becomes the lowest code point of its
  confusable set, after case folding and NFD), so ``ann`` spelt with a Cyrillic
  U+0430 and ``ann`` collide.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from importlib import resources
from typing import Final

__all__ = ["INVISIBLE", "MAX_NICK_CHARS", "enforce_nick", "skeleton"]

#: Bidi controls (LRE..RLO, LRI..PDI, LRM, RLM, ALM), line and paragraph separators,
#: zero-width space, word joiner and invisible operators, BOM, and tag characters.
INVISIBLE: Final = re.compile(
    "[\u061c\u200b\u200e\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff"
    "\U000e0000-\U000e007f]"
)
#: The most characters an international nick may have (as the ASCII rule: 24).
MAX_NICK_CHARS: Final = 24


@functools.cache
def _profile() -> object:
    import precis_i18n

    return precis_i18n.get_profile("UsernameCasePreserved")


def enforce_nick(nick: str) -> str | None:
    """Return ``nick`` as PRECIS UsernameCasePreserved enforces it (RFC 8265 3.4), or
    ``None`` when it is not a valid international nick (disallowed code points, empty,
    longer than :data:`MAX_NICK_CHARS`, or not starting with a letter)."""
    if not nick or len(nick) > MAX_NICK_CHARS * 4:
        return None
    try:
        out: str = _profile().enforce(nick)  # type: ignore[attr-defined]
    except UnicodeError:
        return None
    if not 0 < len(out) <= MAX_NICK_CHARS or not unicodedata.category(out[0]).startswith("L"):
        return None
    if INVISIBLE.search(out) or any(c in "#/@:!,*?" or c.isspace() for c in out):
        return None
    return out


@functools.cache
def _prototypes() -> dict[str, str]:
    data = resources.files("confusable_homoglyphs").joinpath("confusables.json").read_text()
    table: dict[str, list[dict[str, str]]] = json.loads(data)
    out: dict[str, str] = {}
    for char, glyphs in table.items():
        group = [char, *(g["c"] for g in glyphs if len(g["c"]) == 1)]
        out[char] = min(group)
    return out


def skeleton(nick: str) -> str:
    """Return the confusable skeleton of ``nick`` (equal skeletons: easy to mistake).

    ``skeleton("ann") == skeleton("\u0410NN")`` (Cyrillic A) ``== skeleton("\uff41nn")``.
    """
    protos = _prototypes()
    folded = unicodedata.normalize("NFD", nick.casefold())
    return "".join(protos.get(c, c) for c in folded)
