"""WebSockets over real sockets: the ws echo, the web service (HTTP and /chat), wirecat's
WebSocket client, and the runtime's limits applied before and after the upgrade. Interop
with the `websockets` library (client and server) is here too; Node's `ws` is in
test_interop_websocket.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

import wirecat
from _chat import Peer
from helpers import scaled, wait_for
from wirecat import ServeConfig
from wirecat.errors import ConnectionClosedError, ConnectionClosedOK, HandshakeError
from wirecat.protocols.websocket import WebSocket
from wirecat.runtime.limits import Limits
from wirecat.runtime.websocket import WebSocketConnection, WebSocketSettings, connect_websocket

T = scaled(5.0)


def _config(**kw: Any) -> ServeConfig:
    base: dict[str, Any] = {
        "greeting": [],
        "echo": ["ws://127.0.0.1:0"],
        "chat": ["tcp://127.0.0.1:0"],
        "web": ["tcp://127.0.0.1:0"],
        "chat_rate": None,
    }
    base.update(kw)
    return ServeConfig(**base)


@contextlib.asynccontextmanager
async def _server(**kw: Any) -> AsyncIterator[wirecat.Server]:
    server = wirecat.Server(_config(**kw))
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(grace=scaled(2))


def _ws_url(server: wirecat.Server, path: str = "/chat") -> str:
    ep = server.endpoint("web")
    return f"ws://127.0.0.1:{ep.port}{path}"


async def _http(server: wirecat.Server, request: bytes) -> bytes:
    ep = server.endpoint("web")
    reader, writer = await asyncio.open_connection("127.0.0.1", ep.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), T)
    finally:
        writer.close()


def _head(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


# -- ws echo and wirecat's client --------------------------------------------------------------
async def test_echo_with_wirecat_client_messages_and_lines() -> None:
    async with _server() as server:
        ep = server.endpoint("echo")
        async with wirecat.connect(str(ep)) as ws:
            assert isinstance(ws, WebSocketConnection)
            await ws.send_text("héllo")
            assert await ws.recv_message(timeout=T) == "héllo"
            await ws.send_bytes(b"\x00\xff")
            assert await ws.recv_message(timeout=T) == b"\x00\xff"
            await ws.send(b"one\ntwo\nthr")  # the stream view: one message per line
            await ws.send(b"ee\n")
            assert [await ws.recv_line(timeout=T) for _ in range(3)] == [
                b"one\n",
                b"two\n",
                b"three\n",
            ]
            lines = []
            await ws.send(b"four\nfive")
            await ws.send_eof()  # sends "five", then the close frame
            async for line in ws:
                lines.append(line)
            assert lines == [b"four\n", b"five\n"]
            assert ws.close_code == 1000


async def test_websockets_library_client_against_echo_and_chat() -> None:
    async with _server() as server:
        ep = server.endpoint("echo")
        async with ws_connect(f"ws://127.0.0.1:{ep.port}/") as c:
            for size in (0, 1, 125, 126, 65535, 65536):
                await c.send("x" * size)
                assert await asyncio.wait_for(c.recv(), T) == "x" * size
            await c.send(b"bin")
            assert await asyncio.wait_for(c.recv(), T) == b"bin"
        async with ws_connect(_ws_url(server)) as c:
            await c.send(json.dumps({"type": "hello", "nick": "lib", "ref": 1}))
            welcome = json.loads(await asyncio.wait_for(c.recv(), T))
            assert welcome["type"] == "welcome" and welcome["ref"] == 1


async def test_wirecat_client_against_the_websockets_server() -> None:
    async def handler(conn: Any) -> None:
        async for message in conn:
            await conn.send(message.upper() if isinstance(message, str) else message[::-1])

    async with ws_serve(handler, "127.0.0.1", 0) as srv:
        port = srv.sockets[0].getsockname()[1]
        async with connect_websocket(f"ws://127.0.0.1:{port}/") as ws:
            await ws.send_text("shout")
            assert await ws.recv_message(timeout=T) == "SHOUT"
            await ws.send_bytes(b"abc")
            assert await ws.recv_message(timeout=T) == b"cba"
        assert ws.close_code == 1000


async def test_client_compression_is_negotiated_and_used() -> None:
    settings = WebSocketSettings(compression=True)
    async with _server(websocket=settings) as server:
        ep = server.endpoint("echo")
        async with connect_websocket(ep, settings=settings) as ws:
            assert ws.extensions == ("permessage-deflate",)
            await ws.send_text("z" * 10000)
            assert await ws.recv_message(timeout=T) == "z" * 10000
        async with connect_websocket(ep) as plain:  # a client that does not offer it
            assert plain.extensions == ()


async def test_refused_handshake_is_a_handshake_error() -> None:
    async with _server() as server:
        with pytest.raises(HandshakeError, match="404"):
            await connect_websocket(_ws_url(server, "/nowhere"))
        with pytest.raises(HandshakeError, match="403"):
            await connect_websocket(_ws_url(server), origin="http://evil.example")


# -- limits and hygiene ------------------------------------------------------------------------
async def test_oversized_message_closes_1009_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="wirecat")
    async with _server(websocket=WebSocketSettings(max_message=1000)) as server:
        ep = server.endpoint("echo")
        async with ws_connect(f"ws://127.0.0.1:{ep.port}/", max_size=None) as c:
            await c.send("y" * 1001)
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(c.recv(), T)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        await wait_for(lambda: server.ctx.metrics["ws_too_big"] == 1, T)
    assert any("closing WebSocket 1009" in r.getMessage() for r in caplog.records)


async def test_bad_utf8_closes_1007() -> None:
    async with _server() as server:
        ep = server.endpoint("echo")
        reader, writer = await asyncio.open_connection("127.0.0.1", ep.port)
        client = WebSocket.client(f"ws://127.0.0.1:{ep.port}/")
        writer.write(b"".join(client.data_to_send()))
        client.receive_data(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T))
        writer.write(b"\x81\x82\x00\x00\x00\x00\xc3\x28")  # a text frame, invalid UTF-8
        data = await asyncio.wait_for(reader.read(), T)
        assert data[:2] == b"\x88" + bytes((len(data) - 2,)) and data[2:4] == b"\x03\xef"
        writer.close()
        await wait_for(lambda: server.ctx.metrics["ws_bad_utf8"] == 1, T)


async def test_silent_peer_is_closed_1011_after_the_pong_deadline() -> None:
    settings = WebSocketSettings(ping_interval=0.05, ping_timeout=0.1, close_timeout=0.2)
    async with _server(websocket=settings) as server:
        ep = server.endpoint("echo")
        reader, writer = await asyncio.open_connection("127.0.0.1", ep.port)
        client = WebSocket.client(f"ws://127.0.0.1:{ep.port}/")
        writer.write(b"".join(client.data_to_send()))
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
        # Never answer: a ping arrives, then a close 1011, then (no close reply) the cut.
        data = await asyncio.wait_for(reader.read(), T)
        assert data.startswith(b"\x89\x04")  # the ping
        assert b"\x88" in data and b"\x03\xf3" in data  # close 1011
        writer.close()
        assert server.ctx.metrics["ws_ping_timeouts"] == 1
        await wait_for(lambda: server.ctx.metrics["ws_close_timeouts"] == 1, T)


async def test_client_answering_pings_stays_open() -> None:
    settings = WebSocketSettings(ping_interval=0.02, ping_timeout=scaled(2))
    async with _server(websocket=settings) as server:
        ep = server.endpoint("echo")
        async with connect_websocket(ep, settings=WebSocketSettings(ping_interval=None)) as ws:
            await wait_for(lambda: server.ctx.metrics["ws_opened"] == 1, T)
            for i in range(5):
                await asyncio.sleep(0.03)  # let pings and pongs cross (not synchronisation)
                await ws.send_text(str(i))
                assert await ws.recv_message(timeout=T) == str(i)
        assert server.ctx.metrics["ws_ping_timeouts"] == 0


async def test_close_handshake_is_bounded_when_the_peer_never_answers() -> None:
    settings = WebSocketSettings(close_timeout=0.1)
    async with _server(websocket=settings) as server:
        ep = server.endpoint("echo")
        reader, writer = await asyncio.open_connection("127.0.0.1", ep.port)
        client = WebSocket.client(f"ws://127.0.0.1:{ep.port}/")
        writer.write(b"".join(client.data_to_send()))
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
        await wait_for(lambda: len(server.ctx.connections) == 1, T)
        for conn in list(server.ctx.connections):
            conn.close("server shutdown")  # 1001; we never send our close frame back
        data = await asyncio.wait_for(reader.read(), T)  # ends when the server gives up
        assert data.startswith(b"\x88") and data[2:4] == (1001).to_bytes(2, "big")
        writer.close()
        assert server.ctx.metrics["ws_close_timeouts"] == 1


async def test_login_deadline_covers_the_http_upgrade() -> None:
    async with _server(limits=Limits(login_timeout=0.2)) as server:
        ep = server.endpoint("echo")
        reader, writer = await asyncio.open_connection("127.0.0.1", ep.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished (slowloris)
        data = await asyncio.wait_for(reader.read(), T)
        assert data.startswith(b"HTTP/1.1 408")
        writer.close()
        assert server.ctx.metrics["login_timeouts"] == 1


async def test_chat_login_deadline_runs_on_after_the_upgrade() -> None:
    async with (
        _server(limits=Limits(login_timeout=0.3)) as server,
        ws_connect(_ws_url(server)) as c,  # opens, never says hello
    ):
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(c.recv(), T)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008


async def test_access_list_refuses_before_any_http_byte() -> None:
    async with _server(deny=["127.0.0.0/8"]) as server:
        with pytest.raises((HandshakeError, ConnectionClosedError, ConnectionResetError, OSError)):
            await connect_websocket(server.endpoint("echo"))
        assert server.ctx.metrics["refused_acl"] >= 1
        assert server.ctx.metrics["ws_opened"] == 0


async def test_connection_cap_applies_to_websockets() -> None:
    async with _server(limits=Limits(max_conns=1)) as server:
        ep = server.endpoint("echo")
        async with connect_websocket(ep) as first:
            with pytest.raises((HandshakeError, ConnectionClosedError)):
                await connect_websocket(ep)
            await first.send_text("still here")
            assert await first.recv_message(timeout=T) == "still here"


async def test_shutdown_closes_websockets_with_1001() -> None:
    server = wirecat.Server(_config())
    await server.start()
    ws = await connect_websocket(server.endpoint("echo"))
    await server.shutdown(grace=scaled(2))
    with pytest.raises(ConnectionClosedOK) as info:
        await ws.recv_message(timeout=T)
    assert info.value.code == 1001
    await ws.aclose()


# -- the web service ---------------------------------------------------------------------------
async def test_http_page_health_and_refusals() -> None:
    async with _server() as server:
        status, headers, body = _head(
            await _http(server, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        )
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b"<script" in body and b'type="module"' in body
        assert "default-src 'self'" in headers["content-security-policy"]
        assert "'unsafe-inline'" not in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        raw = await _http(
            server,
            b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"  # keep-alive: two requests, one conn
            b"HEAD /app.js HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        end = raw.index(b"\r\n\r\n") + 4
        length = int(re.search(rb"content-length: (\d+)", raw[:end], re.I).group(1))  # type: ignore[union-attr]
        first, rest = raw[: end + length], raw[end + length :]
        status, headers, body = _head(first)
        health = json.loads(body)
        assert status == 200 and health["status"] == "ok"
        assert health["hub"] == {"state": "local"}
        status, headers, body = _head(rest)
        assert status == 200 and headers["content-type"].startswith("text/javascript")
        assert body == b""  # HEAD: headers only
        for request, code in [
            (b"GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 404),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi", 405),
            (b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 426),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
            (b"NOT HTTP AT ALL\r\n\r\n", 400),
        ]:
            status, headers, _ = _head(await _http(server, request))
            assert status == code, request[:40]
            assert headers["x-content-type-options"] == "nosniff"


async def test_cross_site_websocket_is_refused_403_and_allow_origin_admits() -> None:
    settings = WebSocketSettings(allow_origin=("https://friend.example",))
    async with _server(websocket=settings) as server:
        url = _ws_url(server)
        port = server.endpoint("web").port
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(url, origin="http://evil.example"):  # type: ignore[arg-type]
                pass
        assert info.value.response.status_code == 403
        assert server.ctx.metrics["ws_origin_refused"] == 1
        for origin in (f"http://127.0.0.1:{port}", "https://friend.example", None):
            async with ws_connect(url, origin=origin) as c:  # type: ignore[arg-type]
                await c.send('{"type":"ping"}')
                assert json.loads(await asyncio.wait_for(c.recv(), T))["type"] == "pong"


async def test_browser_nc_and_json_lines_see_the_same_messages_with_the_same_ids() -> None:
    async with _server() as server:
        chat_ep = server.endpoint("chat")
        text = await Peer.open(chat_ep)
        await text.send(b"nc-user\n")
        await text.until(b"*** in #lobby")
        jl = await Peer.open(chat_ep)
        await jl.send_json(type="hello", nick="bot")
        await jl.send_json(type="join", room="#lobby")
        await jl.until(lambda line: b'"joined"' in line)
        async with ws_connect(_ws_url(server)) as web:
            await web.send(json.dumps({"type": "hello", "nick": "browser"}))
            await web.send(json.dumps({"type": "join", "room": "#lobby"}))
            while json.loads(await asyncio.wait_for(web.recv(), T))["type"] != "joined":
                pass
            await web.send(json.dumps({"type": "say", "text": "from the web"}))
            await jl.send_json(type="say", text="from json")
            await text.send(b"from nc\n")
            seen_ws: list[tuple[int, str]] = []
            while len(seen_ws) < 3:
                ev = json.loads(await asyncio.wait_for(web.recv(), T))
                if ev["type"] == "message":
                    seen_ws.append((ev["id"], ev["text"]))
            seen_jl: list[tuple[int, str]] = []
            while len(seen_jl) < 3:
                ev = await jl.json()
                if ev["type"] == "message":
                    seen_jl.append((ev["id"], ev["text"]))
            assert seen_ws == seen_jl
            assert [t for _, t in seen_ws] == ["from the web", "from json", "from nc"]
            nc_lines = [await text.until(lambda line: b"<" in line) for _ in range(3)]
            assert [line.split(b"> ", 1)[1].strip() for line in nc_lines] == [
                b"from the web",
                b"from json",
                b"from nc",
            ]
        text.writer.close()
        jl.writer.close()


async def test_websocket_member_that_stops_reading_is_cut_as_slow_consumer() -> None:
    """A browser tab that stops reading: small socket buffers on both ends (as in
    test_chat_slow_consumer) so that the burst piles up in the server's output, where
    ``max_output`` sees it; the member is cut, the room goes on."""
    limits = Limits(write_high_water=4096, write_low_water=1024, max_output=16384)
    async with _server(limits=limits) as server:
        loop = asyncio.get_running_loop()
        port = server.endpoint("web").port
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), T)
        local = f"127.0.0.1:{sock.getsockname()[1]}"
        client = WebSocket.client(_ws_url(server))
        await loop.sock_sendall(sock, b"".join(client.data_to_send()))
        client.receive_data(await asyncio.wait_for(loop.sock_recv(sock, 4096), T))
        for obj in ({"type": "hello", "nick": "slow"}, {"type": "join", "room": "#big"}):
            client.send_text(json.dumps(obj))
        await loop.sock_sendall(sock, b"".join(client.data_to_send()))  # then never reads
        await wait_for(lambda: any(h.peer == local for h in server.ctx.connections), T)
        (handler,) = [h for h in server.ctx.connections if h.peer == local]
        handler.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        async with ws_connect(_ws_url(server)) as talker:
            await talker.send(json.dumps({"type": "hello", "nick": "talker"}))
            await talker.send(json.dumps({"type": "join", "room": "#big"}))
            text = "z" * 1000
            for _ in range(500):  # bounded: ~500 KB through a 4 KiB window
                if server.ctx.metrics["slow_consumers"]:
                    break
                await talker.send(json.dumps({"type": "say", "room": "#big", "text": text}))
                await asyncio.sleep(0)
            await wait_for(lambda: server.ctx.metrics["slow_consumers"] == 1, T)
            await talker.send('{"type":"ping"}')  # the room goes on for everyone else
            while json.loads(await asyncio.wait_for(talker.recv(), T))["type"] != "pong":
                pass
        sock.close()


async def test_chat_websocket_survives_bad_input() -> None:
    async with _server() as server, ws_connect(_ws_url(server)) as c:
        await c.send("not json")
        err = json.loads(await asyncio.wait_for(c.recv(), T))
        assert err["type"] == "error" and err["code"] == "bad_json"
        await c.send('{"type":\n"hello",\n"nick":"multi"}')  # newlines are whitespace
        assert json.loads(await asyncio.wait_for(c.recv(), T))["type"] == "welcome"
        await c.send(b'{"type":"ping"}')  # binary is accepted as the same JSON
        assert json.loads(await asyncio.wait_for(c.recv(), T))["type"] == "pong"


def test_config_web_defaults_follow_chat() -> None:
    assert [str(e) for e in ServeConfig().web_endpoints()] == ["tcp://127.0.0.1:7080"]
    assert ServeConfig(chat=["tcp://127.0.0.1:0"]).web_endpoints() == ()
    assert ServeConfig(chat=[]).web_endpoints() == ()
    with pytest.raises(wirecat.ConfigError) as info:
        ServeConfig(chat=[], web=["tcp://127.0.0.1:0"])
    assert info.value.field == "web"
    with pytest.raises(wirecat.ConfigError) as info:
        ServeConfig(chat=["ws://127.0.0.1:0"])
    assert info.value.field == "chat"
    config = ServeConfig.from_mapping(
        {
            "web": ["tcp://127.0.0.1:8080"],
            "websocket": {"max_message": 100, "allow_origin": ["https://a.example"]},
        }
    )
    assert config.websocket.max_message == 100
    assert config.websocket.allow_origin == ("https://a.example",)
    with pytest.raises(wirecat.ConfigError):
        ServeConfig.from_mapping({"websocket": {"max_message": 0}})


@pytest.mark.loops("asyncio")
async def test_wirecat_connect_cli_against_a_websockets_server() -> None:
    """``wirecat connect ws://``: stdin lines become text messages, messages print as lines."""
    import sys

    async def handler(conn: Any) -> None:
        async for message in conn:
            await conn.send(f"got {message}")

    async with ws_serve(handler, "127.0.0.1", 0) as srv:
        port = srv.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "wirecat",
            "connect",
            f"ws://127.0.0.1:{port}/",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"one\ntwo\n")
        await proc.stdin.drain()
        # read both replies before ending stdin: EOF then closes the WebSocket (no half-close)
        first = await asyncio.wait_for(proc.stdout.readline(), scaled(20))
        second = await asyncio.wait_for(proc.stdout.readline(), scaled(20))
        proc.stdin.close()
        out, err = await asyncio.wait_for(proc.communicate(), scaled(20))
        assert proc.returncode == 0, err
        assert first + second + out == b"got one\ngot two\n"


