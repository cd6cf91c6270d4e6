"""The chat wire formats (sans-I/O): text lines for people, JSON lines for programs.

One TCP port serves both. The server greets with a few ``***`` text lines; the client's first
line then picks the mode for the rest of the connection:

- a line starting with ``{`` (after blanks) selects **JSON-lines mode**: every line either way
  is one JSON object with a ``"type"``;
- anything else selects **text mode**: that first line is the nick (an empty line asks for a
  ``guest-N`` name), later lines are chat text or ``/commands``.

This module holds everything that does not need a socket: the command and event dataclasses,
the parsers (bytes -> commands, never raising on peer input: bad input becomes an
:class:`ErrorEvent` with a stable ``code``), the two encoders (events -> bytes, one call per
event and format so one ``bytes`` object can be written to every member), and
:class:`ChatServerProtocol`, which frames lines with :class:`~wirecat.protocols.lines.LineFramer`
and picks the mode.

JSON-lines protocol (client -> server; every command may carry ``"ref"``, a string of at most
64 characters or an integer, echoed in the reply to that command)::

    {"type":"hello","nick":"ann"}            nick optional: null or absent -> guest-N
    {"type":"hello","nick":"ann","token":"..."}   on servers with a users file (see below)
    {"type":"join","room":"#lobby"}
    {"type":"part","room":"#lobby"}          room optional: the most recently joined room
    {"type":"say","room":"#lobby","text":"hi"}   room optional, as for part
    {"type":"me","room":"#lobby","text":"waves"}
    {"type":"dm","to":"bob","text":"psst"}
    {"type":"who","room":"#lobby"}           room optional
    {"type":"rooms"}   {"type":"nick","nick":"ann2"}   {"type":"quit","reason":"bye"}
    {"type":"ping"}    {"type":"help"}
    {"type":"kick","nick":"bob","room":"#lobby","reason":"spam"}   admins; room, reason optional
    {"type":"close","room":"#lobby"}         admins; room optional

Server -> client. Replies answer one command each (and carry its ``ref``)::

    welcome {nick, server, default_room, motd, user?, roles?}   hello (user: authenticated)
    done    {text}                           kick, close
    joined  {room, members:[nick], history:[message]}   join
    parted  {room}       sent {id, ts}       who {room, members:[nick]}
    rooms   {rooms:[{room, members:int}]}    renamed {nick, old}
    bye {reason}   pong {}   help {commands:[str]}
    error   {code, reason}                   any command, or bad input

Events (fan-out; ``id`` is a server-assigned increasing integer, ``ts`` ISO 8601 UTC)::

    message {id, ts, room, nick, text, kind:"say"|"me"}
    dm      {id, ts, from, to, text}
    join    {id, ts, room, nick}       part {id, ts, room, nick, reason?}
    nick    {id, ts, old, new}         notice {text}       shutdown {}
    kick    {id, ts, room, nick, by, reason}   close {id, ts, room, by}

Authentication (servers started with a users file, see :mod:`wirecat.auth`): a JSON client
sends its token in ``hello``; in text mode, a registered nick is answered with a prompt and
the next line is taken as the token (never parsed as a command). Errors: ``auth_required``
(a registered nick without a token, or a server without guests), ``auth_failed`` (wrong
token: the connection is closed), ``nick_reserved`` (``nick`` to a user's name),
``forbidden`` (a restricted room, or an admin command without the role), ``room_closed``.

Limits: nicks match :data:`NICK_RE`, rooms :data:`ROOM_RE` (case-sensitive), texts are at
most ``max_text`` bytes of UTF-8 (default :data:`MAX_TEXT`) without control characters.
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final, TypeAlias

from ..errors import InvalidMessage, LocalProtocolError
from . import MAX_TOKEN
from .lines import EndOfStream, Line, LineEvent, LineFramer, LineOverflow

__all__ = [
    "COMMAND_TYPES",
    "ERROR_CODES",
    "JSON_CODEC",
    "MAX_TEXT",
    "NICK_RE",
    "ROOM_RE",
    "TEXT_CODEC",
    "Bye",
    "ChatServerProtocol",
    "CloseRoom",
    "Codec",
    "Command",
    "Direct",
    "Dm",
    "Done",
    "EndOfStream",
    "ErrorEvent",
    "Hello",
    "Help",
    "HelpText",
    "Join",
    "Joined",
    "JsonCodec",
    "Kick",
    "Kicked",
    "Message",
    "Mode",
    "Nick",
    "NickChanged",
    "NickSet",
    "Notice",
    "Part",
    "Parted",
    "Ping",
    "Pong",
    "Quit",
    "Ref",
    "RoomClosed",
    "RoomJoined",
    "RoomList",
    "RoomParted",
    "Rooms",
    "Say",
    "Sent",
    "ServerEvent",
    "Shutdown",
    "TextCodec",
    "Who",
    "WhoList",
    "check_nick",
    "check_room",
    "check_text",
    "decode_json_event",
    "encode_json_command",
    "format_ts",
    "parse_json_line",
    "parse_text_line",
]


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
    """

    nick: str | None = None
    ref: Ref = None
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Join:
    """Join ``room`` (created on first join); it becomes the current room."""

    room: str
    ref: Ref = None


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
    """Reply to :class:`Join`: the members now in ``room`` and its recent messages."""

    room: str
    members: tuple[str, ...]
    history: tuple[Message, ...] = ()
    ref: Ref = None


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
            ``nick_reserved``, ``forbidden``, ``room_closed`` (see :data:`ERROR_CODES`).
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
    """Return an ``invalid_nick`` error if ``nick`` does not match :data:`NICK_RE`, else None."""
    if NICK_RE.fullmatch(nick) is None:
        shown = nick if len(nick) <= 40 and _BAD_CHARS.search(nick) is None else "that"
        return ErrorEvent(
            "invalid_nick",
            f"invalid nick {shown!r}: use 1-24 letters, digits, _ or -, starting with a letter",
            ref,
        )
    return None


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


