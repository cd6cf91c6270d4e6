"""``wirecat chat``: a terminal chat client over the chat service's JSON-lines mode.

Lines typed (or piped) on standard input are chat text or ``/commands`` (the same as the
text mode for ``nc`` users: ``/join``, ``/part``, ``/msg``, ``/me``, ``/who``, ``/rooms``,
``/nick``, ``/help``, ``/quit``); they are parsed here and sent as JSON commands. What the
server sends is printed as it arrives, with a timestamp; colours only on a terminal.

When standard input ends (a pipe, or Ctrl-D), the client says ``quit``, waits (bounded)
for the server to acknowledge everything sent, and exits 0, so it is scriptable::

    printf 'hello\\n/me waves\\n' | wirecat chat 127.0.0.1:7070 --nick bot
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from ..endpoints import Endpoint
from ..errors import (
    ConnectionClosedError,
    InvalidEndpoint,
    InvalidMessage,
    RemoteProtocolError,
    WirecatError,
    WirecatTimeout,
)
from ..protocols.chat import (
    Bye,
    Command,
    Direct,
    Dm,
    Done,
    EndOfStream,
    ErrorEvent,
    Hello,
    HelpText,
    Join,
    Joined,
    Kicked,
    Message,
    NickChanged,
    NickSet,
    Notice,
    Parted,
    Pong,
    Quit,
    RoomClosed,
    RoomJoined,
    RoomList,
    RoomParted,
    Sent,
    ServerEvent,
    Shutdown,
    Welcome,
    WhoList,
    decode_json_event,
    encode_json_command,
    parse_text_line,
)
from ..protocols.lines import Line, LineFramer, LineOverflow
from ..runtime.connection import Connection, connect
from ..runtime.stdio import StdinReader, open_stdin
from .common import (
    ENDPOINT,
    LOOP_OPTION,
    read_token,
    run_command,
    tls_client_options,
    tls_connect_kwargs,
    token_options,
)

__all__ = ["ChatRefused", "chat_command"]

_MAX_SERVER_LINE = 1 << 20  # bytes: a ``joined`` reply holds a room's members and history
_MAX_INPUT_LINE = 64 * 1024  # bytes per line typed or piped
_QUIT_TIMEOUT = 5.0  # seconds to wait for the server's ``bye`` after stdin ends


class ChatRefused(WirecatError):
    """The chat server refused to register us (nick taken or invalid, bad room, ...).

    ``exit_code`` is 77 (EX_NOPERM) when authentication was refused, else 1.
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{reason} ({code})")
        self.code = code
        self.exit_code = 77 if code.startswith("auth_") else 1


def _nick_style(nick: str) -> str:
    palette = ("cyan", "green", "yellow", "magenta", "blue", "bright_cyan", "bright_green")
    return "bold " + palette[sum(nick.encode()) % len(palette)]


