"""The chat wire formats (sans-I/O): text lines for people, JSON lines for programs.

One TCP port serves both. The server greets with a few ``***`` text lines; the client's first
line then picks the mode for the rest of the connection:

- a line starting with ``{`` (after blanks) selects **JSON-lines mode**: every line either way
  is one JSON object with a ``"type"``;
- anything else selects **text mode**: that first line is the nick (an empty line asks for a
  ``guest-N`` name), later lines are chat text or ``/commands``.

This package holds everything that does not need a socket: the command and event dataclasses,
the parsers (bytes -> commands, never raising on peer input: bad input becomes an
:class:`ErrorEvent` with a stable ``code``), the two encoders (events -> bytes, one call per
event and format so one ``bytes`` object can be written to every member), and
:class:`ChatServerProtocol`, which frames lines with :class:`~wirecat.protocols.lines.LineFramer`
and picks the mode.

JSON-lines protocol (client -> server; every command may carry ``"ref"``, a string of at most
64 characters or an integer, echoed in the reply to that command)::

    {"type":"hello","nick":"ann"}            nick optional: null or absent -> guest-N
    {"type":"hello","nick":"ann","token":"..."}   on servers with a users file (see below)
    {"type":"hello","nick":"ann","room":"#dev"}   land in #dev instead of the default room
    {"type":"join","room":"#lobby"}
    {"type":"join","room":"#lobby","since":41}   resume: only what came after id 41
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
    joined  {room, members:[nick], history:[message], gap?:true}   join (gap: the
                                             history no longer reaches back to since)
    parted  {room}       sent {id, ts}       who {room, members:[nick]}
    rooms   {rooms:[{room, members:int}]}    renamed {nick, old}
    bye {reason}   pong {}   help {commands:[str]}
    error   {code, reason}                   any command, or bad input (hub_unavailable:
                                             the hub (Redis) is down: retry later)

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

from ..lines import EndOfStream
from .client import CLIENT_TRANSITIONS, MAX_SERVER_LINE, ChatClientProtocol, ClientState
from .events import (
    COMMAND_TYPES,
    ERROR_CODES,
    MAX_TEXT,
    NICK_RE,
    ROOM_RE,
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
    check_nick,
    check_room,
    check_text,
)
from .jsonl import JsonCodec, decode_json_event, encode_json_command, format_ts, parse_json_line
from .server import JSON_CODEC, TEXT_CODEC, TRANSITIONS, ChatServerProtocol, Codec, Mode, State
from .text import TextCodec, parse_text_line

__all__ = [
    "CLIENT_TRANSITIONS",
    "COMMAND_TYPES",
    "ERROR_CODES",
    "JSON_CODEC",
    "MAX_SERVER_LINE",
    "MAX_TEXT",
    "NICK_RE",
    "ROOM_RE",
    "TEXT_CODEC",
    "TRANSITIONS",
    "Bye",
    "ChatClientProtocol",
    "ChatServerProtocol",
    "ClientState",
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
    "State",
    "TextCodec",
    "Welcome",
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
