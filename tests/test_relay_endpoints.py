"""wirecat relay with WebSocket (ws, wss) and unix+seqpacket endpoints, over real sockets.

Peers: the ``websockets`` library (client and server), plain Python seqpacket sockets, nc and
socat (``type=5`` is SOCK_SEQPACKET).
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect as ws_connect_sync
from websockets.sync.server import serve as ws_serve_sync

import wirecat
from _peers import Running, peer
from helpers import echo, scaled, wait_for
from wirecat.errors import ConnectionClosedError, LimitExceeded
from wirecat.runtime.seqpacket import MAX_PACKET
from wirecat.runtime.websocket import WebSocketConnection
from wirecat.services.relay import RelayStats, relay

T = scaled(10)


def _url(ep: wirecat.Endpoint) -> str:
    return f"{ep.scheme}://127.0.0.1:{ep.port}{ep.path or '/'}"


# -- ws:// FROM: a TCP service published to WebSocket clients ---------------------------------
async def test_websockets_client_through_a_ws_relay_gets_echoes() -> None:
    ended: list[RelayStats] = []
    async with (
        wirecat.listen("tcp://127.0.0.1:0", echo) as target,
        relay("ws://127.0.0.1:0/echo", target.endpoint(), on_end=ended.append) as server,
    ):
        async with ws_connect(_url(server.endpoint()), open_timeout=T) as ws:
            for size in (1, 100, 60_000):
                msg = os.urandom(size)
                await ws.send(msg)
                assert await asyncio.wait_for(ws.recv(), T) == msg  # binary, same bytes
            await ws.send("text goes as its bytes")
            assert await asyncio.wait_for(ws.recv(), T) == b"text goes as its bytes"
        await wait_for(lambda: len(ended) == 1, T)
    assert ended[0].up == ended[0].down == 1 + 100 + 60_000 + 22
    # Another path is refused before the upgrade.
    async with relay("ws://127.0.0.1:0/echo", "tcp://127.0.0.1:9") as server:
        with pytest.raises(Exception, match="404"):
            await ws_connect(_url(server.endpoint()).replace("/echo", "/other"), open_timeout=T)


async def test_eof_from_the_tcp_side_closes_the_websocket_cleanly() -> None:
    async def answer_then_eof(conn: wirecat.Connection) -> None:
        assert await conn.recv(timeout=T) == b"question"
        await conn.send(b"answer")
        await conn.send_eof()
        assert await conn.recv(timeout=T) == b""  # the WebSocket close reaches us as EOF

    async with (
        wirecat.listen("tcp://127.0.0.1:0", answer_then_eof) as target,
        relay("ws://127.0.0.1:0/", target.endpoint()) as server,
        ws_connect(_url(server.endpoint()), open_timeout=T) as ws,
    ):
        await ws.send(b"question")
        assert await asyncio.wait_for(ws.recv(), T) == b"answer"
        with pytest.raises(ConnectionClosedOK):
            await asyncio.wait_for(ws.recv(), T)
        assert ws.close_code == 1000


async def test_pages_of_other_origins_are_refused_unless_allowed() -> None:
    from websockets.exceptions import InvalidStatus

    from wirecat.runtime.websocket import WebSocketSettings

    async with wirecat.listen("tcp://127.0.0.1:0", echo) as target:
        async with relay("ws://127.0.0.1:0/", target.endpoint()) as server:
            with pytest.raises(InvalidStatus, match="403"):
                await ws_connect(
                    _url(server.endpoint()), origin="https://evil.example", open_timeout=T
                )
        allow = WebSocketSettings(allow_origin=("https://app.example",))
        async with (
            relay("ws://127.0.0.1:0/", target.endpoint(), websocket=allow) as server,
            ws_connect(_url(server.endpoint()), origin="https://app.example", open_timeout=T) as ws,
        ):
            await ws.send(b"allowed")
            assert await asyncio.wait_for(ws.recv(), T) == b"allowed"


async def test_ws_text_carries_lines_as_text_messages() -> None:
    got: list[bytes] = []

    async def lines(conn: wirecat.Connection) -> None:
        got.append(await conn.recv_line(timeout=T))
        await conn.send(b"one\ntwo\n")
        await conn.send_eof()

    async with (
        wirecat.listen("tcp://127.0.0.1:0", lines) as target,
        relay("ws://127.0.0.1:0/", target.endpoint(), ws_text=True) as server,
        ws_connect(_url(server.endpoint()), open_timeout=T) as ws,
    ):
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), T) == "one"  # str: a text message
        assert await asyncio.wait_for(ws.recv(), T) == "two"
    assert got == [b"hello\n"]


# -- ws:// TO: a WebSocket reached from a plain TCP client ------------------------------------
async def test_tcp_client_through_a_relay_to_a_websockets_server() -> None:
    kinds: list[type] = []
    closes: list[int | None] = []

    async def echo(ws: ServerConnection) -> None:
        async for msg in ws:
            kinds.append(type(msg))
            await ws.send(msg)
        closes.append(ws.close_code)

    async with ws_serve(echo, "127.0.0.1", 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        async with (
            relay("tcp://127.0.0.1:0", f"ws://127.0.0.1:{port}/") as server,
            wirecat.connect(server.endpoint(), timeout=T) as conn,
        ):
            data = os.urandom(300_000)
            await conn.send(data)
            got = b""
            while len(got) < len(data):
                got += await conn.recv(timeout=T)
            assert got == data
            await conn.send_eof()  # -> the WebSocket closing handshake (1000)
            assert await conn.recv(timeout=T) == b""
        await wait_for(lambda: closes, T)
    assert set(kinds) == {bytes} and closes == [1000]


async def test_wss_on_both_sides_with_messages_kept() -> None:
    from wirecat.runtime.tls import self_signed, server_context

    made = self_signed()
    tls = server_context(made.cert_pem, made.key_pem)
    sizes: list[int] = []

    async def ws_echo(conn: wirecat.Connection) -> None:
        assert isinstance(conn, WebSocketConnection)
        while True:
            try:
                msg = await conn.recv_message(timeout=T)
            except wirecat.errors.ConnectionClosed:
                return
            sizes.append(len(msg))
            await conn.send_bytes(msg if isinstance(msg, bytes) else msg.encode())

    async with (
        wirecat.listen("wss://127.0.0.1:0/in", ws_echo, tls=tls) as target,
        relay("wss://127.0.0.1:0/out", target.endpoint(), tls=tls, pin=made.fingerprint) as server,
    ):
        opening = wirecat.connect(server.endpoint(), pin=made.fingerprint, timeout=T)
        async with opening as ws:
            assert isinstance(ws, WebSocketConnection)
            for msg in (b"a", b"bb" * 1000, b"ccc"):
                await ws.send_bytes(msg)
                assert await ws.recv_message(timeout=T) == msg
    assert sizes == [1, 2000, 3]  # ws -> ws: each message stayed one message


# -- unix+seqpacket ---------------------------------------------------------------------------
async def test_seqpacket_packets_keep_their_boundaries_through_relays(unix_dir: str) -> None:
    packets: list[bytes] = []

    async def record_echo(conn: wirecat.Connection) -> None:
        while data := await conn.recv():
            packets.append(data)
            await conn.send(data)
        await conn.send_eof()

    path = os.path.join(unix_dir, "target.sock")
    async with (
        wirecat.listen(f"unix+seqpacket:{path}", record_echo) as target,
        relay("ws://127.0.0.1:0/", target.endpoint()) as server,
        ws_connect(_url(server.endpoint()), open_timeout=T) as ws,
    ):
        for msg in (b"x", b"yy", b"z" * 50_000):
            await ws.send(msg)
        for msg in (b"x", b"yy", b"z" * 50_000):
            assert await asyncio.wait_for(ws.recv(), T) == msg
    assert packets == [b"x", b"yy", b"z" * 50_000]


async def test_python_seqpacket_peers_on_both_sides(unix_dir: str) -> None:
    loop = asyncio.get_running_loop()
    front = os.path.join(unix_dir, "front.sock")
    back = os.path.join(unix_dir, "back.sock")
    # The target: a plain seqpacket socket that answers each packet with its size.
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as lsock:
        lsock.bind(back)
        lsock.listen()
        lsock.setblocking(False)

        async def target() -> None:
            conn, _ = await loop.sock_accept(lsock)
            with conn:
                while data := await loop.sock_recv(conn, 100_000):
                    await loop.sock_sendall(conn, b"%d" % len(data))
                conn.shutdown(socket.SHUT_WR)

        serving = asyncio.ensure_future(target())
        async with relay(f"unix+seqpacket:{front}", f"unix+seqpacket:{back}"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as c:
                c.setblocking(False)
                await loop.sock_connect(c, front)
                for n in (3, 1, 4000):
                    await loop.sock_sendall(c, b"p" * n)
                c.shutdown(socket.SHUT_WR)  # half-close passes through
                got = [await asyncio.wait_for(loop.sock_recv(c, 100), T) for _ in range(4)]
        await asyncio.wait_for(serving, T)
    assert got == [b"3", b"1", b"4000", b""]


async def test_a_bulk_stream_through_seqpacket_hops_arrives_byte_exact(unix_dir: str) -> None:
    # tcp -> relay -> seqpacket (split into packets, the writer paused by backpressure) ->
    # a slow seqpacket sink that reads everything, then answers with the digest.
    import hashlib

    path = os.path.join(unix_dir, "sink.sock")

    async def digest(conn: wirecat.Connection) -> None:
        h = hashlib.sha256()
        while data := await conn.recv():
            assert len(data) <= MAX_PACKET
            h.update(data)
            await asyncio.sleep(0)  # a slow reader: the relay's writes queue and pause
        await conn.send(h.hexdigest().encode())
        await conn.send_eof()

    data = os.urandom(4 * 1024 * 1024)
    async with (
        wirecat.listen(f"unix+seqpacket:{path}", digest),
        relay("tcp://127.0.0.1:0", f"unix+seqpacket:{path}") as server,
        wirecat.connect(server.endpoint(), timeout=T) as conn,
    ):
        await conn.send(data)
        await conn.send_eof()
        assert await conn.recv(timeout=T) == hashlib.sha256(data).hexdigest().encode()
        assert await conn.recv(timeout=T) == b""


async def test_a_packet_over_the_limit_is_refused(unix_dir: str) -> None:
    errors: list[BaseException] = []

    async def reader(conn: wirecat.Connection) -> None:
        try:
            await conn.recv(timeout=T)
        except ConnectionClosedError as exc:
            errors.append(exc)

    path = os.path.join(unix_dir, "big.sock")
    async with wirecat.listen(f"unix+seqpacket:{path}", reader):
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as c:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MAX_PACKET)
            c.connect(path)
            c.sendall(b"b" * (MAX_PACKET + 1))
            await wait_for(lambda: errors, T)
    assert isinstance(errors[0].__cause__, LimitExceeded)


@pytest.mark.loops("asyncio")  # uvloop's loop methods cannot be replaced on the instance
async def test_the_accept_loop_survives_running_out_of_descriptors(unix_dir: str) -> None:
    loop = asyncio.get_running_loop()
    real = loop.sock_accept
    failures = [OSError(errno.EMFILE, "Too many open files")]

    async def flaky(sock: socket.socket) -> tuple[socket.socket, object]:
        if failures:
            raise failures.pop()
        return await real(sock)

    loop.sock_accept = flaky  # type: ignore[method-assign]
    try:
        path = os.path.join(unix_dir, "emfile.sock")
        async with (
            wirecat.listen(f"unix+seqpacket:{path}", echo),
            wirecat.connect(f"unix+seqpacket:{path}", timeout=T) as conn,
        ):
            await conn.send(b"after EMFILE")
            assert await conn.recv(timeout=T) == b"after EMFILE"
    finally:
        del loop.sock_accept
    assert not failures


# -- the command, with real peers -------------------------------------------------------------
@contextmanager
def _relay(*args: str) -> Iterator[str]:
    with Running([sys.executable, "-m", "wirecat", "relay", *args], stdin=subprocess.DEVNULL) as r:
        yield r.wait_line(r"relaying (\S+) ->").group(1)


@contextmanager
def _socat_echo(*listen: str) -> Iterator[str]:
    """socat serving ``cat`` on ``listen`` (its address once listening)."""
    with Running([peer("socat"), "-d", "-d", *listen, "EXEC:cat"], stdin=subprocess.DEVNULL) as r:
        yield r.wait_line(r"listening on (.*)$").group(1)


@pytest.mark.interop
def test_websockets_sync_client_through_the_relay_command() -> None:
    with _socat_echo("TCP-LISTEN:0,bind=127.0.0.1,reuseaddr") as where:
        port = re.search(r":(\d+)\s*$", where).group(1)  # type: ignore[union-attr]
        with (
            _relay("ws://127.0.0.1:0/", f"tcp://127.0.0.1:{port}") as ep,
            ws_connect_sync(ep, open_timeout=T) as ws,
        ):
            ws.send(b"\x00\xffbinary")
            assert ws.recv(timeout=T) == b"\x00\xffbinary"


@pytest.mark.interop
def test_nc_through_the_relay_command_to_a_websockets_server() -> None:
    def echo(ws: object) -> None:
        for msg in ws:  # type: ignore[attr-defined]
            ws.send(msg)  # type: ignore[attr-defined]

    with ws_serve_sync(echo, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            port = server.socket.getsockname()[1]
            with _relay("tcp://127.0.0.1:0", f"ws://127.0.0.1:{port}/") as ep:
                host, rport = ep.removeprefix("tcp://").rsplit(":", 1)
                data = os.urandom(256 * 1024)
                with subprocess.Popen(
                    [peer("nc"), "-N", host, rport], stdin=subprocess.PIPE, stdout=subprocess.PIPE
                ) as nc:
                    assert nc.stdin is not None and nc.stdout is not None
                    writer = threading.Thread(target=nc.stdin.write, args=(data,), daemon=True)
                    writer.start()
                    got = b""
                    while len(got) < len(data) and (chunk := nc.stdout.read1(1 << 16)):
                        got += chunk
                    assert got == data
                    # WebSocket has no half-close: stdin's end is a close frame once the
                    # echoes are in (a websockets server answers a close and sends no more).
                    writer.join(T)
                    nc.stdin.close()
                    assert nc.stdout.read() == b""  # the close came back as EOF; nc ends
                    assert nc.wait(T) == 0
        finally:
            server.shutdown()
            thread.join(T)


@pytest.mark.interop
def test_connect_and_listen_commands_on_seqpacket_with_socat(unix_dir: str) -> None:
    path = os.path.join(unix_dir, "cli.sock")
    with _socat_echo(f"UNIX-LISTEN:{path},type=5"):
        out = subprocess.run(
            [sys.executable, "-m", "wirecat", "connect", f"unix+seqpacket:{path}"],
            input=b"one packet\n",
            capture_output=True,
            timeout=T,
        )
        assert out.returncode == 0 and out.stdout == b"one packet\n", out.stderr
    listen_path = os.path.join(unix_dir, "listen.sock")
    with Running(
        [sys.executable, "-m", "wirecat", "listen", f"unix+seqpacket:{listen_path}"],
    ) as listener:
        listener.wait_listening()
        peer_out = subprocess.run(
            [peer("socat"), "-", f"UNIX-CONNECT:{listen_path},type=5"],
            input=b"to the listener\n",
            capture_output=True,
            timeout=T,
        )
        assert peer_out.returncode == 0
        code, got, _ = listener.finish()
    assert code == 0 and got == b"to the listener\n"


@pytest.mark.interop
def test_wss_relay_command_with_a_self_signed_certificate() -> None:
    from wirecat.runtime.loop import run

    with _socat_echo("TCP-LISTEN:0,bind=127.0.0.1,reuseaddr") as where:
        port = re.search(r":(\d+)\s*$", where).group(1)  # type: ignore[union-attr]
        argv = ["relay", "wss://127.0.0.1:0/", f"tcp://127.0.0.1:{port}", "--self-signed"]
        with Running([sys.executable, "-m", "wirecat", *argv], stdin=subprocess.DEVNULL) as r:
            fingerprint = r.wait_line(r"(sha256:[0-9a-f]{64})").group(1)
            ep = r.wait_line(r"relaying (\S+) ->").group(1)
            assert run(_wss_round_trip(ep, fingerprint)) == b"secure bytes"


async def _wss_round_trip(ep: str, fingerprint: str) -> bytes | str:
    async with wirecat.connect(ep, pin=fingerprint, ws_binary=True, timeout=T) as ws:
        assert isinstance(ws, WebSocketConnection)
        await ws.send(b"secure bytes")
        return await ws.recv_message(timeout=T)


@pytest.mark.interop
def test_socat_seqpacket_peers_on_both_sides_of_the_relay_command(unix_dir: str) -> None:
    back = os.path.join(unix_dir, "socat.sock")
    front = os.path.join(unix_dir, "front.sock")
    with (
        _socat_echo(f"UNIX-LISTEN:{back},type=5"),
        _relay(f"unix+seqpacket:{front}", f"unix+seqpacket:{back}"),
    ):
        out = subprocess.run(
            [peer("socat"), "-", f"UNIX-CONNECT:{front},type=5"],
            input=b"through two seqpacket hops\n",
            capture_output=True,
            timeout=T,
        )
    assert out.stdout == b"through two seqpacket hops\n"