# -- text mode -----------------------------------------------------------------------------
def parse_text_line(
    data: bytes, *, registered: bool = True, max_text: int = MAX_TEXT
) -> Command | ErrorEvent | None:
    """Parse one text-mode line (without its newline) into a command.

    Args:
        data: the line's bytes, as delivered by :class:`LineFramer`.
        registered: False while the peer has no nick yet: a plain line is then the nick
            (``Hello``; an empty line asks for a guest name), and only ``/nick``, ``/quit``,
            ``/help`` and ``/ping`` are accepted.
        max_text: the most bytes of UTF-8 a message text may take.

    Returns:
        A command; an :class:`ErrorEvent` for bad input (never raises on peer input);
        ``None`` for a blank line after registration (nothing to do).
    """
    text = _decode(data)
    if isinstance(text, ErrorEvent):
        return text
    bad = _check_chars(text)
    if bad is not None:
        return bad
    line = text.strip(" \t")
    if not registered:
        if not line:
            return Hello(None)
        if not line.startswith("/"):
            return check_nick(line) or Hello(line)
    elif not line:
        return None
    if not line.startswith("/") or line.startswith("//"):
        body = line[1:] if line.startswith("//") else text.rstrip(" \t")
        return check_text(body, max_text) or Say(body)
    word, _, rest = line[1:].partition(" ")
    name = word.lower()
    rest = rest.strip(" \t")
    if not registered and name not in ("nick", "quit", "help", "ping"):
        return ErrorEvent("not_registered", "choose a nick first (or an empty line for a guest)")
    parser = _TEXT_COMMANDS.get(name)
    if parser is None:
        shown = word if len(word) <= 32 else word[:32] + "..."
        return ErrorEvent("unknown_command", f"unknown command /{shown} (try /help)")
    result = parser(rest, max_text)
    if not registered and isinstance(result, Nick):
        return Hello(result.nick)
    return result


def _usage(text: str) -> ErrorEvent:
    return ErrorEvent("bad_arguments", f"usage: {text}")


def _room_arg(arg: str) -> str:
    return arg if arg.startswith("#") else "#" + arg


def _t_nick(rest: str, max_text: int) -> Command | ErrorEvent:
    if not rest or " " in rest:
        return _usage("/nick NAME")
    return check_nick(rest) or Nick(rest)


def _t_join(rest: str, max_text: int) -> Command | ErrorEvent:
    if not rest or " " in rest:
        return _usage("/join #room")
    room = _room_arg(rest)
    return check_room(room) or Join(room)


def _t_part(rest: str, max_text: int) -> Command | ErrorEvent:
    if not rest:
        return Part(None)
    if " " in rest:
        return _usage("/part [#room]")
    room = _room_arg(rest)
    return check_room(room) or Part(room)


def _t_msg(rest: str, max_text: int) -> Command | ErrorEvent:
    to, _, body = rest.partition(" ")
    body = body.strip(" \t")
    if not to or not body:
        return _usage("/msg NICK text")
    return check_nick(to) or check_text(body, max_text) or Dm(to, body)


def _t_me(rest: str, max_text: int) -> Command | ErrorEvent:
    if not rest:
        return _usage("/me action")
    return check_text(rest, max_text) or Say(rest, action=True)


def _t_who(rest: str, max_text: int) -> Command | ErrorEvent:
    if not rest:
        return Who(None)
    if " " in rest:
        return _usage("/who [#room]")
    room = _room_arg(rest)
    return check_room(room) or Who(room)


def _cut_reason(text: str) -> str | None:
    if len(text.encode()) > _MAX_REASON:
        text = text.encode()[:_MAX_REASON].decode(errors="ignore")
    return text or None


