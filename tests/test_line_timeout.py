"""The partial-line deadline (issue #13 item 5): dribbling a byte at a time.

The idle timeout restarts on every byte, so a peer sending one byte every few tenths of a
second held an echo connection and a logged-in chat connection for ever. A line-framed
handler now has ``limits.line_timeout`` seconds from a line's first byte to its newline (a run
of ``max_line`` bytes without one counts as a line). The dribblers below send a byte every
``STEP`` seconds, well inside the idle timeout: on the old code they are never cut and the
bounded loops run out. The pace of a dribbler is the attack itself, not synchronisation:
every wait for the server is a read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest

import wirecat
from _chat import Peer
from helpers import scaled, serving, wait_for
from wirecat import ServeConfig
from wirecat.endpoints import Endpoint
from wirecat.protocols.websocket import Closed, Opened, TextMessage, WebSocket
from wirecat.runtime.handler import ServerContext, StreamHandler
from wirecat.runtime.limits import Limits
from wirecat.runtime.server import Server
from wirecat.runtime.tls import self_signed, server_context
from wirecat.runtime.websocket import WebSocketSettings
from wirecat.services.chat import ChatHandler, ChatService
from wirecat.services.echo import EchoService
from wirecat.services.web import WebHandler, WebSocketEchoService

LINE = scaled(0.3)  # the partial-line deadline under test
IDLE = scaled(0.6)  # the idle timeout: longer than a dribbler's step, so it never fires
STEP = scaled(0.05)  # a dribbler's pace: one byte per step
LIMITS = Limits(line_timeout=LINE, idle_timeout=IDLE)
T = scaled(5.0)  # the bound on any single read
SELF_SIGNED = self_signed()  # for localhost and 127.0.0.1, in memory


@contextlib.asynccontextmanager
async def server_for(service: str, **limits: Any) -> AsyncIterator[tuple[Server, Endpoint]]:
    ep = Endpoint("tcp", "127.0.0.1", 0)
    svc = (
        ChatService([ep], max_rate=1000.0, burst=1000, banner_delay=0)
        if service == "chat"
        else EchoService([ep])
    )
    lim = Limits(**{"line_timeout": LINE, "idle_timeout": IDLE, **limits})
    async with serving(svc, limits=lim) as server:
        yield server, server.endpoint(service)


async def dribble(peer: Peer, data: bytes) -> tuple[bytes, float]:
    """Send ``data`` one byte per ``STEP`` for most of the line deadline, then wait for the
    server to close; return what it sent and how long after the first byte it closed.

    Each byte restarts the idle clock, as the attack does. The dribble stops a little before
    the deadline only so that no byte is in flight when the server closes (a byte reaching
    a closed socket gets a reset, which may discard the reply before the test reads it).
    On the old code the connection outlives the deadline and closes only when the idle
    timeout runs out after the last byte, without a line timeout.
    """
    loop = asyncio.get_running_loop()
    read = asyncio.ensure_future(peer.reader.read())  # everything until the server closes
    start = loop.time()
    for byte in data:
        if read.done() or loop.time() - start > 0.8 * LINE:
            break
        await peer.send(bytes([byte]))
        await asyncio.wait([read], timeout=STEP)
    rest = await asyncio.wait_for(read, T)
    return rest, loop.time() - start


def assert_cut_at_the_deadline(server: Server, elapsed: float, counter: str) -> None:
    """Cut ``LINE`` s after the first byte, before the idle timeout could; counted once in
    *counter* and never as idle."""
    assert LINE <= elapsed < 0.8 * LINE + IDLE, elapsed
    assert server.ctx.metrics[counter] == 1
    assert server.ctx.metrics["idle_timeouts"] == 0


def assert_limit_logged(logs: pytest.LogCaptureFixture, reason: str) -> None:
    """The cut was logged at INFO as ``event=limit reason=<reason>``."""
    records = [r for r in logs.records if getattr(r, "reason", None) == reason]
    assert records and records[0].levelno == logging.INFO
    assert getattr(records[0], "event", None) == "limit"


async def test_dribbled_chat_line_is_cut_in_text_mode(
    wirecat_logs: pytest.LogCaptureFixture,
) -> None:
    async with server_for("chat") as (server, ep):
        peer = await Peer.open(ep)
        try:
            await peer.until(b"*** Programs:")
            await peer.send(b"ann\n")
            await peer.until(b"*** in #lobby")  # logged in: the login deadline is lifted
            rest, elapsed = await dribble(peer, b"hello, I am typing very slowly")
        finally:
            await peer.aclose()
        assert rest.endswith(f"!!! timeout: line not completed within {LINE:g} s\n".encode())
        assert_cut_at_the_deadline(server, elapsed, "line_timeouts")
    assert_limit_logged(wirecat_logs, "line_timeout")


async def test_dribbled_json_line_gets_a_timeout_error_event() -> None:
    async with server_for("chat") as (server, ep):
        peer = await Peer.open(ep)
        try:
            await peer.send_json(type="hello", nick="bot")
            await peer.json_until("joined")
            rest, _ = await dribble(peer, b'{"type":"say","room":"#lobby","text":"' + b"x" * 200)
        finally:
            await peer.aclose()
        last = json.loads(rest.splitlines()[-1])
        assert last == {
            "type": "error",
            "code": "timeout",
            "reason": f"line not completed within {LINE:g} s",
        }
        assert server.ctx.metrics["line_timeouts"] == 1


async def test_dribbled_chat_line_is_cut_over_tls() -> None:
    tls = server_context(SELF_SIGNED.cert_pem, SELF_SIGNED.key_pem)
    chat = ChatService([Endpoint("tls", "127.0.0.1", 0)], banner_delay=0)
    server = Server([chat], ctx=ServerContext(LIMITS), tls=tls)
    await server.start()
    try:
        client = ssl.create_default_context()
        client.check_hostname, client.verify_mode = False, ssl.CERT_NONE  # a test's own cert
        peer = await Peer.open(server.endpoint("chat"), ssl=client)
        try:
            await peer.send_json(type="hello", nick="bot")
            await peer.json_until("joined")
            rest, _ = await dribble(peer, b'{"type":"say","room":"#lobby","text":"' + b"x" * 200)
        finally:
            await peer.aclose()
        assert json.loads(rest.splitlines()[-1])["code"] == "timeout"
        assert server.ctx.metrics["line_timeouts"] == 1
    finally:
        await server.shutdown(grace=scaled(2))


async def test_dribbling_before_login_is_cut_too() -> None:
    # The login deadline (10 s by default) is longer: the line deadline comes first.
    async with server_for("chat", login_timeout=scaled(10)) as (server, ep):
        peer = await Peer.open(ep)
        try:
            await peer.until(b"*** Programs:")
            rest, _ = await dribble(peer, b"a" * 200)
        finally:
            await peer.aclose()
        assert rest.endswith(b"!!! timeout: line not completed within %g s\n" % LINE)
        assert server.ctx.metrics["line_timeouts"] == 1
        assert server.ctx.metrics["login_timeouts"] == 0


async def test_a_fast_chat_is_not_cut() -> None:
    """Whole lines (what a terminal sends), lines split across packets, and pauses between
    lines longer than the deadline: none of them is a partial line that outlives it."""
    async with server_for("chat") as (server, ep):
        peer = await Peer.open(ep)
        try:
            await peer.until(b"*** Programs:")
            await peer.send(b"ann\n")
            await peer.until(b"*** in #lobby")
            loop = asyncio.get_running_loop()
            end = loop.time() + 3 * LINE
            n = 0
            while loop.time() < end:  # whole lines for three deadlines
                n += 1
                await peer.send(b"msg %d\n" % n)
                await peer.until(b"#lobby <ann> msg %d" % n)
                await asyncio.sleep(STEP / 5)  # a pace under the chat's rate limit
            await peer.send(b"split ")  # a line in two packets, well within the deadline
            await asyncio.sleep(LINE / 3)
            await peer.send(b"line\n")
            await peer.until(b"#lobby <ann> split line")
            # Quiet between complete lines for longer than the line deadline (but less
            # than the idle timeout): nothing is partial, nothing is cut.
            await asyncio.sleep(LINE * 1.5)
            await peer.send(b"still here\n")
            await peer.until(b"#lobby <ann> still here")
        finally:
            await peer.aclose()
        assert server.ctx.metrics["line_timeouts"] == 0


async def test_line_timeout_none_keeps_the_old_behaviour() -> None:
    async with server_for("chat", line_timeout=None) as (server, ep):
        peer = await Peer.open(ep)
        try:
            await peer.until(b"*** Programs:")
            await peer.send(b"ann\n")
            await peer.until(b"*** in #lobby")
            for byte in b"slow" * 3:  # 12 steps: past LINE, never idle
                await peer.send(bytes([byte]))
                await asyncio.sleep(STEP)
            await peer.send(b"\n")
            await peer.until(b"#lobby <ann> slowslowslow")
        finally:
            await peer.aclose()
        assert server.ctx.metrics["line_timeouts"] == 0


# -- echo ---------------------------------------------------------------------------------------
async def test_dribbled_echo_is_cut_without_a_word() -> None:
    async with server_for("echo") as (server, ep):
        peer = await Peer.open(ep)
        try:
            sent = b"0123456789" * 20
            echoed, _ = await dribble(peer, sent)
        finally:
            await peer.aclose()
        assert echoed and sent.startswith(echoed)  # echoes only, no error line
        assert server.ctx.metrics["line_timeouts"] == 1
        assert server.ctx.metrics["idle_timeouts"] == 0


async def test_echo_lines_and_binary_streams_are_not_cut() -> None:
    """A person typing lines into nc, and a binary stream with no newline at all (a run of
    ``max_line`` bytes counts as a line), both outlive the deadline many times over."""
    async with server_for("echo", max_line=4096) as (server, ep):
        lines, binary = await Peer.open(ep), await Peer.open(ep)
        try:
            loop = asyncio.get_running_loop()
            end = loop.time() + 3 * LINE
            n = 0
            while loop.time() < end:
                n += 1
                await lines.send(b"line %d\n" % n)
                assert await lines.line() == b"line %d\n" % n
                chunk = bytes([n % 256]) * 5000  # no newline in it
                await binary.send(chunk)
                assert await asyncio.wait_for(binary.reader.readexactly(5000), T) == chunk
                await asyncio.sleep(STEP)  # a pace, as a person or a slow producer has
        finally:
            await lines.aclose()
            await binary.aclose()
        assert server.ctx.metrics["line_timeouts"] == 0


async def test_echo_peer_that_does_not_read_is_not_cut_for_our_pause() -> None:
    """While the server does not read (the peer does not take its echoes), the deadline
    does not run: that time is the server's, not the peer's."""
    small = {"write_high_water": 4096, "write_low_water": 1024, "max_output": 1 << 20}
    async with server_for("echo", idle_timeout=None, **small) as (server, ep):
        peer = await Peer.open(ep)
        try:
            peer.writer.transport.pause_reading()  # type: ignore[attr-defined]
            with contextlib.suppress(TimeoutError):  # fill both ways until TCP pushes back
                async with asyncio.timeout(scaled(0.5)):
                    while True:
                        await peer.send(b"x" * 65536 + b"tail")  # ends mid-line
            (handler,) = server.ctx.connections
            await wait_for(lambda: not handler.transport.is_reading(), what="server paused")
            loop = asyncio.get_running_loop()
            if handler._partial_since is None:  # the last chunk happened to end a run
                handler._partial_since = loop.time()  # as if a line were unfinished
            begun = handler._partial_since
            await asyncio.sleep(LINE * 2)  # two deadlines while the server does not read
            assert server.ctx.metrics["line_timeouts"] == 0
            assert not handler.closing
            assert handler._partial_since > begun  # its clock restarted while we paused
        finally:
            peer.writer.transport.abort()  # type: ignore[attr-defined]


# -- WebSocket (#13 Hardening II) ----------------------------------------------------------------
# A frame or a fragmented message that has begun must be complete within the same deadline of
# its first byte; else the server fails the connection with 1008 (a policy violation, RFC 6455
# 7.4.1: the frame is well-formed so far, only too slow, so 1002 would be wrong).
@contextlib.asynccontextmanager
async def ws_echo(
    compression: bool = False, **limits: Any
) -> AsyncIterator[tuple[Server, Endpoint]]:
    settings = WebSocketSettings(compression=compression)
    svc = WebSocketEchoService([Endpoint("ws", "127.0.0.1", 0)], settings=settings)
    lim = Limits(**{"line_timeout": LINE, "idle_timeout": IDLE, **limits})
    async with serving(svc, limits=lim) as server:
        yield server, server.endpoint("echo")


async def ws_open(
    ep: Endpoint, path: str = "/", compression: bool = False
) -> tuple[Peer, WebSocket]:
    """A raw TCP peer that has done the WebSocket handshake with a sans-I/O client."""
    peer = await Peer.open(ep)
    client = WebSocket.client(f"ws://127.0.0.1:{ep.port}{path}", compression=compression)
    await peer.send(b"".join(client.data_to_send()))
    client.receive_data(await asyncio.wait_for(peer.reader.readuntil(b"\r\n\r\n"), T))
    [opened] = client.events_received()
    assert isinstance(opened, Opened) and bool(opened.extensions) == compression
    return peer, client


def frames(client: WebSocket, *texts: str) -> bytes:
    for text in texts:
        client.send_text(text)
    return b"".join(client.data_to_send())


def ws_closed(client: WebSocket, rest: bytes) -> Closed:
    client.receive_data(rest)
    client.receive_eof()
    closes = [e for e in client.events_received() if isinstance(e, Closed)]
    assert closes, rest
    return closes[0]


@pytest.mark.parametrize("compression", [False, True], ids=["plain", "deflate"])
async def test_dribbled_websocket_frame_is_cut_with_1008(
    wirecat_logs: pytest.LogCaptureFixture, compression: bool
) -> None:
    async with ws_echo(compression) as (server, ep):
        peer, client = await ws_open(ep, compression=compression)
        try:
            await peer.send(frames(client, "fast"))  # a whole frame first: echoed, not cut
            while not (got := client.events_received()):
                client.receive_data(await asyncio.wait_for(peer.reader.read(4096), T))
            assert got == [TextMessage("fast")]
            rest, elapsed = await dribble(peer, frames(client, "typing very slowly " * 3))
        finally:
            await peer.aclose()
        closed = ws_closed(client, rest)
        assert closed.code == 1008
        assert closed.reason == f"message not completed within {LINE:g} s"
        assert_cut_at_the_deadline(server, elapsed, "ws_message_timeouts")
    assert_limit_logged(wirecat_logs, "message_timeout")


async def test_fragmented_websocket_message_must_end_in_time() -> None:
    """Whole frames, but the message they make never ends: its first byte starts the clock."""
    async with ws_echo() as (server, ep):
        peer, client = await ws_open(ep)
        try:
            loop = asyncio.get_running_loop()
            read = asyncio.ensure_future(peer.reader.read())
            start = loop.time()
            client.protocol.send_text(b"part ", fin=False)
            while not read.done() and loop.time() - start < 0.8 * LINE:
                await peer.send(b"".join(client.data_to_send()))
                await asyncio.wait([read], timeout=STEP)
                client.protocol.send_continuation(b"and more ", fin=False)
            closed = ws_closed(client, await asyncio.wait_for(read, T))
            elapsed = loop.time() - start
        finally:
            await peer.aclose()
        assert closed.code == 1008 and LINE <= elapsed < 0.8 * LINE + IDLE, elapsed
        assert server.ctx.metrics["ws_message_timeouts"] == 1


async def test_websocket_streams_and_pauses_are_not_cut() -> None:
    """Messages back to back whose chunks never end on a frame boundary (a relay's stream),
    and quiet between whole messages: each message ends in time, so nothing is cut."""
    async with ws_echo() as (server, ep):
        peer, client = await ws_open(ep)
        try:
            loop = asyncio.get_running_loop()
            end = loop.time() + 3 * LINE
            n = 0
            carry = b""
            while loop.time() < end:  # every write ends inside the next message's frame
                n += 1
                data = carry + frames(client, f"msg {n}", f"msg {n}b")
                cut = len(data) - 3
                data, carry = data[:cut], data[cut:]
                await peer.send(data)
                echo = await asyncio.wait_for(peer.reader.read(4096), T)
                client.receive_data(echo)
                await asyncio.sleep(STEP)
            await peer.send(carry)
            await asyncio.sleep(LINE * 1.5)  # quiet between whole messages
            await peer.send(frames(client, "still here"))
            while not any(
                e == TextMessage("still here") for e in client.events_received()
            ):  # bounded by T per read
                client.receive_data(await asyncio.wait_for(peer.reader.read(4096), T))
        finally:
            await peer.aclose()
        assert server.ctx.metrics["ws_message_timeouts"] == 0
        assert server.ctx.metrics["line_timeouts"] == 0


async def test_dribbled_web_chat_frame_is_cut_with_1008() -> None:
    config = ServeConfig(
        greeting=[],
        echo=[],
        chat=["tcp://127.0.0.1:0"],
        web=["tcp://127.0.0.1:0"],
        limits=LIMITS,
    )
    async with wirecat.Server(config) as server:
        peer, client = await ws_open(server.endpoint("web"), "/chat")
        try:
            hello = frames(client, json.dumps({"type": "hello", "nick": "bot"}))
            rest, _ = await dribble(peer, hello)
        finally:
            await peer.aclose()
        assert ws_closed(client, rest).code == 1008
        assert server.ctx.metrics["ws_message_timeouts"] == 1


@pytest.mark.parametrize("service", ["ws-echo", "web"])
async def test_dribbled_upgrade_request_meets_the_handshake_deadline(service: str) -> None:
    """Before the upgrade the login (handshake) deadline applies: a request dribbled a byte
    at a time, which keeps the idle timer happy, is answered 408 and closed."""
    login = scaled(0.3)
    config = ServeConfig(
        greeting=[],
        echo=["ws://127.0.0.1:0"] if service == "ws-echo" else [],
        chat=["tcp://127.0.0.1:0"],
        web=["tcp://127.0.0.1:0"] if service == "web" else [],
        limits=Limits(login_timeout=login, idle_timeout=IDLE, line_timeout=None),
    )
    async with wirecat.Server(config) as server:
        peer = await Peer.open(server.endpoint("echo" if service == "ws-echo" else "web"))
        try:
            request = WebSocket.client("ws://127.0.0.1/chat").data_to_send()[0]
            rest, elapsed = await dribble(peer, request)
        finally:
            await peer.aclose()
        assert rest.startswith(b"HTTP/1.1 408"), rest
        assert elapsed < 0.8 * LINE + IDLE, elapsed  # (the deadline ran from accept)
        assert server.ctx.metrics["login_timeouts"] == 1
        assert server.ctx.metrics["idle_timeouts"] == 0


# -- sans sockets ---------------------------------------------------------------------------------
class _Lines(StreamHandler):
    line_framed = True


def test_partial_line_tracking_on_a_fake_clock() -> None:
    h = _Lines(ServerContext(Limits(max_line=8)))
    h._note_partial_line(b"abc", 1.0)
    assert (h._partial_since, h._partial_len) == (1.0, 3)
    h._note_partial_line(b"d", 2.0)  # the same line: its clock does not restart
    assert (h._partial_since, h._partial_len) == (1.0, 4)
    h._note_partial_line(b"e\nfg", 3.0)  # one line ended, a new one began in this chunk
    assert (h._partial_since, h._partial_len) == (3.0, 2)
    h._note_partial_line(b"h\n", 4.0)  # complete: nothing partial
    assert (h._partial_since, h._partial_len) == (None, 0)
    h._note_partial_line(b"1234567", 5.0)
    h._note_partial_line(b"89", 6.0)  # 9 bytes without a newline: 8 count as a line
    assert (h._partial_since, h._partial_len) == (6.0, 1)
    h._note_partial_line(b"2345678", 7.0)  # exactly another 8: nothing partial
    assert (h._partial_since, h._partial_len) == (None, 0)
    h._note_partial_line(b"a\r\n", 8.0)  # CRLF ends a line as LF does
    assert h._partial_since is None
    h._note_partial_line(b"x" * 20, 9.0)  # a bulk chunk: only its last max_line bytes count
    assert (h._partial_since, h._partial_len) == (9.0, 4)
    h._note_partial_line(b"x" * 20 + b"\nab", 10.0)
    assert (h._partial_since, h._partial_len) == (10.0, 2)
    h._note_partial_line(b"c" * 16, 11.0)  # whole runs of max_line: nothing partial
    assert (h._partial_since, h._partial_len) == (None, 0)


def test_which_handlers_are_line_framed() -> None:
    assert ChatHandler.line_framed is True
    assert WebHandler.line_framed is False  # WebSocket frames, though it is a ChatHandler
    assert StreamHandler.line_framed is False
    with pytest.raises(ValueError, match="line_timeout"):
        Limits(line_timeout=0)


def test_serve_flag_and_config_field() -> None:
    from click.core import ParameterSource

    import wirecat
    from wirecat.cli.serve import config_from_flags, serve_command

    assert wirecat.ServeConfig().limits.line_timeout == 30.0
    cfg = wirecat.ServeConfig.from_mapping({"limits": {"line_timeout": 4.5}})
    assert cfg.limits.line_timeout == 4.5
    for argv, expected in ((["--line-timeout", "2.5"], 2.5), (["--line-timeout", "0"], None)):
        ctx = serve_command.make_context("serve", argv)
        given = {
            n for n in ctx.params if ctx.get_parameter_source(n) is ParameterSource.COMMANDLINE
        }
        assert config_from_flags(ctx.params, given).limits.line_timeout == expected
