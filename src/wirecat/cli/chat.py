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
import sys
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from ..chat.client import ChatClient
from ..endpoints import Endpoint
from ..errors import ConnectionClosedError, InvalidEndpoint
from ..escape import for_terminal
from ..protocols.chat import (
    Bye,
    Command,
    Direct,
    Dm,
    Done,
    EndOfStream,
    ErrorEvent,
    HelpText,
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
    parse_text_line,
)
from ..protocols.lines import Line, LineFramer, LineOverflow
from ..runtime.stdio import StdinReader, open_stdin
from .common import (
    ENDPOINT,
    LOOP_OPTION,
    PROXY_OPTION,
    check_proxy,
    read_token,
    run_command,
    tls_client_options,
    tls_connect_kwargs,
    token_options,
)

__all__ = ["chat_command"]

_MAX_INPUT_LINE = 64 * 1024  # bytes per line typed or piped
_QUIT_TIMEOUT = 5.0  # seconds to wait for the server's ``bye`` after stdin ends


def _nick_style(nick: str) -> str:
    palette = ("cyan", "green", "yellow", "magenta", "blue", "bright_cyan", "bright_green")
    return "bold " + palette[sum(nick.encode()) % len(palette)]


def _t(text: str) -> str:
    """Peer text as it may reach the terminal (controls, bidi, zero-width shown visibly)."""
    return for_terminal(text)