def _t_quit(rest: str, max_text: int) -> Command | ErrorEvent:
    return Quit(_cut_reason(rest))


def _t_kick(rest: str, max_text: int) -> Command | ErrorEvent:
    nick, _, rest = rest.partition(" ")
    if not nick:
        return _usage("/kick NICK [#room] [reason]")
    room: str | None = None
    rest = rest.strip(" \t")
    if rest.startswith("#"):
        room, _, rest = rest.partition(" ")
        if (err := check_room(room)) is not None:
            return err
    return check_nick(nick) or Kick(nick, room, _cut_reason(rest.strip(" \t")))


def _t_close(rest: str, max_text: int) -> Command | ErrorEvent:
    if not rest:
        return CloseRoom(None)
    if " " in rest:
        return _usage("/close [#room]")
    room = _room_arg(rest)
    return check_room(room) or CloseRoom(room)


_TEXT_COMMANDS: Final[dict[str, Callable[[str, int], Command | ErrorEvent]]] = {
    "nick": _t_nick,
    "join": _t_join,
    "j": _t_join,
    "part": _t_part,
    "leave": _t_part,
    "msg": _t_msg,
    "dm": _t_msg,
    "me": _t_me,
    "who": _t_who,
    "names": _t_who,
    "rooms": lambda rest, m: Rooms(),
    "list": lambda rest, m: Rooms(),
    "help": lambda rest, m: Help(),
    "quit": _t_quit,
    "ping": lambda rest, m: Ping(),
    "kick": _t_kick,
    "close": _t_close,
}