class _Client:
    def __init__(self, conn: Connection, console: Console, *, raw: bool) -> None:
        self.conn = conn
        self.console = console
        self.raw = raw
        self.refs = itertools.count(1)
        self.pending_dms: dict[int, Dm] = {}
        self.shutdown_seen = False
        self.bye_seen = False

    # -- output ----------------------------------------------------------------------------
    def _stamp(self, ts: float | None = None) -> Text:
        when = datetime.fromtimestamp(ts) if ts is not None else datetime.now()
        return Text(when.strftime("%H:%M:%S "), style="dim")

    def info(self, text: str, style: str = "dim") -> None:
        self.console.print(Text.assemble(self._stamp(), Text(text, style=style)))

    def show(self, ev: ServerEvent) -> None:
        out: Text | None = None
        match ev:
            case Message(_, ts, room, nick, text, action):
                who = Text(f"* {nick} " if action else f"<{nick}> ", style=_nick_style(nick))
                out = Text.assemble(self._stamp(ts), (f"{room} ", "dim"), who, text)
            case Direct(_, ts, sender, _, text):
                out = Text.assemble(
                    self._stamp(ts), (f"*{sender}* ", "bold magenta"), (text, "magenta")
                )
            case Sent(msg, ref) if isinstance(ref, int) and ref in self.pending_dms:
                dm = self.pending_dms.pop(ref)
                out = Text.assemble(self._stamp(msg.ts), (f"-> *{dm.to}* {dm.text}", "magenta"))
            case Joined(_, ts, room, nick):
                out = Text.assemble(self._stamp(ts), (f"*** {nick} joined {room}", "dim"))
            case Parted(_, ts, room, nick, reason):
                why = f" ({reason})" if reason else ""
                out = Text.assemble(self._stamp(ts), (f"*** {nick} left {room}{why}", "dim"))
            case NickChanged(_, ts, old, new):
                out = Text.assemble(self._stamp(ts), (f"*** {old} is now known as {new}", "dim"))
            case Kicked(_, ts, room, nick, by, reason):
                why = f" ({reason})" if reason else ""
                text = f"*** {nick} was kicked from {room} by {by}{why}"
                out = Text.assemble(self._stamp(ts), (text, "bold yellow"))
            case RoomClosed(_, ts, room, by):
                out = Text.assemble(self._stamp(ts), (f"*** {room} was closed by {by}", "yellow"))
            case Done(text):
                self.info(f"*** {text}")
            case RoomJoined(room, members, history):
                for msg in history:
                    self.show(msg)
                self.info(f"*** in {room} ({len(members)}): {' '.join(members)}")
            case WhoList(room, members):
                self.info(f"*** in {room} ({len(members)}): {' '.join(members)}", "")
            case RoomList(rooms):
                listing = ", ".join(f"{r} ({n})" for r, n in rooms) or "none"
                self.info(f"*** rooms: {listing}", "")
            case NickSet(nick):
                self.info(f"*** you are now {nick}")
            case HelpText():
                for line in _HELP:
                    self.info(line, "")
            case Pong():
                self.info("*** pong")
            case ErrorEvent(code, reason):
                self.info(f"!!! {reason} ({code})", "bold red")
            case Shutdown():
                self.shutdown_seen = True
                self.info("*** server shutting down", "bold yellow")
            case Notice(text):
                self.info(f"*** {text}")
            case Bye():
                self.bye_seen = True
            case Welcome() | RoomParted() | Sent():
                pass
        if out is not None:
            self.console.print(out)

    # -- protocol ----------------------------------------------------------------------------
    async def send(self, cmd: Command) -> None:
        await self.conn.send(encode_json_command(cmd))

    async def next_event(self) -> ServerEvent | None:
        """Return the next JSON event; ``None`` at end of stream. Skips the text banner."""
        while True:
            line = await self.conn.recv_line(_MAX_SERVER_LINE)
            if not line:
                return None
            if not line.lstrip().startswith(b"{"):
                continue  # the banner for people, before the JSON mode starts
            if self.raw:
                self.console.print(line.decode(errors="replace").rstrip("\r\n"), markup=False)
            try:
                return decode_json_event(line)
            except InvalidMessage as exc:
                raise RemoteProtocolError(f"the server sent an invalid line: {exc}") from exc

    async def expect(self, cmd: Command, reply: type) -> ServerEvent:
        """Send ``cmd`` and print events until its reply (or an error) arrives."""
        await self.send(cmd)
        while True:
            ev = await self.next_event()
            if ev is None:
                raise ConnectionClosedError(
                    f"the server closed the connection ({self.conn.endpoint})"
                )
            if isinstance(ev, reply):
                return ev
            if isinstance(ev, ErrorEvent) and ev.ref == cmd.ref:
                raise ChatRefused(ev.code, ev.reason)
            if not self.raw:
                self.show(ev)

    async def pump_server(self) -> None:
        """Print what the server sends until it closes."""
        while (ev := await self.next_event()) is not None:
            if not self.raw:
                self.show(ev)
            elif isinstance(ev, Shutdown | Bye):
                self.shutdown_seen |= isinstance(ev, Shutdown)
                self.bye_seen |= isinstance(ev, Bye)

    async def pump_stdin(self, stdin: StdinReader) -> None:
        """Send what is typed; returns after ``/quit`` or at end of input (quit sent)."""
        framer = LineFramer(max_line=_MAX_INPUT_LINE)
        while True:
            data = await stdin.read()
            if data:
                framer.receive_data(data)
            else:
                framer.receive_eof()
            for ev in framer.events_received():
                if isinstance(ev, EndOfStream):
                    await self.send(Quit(None, next(self.refs)))
                    return
                if isinstance(ev, LineOverflow):
                    self.info(f"!!! line longer than {ev.limit} bytes: not sent", "bold red")
                    continue
                assert isinstance(ev, Line)
                cmd = parse_text_line(ev.data)
                if cmd is None:
                    continue
                if isinstance(cmd, ErrorEvent):
                    self.info(f"!!! {cmd.reason}: not sent", "bold red")
                    continue
                ref = next(self.refs)
                cmd = _with_ref(cmd, ref)
                if isinstance(cmd, Dm):
                    self.pending_dms[ref] = cmd
                await self.send(cmd)
                if isinstance(cmd, Quit):
                    return


