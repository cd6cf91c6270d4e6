"""``wirecat listen``: accept peers and bridge them to stdio or to a command (like nc -l)."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import shutil
import signal
from typing import Any, cast

import click

from ..endpoints import Endpoint
from ..errors import ConnectionClosed, InvalidEndpoint, NetworkError
from ..runtime.connection import Connection, DatagramConnection, open_connection_listener
from ..runtime.handler import format_address
from ..runtime.loop import LoopKind
from ..runtime.process import bridge_process
from ..runtime.stdio import (
    BridgeResult,
    Fanout,
    bridge_datagram,
    bridge_stream,
    open_stdin,
    open_stdout,
)
from .common import LOOP_OPTION, die, run_command
from .connect import EXIT_BAD_ENDPOINT, endpoint_argument

__all__ = ["listen_command"]

EXIT_TERMINATED = 143  # 128 + SIGTERM: stopped on request, quietly


def _say(message: str) -> None:
    click.echo(f"wirecat: {message}", err=True)


async def _listen_main(
    ep: Endpoint,
    *,
    keep_open: bool,
    command: list[str] | str | None,
    shell: bool,
    half_close: bool,
    wait: float | None,
    crlf: bool,
    verbose: bool,
) -> int:
    if ep.is_datagram:
        if command is not None:
            raise InvalidEndpoint("--exec needs a stream endpoint (tcp, unix), not datagrams")
        return await _listen_datagram(
            ep, keep_open=keep_open, wait=wait, crlf=crlf, verbose=verbose
        )
    if ep.scheme not in ("tcp", "unix", "unix+seqpacket"):
        raise InvalidEndpoint(
            f"listen supports tcp, unix, unix+seqpacket, udp and unix+dgram endpoints, "
            f"not {ep.scheme}: {ep}"
        )
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[int] = loop.create_future()
    claimed = False

    def end(code: int = 0, exc: BaseException | None = None) -> None:
        if finished.done():
            return
        if exc is not None:
            finished.set_exception(exc)
        else:
            finished.set_result(code)

    def claim(conn: Connection) -> bool:
        """Without --keep-open, the first peer wins and the listener closes."""
        nonlocal claimed
        if keep_open:
            return True
        if claimed:
            return False
        claimed = True
        listener.close()
        return True

    def hello(conn: Connection) -> None:
        if verbose:
            _say(f"connection from {conn.peer_address}")

    def bye(conn: Connection, result: BridgeResult) -> None:
        if verbose:
            _say(f"{conn.peer_address}: {result.reason}, received {result.received} bytes")

    stdin = stdout = None
    fanout: Fanout | None = None
    pump: asyncio.Task[None] | None = None

    if command is not None:

        async def handler(conn: Connection) -> None:
            if not claim(conn):
                return
            hello(conn)
            try:
                status = await bridge_process(conn, command, shell=shell)
            except OSError as exc:
                if keep_open:
                    _say(f"cannot run command: {exc}")
                else:
                    end(exc=NetworkError(f"cannot run command: {exc}"))
                return
            except BaseException as exc:
                end(exc=exc)
                raise
            await conn.aclose()
            if verbose:
                _say(f"{conn.peer_address}: command exited with status {status}")
            if not keep_open:
                end(0)

    elif keep_open:
        stdin = await open_stdin()
        stdout = await open_stdout()
        fanout = Fanout(stdin, stdout, half_close=half_close, crlf=crlf)
        fanout.on_peer = hello
        fanout.on_peer_done = bye

        async def handler(conn: Connection) -> None:
            assert fanout is not None
            try:
                await fanout.serve(conn)
            except BaseException as exc:  # stdout closed: the session is over
                end(exc=None if isinstance(exc, ConnectionClosed) else exc)
                if not isinstance(exc, Exception):
                    raise

    else:
        stdin = await open_stdin()
        stdout = await open_stdout()

        async def handler(conn: Connection) -> None:
            if not claim(conn):
                return
            hello(conn)
            assert stdin is not None and stdout is not None
            try:
                result = await bridge_stream(
                    conn, stdin, stdout, half_close=half_close, wait=wait, crlf=crlf
                )
            except BaseException as exc:
                end(exc=exc)
                if not isinstance(exc, Exception):
                    raise
                return
            await conn.aclose()
            bye(conn, result)
            end(0)

    listener = await open_connection_listener(ep, handler)
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
        loop.add_signal_handler(signal.SIGTERM, end, EXIT_TERMINATED)
    try:
        _say(f"listening on {listener.endpoint}")
        if not ep.is_loopback and command is not None:
            _say(
                f"warning: anyone who can reach {listener.endpoint} can run "
                f"{command if isinstance(command, str) else shlex.join(command)!r} here"
            )
        if fanout is not None:
            pump = asyncio.create_task(fanout.pump_stdin())
            pump.add_done_callback(
                lambda t: None if t.cancelled() or t.exception() is None else end(exc=t.exception())
            )
        return await finished
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)
        listener.close()
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump
        if stdin is not None:
            stdin.close()
        if stdout is not None:
            await stdout.aclose()


class _BoundPeer(asyncio.DatagramProtocol):
    """A bound datagram socket seen as a connection to one peer (``nc -u -l``): the first
    sender is the peer; with ``keep_open`` every sender is heard and replies go to the
    latest. Sends wait until a peer is known. At most ``max_queue`` datagrams wait unread."""

    def __init__(self, keep_open: bool, verbose: bool, max_queue: int = 1024) -> None:
        self.keep_open = keep_open
        self.verbose = verbose
        self.max_queue = max_queue
        self.peer: Any = None
        self.known = asyncio.Event()
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(max_queue)
        self.transport: asyncio.DatagramTransport | None = None
        self.ignored = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.peer is None or (self.keep_open and addr != self.peer):
            if self.verbose and addr != self.peer:
                _say(f"datagrams from {format_address(addr)}")
            self.peer = addr
            self.known.set()
        elif addr != self.peer:
            self.ignored += 1  # one-peer mode: others are not heard, as with nc -u -l
            return
        if not self.queue.full():
            self.queue.put_nowait(data)

    async def send(self, data: bytes) -> None:
        await self.known.wait()
        assert self.transport is not None
        self.transport.sendto(data, self.peer)

    async def recv(self) -> bytes:
        return await self.queue.get()


async def _listen_datagram(
    ep: Endpoint, *, keep_open: bool, wait: float | None, crlf: bool, verbose: bool
) -> int:
    from ..runtime.listeners import open_datagram_listener

    proto = _BoundPeer(keep_open, verbose)
    listener = await open_datagram_listener(ep, lambda: proto)
    stdin = await open_stdin()
    stdout = await open_stdout()
    try:
        _say(f"listening on {listener.endpoint}")
        result = await bridge_datagram(
            cast(DatagramConnection, proto), stdin, stdout, wait=wait, crlf=crlf
        )
        if verbose:
            _say(f"{result.reason}; sent {result.sent} bytes, received {result.received} bytes")
        return 0
    finally:
        listener.close()
        stdin.close()
        await stdout.aclose()


@click.command("listen")
@click.argument("endpoint", metavar="ENDPOINT")
@click.option(
    "-k",
    "--keep-open",
    is_flag=True,
    help="Accept many peers (at once and in turn) until interrupted. Everything they send "
    "goes to stdout; each stdin chunk is sent to every connected peer.",
)
@click.option(
    "-e",
    "--exec",
    "exec_cmd",
    metavar="CMD",
    help="Run CMD for each peer, its stdin and stdout wired to the socket "
    "(split like a shell would, no shell involved).",
)
@click.option(
    "-c",
    "--sh-exec",
    "sh_cmd",
    metavar="CMD",
    help="Like --exec, but run CMD with /bin/sh -c.",
)
@click.option(
    "--no-shutdown",
    is_flag=True,
    help="Do not half-close the connection when stdin ends.",
)
@click.option(
    "-w",
    "--wait",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="After stdin ends, wait at most this long for the peer, then exit 0 "
    "(one-peer mode). Default: until the peer closes.",
)
@click.option("-C", "--crlf", is_flag=True, help="Send every LF from stdin as CRLF.")
@click.option("-v", "--verbose", is_flag=True, help="Print each peer's address on stderr.")
@LOOP_OPTION
def listen_command(
    endpoint: str,
    keep_open: bool,
    exec_cmd: str | None,
    sh_cmd: str | None,
    no_shutdown: bool,
    wait: float | None,
    crlf: bool,
    verbose: bool,
    loop_kind: LoopKind,
) -> None:
    """Listen on ENDPOINT; bridge the first peer to stdin/stdout, then exit when it closes.

    ENDPOINT is tcp://HOST:PORT, HOST:PORT, :PORT or PORT (on 127.0.0.1), unix:/PATH,
    unix+seqpacket:/PATH (each stdin chunk one packet), or udp://HOST:PORT /
    unix+dgram:/PATH for datagrams (as `nc -u -l`: the first sender is the peer, each
    datagram it sends goes to stdout, each stdin line goes back to it as one datagram;
    with -k every sender is heard and replies go to the latest; after stdin ends,
    replies are printed for --wait seconds, or until Ctrl-C).
    Port 0 picks a free port. The line `listening on ENDPOINT` (with the real port) is
    printed on stderr once the socket is open.

    One peer (default): further peers are refused (the listener closes when the first one
    connects). End of stream works as in `wirecat connect`: when stdin ends the peer is
    sent EOF; wirecat exits 0 once the peer has closed.

    With --keep-open, peers come and go until Ctrl-C or SIGTERM. What they send goes to
    stdout (chunks of different peers may interleave, but a chunk is never split); stdin
    is read only while someone is connected and each chunk is broadcast to all peers,
    like `ncat -l -k`. A peer that reads too slowly is disconnected rather than stalling
    the others. After stdin ends, every peer (present and future) is sent EOF.

    With --exec/--sh-exec, each peer gets its own process; wirecat's own stdin and
    stdout are not used. Without --keep-open, wirecat exits after the first peer's
    process ends (its exit status is shown with -v). Commands run in their own process
    group, stopped (SIGTERM, then SIGKILL) when their peer is gone or wirecat stops.

    Exit codes: 0 done, 64 bad endpoint or command, 71 cannot listen (address in use),
    74 connection reset, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).

    \b
    Examples:
      wirecat listen 9000                               # one peer on 127.0.0.1:9000
      wirecat listen tcp://0.0.0.0:9000 > upload.bin    # receive a file
      wirecat listen -k :9000                           # a tiny broadcast server
      wirecat listen -k --exec 'cat' tcp://127.0.0.1:0  # an echo server per peer
      wirecat listen -k --sh-exec 'date; uname -a' 9000
      wirecat listen unix:/tmp/debug.sock
      wirecat listen udp://127.0.0.1:9000               # like nc -u -l
    """
    if exec_cmd is not None and sh_cmd is not None:
        raise click.UsageError("use either --exec or --sh-exec, not both")
    command: list[str] | str | None = None
    shell = False
    if exec_cmd is not None:
        try:
            command = shlex.split(exec_cmd)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--exec") from None
        if not command:
            raise click.BadParameter("empty command", param_hint="--exec")
        if shutil.which(command[0]) is None:
            die(f"--exec: command not found: {command[0]}", EXIT_BAD_ENDPOINT)
    elif sh_cmd is not None:
        command, shell = sh_cmd, True
    ep = endpoint_argument(endpoint, None)
    run_command(
        _listen_main(
            ep,
            keep_open=keep_open,
            command=command,
            shell=shell,
            half_close=not no_shutdown,
            wait=wait,
            crlf=crlf,
            verbose=verbose,
        ),
        loop=loop_kind,
    )
