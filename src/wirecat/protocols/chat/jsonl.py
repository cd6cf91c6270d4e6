"""JSON-lines mode, for programs: one JSON object a line each way, both sides of it."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from ...errors import FieldError, InvalidMessage, LocalProtocolError
from .. import MAX_TOKEN
from .._fields import byte_length_over, get_int, get_opt_int, get_opt_str, get_str, get_str_list
from .events import (
    _BAD_CHARS,
    _MAX_INT_REF,
    _MAX_REASON,
    _MAX_REF,
    COMMAND_TYPES,
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
    Ref,
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
            **({"gap": True} if ev.gap else {}),
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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_loads = json.JSONDecoder(parse_constant=_reject_constant).decode  # one decoder, not one a line


class _Shape(Exception):
    """Internal: a JSON command of the wrong shape (becomes a ``bad_shape``-like error)."""

    def __init__(self, event: ErrorEvent) -> None:
        super().__init__(event.reason)
        self.event = event


def _field(obj: dict[str, Any], name: str, *, optional: bool = False) -> str | None:
    if optional:
        return get_opt_str(obj, name)
    return get_str(obj, name, what=repr(obj["type"]))


def _j_room(obj: dict[str, Any], ref: Ref, *, optional: bool = False) -> str | None:
    room = _field(obj, "room", optional=optional)
    if room is not None and (err := check_room(room, ref)) is not None:
        raise _Shape(err)
    return room


def _j_nick(obj: dict[str, Any], name: str, ref: Ref, *, optional: bool = False) -> str | None:
    nick = _field(obj, name, optional=optional)
    if nick is not None and (err := check_nick(nick, ref)) is not None:
        raise _Shape(err)
    return nick


def _j_text(obj: dict[str, Any], ref: Ref, max_text: int) -> str:
    text = get_str(obj, "text", what=repr(obj["type"]))
    if (err := check_text(text, max_text, ref)) is not None:
        raise _Shape(err)
    return text


def _j_reason(obj: dict[str, Any], ref: Ref) -> str | None:
    reason = get_opt_str(obj, "reason")
    if reason is not None:
        if byte_length_over(reason, _MAX_REASON):
            raise _Shape(ErrorEvent("text_too_long", f"reason longer than {_MAX_REASON}", ref))
        if (err := _check_chars(reason, ref)) is not None:
            raise _Shape(err)
    return reason


def _j_hello(obj: dict[str, Any], ref: Ref) -> Hello:
    nick = _j_nick(obj, "nick", ref, optional=True)
    try:
        token = get_opt_str(obj, "token", min_bytes=1, max_bytes=MAX_TOKEN)
    except FieldError:
        raise _Shape(ErrorEvent("bad_shape", f"token must be 1-{MAX_TOKEN} bytes", ref)) from None
    return Hello(nick, ref, token, _j_room(obj, ref, optional=True))


_JSON_COMMANDS: Final[dict[str, Callable[[dict[str, Any], Ref, int], Command]]] = {
    "hello": lambda o, r, m: _j_hello(o, r),
    "join": lambda o, r, m: Join(
        _j_room(o, r) or "", r, get_opt_int(o, "since", low=0, high=_MAX_INT_REF)
    ),
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


_fast_loads = msgspec.json.Decoder().decode  # ~5x faster than json on a typical say line


def _load_object(data: bytes) -> dict[str, Any] | ErrorEvent:
    # Fast path: msgspec accepts exactly the valid, standard JSON the stdlib accepts here
    # (it refuses NaN, invalid UTF-8, lone surrogate escapes, huge numbers, deep nesting);
    # anything it refuses goes through the stdlib path, which words the error reply.
    try:
        fast = _fast_loads(data)
    except (msgspec.MsgspecError, RecursionError):
        pass
    else:
        if isinstance(fast, dict):
            return fast
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
    except FieldError as exc:
        return ErrorEvent(exc.code, str(exc), ref)


def encode_json_command(cmd: Command) -> bytes:
    """Encode a command as one JSON line for the server (the client side of the protocol).

    Raises:
        LocalProtocolError: ``cmd`` is not a :data:`Command`.
    """
    obj: dict[str, Any]
    match cmd:
        case Hello(nick, _, token, room):
            obj = {"type": "hello"}
            if nick is not None:
                obj["nick"] = nick
            if token is not None:
                obj["token"] = token
            if room is not None:
                obj["room"] = room
        case Join(room, _, since):
            obj = {"type": "join", "room": room}
            if since is not None:
                obj["since"] = since
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
    return get_str(obj, name, what=f"{obj.get('type')!r} event")


def _opt_s(obj: dict[str, Any], name: str) -> str | None:
    return get_opt_str(obj, name)


def _i(obj: dict[str, Any], name: str) -> int:
    return get_int(obj, name, what=f"{obj.get('type')!r} event")


def _strs(obj: dict[str, Any], name: str) -> tuple[str, ...]:
    return get_str_list(obj, name, what=f"{obj.get('type')!r} event")


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
    "joined": lambda o, r: RoomJoined(
        _s(o, "room"), _strs(o, "members"), _d_history(o), r, o.get("gap") is True
    ),
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