def _lines(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def _t_room_joined(ev: RoomJoined) -> bytes:
    out: list[str] = []
    if ev.history:
        out.append(f"*** last {len(ev.history)} messages in {ev.room}:")
        out.extend(_t_message_str(m) for m in ev.history)
    out.append(f"*** in {ev.room} ({len(ev.members)}): {' '.join(ev.members)}")
    return _lines(*out)


def _t_message_str(ev: Message) -> str:
    if ev.action:
        return f"{ev.room} * {ev.nick} {ev.text}"
    return f"{ev.room} <{ev.nick}> {ev.text}"


def _t_sent(ev: Sent) -> bytes:
    msg = ev.message
    if isinstance(msg, Direct):
        return f"-> *{msg.to}* {msg.text}\n".encode()
    return b""  # the room's broadcast already shows it


def _t_parted(ev: Parted) -> bytes:
    why = f" ({ev.reason})" if ev.reason else ""
    return f"*** {ev.nick} left {ev.room}{why}\n".encode()


def _t_welcome(ev: Welcome) -> bytes:
    who = f"*** you are {ev.nick}"
    if ev.user is not None:
        who += " (authenticated" + (f"; roles: {', '.join(ev.roles)})" if ev.roles else ")")
    out = [who]
    out.extend(f"*** {line}" for line in ev.motd.splitlines())
    out.append("*** type /help for commands")
    return _lines(*out)


def _t_rooms(ev: RoomList) -> bytes:
    if not ev.rooms:
        return b"*** no rooms\n"
    return f"*** rooms: {', '.join(f'{r} ({n})' for r, n in ev.rooms)}\n".encode()


_TEXT_ENCODERS: Final[dict[type, Callable[[Any], bytes]]] = {
    Message: lambda ev: (_t_message_str(ev) + "\n").encode(),
    Direct: lambda ev: f"*{ev.sender}* {ev.text}\n".encode(),
    Joined: lambda ev: f"*** {ev.nick} joined {ev.room}\n".encode(),
    Parted: _t_parted,
    NickChanged: lambda ev: f"*** {ev.old} is now known as {ev.new}\n".encode(),
    Kicked: lambda ev: (
        f"*** {ev.nick} was kicked from {ev.room} by {ev.by}"
        + (f" ({ev.reason})" if ev.reason else "")
        + "\n"
    ).encode(),
    RoomClosed: lambda ev: f"*** {ev.room} was closed by {ev.by}\n".encode(),
    Shutdown: lambda ev: b"*** server shutting down\n",
    Notice: lambda ev: _lines(*(f"*** {line}" for line in ev.text.splitlines() or [""])),
    Welcome: _t_welcome,
    RoomJoined: _t_room_joined,
    RoomParted: lambda ev: b"",
    Sent: _t_sent,
    WhoList: lambda ev: f"*** in {ev.room} ({len(ev.members)}): {' '.join(ev.members)}\n".encode(),
    RoomList: _t_rooms,
    NickSet: lambda ev: b"" if ev.announced else f"*** you are now {ev.nick}\n".encode(),
    Bye: lambda ev: b"*** bye\n",
    Pong: lambda ev: b"*** pong\n",
    HelpText: lambda ev: _lines(*(f"*** {line}" for line in _HELP_LINES)),
    Done: lambda ev: f"*** {ev.text}\n".encode(),
    ErrorEvent: lambda ev: f"!!! {ev.code}: {ev.reason}\n".encode(),
}


class TextCodec:
    """Encodes server events as text-mode lines (UTF-8, ``\\n``-terminated).

    Instances are stateless; use :data:`TEXT_CODEC`.
    """

    __slots__ = ()
    name = "text"

    def encode(self, event: ServerEvent) -> bytes:
        """Return the bytes for ``event``: zero or more whole lines (``b""``: nothing to show).

        Raises:
            LocalProtocolError: ``event`` is not a :data:`ServerEvent`.
        """
        try:
            enc = _TEXT_ENCODERS[type(event)]
        except KeyError:
            raise LocalProtocolError(f"cannot encode {type(event).__name__}") from None
        return enc(event)

    def __repr__(self) -> str:
        return "TEXT_CODEC"


# -- JSON mode -----------------------------------------------------------------------------
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


_ts_second = -1  # the whole second whose ISO 8601 prefix is cached (one entry: clocks move on)
_ts_prefix = ""


def format_ts(ts: float) -> str:
    """Format seconds since the epoch as ISO 8601 UTC with milliseconds (``...T..:..:...123Z``).

    The ``YYYY-MM-DDTHH:MM:SS`` part is cached for the current second: messages stamped in
    the same second cost one integer division and one string concatenation.
    """
    global _ts_second, _ts_prefix
    second = math.floor(ts)
    micro = round((ts - second) * 1e6)  # as datetime.fromtimestamp rounds, then truncate to ms
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    milli = micro // 1000
    if second != _ts_second:
        _ts_prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _ts_second = second
    return f"{_ts_prefix}.{milli:03d}Z"


def _parse_ts(value: object) -> float:
    if not isinstance(value, str):
        raise InvalidMessage("ts must be an ISO 8601 string")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidMessage(f"invalid ts {value[:40]!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _with_ref(obj: dict[str, Any], ref: Ref) -> dict[str, Any]:
    if ref is not None:
        obj["ref"] = ref
    return obj


def _j_message(ev: Message) -> dict[str, Any]:
    return {
        "type": "message",
        "id": ev.id,
        "ts": format_ts(ev.ts),
        "room": ev.room,
        "nick": ev.nick,
        "text": ev.text,
        "kind": "me" if ev.action else "say",
    }


def _j_direct(ev: Direct) -> dict[str, Any]:
    return {
        "type": "dm",
        "id": ev.id,
        "ts": format_ts(ev.ts),
        "from": ev.sender,
        "to": ev.to,
        "text": ev.text,
    }


def _j_parted(ev: Parted) -> dict[str, Any]:
    obj = {"type": "part", "id": ev.id, "ts": format_ts(ev.ts), "room": ev.room, "nick": ev.nick}
    if ev.reason is not None:
        obj["reason"] = ev.reason
    return obj


def _j_welcome(ev: Welcome) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "type": "welcome",
        "nick": ev.nick,
        "server": ev.server,
        "default_room": ev.default_room,
        "motd": ev.motd,
    }
    if ev.user is not None:
        obj["user"] = ev.user
        obj["roles"] = list(ev.roles)
    return _with_ref(obj, ev.ref)


_JSON_ENCODERS: Final[dict[type, Callable[[Any], dict[str, Any]]]] = {
    Message: _j_message,
    Direct: _j_direct,
    Joined: lambda ev: {
        "type": "join", "id": ev.id, "ts": format_ts(ev.ts), "room": ev.room, "nick": ev.nick
    },
    Parted: _j_parted,
    NickChanged: lambda ev: {
        "type": "nick", "id": ev.id, "ts": format_ts(ev.ts), "old": ev.old, "new": ev.new
    },
    Kicked: lambda ev: {
        "type": "kick", "id": ev.id, "ts": format_ts(ev.ts), "room": ev.room, "nick": ev.nick,
        "by": ev.by, "reason": ev.reason,
    },
    RoomClosed: lambda ev: {
        "type": "close", "id": ev.id, "ts": format_ts(ev.ts), "room": ev.room, "by": ev.by
    },
    Shutdown: lambda ev: {"type": "shutdown"},
    Notice: lambda ev: {"type": "notice", "text": ev.text},
    Welcome: _j_welcome,
    RoomJoined: lambda ev: _with_ref(
        {
            "type": "joined",
            "room": ev.room,
            "members": list(ev.members),
            "history": [_j_message(m) for m in ev.history],
        },
        ev.ref,
    ),
    RoomParted: lambda ev: _with_ref({"type": "parted", "room": ev.room}, ev.ref),
    Sent: lambda ev: _with_ref(
        {"type": "sent", "id": ev.message.id, "ts": format_ts(ev.message.ts)}, ev.ref
    ),
    WhoList: lambda ev: _with_ref(
        {"type": "who", "room": ev.room, "members": list(ev.members)}, ev.ref
    ),
    RoomList: lambda ev: _with_ref(
        {"type": "rooms", "rooms": [{"room": r, "members": n} for r, n in ev.rooms]}, ev.ref
    ),
    NickSet: lambda ev: _with_ref({"type": "renamed", "nick": ev.nick, "old": ev.old}, ev.ref),
    Bye: lambda ev: _with_ref({"type": "bye", "reason": ev.reason}, ev.ref),
    Pong: lambda ev: _with_ref({"type": "pong"}, ev.ref),
    HelpText: lambda ev: _with_ref({"type": "help", "commands": list(COMMAND_TYPES)}, ev.ref),
    Done: lambda ev: _with_ref({"type": "done", "text": ev.text}, ev.ref),
    ErrorEvent: lambda ev: _with_ref(
        {"type": "error", "code": ev.code, "reason": ev.reason}, ev.ref
    ),
}  # fmt: skip


class JsonCodec:
    """Encodes server events as JSON lines (one compact UTF-8 object, ``\\n``-terminated).

    Instances are stateless; use :data:`JSON_CODEC`.
    """

    __slots__ = ()
    name = "json"

    def encode(self, event: ServerEvent) -> bytes:
        """Return one JSON line for ``event``.

        Raises:
            LocalProtocolError: ``event`` is not a :data:`ServerEvent`.
        """
        try:
            enc = _JSON_ENCODERS[type(event)]
        except KeyError:
            raise LocalProtocolError(f"cannot encode {type(event).__name__}") from None
        return (_dumps(enc(event)) + "\n").encode()

    def __repr__(self) -> str:
        return "JSON_CODEC"


Codec: TypeAlias = TextCodec | JsonCodec
TEXT_CODEC: Final = TextCodec()
JSON_CODEC: Final = JsonCodec()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_loads = json.JSONDecoder(parse_constant=_reject_constant).decode  # one decoder, not one a line


class _Shape(Exception):
    """Internal: a JSON command of the wrong shape (becomes a ``bad_shape``-like error)."""

    def __init__(self, event: ErrorEvent) -> None:
        super().__init__(event.reason)
        self.event = event


def _field(obj: dict[str, Any], name: str, ref: Ref, *, optional: bool = False) -> str | None:
    value = obj.get(name)
    if value is None:
        if optional:
            return None
        raise _Shape(ErrorEvent("bad_shape", f"{obj['type']!r} needs a string field {name!r}", ref))
    if not isinstance(value, str):
        raise _Shape(ErrorEvent("bad_shape", f"field {name!r} must be a string", ref))
    return value


def _j_room(obj: dict[str, Any], ref: Ref, *, optional: bool = False) -> str | None:
    room = _field(obj, "room", ref, optional=optional)
    if room is not None and (err := check_room(room, ref)) is not None:
        raise _Shape(err)
    return room


def _j_nick(obj: dict[str, Any], name: str, ref: Ref, *, optional: bool = False) -> str | None:
    nick = _field(obj, name, ref, optional=optional)
    if nick is not None and (err := check_nick(nick, ref)) is not None:
        raise _Shape(err)
    return nick


def _j_text(obj: dict[str, Any], ref: Ref, max_text: int) -> str:
    text = _field(obj, "text", ref)
    assert text is not None
    if (err := check_text(text, max_text, ref)) is not None:
        raise _Shape(err)
    return text


def _j_reason(obj: dict[str, Any], ref: Ref) -> str | None:
    reason = _field(obj, "reason", ref, optional=True)
    if reason is not None:
        if len(reason.encode(errors="replace")) > _MAX_REASON:
            raise _Shape(ErrorEvent("text_too_long", f"reason longer than {_MAX_REASON}", ref))
        if (err := _check_chars(reason, ref)) is not None:
            raise _Shape(err)
    return reason


def _j_hello(obj: dict[str, Any], ref: Ref) -> Hello:
    nick = _j_nick(obj, "nick", ref, optional=True)
    token = _field(obj, "token", ref, optional=True)
    if token is not None and not 0 < len(token.encode(errors="replace")) <= MAX_TOKEN:
        raise _Shape(ErrorEvent("bad_shape", f"token must be 1-{MAX_TOKEN} bytes", ref))
    return Hello(nick, ref, token)


_JSON_COMMANDS: Final[dict[str, Callable[[dict[str, Any], Ref, int], Command]]] = {
    "hello": lambda o, r, m: _j_hello(o, r),
    "join": lambda o, r, m: Join(_j_room(o, r) or "", r),
    "part": lambda o, r, m: Part(_j_room(o, r, optional=True), r),
    "say": lambda o, r, m: Say(_j_text(o, r, m), _j_room(o, r, optional=True), False, r),
    "me": lambda o, r, m: Say(_j_text(o, r, m), _j_room(o, r, optional=True), True, r),
    "dm": lambda o, r, m: Dm(_j_nick(o, "to", r) or "", _j_text(o, r, m), r),
    "who": lambda o, r, m: Who(_j_room(o, r, optional=True), r),
    "rooms": lambda o, r, m: Rooms(r),
    "nick": lambda o, r, m: Nick(_j_nick(o, "nick", r) or "", r),
    "quit": lambda o, r, m: Quit(_j_reason(o, r), r),
    "ping": lambda o, r, m: Ping(r),
    "help": lambda o, r, m: Help(r),
    "kick": lambda o, r, m: Kick(
        _j_nick(o, "nick", r) or "", _j_room(o, r, optional=True), _j_reason(o, r), r
    ),
    "close": lambda o, r, m: CloseRoom(_j_room(o, r, optional=True), r),
}


def _load_object(data: bytes) -> dict[str, Any] | ErrorEvent:
    text = _decode(data)
    if isinstance(text, ErrorEvent):
        return text
    try:
        obj = _loads(text)
    except (ValueError, RecursionError) as exc:
        detail = str(exc).split(":")[0] if isinstance(exc, ValueError) else "nested too deeply"
        return ErrorEvent("bad_json", f"malformed JSON ({detail[:80]}): the line was dropped")
    if not isinstance(obj, dict):
        return ErrorEvent("bad_shape", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def parse_json_line(data: bytes, *, max_text: int = MAX_TEXT) -> Command | ErrorEvent:
    """Parse one JSON-mode line (without its newline) into a command.

    Unknown extra fields are ignored (forward compatibility); known fields are checked for
    type, length, and the nick/room/text rules.

    Args:
        data: the line's bytes.
        max_text: the most bytes of UTF-8 a message text may take.

    Returns:
        A command, or an :class:`ErrorEvent` (``bad_utf8``, ``bad_json``, ``bad_shape``,
        ``unknown_command``, ``invalid_nick``, ``invalid_room``, ``empty_text``,
        ``text_too_long``, ``control_chars``) carrying the line's ``ref`` when it had a valid
        one. Never raises on peer input.
    """
    obj = _load_object(data)
    if isinstance(obj, ErrorEvent):
        return obj
    ref = obj.get("ref")
    if ref is not None:
        if isinstance(ref, bool) or not isinstance(ref, str | int):
            return ErrorEvent("bad_shape", "ref must be a string or an integer")
        if isinstance(ref, int) and abs(ref) > _MAX_INT_REF:
            return ErrorEvent("bad_shape", "integer ref out of range (|ref| <= 2**53)")
        if isinstance(ref, str) and (len(ref) > _MAX_REF or _BAD_CHARS.search(ref)):
            return ErrorEvent("bad_shape", f"ref must be at most {_MAX_REF} printable characters")
    kind = obj.get("type")
    if not isinstance(kind, str):
        return ErrorEvent("bad_shape", "missing string field 'type'", ref)
    builder = _JSON_COMMANDS.get(kind)
    if builder is None:
        shown = kind[:32] if _BAD_CHARS.search(kind) is None else "?"
        return ErrorEvent(
            "unknown_command",
            f"unknown type {shown!r}: expected one of {', '.join(COMMAND_TYPES)}",
            ref,
        )
    try:
        return builder(obj, ref, max_text)
    except _Shape as exc:
        return exc.event


def encode_json_command(cmd: Command) -> bytes:
    """Encode a command as one JSON line for the server (the client side of the protocol).

    Raises:
        LocalProtocolError: ``cmd`` is not a :data:`Command`.
    """
    obj: dict[str, Any]
    match cmd:
        case Hello(nick, _, token):
            obj = {"type": "hello"}
            if nick is not None:
                obj["nick"] = nick
            if token is not None:
                obj["token"] = token
        case Join(room):
            obj = {"type": "join", "room": room}
        case Part(room) | Who(room):
            obj = {"type": "part" if isinstance(cmd, Part) else "who"}
            if room is not None:
                obj["room"] = room
        case Say(text, room, action):
            obj = {"type": "me" if action else "say", "text": text}
            if room is not None:
                obj["room"] = room
        case Dm(to, text):
            obj = {"type": "dm", "to": to, "text": text}
        case Nick(nick):
            obj = {"type": "nick", "nick": nick}
        case Quit(reason):
            obj = {"type": "quit"} if reason is None else {"type": "quit", "reason": reason}
        case Rooms():
            obj = {"type": "rooms"}
        case Help():
            obj = {"type": "help"}
        case Ping():
            obj = {"type": "ping"}
        case Kick(nick, room, reason):
            obj = {"type": "kick", "nick": nick}
            if room is not None:
                obj["room"] = room
            if reason is not None:
                obj["reason"] = reason
        case CloseRoom(room):
            obj = {"type": "close"} if room is None else {"type": "close", "room": room}
        case _:
            raise LocalProtocolError(f"cannot encode {type(cmd).__name__}")
    return (_dumps(_with_ref(obj, cmd.ref)) + "\n").encode()


# -- decoding server events (client side) ----------------------------------------------------
def _s(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise InvalidMessage(f"{obj.get('type')!r} event needs a string {name!r}")
    return value


def _opt_s(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidMessage(f"field {name!r} must be a string or null")
    return value


def _i(obj: dict[str, Any], name: str) -> int:
    value = obj.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidMessage(f"{obj.get('type')!r} event needs an integer {name!r}")
    return value


def _strs(obj: dict[str, Any], name: str) -> tuple[str, ...]:
    value = obj.get(name)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidMessage(f"{obj.get('type')!r} event needs a list of strings {name!r}")
    return tuple(value)


def _d_message(o: dict[str, Any]) -> Message:
    kind = o.get("kind", "say")
    return Message(
        _i(o, "id"), _parse_ts(o.get("ts")), _s(o, "room"), _s(o, "nick"), _s(o, "text"),
        kind == "me",
    )  # fmt: skip


def _d_history(o: dict[str, Any]) -> tuple[Message, ...]:
    hist = o.get("history", [])
    if not isinstance(hist, list) or not all(isinstance(h, dict) for h in hist):
        raise InvalidMessage("'history' must be a list of message objects")
    return tuple(_d_message(h) for h in hist)


def _d_rooms(o: dict[str, Any]) -> tuple[tuple[str, int], ...]:
    rooms = o.get("rooms")
    if not isinstance(rooms, list) or not all(isinstance(r, dict) for r in rooms):
        raise InvalidMessage("'rooms' must be a list of objects")
    return tuple((_s(r, "room"), _i(r, "members")) for r in rooms)


def _d_sent(o: dict[str, Any], ref: Ref) -> Sent:
    # The ``sent`` reply carries only id and ts: the rest is known to the sender.
    return Sent(Message(_i(o, "id"), _parse_ts(o.get("ts")), "", "", ""), ref)


_DECODERS: Final[dict[str, Callable[[dict[str, Any], Ref], ServerEvent]]] = {
    "message": lambda o, r: _d_message(o),
    "dm": lambda o, r: Direct(
        _i(o, "id"), _parse_ts(o.get("ts")), _s(o, "from"), _s(o, "to"), _s(o, "text")
    ),
    "join": lambda o, r: Joined(_i(o, "id"), _parse_ts(o.get("ts")), _s(o, "room"), _s(o, "nick")),
    "part": lambda o, r: Parted(
        _i(o, "id"), _parse_ts(o.get("ts")), _s(o, "room"), _s(o, "nick"), _opt_s(o, "reason")
    ),
    "nick": lambda o, r: NickChanged(
        _i(o, "id"), _parse_ts(o.get("ts")), _s(o, "old"), _s(o, "new")
    ),
    "kick": lambda o, r: Kicked(
        _i(o, "id"),
        _parse_ts(o.get("ts")),
        _s(o, "room"),
        _s(o, "nick"),
        _s(o, "by"),
        _opt_s(o, "reason"),
    ),
    "close": lambda o, r: RoomClosed(
        _i(o, "id"), _parse_ts(o.get("ts")), _s(o, "room"), _s(o, "by")
    ),
    "shutdown": lambda o, r: Shutdown(),
    "notice": lambda o, r: Notice(_s(o, "text")),
    "welcome": lambda o, r: Welcome(
        _s(o, "nick"),
        _s(o, "motd"),
        _s(o, "default_room"),
        _s(o, "server"),
        r,
        _opt_s(o, "user"),
        _strs(o, "roles") if "roles" in o else (),
    ),
    "joined": lambda o, r: RoomJoined(_s(o, "room"), _strs(o, "members"), _d_history(o), r),
    "parted": lambda o, r: RoomParted(_s(o, "room"), r),
    "sent": _d_sent,
    "who": lambda o, r: WhoList(_s(o, "room"), _strs(o, "members"), r),
    "rooms": lambda o, r: RoomList(_d_rooms(o), r),
    "renamed": lambda o, r: NickSet(_s(o, "nick"), _s(o, "old"), False, r),
    "bye": lambda o, r: Bye(_opt_s(o, "reason"), r),
    "pong": lambda o, r: Pong(r),
    "help": lambda o, r: HelpText(r),
    "done": lambda o, r: Done(_s(o, "text"), r),
    "error": lambda o, r: ErrorEvent(_s(o, "code"), _s(o, "reason"), r),
}


def decode_json_event(data: bytes) -> ServerEvent:
    """Decode one JSON line from the server (the client side of the protocol).

    Args:
        data: one line, with or without its ``b"\\n"``.

    Returns:
        The event. ``Sent`` carries a :class:`Message` with only ``id`` and ``ts`` set;
        ``NickChanged.rooms`` is empty (it is not sent); ``NickSet.announced`` is False.

    Raises:
        InvalidMessage: invalid UTF-8 or JSON, not an object, an unknown ``type`` or a field
            of the wrong type.
    """
    obj = _load_object(data.rstrip(b"\r\n"))
    if isinstance(obj, ErrorEvent):
        raise InvalidMessage(obj.reason)
    kind = obj.get("type")
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        raise InvalidMessage(f"unknown event type {str(kind)[:32]!r}")
    ref = obj.get("ref")
    if ref is not None and (isinstance(ref, bool) or not isinstance(ref, str | int)):
        raise InvalidMessage("ref must be a string or an integer")
    return decoder(obj, ref)


# -- the server side of one connection -------------------------------------------------------
class Mode(Enum):
    """The front-end a connection speaks, chosen by its first line."""

    TEXT = "text"
    JSON = "json"


class ChatServerProtocol:
    """Server side of one chat connection, without I/O.

    Feed bytes with :meth:`receive_data` / :meth:`receive_eof` and pull what they mean with
    :meth:`next_event`, one at a time: how a text line parses depends on whether the peer
    is registered yet, which the caller learns only by handling the previous command, so
    the caller sets :attr:`registered` between calls.

    Args:
        max_line: the longest line accepted, terminator included (bytes); longer lines are
            dropped and reported as ``line_too_long`` errors, the connection goes on.
        max_text: the most bytes of UTF-8 a message text may take.

    Attributes:
        mode: ``None`` until the first line arrives, then :class:`Mode`.
        registered: set by the caller once a :class:`Hello` succeeded.
    """

    __slots__ = ("_framer", "_pending", "_token_for", "max_text", "mode", "registered")

    def __init__(self, *, max_line: int = 4096, max_text: int = MAX_TEXT) -> None:
        self._framer = LineFramer(max_line=max_line)
        self._pending: deque[LineEvent] = deque()
        self.max_text = max_text
        self.mode: Mode | None = None
        self.registered = False
        self._token_for: str | None = None

    @property
    def codec(self) -> Codec:
        """The encoder for this connection's replies: text until JSON mode is chosen."""
        return JSON_CODEC if self.mode is Mode.JSON else TEXT_CODEC

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the peer (any split of the stream).

        Raises:
            LocalProtocolError: called after :meth:`receive_eof`.
        """
        self._framer.receive_data(data)

    def receive_eof(self) -> None:
        """Feed the end of the stream (an unterminated last line is still parsed). Idempotent."""
        self._framer.receive_eof()

    def expect_token(self, nick: str) -> None:
        """Text mode: take the next line as the token for ``nick`` (a :class:`Hello` with it).

        The line is not parsed as a command; an empty line gives ``auth_failed``.
        """
        self._token_for = nick

    def next_event(self) -> Command | ErrorEvent | EndOfStream | None:
        """Return the next command, input error or end of stream; ``None`` if more bytes are needed.

        Never raises on peer input: every bad line becomes one :class:`ErrorEvent`.
        """
        pending = self._pending
        while True:
            if not pending:
                events = self._framer.events_received()
                if not events:
                    return None
                pending.extend(events)
            ev = pending.popleft()
            if isinstance(ev, Line):
                result = self._parse_line(ev.data)
                if result is not None:
                    return result
            elif isinstance(ev, LineOverflow):
                return ErrorEvent(
                    "line_too_long",
                    f"line longer than {ev.limit} bytes: it was dropped",
                )
            else:
                return ev

    def _parse_line(self, data: bytes) -> Command | ErrorEvent | None:
        if self.mode is None:
            self.mode = Mode.JSON if data.lstrip(b" \t").startswith(b"{") else Mode.TEXT
        if self.mode is Mode.JSON:
            if not data.strip(b" \t"):
                return None  # blank lines between JSON objects are harmless
            return parse_json_line(data, max_text=self.max_text)
        if self._token_for is not None:
            nick, self._token_for = self._token_for, None
            token = data.strip(b" \t\r")
            if not 0 < len(token) <= MAX_TOKEN:
                return ErrorEvent("auth_failed", f"a token is 1-{MAX_TOKEN} bytes")
            try:
                return Hello(nick, None, token.decode("utf-8"))
            except UnicodeDecodeError:
                return ErrorEvent("auth_failed", "a token is UTF-8 text")
        return parse_text_line(data, registered=self.registered, max_text=self.max_text)
