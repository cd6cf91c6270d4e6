"""Typed reads of fields from a decoded JSON object, one rule set for every JSON protocol.

Each reader returns the field's value with the right type, or raises
:class:`~wirecat.errors.FieldError` (an :class:`~wirecat.errors.InvalidMessage` carrying the
``field`` name and a stable ``code``), so a protocol turns any bad field into its own error
reply in one place. Size limits are in bytes of UTF-8 and are checked without encoding the
string when its length alone decides (a ``str`` of ``n`` characters takes ``n`` to ``4n``
bytes). Nothing here allocates in proportion to the input beyond that encoding.

Used by the chat protocol (commands and server events); shaped for the files protocol's
``_int``/``_str``/``_bool`` to move onto (same ``InvalidMessage`` base, same wording).
"""

from __future__ import annotations

import re
from typing import Any, Final

from ..errors import FieldError

__all__ = [
    "BAD_CHARS",
    "byte_length_over",
    "get_int",
    "get_opt_int",
    "get_opt_str",
    "get_str",
    "get_str_list",
]

#: C0 controls except TAB, DEL, C1 controls, lone surrogates (possible through JSON escapes).
BAD_CHARS: Final = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")
_MISSING: Final = object()


def byte_length_over(text: str, max_bytes: int) -> bool:
    """Return True when ``text`` takes more than ``max_bytes`` bytes of UTF-8.

    Encodes only when the character count cannot decide (``n <= max < 4n``); lone
    surrogates count as 3 bytes, as ``errors="surrogatepass"`` would encode them.
    """
    n = len(text)
    if n > max_bytes:
        return True
    if n * 4 <= max_bytes:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > max_bytes


def get_str(
    obj: dict[str, Any],
    name: str,
    *,
    max_bytes: int | None = None,
    min_bytes: int = 0,
    printable: bool = False,
    what: str | None = None,
) -> str:
    """Return the required string field ``name`` of ``obj``.

    Args:
        obj: a decoded JSON object.
        name: the field.
        max_bytes: the most bytes of UTF-8 it may take (``None``: no limit here).
        min_bytes: the fewest bytes (1 to refuse the empty string).
        printable: refuse control characters and lone surrogates (:data:`BAD_CHARS`).
        what: who needs the field, for the message (e.g. ``"'say'"``).

    Raises:
        FieldError: ``code`` ``bad_shape`` (absent, null, not a string, or out of the byte
            range) or ``control_chars``.
    """
    value = obj.get(name, _MISSING)
    if value is _MISSING or value is None:
        who = f"{what} needs" if what else "missing"
        raise FieldError(name, "bad_shape", f"{who} a string field {name!r}")
    if not isinstance(value, str):
        raise FieldError(name, "bad_shape", f"field {name!r} must be a string")
    _check_str(name, value, max_bytes, min_bytes, printable)
    return value


def get_opt_str(
    obj: dict[str, Any],
    name: str,
    *,
    max_bytes: int | None = None,
    min_bytes: int = 0,
    printable: bool = False,
) -> str | None:
    """Like :func:`get_str`, but an absent or ``null`` field gives ``None``."""
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise FieldError(name, "bad_shape", f"field {name!r} must be a string or null")
    _check_str(name, value, max_bytes, min_bytes, printable)
    return value


def _check_str(
    name: str, value: str, max_bytes: int | None, min_bytes: int, printable: bool
) -> None:
    if max_bytes is not None and byte_length_over(value, max_bytes):
        raise FieldError(name, "bad_shape", f"field {name!r} is longer than {max_bytes} bytes")
    if min_bytes and (len(value) < min_bytes and len(value.encode(errors="replace")) < min_bytes):
        raise FieldError(name, "bad_shape", f"field {name!r} is shorter than {min_bytes} bytes")
    if printable and BAD_CHARS.search(value) is not None:
        raise FieldError(name, "control_chars", f"field {name!r} holds control characters")


def get_int(
    obj: dict[str, Any],
    name: str,
    *,
    low: int | None = None,
    high: int | None = None,
    what: str | None = None,
) -> int:
    """Return the required integer field ``name`` (``true``/``false`` are not integers).

    Args:
        low, high: inclusive bounds (``None``: unbounded on that side).

    Raises:
        FieldError: ``bad_shape``: absent, not an integer, or out of bounds.
    """
    value = obj.get(name)
    if type(value) is not int:
        who = f"{what} needs" if what else "missing"
        raise FieldError(name, "bad_shape", f"{who} an integer field {name!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise FieldError(name, "bad_shape", f"field {name!r} out of range [{low}, {high}]")
    return value


def get_opt_int(
    obj: dict[str, Any], name: str, *, low: int | None = None, high: int | None = None
) -> int | None:
    """Like :func:`get_int`, but an absent or ``null`` field gives ``None``."""
    return None if obj.get(name) is None else get_int(obj, name, low=low, high=high)


def get_str_list(obj: dict[str, Any], name: str, *, what: str | None = None) -> tuple[str, ...]:
    """Return the required field ``name``, a list of strings, as a tuple.

    Raises:
        FieldError: ``bad_shape``: absent, not a list, or an item that is not a string.
    """
    value = obj.get(name)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        who = f"{what} needs" if what else "missing"
        raise FieldError(name, "bad_shape", f"{who} a list of strings {name!r}")
    return tuple(value)