def _with_ref(cmd: Command, ref: int) -> Command:
    return dataclasses.replace(cmd, ref=ref)


_HELP = (
    "type text to talk in the current room; //text sends /text",
    "/join #room  /part [#room]  /msg NICK text  /me action",
    "/who [#room]  /rooms  /nick NAME  /help  /quit [reason]",
    "admins: /kick NICK [#room] [reason]  /close [#room]",
)


async def _chat_main(
    endpoint: Endpoint,
    nick: str | None,
    room: str,
    timeout: float,
    raw: bool,
    tls: dict[str, Any],
    token: str | None = None,
) -> int:
    if not endpoint.is_stream or endpoint.scheme == "stdio":
        raise InvalidEndpoint(f"chat needs a stream endpoint (tcp, tls, unix), not {endpoint}")
    conn = await connect(endpoint, timeout=timeout, **tls)
    assert isinstance(conn, Connection)
    console = Console(highlight=False, soft_wrap=True, emoji=False)
    async with conn:
        client = _Client(conn, console, raw=raw)
        try:
            async with asyncio.timeout(timeout):
                welcome = await client.expect(Hello(nick, next(client.refs), token), Welcome)
                assert isinstance(welcome, Welcome)
                if not raw:
                    how = " (authenticated)" if welcome.user else ""
                    client.info(f"*** connected to {endpoint} as {welcome.nick}{how}")
                    for line in welcome.motd.splitlines():
                        client.info(f"*** {line}")
                joined = await client.expect(Join(room, next(client.refs)), RoomJoined)
                if not raw:
                    client.show(joined)
        except TimeoutError:
            raise WirecatTimeout(f"no answer from the chat server at {endpoint}") from None
        stdin = await open_stdin()
        server_task = asyncio.ensure_future(client.pump_server())
        stdin_task = asyncio.ensure_future(client.pump_stdin(stdin))
        try:
            await asyncio.wait({server_task, stdin_task}, return_when=asyncio.FIRST_COMPLETED)
            if stdin_task.done() and stdin_task.exception() is None:
                with contextlib.suppress(TimeoutError):  # quit sent: wait for bye + close
                    await asyncio.wait_for(asyncio.shield(server_task), _QUIT_TIMEOUT)
        finally:
            stdin.close()
            for task in (server_task, stdin_task):
                task.cancel()
            results = await asyncio.gather(server_task, stdin_task, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
        if client.bye_seen or client.shutdown_seen:
            return 0
        raise ConnectionClosedError(f"the chat server at {endpoint} closed the connection")


@click.command("chat")
@click.argument("endpoint", type=ENDPOINT)
@click.option("-n", "--nick", help="Your nick [default: a guest-N name from the server].")
@click.option("-r", "--room", default="#lobby", show_default=True, help="The room to join first.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds to connect and register.",
)
@click.option("--json", "raw", is_flag=True, help="Print the server's JSON lines as they are.")
@token_options
@tls_client_options
@LOOP_OPTION
def chat_command(
    endpoint: Endpoint,
    nick: str | None,
    room: str,
    timeout: float,
    raw: bool,
    token_file: str | None,
    loop_kind: str,
    **tls_flags: Any,
) -> None:
    """Chat on a wirecat chat server at ENDPOINT (its JSON-lines mode).

    Type text to talk in the current room, /help for commands, /quit or Ctrl-D to leave.
    When standard input is not a terminal, each line is sent in turn, and the client
    quits at the end of input once the server has handled everything.

    \b
    Examples:
      wirecat chat 127.0.0.1:7070 --nick ann
      wirecat chat tls://127.0.0.1:7443 --nick ann --pin sha256:3f1c...
      wirecat chat [::1]:7070 -n ann -r '#rust'
      WIRECAT_TOKEN=... wirecat chat tls://chat.example:7443 -n ann   # a user (serve --users)
      printf 'hello\\n' | wirecat chat 127.0.0.1:7070 -n bot --json
    """
    if not room.startswith("#"):
        room = "#" + room
    tls = tls_connect_kwargs(endpoint, **tls_flags)
    token = read_token(token_file)
    if token is not None and nick is None:
        raise click.UsageError("a token needs the user name: --nick NAME")
    run_command(_chat_main(endpoint, nick, room, timeout, raw, tls, token), loop=loop_kind)  # type: ignore[arg-type]