class _View:
    """Renders the server's events on the console; every peer field through :func:`_t`."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.pending_dms: dict[object, Dm] = {}
        self.shutdown_seen = False
        self.bye_seen = False

    def _stamp(self, ts: float | None = None) -> Text:
        when = datetime.fromtimestamp(ts) if ts is not None else datetime.now()
        return Text(when.strftime("%H:%M:%S "), style="dim")

    def info(self, text: str, style: str = "dim") -> None:
        self.console.print(Text.assemble(self._stamp(), Text(text, style=style)))

    def show(self, ev: ServerEvent) -> None:
        out: Text | None = None
        match ev:
            case Message(_, ts, room, nick, text, action):
                who = Text(
                    f"* {_t(nick)} " if action else f"<{_t(nick)}> ", style=_nick_style(nick)
                )
                out = Text.assemble(self._stamp(ts), (f"{_t(room)} ", "dim"), who, _t(text))
            case Direct(_, ts, sender, _, text):
                out = Text.assemble(
                    self._stamp(ts), (f"*{_t(sender)}* ", "bold magenta"), (_t(text), "magenta")
                )
            case Sent(msg, ref) if ref in self.pending_dms:
                dm = self.pending_dms.pop(ref)
                out = Text.assemble(
                    self._stamp(msg.ts), (f"-> *{_t(dm.to)}* {_t(dm.text)}", "magenta")
                )
            case Joined(_, ts, room, nick):
                out = Text.assemble(self._stamp(ts), (f"*** {_t(nick)} joined {_t(room)}", "dim"))
            case Parted(_, ts, room, nick, reason):
                why = f" ({_t(reason)})" if reason else ""
                text = f"*** {_t(nick)} left {_t(room)}{why}"
                out = Text.assemble(self._stamp(ts), (text, "dim"))
            case NickChanged(_, ts, old, new):
                text = f"*** {_t(old)} is now known as {_t(new)}"
                out = Text.assemble(self._stamp(ts), (text, "dim"))
            case Kicked(_, ts, room, nick, by, reason):
                why = f" ({_t(reason)})" if reason else ""
                text = f"*** {_t(nick)} was kicked from {_t(room)} by {_t(by)}{why}"
                out = Text.assemble(self._stamp(ts), (text, "bold yellow"))
            case RoomClosed(_, ts, room, by):
                text = f"*** {_t(room)} was closed by {_t(by)}"
                out = Text.assemble(self._stamp(ts), (text, "yellow"))
            case Done(text):
                self.info(f"*** {_t(text)}")
            case RoomJoined(room, members, history):
                for msg in history:
                    self.show(msg)
                self.info(f"*** in {_t(room)} ({len(members)}): {_t(' '.join(members))}")
            case WhoList(room, members):
                self.info(f"*** in {_t(room)} ({len(members)}): {_t(' '.join(members))}", "")
            case RoomList(rooms):
                listing = ", ".join(f"{_t(r)} ({n})" for r, n in rooms) or "none"
                self.info(f"*** rooms: {listing}", "")
            case NickSet(nick):
                self.info(f"*** you are now {_t(nick)}")
            case HelpText():
                for line in _HELP:
                    self.info(line, "")
            case Pong():
                self.info("*** pong")
            case ErrorEvent(code, reason):
                self.info(f"!!! {_t(reason)} ({_t(code)})", "bold red")
            case Shutdown():
                self.shutdown_seen = True
                self.info("*** server shutting down", "bold yellow")
            case Notice(text):
                self.info(f"*** {_t(text)}")
            case Bye():
                self.bye_seen = True
            case Welcome() | RoomParted() | Sent():
                pass
        if out is not None:
            self.console.print(out)


async def _pump_server(chat: ChatClient, view: _View, raw: bool) -> None:
    """Show what the server sends until it closes."""
    async for ev in chat:
        if not raw:
            view.show(ev)
        else:
            view.shutdown_seen |= isinstance(ev, Shutdown)
            view.bye_seen |= isinstance(ev, Bye)


async def _send_line(chat: ChatClient, view: _View, data: bytes) -> bool:
    """Send one typed line (text or a /command); return True once it was ``/quit``."""
    cmd: Command | ErrorEvent | None = parse_text_line(data)
    if cmd is None:
        return False
    if isinstance(cmd, ErrorEvent):
        view.info(f"!!! {cmd.reason}: not sent", "bold red")
        return False
    ref = await chat.send_command(cmd)
    if isinstance(cmd, Dm):
        view.pending_dms[ref] = cmd
    return isinstance(cmd, Quit)


async def _pump_stdin(chat: ChatClient, view: _View, stdin: StdinReader) -> None:
    """Plain lines (a pipe, a file): send each; returns after ``/quit`` or at end of input."""
    framer = LineFramer(max_line=_MAX_INPUT_LINE)
    while True:
        data = await stdin.read()
        if data:
            framer.receive_data(data)
        else:
            framer.receive_eof()
        for ev in framer.events_received():
            if isinstance(ev, EndOfStream):
                await chat.send_command(Quit())
                return
            if isinstance(ev, LineOverflow):
                view.info(f"!!! line longer than {ev.limit} bytes: not sent", "bold red")
                continue
            assert isinstance(ev, Line)
            if await _send_line(chat, view, ev.data):
                return


async def _pump_terminal(chat: ChatClient, view: _View, prompt: str) -> None:
    """A terminal: one input line kept whole at the bottom while messages print above it,
    with history and editing (prompt_toolkit); Ctrl-D or Ctrl-C quits."""
    from prompt_toolkit import PromptSession

    session: PromptSession[str] = PromptSession()
    while True:
        try:
            text = await session.prompt_async(prompt)
        except (EOFError, KeyboardInterrupt):
            await chat.send_command(Quit())
            return
        data = text.encode("utf-8", "surrogateescape")
        if len(data) > _MAX_INPUT_LINE:
            view.info(f"!!! line longer than {_MAX_INPUT_LINE} bytes: not sent", "bold red")
            continue
        if await _send_line(chat, view, data):
            return


def _is_terminal() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


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
    console = Console(highlight=False, soft_wrap=True, emoji=False)

    def show_raw(line: bytes) -> None:
        if line.lstrip().startswith(b"{"):  # JSON lines only, not a banner for people
            console.print(line.decode(errors="replace").rstrip("\r\n"), markup=False)

    view = _View(console)
    opening = ChatClient.connect(
        endpoint,
        nick=nick,
        token=token,
        room=room,
        timeout=timeout,
        on_line=show_raw if raw else None,
        **tls,
    )
    terminal = _is_terminal() and not raw
    with contextlib.ExitStack() as screen:
        if terminal:  # messages print above the input line, which stays whole
            from prompt_toolkit.patch_stdout import patch_stdout

            screen.enter_context(patch_stdout(raw=True))
        async with opening as chat:
            welcome = chat.welcome
            assert welcome is not None
            if not raw:
                how = " (authenticated)" if welcome.user else ""
                view.info(f"*** connected to {endpoint} as {_t(welcome.nick)}{how}")
                for line in welcome.motd.splitlines():
                    view.info(f"*** {_t(line)}")
            stdin = None if terminal else await open_stdin()
            server_task = asyncio.ensure_future(_pump_server(chat, view, raw))
            if stdin is None:
                stdin_task = asyncio.ensure_future(_pump_terminal(chat, view, f"{welcome.nick}> "))
            else:
                stdin_task = asyncio.ensure_future(_pump_stdin(chat, view, stdin))
            try:
                await asyncio.wait({server_task, stdin_task}, return_when=asyncio.FIRST_COMPLETED)
                if stdin_task.done() and stdin_task.exception() is None:
                    with contextlib.suppress(TimeoutError):  # quit sent: wait for bye + close
                        await asyncio.wait_for(asyncio.shield(server_task), _QUIT_TIMEOUT)
            finally:
                if stdin is not None:
                    stdin.close()
                for task in (server_task, stdin_task):
                    task.cancel()
                results = await asyncio.gather(server_task, stdin_task, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException) and not isinstance(
                    result, asyncio.CancelledError
                ):
                    raise result
            if view.bye_seen or view.shutdown_seen:
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
@PROXY_OPTION
@LOOP_OPTION
def chat_command(
    endpoint: Endpoint,
    nick: str | None,
    room: str,
    timeout: float,
    raw: bool,
    token_file: str | None,
    proxy: str | None,
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
      wirecat chat 10.0.0.5:7070 -n ann --proxy socks5://127.0.0.1:1080
    """
    if not room.startswith("#"):
        room = "#" + room
    tls = tls_connect_kwargs(endpoint, **tls_flags)
    if proxy:
        check_proxy(endpoint, proxy, schemes=("tcp", "tls", "ws", "wss"))
        tls["proxy"] = proxy
    token = read_token(token_file)
    if token is not None and nick is None:
        raise click.UsageError("a token needs the user name: --nick NAME")
    run_command(_chat_main(endpoint, nick, room, timeout, raw, tls, token), loop=loop_kind)  # type: ignore[arg-type]
