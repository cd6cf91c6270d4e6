"""The HTTP CONNECT proxy server (``wirecat relay http-proxy://``): sans-I/O framing of the
request (whole, byte by byte, trailing data, bad input), the server (policy, login,
pipelined bytes), wirecat's own ``--proxy http://`` clients and curl as real clients."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import wirecat
from _peers import Running, peer
from helpers import echo, scaled, wait_for
from test_files_cli import FilesServer
from test_socks import http_server
from wirecat import LimitExceeded, ProxyError, RemoteProtocolError
from wirecat.auth import Users, add_user
from wirecat.files.client import FilesClient
from wirecat.protocols import socks
from wirecat.services.httpproxy import http_proxy_server
from wirecat.services.relay import RelayStats

T = scaled(10)


# -- sans-I/O ---------------------------------------------------------------------------------
REQUEST = (
    b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n"
    b"Proxy-Authorization: Basic YW5uOnRvaw==\r\n\r\n"
)


def test_connect_request_whole_byte_by_byte_and_with_trailing_data() -> None:
    for cut in range(len(REQUEST)):
        assert socks.parse_http_connect_request(REQUEST[:cut]) is None
    parsed = socks.parse_http_connect_request(REQUEST + b"\x16\x03\x01tls hello")
    assert parsed is not None
    request, used = parsed
    assert used == len(REQUEST)
    assert (request.method, request.host, request.port) == ("CONNECT", "example.org", 443)
    assert request.authorization == "Basic YW5uOnRvaw=="
    v6, _ = socks.parse_http_connect_request(b"CONNECT [::1]:22 HTTP/1.1\r\n\r\n") or (None, 0)
    assert v6 is not None and (v6.host, v6.port) == ("::1", 22)
    get, _ = socks.parse_http_connect_request(b"GET http://a/ HTTP/1.1\r\n\r\n") or (None, 0)
    assert get is not None and get.method == "GET"  # the server answers it with 405


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"CONNECT example.org HTTP/1.1\r\n\r\n", "host:port"),
        (b"CONNECT example.org:0 HTTP/1.1\r\n\r\n", "bad port"),
        (b"CONNECT example.org:99999 HTTP/1.1\r\n\r\n", "bad port"),
        (b"CONNECT [::1:22 HTTP/1.1\r\n\r\n", "bad CONNECT target"),
        (b"CONNECT a b:1 HTTP/1.1\r\n\r\n", "request line"),
        (b"CONNECT h:1 SPDY/3\r\n\r\n", "request line"),
        (b"CONNECT h:1 HTTP/1.1\r\nno colon\r\n\r\n", "malformed header"),
        (b"CONNECT h:1 HTTP/1.1\r\nContent-Length: 5\r\n\r\n", "no body"),
        (b"CONNECT ev/il:1 HTTP/1.1\r\n\r\n", "bad host"),
    ],
)
def test_bad_connect_requests(data: bytes, words: str) -> None:
    with pytest.raises(RemoteProtocolError, match=words):
        socks.parse_http_connect_request(data)


def test_connect_request_limits() -> None:
    with pytest.raises(LimitExceeded):
        socks.parse_http_connect_request(b"CONNECT h:1 HTTP/1.1\r\n" + b"x" * 9000)
    many = b"CONNECT h:1 HTTP/1.1\r\n" + b"X-A: b\r\n" * 65 + b"\r\n"
    with pytest.raises(LimitExceeded):
        socks.parse_http_connect_request(many)
    reply = socks.build_http_connect_reply(407, "Proxy Authentication Required")
    assert reply.startswith(b"HTTP/1.1 407 ") and b"Connection: close" in reply


@given(st.binary(max_size=300))
def test_the_request_parser_raises_only_documented_errors(data: bytes) -> None:
    with suppress(RemoteProtocolError, LimitExceeded):
        socks.parse_http_connect_request(b"CONNECT " + data)


# -- the server -------------------------------------------------------------------------------
async def _ask(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(4096), T)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_tunnels_pipelined_bytes_and_refusals(tmp_path: Path) -> None:
    ended: list[RelayStats] = []
    async with (
        wirecat.listen("tcp://127.0.0.1:0", echo) as target,
        http_proxy_server("tcp://127.0.0.1:0", on_end=ended.append) as proxy,
    ):
        tport, pport = target.endpoint().port, proxy.endpoint().port or 0
        # Bytes sent right after the request are forwarded once the tunnel is up.
        reader, writer = await asyncio.open_connection("127.0.0.1", pport)
        writer.write(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\nfirst\n" % tport)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert await asyncio.wait_for(reader.readline(), T) == b"first\n"
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), T) == b""  # half-close came back
        writer.close()
        await writer.wait_closed()
        # wirecat's own client.
        url = f"http://127.0.0.1:{pport}"
        async with wirecat.connect(target.endpoint(), proxy=url, timeout=T) as conn:
            await conn.send(b"via http\n")
            assert await conn.recv_line(timeout=T) == b"via http\n"
        # Refusals: policy, method, bad request, closed port.
        denied = await _ask(pport, b"CONNECT 192.0.2.1:22 HTTP/1.1\r\n\r\n")
        assert denied.startswith(b"HTTP/1.1 403 ")
        get = await _ask(pport, b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert get.startswith(b"HTTP/1.1 405 ") and b"Allow: CONNECT" in get
        assert (await _ask(pport, b"CONNECT nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 400")
        huge = b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nX: " + b"a" * socks.MAX_HTTP_REQUEST
        assert (await _ask(pport, huge)).startswith(b"HTTP/1.1 431 ")  # RFC 6585 5
        with pytest.raises(ProxyError, match="502"):
            await wirecat.connect("tcp://127.0.0.1:1", proxy=url, timeout=T)
        metrics = proxy.ctx.metrics
        await wait_for(lambda: metrics["http_proxy_tunnels"] == 2, T)
        assert (metrics["http_proxy_refused"], metrics["http_proxy_bad_requests"]) == (3, 2)
    assert len(ended) == 2 and ended[0].up == ended[0].down == 6


async def test_a_destination_that_does_not_answer_in_time_gets_504() -> None:
    import socket

    # A listener whose accept queue is full drops further SYNs (Linux): connecting to it
    # times out, which the proxy answers 504 (ProxyRefusal.timed_out), not 502.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        try:
            for _ in range(3):
                s = socket.socket()
                s.setblocking(False)
                with suppress(BlockingIOError):
                    s.connect(("127.0.0.1", port))
                fillers.append(s)
            async with http_proxy_server("tcp://127.0.0.1:0", connect_timeout=scaled(0.3)) as p:
                pport = p.endpoint().port or 0
                got = await _ask(pport, b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n" % port)
                assert got.startswith(b"HTTP/1.1 504 "), got
        finally:
            for s in fillers:
                s.close()


async def test_login_with_proxy_authorization(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    token = add_user(path, "ann", log_n=10)
    async with (
        wirecat.listen("tcp://127.0.0.1:0", echo) as target,
        http_proxy_server("tcp://127.0.0.1:0", users=Users.load(path)) as proxy,
    ):
        pport = proxy.endpoint().port
        ok = f"http://ann:{token}@127.0.0.1:{pport}"
        async with wirecat.connect(target.endpoint(), proxy=ok, timeout=T) as conn:
            await conn.send(b"logged in\n")
            assert await conn.recv_line(timeout=T) == b"logged in\n"
        for bad in (f"http://ann:wrong@127.0.0.1:{pport}", f"http://127.0.0.1:{pport}"):
            with pytest.raises(ProxyError, match="407"):
                await wirecat.connect(target.endpoint(), proxy=bad, timeout=T)
        answer = await _ask(pport or 0, b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n")
        assert b'Proxy-Authenticate: Basic realm="wirecat"' in answer
        assert proxy.ctx.metrics["auth_failures"] == 1  # a missing login is not a guess


async def test_the_files_client_through_the_http_proxy(tmp_path: Path) -> None:
    server = FilesServer(tmp_path / "root")
    try:
        (tmp_path / "a.txt").write_bytes(b"files through HTTP CONNECT\n" * 1000)
        async with http_proxy_server("tcp://127.0.0.1:0") as proxy:
            url = f"http://127.0.0.1:{proxy.endpoint().port}"
            async with await FilesClient.connect(server.endpoint, proxy=url, timeout=T) as c:
                await c.upload(str(tmp_path / "a.txt"), "a.txt")
                await c.download("a.txt", str(tmp_path / "b.txt"))
        assert (tmp_path / "b.txt").read_bytes() == (tmp_path / "a.txt").read_bytes()
    finally:
        server.stop()


# -- the command, with curl -------------------------------------------------------------------
@contextmanager
def wirecat_http_proxy(*args: str) -> Iterator[int]:
    argv = [sys.executable, "-m", "wirecat", "relay", "http-proxy://127.0.0.1:0", *args]
    with Running(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL) as proc:
        yield int(proc.wait_line(r"HTTP CONNECT proxy on http-proxy://127\.0\.0\.1:(\d+)").group(1))


@pytest.mark.interop
def test_curl_through_the_http_proxy_command(tmp_path: Path) -> None:
    users = tmp_path / "users.toml"
    token = add_user(users, "ann", log_n=10)
    with http_server(tmp_path) as web, wirecat_http_proxy("--users", str(users)) as port:
        curl = [peer("curl"), "-sS", "--max-time", str(T), "--proxytunnel"]
        url = f"http://127.0.0.1:{web}/"
        via = ["--proxy", f"http://127.0.0.1:{port}"]
        ok = subprocess.run(
            [*curl, *via, "--proxy-user", f"ann:{token}", url], capture_output=True, timeout=T
        )
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout == b"hello through wirecat\n"
        refused = subprocess.run([*curl, *via, url], capture_output=True, timeout=T)
        assert refused.returncode == 56 and b"407" in refused.stderr  # curl: CONNECT refused


async def test_clients_that_reset_right_after_their_request_are_no_handler_errors() -> None:
    import socket
    import struct

    async with (
        wirecat.listen("tcp://127.0.0.1:0", echo) as target,
        http_proxy_server("tcp://127.0.0.1:0") as proxy,
    ):
        pport, tport = proxy.endpoint().port or 0, target.endpoint().port
        requests = [
            b"CONNECT 192.0.2.1:22 HTTP/1.1\r\n\r\n",  # refused by the policy
            b"GARBAGE\r\n\r\n",  # a bad request
            b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n" % tport,  # allowed
        ] * 5
        for request in requests:
            _, writer = await asyncio.open_connection("127.0.0.1", pport)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.write(request)
            await writer.drain()
            writer.transport.abort()  # RST, before (or while) the proxy answers
        m = proxy.ctx.metrics
        kinds = ("refused", "bad_requests", "incomplete", "tunnels")
        await wait_for(lambda: sum(m[f"http_proxy_{k}"] for k in kinds) == len(requests), T)
        assert m["handler_errors"] == 0