async def test_frames_sent_with_the_upgrade_request_are_answered_after_the_101() -> None:
    async with _server() as server:
        ep = server.endpoint("echo")
        reader, writer = await asyncio.open_connection("127.0.0.1", ep.port)
        client = WebSocket.client(f"ws://127.0.0.1:{ep.port}/")
        request = b"".join(client.data_to_send())
        frame = b"\x81\x82\x00\x00\x00\x00hi"  # sent before the 101 arrived
        writer.write(request + frame)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
        assert head.startswith(b"HTTP/1.1 101")
        assert await asyncio.wait_for(reader.readexactly(4), T) == b"\x81\x02hi"
        writer.close()
        await writer.wait_closed()


class _CountingTransport:
    """A transport that records each write (no socket): to count syscalls per chunk."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.reading = True

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def set_write_buffer_limits(self, **_: int) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


async def test_echo_answers_pipelined_messages_in_one_write_in_order() -> None:
    from websockets.frames import Frame, Opcode

    from wirecat.endpoints import parse_endpoint
    from wirecat.runtime.handler import ServerContext
    from wirecat.services.web import WebSocketEchoService

    service = WebSocketEchoService(
        [parse_endpoint("ws://127.0.0.1:1/")], settings=WebSocketSettings(ping_interval=None)
    )
    handler = service.stream_handler(ServerContext(Limits()))
    transport = _CountingTransport()
    handler.connection_made(transport)  # type: ignore[arg-type]
    client = WebSocket.client("ws://127.0.0.1:1/")
    handler.data_received(b"".join(client.data_to_send()))
    assert transport.writes[0].startswith(b"HTTP/1.1 101")
    messages = [f"m{i}".encode() for i in range(20)]
    wire = b"".join(
        Frame(Opcode.TEXT, m).serialize(mask=True, extensions=[]) for m in messages
    ) + Frame(Opcode.PING, b"p").serialize(mask=True, extensions=[])
    handler.data_received(wire)
    # the 20 echoes in one write, then the pong websockets queued
    assert transport.writes[1:] == [
        b"".join(b"\x81" + bytes((len(m),)) + m for m in messages),
        b"\x8a\x01p",
    ]
    # A peer that does not read its echoes: the transport's buffer passes its high-water
    # mark, and the echo stops reading its messages until it drains.
    handler.pause_writing()
    assert not transport.reading
    handler.resume_writing()
    assert transport.reading
    handler.close("test")


async def test_websocket_fan_out_encodes_each_event_once_for_all_members(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from wirecat.services import web

    calls: list[str] = []
    real = web.WebSocketJsonCodec.encode

    def counting(self: web.WebSocketJsonCodec, event: Any) -> bytes:
        calls.append(type(event).__name__)
        return real(self, event)

    monkeypatch.setattr(web.WebSocketJsonCodec, "encode", counting)
    async with _server() as server:
        members = []
        for i in range(12):
            ws = await ws_connect(_ws_url(server))
            await ws.send(json.dumps({"type": "hello", "nick": f"m{i}"}))
            await ws.send(json.dumps({"type": "join", "room": "#fan"}))
            while True:
                ev = json.loads(await asyncio.wait_for(ws.recv(), T))
                if ev["type"] == "joined":  # the answer to our join
                    break
            members.append(ws)
        calls.clear()
        await members[0].send(json.dumps({"type": "say", "text": "to all"}))
        frames = set()
        for ws in members[1:]:
            while True:
                raw = await asyncio.wait_for(ws.recv(), T)
                if json.loads(raw)["type"] == "message":  # after the joins of later members
                    frames.add(raw)
                    break
        assert len(frames) == 1  # the same bytes for everyone
        assert calls.count("Message") == 1, calls  # encoded once, not once per member
        for ws in members:
            await ws.close()


async def test_chat_client_over_the_web_chat_websocket_joins_and_talks() -> None:
    from wirecat.protocols.chat import Message, RoomJoined

    async with _server() as server:
        url = _ws_url(server)
        async with (
            wirecat.ChatClient.connect(url, nick="wsbot", timeout=T) as bot,
            wirecat.ChatClient.connect(url, nick="other", room="#side", timeout=T) as other,
        ):
            for client, room in ((bot, "#lobby"), (other, "#side")):
                async with asyncio.timeout(T):
                    async for event in client:  # our join notice, then the join's reply
                        if isinstance(event, RoomJoined):
                            assert event.room == room
                            break
            jl = await Peer.open(server.endpoint("chat"))
            await jl.send_json(type="hello", nick="tcp")
            await jl.send_json(type="join", room="#lobby")
            await jl.until(lambda line: b'"joined"' in line)
            sent = await bot.say("over a websocket")
            ev = await jl.until(lambda line: b'"message"' in line)
            assert json.loads(ev)["id"] == sent.message.id
            async for event in bot:  # our own message comes back, as to every member
                if isinstance(event, Message):
                    assert event.text == "over a websocket" and event.id == sent.message.id
                    break
            jl.writer.close()
