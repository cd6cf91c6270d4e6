"""Text mode, for people on ``nc``: lines -> commands, events -> ``***`` lines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from ...errors import LocalProtocolError
from .events import (
    _HELP_LINES,
    _MAX_REASON,
    MAX_TEXT,
    Bye,
    CloseRoom,
    Command,
    Direct,
    Dm,
    Done,
    ErrorEvent,
    Hello,
    Help,
    HelpText,
    Join,
    Joined,
    Kick,
    Kicked,
    Message,
    Nick,
    NickChanged,
    NickSet,
    Notice,
    Part,
    Parted,
    Ping,
    Pong,
    Quit,
    RoomClosed,
    RoomJoined,
    RoomList,
    RoomParted,
    Rooms,
    Say,
    Sent,
    ServerEvent,
    Shutdown,
    Welcome,
    Who,
    WhoList,
    _check_chars,
    _decode,
    check_nick,
    check_room,
    check_text,
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
    if ev.gap:
        out.append(f"*** some messages in {ev.room} are no longer held: the history has a gap")
    if ev.history:
        n = len(ev.history)
        out.append(f"*** last {n} message{'s' if n != 1 else ''} in {ev.room}:")
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


def _text_hint(ev: ErrorEvent) -> str:
    """The reason as people on ``nc`` read it: hints name the text command to type."""
    reason = ev.reason
    if ev.code == "not_in_room":
        if reason.endswith(": join one first"):
            return reason.removesuffix("join one first") + "/join #room first"
        if reason.startswith("you are not in ") and reason.endswith(": join it first"):
            room = reason.removeprefix("you are not in ").removesuffix(": join it first")
            return f"you are not in {room}: /join {room} first"
    return reason


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
    ErrorEvent: lambda ev: f"!!! {ev.code}: {_text_hint(ev)}\n".encode(),
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
