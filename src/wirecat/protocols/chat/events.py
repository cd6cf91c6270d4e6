"""The chat vocabulary: commands (client -> server), events (server -> client), the error codes,
and the rules for nicks, rooms and texts shared by both wire formats."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from .unicode import INVISIBLE, enforce_nick

#: Every ``ErrorEvent.code`` the chat protocol and core may send (the JSON ``error.code``).
ERROR_CODES: frozenset[str] = frozenset(
    [
        "bad_utf8",
        "control_chars",
        "line_too_long",
        "bad_json",
        "bad_shape",
        "unknown_command",
        "bad_arguments",
        "invalid_nick",
        "nick_taken",
        "invalid_room",
        "text_too_long",
        "empty_text",
        "not_registered",
        "already_registered",
        "not_in_room",
        "no_such_room",
        "no_such_nick",
        "too_many_rooms",
        "rate_limited",
        "flooding",
        "auth_required",
        "auth_failed",
        "nick_reserved",
        "forbidden",
        "room_closed",
        "hub_unavailable",
        "timeout",
    ]
)

#: A nick: a letter or ``_``, then up to 23 letters, digits, ``_`` or ``-`` (ASCII).
NICK_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,23}")
#: A room: ``#`` and 1-32 letters, digits, ``_`` or ``-`` (ASCII, case-sensitive).
ROOM_RE: Final = re.compile(r"#[A-Za-z0-9_-]{1,32}")
#: Default longest chat text, in bytes of UTF-8.
MAX_TEXT: Final = 1024
_MAX_REF = 64  # characters
_MAX_REASON = 256  # bytes of UTF-8, for quit reasons
_MAX_INT_REF = 2**53
# C0 controls except TAB, DEL, C1 controls; lone surrogates (possible through JSON escapes).
_BAD_CHARS: Final = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")

Ref: TypeAlias = str | int | None
"""A client-chosen request tag (string or integer) echoed in the reply; ``None``: none."""


# -- commands (client -> server) -----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Hello:
    """Register with ``nick`` (``None``: the server picks ``guest-N``).

    ``token``: the user's secret on servers with a users file (never shown in ``repr``).
    ``room``: the room to land in once logged in (``None``: the server's default room,
    ``#lobby`` unless configured), in both modes.
    """

    nick: str | None = None
    ref: Ref = None
    token: str | None = field(default=None, repr=False)
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Join:
    """Join ``room`` (created on first join); it becomes the current room.

    ``since``: the id of the last event of ``room`` the client saw (a client resuming
    after a reconnect): the reply's history then holds only the messages after it, and
    says ``gap`` when the history no longer reaches back that far. ``None``: the room's
    recent history.
    """

    room: str
    ref: Ref = None
    since: int | None = None


@dataclass(frozen=True, slots=True)
class Part:
    """Leave ``room`` (``None``: the current room)."""

    room: str | None = None
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Say:
    """Send ``text`` to ``room`` (``None``: the current room); ``action`` for ``/me``."""

    text: str
    room: str | None = None
    action: bool = False
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Dm:
    """Send ``text`` privately to the member named ``to``."""

    to: str
    text: str
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Who:
    """List the members of ``room`` (``None``: the current room)."""

    room: str | None = None
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Rooms:
    """List the rooms and their member counts."""

    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Nick:
    """Change nick to ``nick``."""

    nick: str
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Quit:
    """Leave the server (the server answers :class:`Bye`, then closes)."""

    reason: str | None = None
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Kick:
    """Admins: remove ``nick`` from ``room`` (``None``: the admin's current room)."""

    nick: str
    room: str | None = None
    reason: str | None = None
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class CloseRoom:
    """Admins: remove everyone from ``room`` (``None``: the current room) and close it.

    A closed room refuses joins (``room_closed``) until an admin joins it again.
    """

    room: str | None = None
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Help:
    """Ask for the list of commands."""

    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Ping:
    """Ask for a :class:`Pong` (a barrier: every earlier command has been handled)."""

    ref: Ref = None


Command: TypeAlias = (
    Hello | Join | Part | Say | Dm | Who | Rooms | Nick | Quit | Help | Ping | Kick | CloseRoom
)


# -- events (server -> client) -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Message:
    """A message to a room. ``id``: server-assigned, increasing; ``ts``: seconds since epoch."""

    id: int
    ts: float
    room: str
    nick: str
    text: str
    action: bool = False


@dataclass(frozen=True, slots=True)
class Direct:
    """A private message from ``sender`` to ``to``."""

    id: int
    ts: float
    sender: str
    to: str
    text: str


@dataclass(frozen=True, slots=True)
class Joined:
    """``nick`` joined ``room``."""

    id: int
    ts: float
    room: str
    nick: str


@dataclass(frozen=True, slots=True)
class Parted:
    """``nick`` left ``room`` (``reason``: why, e.g. a quit message or ``None``)."""

    id: int
    ts: float
    room: str
    nick: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class NickChanged:
    """``old`` is now known as ``new``; ``rooms`` lists where to announce it (not encoded)."""

    id: int
    ts: float
    old: str
    new: str
    rooms: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Kicked:
    """``nick`` was removed from ``room`` by the admin ``by``."""

    id: int
    ts: float
    room: str
    nick: str
    by: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RoomClosed:
    """The admin ``by`` closed ``room``: every member was removed from it."""

    id: int
    ts: float
    room: str
    by: str


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The server is going away."""


@dataclass(frozen=True, slots=True)
class Notice:
    """A line of server information (banner, motd)."""

    text: str


@dataclass(frozen=True, slots=True)
class Welcome:
    """Reply to :class:`Hello`: registered as ``nick``."""

    nick: str
    motd: str = ""
    default_room: str = "#lobby"
    server: str = "wirecat"
    ref: Ref = None
    user: str | None = None  # the authenticated user name, if any
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RoomJoined:
    """Reply to :class:`Join`: the members now in ``room`` and its recent messages.

    ``gap``: the join asked for the messages ``since`` an id, and some of them are no
    longer held (history trimmed, or lost by the hub): ``history`` starts later than asked.
    """

    room: str
    members: tuple[str, ...]
    history: tuple[Message, ...] = ()
    ref: Ref = None
    gap: bool = False


@dataclass(frozen=True, slots=True)
class RoomParted:
    """Reply to :class:`Part`."""

    room: str
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Sent:
    """Reply to :class:`Say` / :class:`Dm`: what was sent, with its id and timestamp."""

    message: Message | Direct
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class WhoList:
    """Reply to :class:`Who`."""

    room: str
    members: tuple[str, ...]
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class RoomList:
    """Reply to :class:`Rooms`: ``(room, member count)`` pairs, sorted by room."""

    rooms: tuple[tuple[str, int], ...]
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class NickSet:
    """Reply to :class:`Nick`; ``announced``: a :class:`NickChanged` already told the member."""

    nick: str
    old: str
    announced: bool = False
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Bye:
    """Reply to :class:`Quit`; the server closes after it."""

    reason: str | None = None
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Pong:
    """Reply to :class:`Ping`."""

    ref: Ref = None


@dataclass(frozen=True, slots=True)
class HelpText:
    """Reply to :class:`Help`."""

    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Done:
    """Reply to an admin command (:class:`Kick`, :class:`CloseRoom`): ``text`` says what."""

    text: str
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """A command failed or a line was rejected; nothing else happened.

    Attributes:
        code: stable machine-readable code: ``bad_utf8``, ``control_chars``,
            ``line_too_long``, ``bad_json``, ``bad_shape``, ``unknown_command``,
            ``bad_arguments``, ``invalid_nick``, ``nick_taken``, ``invalid_room``,
            ``text_too_long``, ``empty_text``, ``not_registered``, ``already_registered``,
            ``not_in_room``, ``no_such_room``, ``no_such_nick``, ``too_many_rooms``,
            ``rate_limited``, ``flooding``, ``auth_required``, ``auth_failed``,
            ``nick_reserved``, ``forbidden``, ``room_closed``, ``timeout`` (a line not
            completed in time; the connection is closed), ``hub_unavailable`` (the server's
            hub, e.g. Redis, cannot be reached: nothing was done, try again later) (see
            :data:`ERROR_CODES`).
        reason: one human-readable sentence.
        ref: the ``ref`` of the command that failed, if it had one.
    """

    code: str
    reason: str
    ref: Ref = None


ServerEvent: TypeAlias = (
    Message
    | Direct
    | Joined
    | Parted
    | NickChanged
    | Kicked
    | RoomClosed
    | Shutdown
    | Notice
    | Welcome
    | RoomJoined
    | RoomParted
    | Sent
    | WhoList
    | RoomList
    | NickSet
    | Bye
    | Pong
    | HelpText
    | Done
    | ErrorEvent
)

_HELP_LINES: Final = (
    "commands:",
    "  text             say text to the current room (//text sends /text)",
    "  /join #room      join a room (it becomes the current room)",
    "  /part [#room]    leave a room (default: the current room)",
    "  /msg NICK text   send a private message",
    "  /me action       say an action: * ann waves",
    "  /who [#room]     list the members of a room",
    "  /rooms           list the rooms",
    "  /nick NAME       change your nick",
    "  /help            this help",
    "  /quit [reason]   leave",
    "admins:",
    "  /kick NICK [#room] [reason]  remove NICK from a room (default: the current room)",
    "  /close [#room]   remove everyone from a room and close it",
)
#: JSON command types, in the order of the module docstring.
COMMAND_TYPES: Final = (
    "hello", "join", "part", "say", "me", "dm", "who", "rooms", "nick", "quit", "ping", "help",
    "kick", "close",
)  # fmt: skip


# -- validation ----------------------------------------------------------------------------
def check_nick(nick: str, ref: Ref = None) -> ErrorEvent | None:
    """Return an ``invalid_nick`` error unless ``nick`` is a valid nick, else None.

    ASCII nicks match :data:`NICK_RE`; others must be 1-24 characters, start with a letter
    and be unchanged by the PRECIS UsernameCasePreserved profile (RFC 8265 3.4: NFC,
    halfwidth, no disallowed, invisible or direction-changing code points).
    """
    if NICK_RE.fullmatch(nick) is not None:
        return None
    if not nick.isascii() and len(nick) <= 4 * 24 and enforce_nick(nick) == nick:
        return None
    shown = nick if len(nick) <= 40 and _BAD_CHARS.search(nick) is None else "that"
    if INVISIBLE.search(shown):
        shown = "that"
    return ErrorEvent(
        "invalid_nick",
        f"invalid nick {shown!r}: use 1-24 letters, digits, _ or -, starting with a letter",
        ref,
    )


def check_room(room: str, ref: Ref = None) -> ErrorEvent | None:
    """Return an ``invalid_room`` error if ``room`` does not match :data:`ROOM_RE`, else None."""
    if ROOM_RE.fullmatch(room) is None:
        shown = room if len(room) <= 40 and _BAD_CHARS.search(room) is None else "that"
        return ErrorEvent(
            "invalid_room",
            f"invalid room {shown!r}: use # and 1-32 letters, digits, _ or -",
            ref,
        )
    return None


def check_text(text: str, max_text: int = MAX_TEXT, ref: Ref = None) -> ErrorEvent | None:
    """Return an error if ``text`` is empty, too long or holds control characters, else None.

    Args:
        text: the decoded text.
        max_text: the most bytes its UTF-8 encoding may take.
    """
    if not text or text.isspace():
        return ErrorEvent("empty_text", "empty message: nothing was sent", ref)
    if len(text) > max_text or (len(text) * 4 > max_text and len(text.encode()) > max_text):
        return ErrorEvent(
            "text_too_long", f"message longer than {max_text} bytes: nothing was sent", ref
        )
    return _check_chars(text, ref)


def _check_chars(text: str, ref: Ref = None) -> ErrorEvent | None:
    if (bad := INVISIBLE.search(text)) is not None:
        return ErrorEvent(
            "control_chars",
            f"text holds an invisible or direction-changing character (U+{ord(bad[0]):04X}):"
            " nothing was sent",
            ref,
        )
    if _BAD_CHARS.search(text) is not None:
        if re.search("[\ud800-\udfff]", text):
            return ErrorEvent("bad_utf8", "text holds a lone surrogate: nothing was sent", ref)
        return ErrorEvent(
            "control_chars", "text holds control characters (NUL, ESC, ...): nothing was sent", ref
        )
    return None


def _decode(data: bytes) -> str | ErrorEvent:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return ErrorEvent(
            "bad_utf8", f"invalid UTF-8 at byte {exc.start} of the line: it was dropped"
        )
