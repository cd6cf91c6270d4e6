"""SOCKS5 and HTTP CONNECT: sans-I/O framing, the SOCKS server, proxy clients, real peers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import wirecat
from _peers import peer
from helpers import scaled, wait_for
from wirecat import LimitExceeded, ProxyError, RemoteProtocolError
from wirecat.auth import add_user
from wirecat.protocols import socks
from wirecat.runtime.limits import Limits
from wirecat.services.relay import RelayStats
from wirecat.services.socks import SocksPolicy, socks_server

T = scaled(10)


# -- sans-I/O ---------------------------------------------------------------------------------
def _incremental(parse: object, data: bytes) -> object:
    """Every proper prefix parses to None; the whole (with trailing bytes) parses."""
    for i in range(len(data)):
        assert parse(data[:i]) is None, i  # type: ignore[operator]
    return parse(data + b"trailing")  # type: ignore[operator]


def test_greeting_request_userpass_byte_by_byte() -> None:
    assert _incremental(socks.parse_methods, b"\x05\x02\x00\x02") == ([0, 2], 4)
    assert _incremental(socks.parse_userpass, b"\x01\x03ann\x04tok!") == ("ann", "tok!", 10)
    req = socks.build_request("example.org", 443)
    parsed = _incremental(socks.parse_request, req)
    assert parsed == (socks.Request(1, "example.org", 443, socks.ATYP_DOMAIN), len(req))
    for host in ("192.0.2.1", "2001:db8::1"):
        req = socks.build_request(host, 80)
        parsed_req, used = _incremental(socks.parse_request, req)  # type: ignore[misc]
        assert (parsed_req.host, parsed_req.port, used) == (host, 80, len(req))
    reply = socks.build_reply(0, "127.0.0.1", 5000)
    assert _incremental(socks.parse_reply, reply) == (0, "127.0.0.1", 5000, len(reply))


@pytest.mark.parametrize(
    ("parse", "data", "words"),
    [
        (socks.parse_methods, b"\x04\x01\x00", "version 4"),
        (socks.parse_methods, b"\x05\x00", "no authentication method"),
        (socks.parse_request, b"\x05\x01\x01\x01\x7f\x00\x00\x01\x00\x50", "reserved"),
        (socks.parse_request, b"\x05\x01\x00\x09", "address type 9"),
        (socks.parse_request, b"\x05\x01\x00\x03\x00\x00\x50", "empty domain"),
        (socks.parse_request, b"\x05\x01\x00\x03\x03a b\x00\x50", "invalid domain"),
        (socks.parse_request, b"\x05\x01\x00\x03\x02\xff\xfe\x00\x50", "not ASCII"),
        (socks.parse_userpass, b"\x02\x01a\x00", "version 2"),
        (socks.parse_userpass, b"\x01\x00", "empty"),
    ],
)
def test_bad_socks_messages(parse: object, data: bytes, words: str) -> None:
    with pytest.raises(RemoteProtocolError, match=words):
        parse(data)  # type: ignore[operator]


def test_255_methods_and_a_255_byte_domain_are_within_the_protocol() -> None:
    assert socks.parse_methods(bytes([5, 255, *range(255)])) == (list(range(255)), 257)
    name = ".".join(["a" * 63] * 3) + "." + "b" * 63  # 255 bytes
    req = socks.build_request(name, 1)
    assert socks.parse_request(req) == (socks.Request(1, name, 1, socks.ATYP_DOMAIN), len(req))
    with pytest.raises(wirecat.LocalProtocolError):
        socks.build_request(name + "c", 1)


def test_http_connect_framing() -> None:
    assert socks.build_http_connect("::1", 443) == (
        b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n"
    )
    head = b"HTTP/1.1 200 Connection established\r\nX: y\r\n\r\n"
    assert _incremental(socks.parse_http_connect_response, head) == (
        200,
        "Connection established",
        len(head),
    )
    with pytest.raises(RemoteProtocolError):
        socks.parse_http_connect_response(b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(LimitExceeded):
        socks.parse_http_connect_response(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 2000)


@given(st.binary(max_size=64))
def test_parsers_raise_only_documented_errors(data: bytes) -> None:
    for parse in (socks.parse_methods, socks.parse_request, socks.parse_userpass):
        with contextlib.suppress(RemoteProtocolError):
            parse(data)


def test_policy_rules() -> None:
    policy = SocksPolicy(["10.0.0.0/8:80,443", "[2001:db8::/32]:8000-9000", "192.0.2.7"])
    assert policy.permits("10.1.2.3", 443) and not policy.permits("10.1.2.3", 22)
    assert policy.permits("2001:db8::1", 8500) and not policy.permits("2001:db8::1", 80)
    assert policy.permits("192.0.2.7", 1) and not policy.permits("192.0.2.8", 1)
    assert SocksPolicy().permits("127.0.0.1", 1) and not SocksPolicy().permits("10.0.0.1", 1)
    assert SocksPolicy().permits("::ffff:127.0.0.1", 5)
    for bad in ("10.0.0.0/33", "10.0.0.0/8:99999", "[::1]x"):
        with pytest.raises(ValueError):
            SocksPolicy([bad])


def test_policy_cache_stays_bounded_and_right() -> None:
    """The parsed-address cache is cleared when full; answers never change with it."""
    policy = SocksPolicy(["127.0.0.0/8:1-1000"])
    for i in range(5000):
        host = f"127.{i >> 8 & 255}.{i & 255}.1"
        assert policy.permits(host, 80) and not policy.permits(host, 2000)
        assert not policy.permits(f"10.0.{i >> 8 & 255}.{i & 255}", 80)
        assert len(policy._parsed) <= 4096
    assert not policy.permits("127.0.0.01", 80)  # not an address: refused, not cached
    assert "127.0.0.01" not in policy._parsed


def test_reply_addresses() -> None:
    """Replies carry an IPv4, IPv6 or domain BND.ADDR (RFC 1928 section 6)."""
    assert socks.build_reply(0, "192.0.2.1", 80) == b"\x05\x00\x00\x01\xc0\x00\x02\x01\x00\x50"
    v6 = socks.build_reply(0, "2001:db8::1", 80)
    assert v6[3] == socks.ATYP_IPV6 and len(v6) == 4 + 16 + 2
    dom = socks.build_reply(0, "example.org", 80)
    assert dom[3:5] == bytes((socks.ATYP_DOMAIN, 11))
    assert socks.build_reply(0, "01.2.3.4", 80)[3] == socks.ATYP_DOMAIN  # as ipaddress did


# -- the server, raw ----------------------------------------------------------------------------
async def _echo(conn: wirecat.Connection) -> None:
    while data := await conn.recv():
        await conn.send(data)


async def _raw(ep: wirecat.Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(ep.host, ep.port)


async def test_connect_pipelined_data_goes_first() -> None:
    async with (
        wirecat.listen("tcp://127.0.0.1:0", _echo) as target,
        socks_server("tcp://127.0.0.1:0") as server,
    ):
        r, w = await _raw(server.endpoint())
        port = target.endpoint().port or 0
        # greeting, request and data in one segment: nothing may be lost
        w.write(b"\x05\x01\x00" + socks.build_request("127.0.0.1", port) + b"early\n")
        assert await r.readexactly(2) == b"\x05\x00"
        reply = await r.readexactly(10)
        assert reply[1] == 0
        assert await asyncio.wait_for(r.readline(), T) == b"early\n"
        w.close()


async def test_tunnels_are_spliced_and_counted() -> None:
    # No users file, plain TCP: the tunnel is the zero-copy engine; by IP and by name,
    # with a half-close passed on and bytes counted.
    ended: list[RelayStats] = []
    async with (
        wirecat.listen("tcp://127.0.0.1:0", _echo) as target,
        socks_server("tcp://127.0.0.1:0", on_end=ended.append) as server,
    ):
        port = target.endpoint().port or 0
        for host in ("127.0.0.1", "localhost"):
            r, w = await _raw(server.endpoint())
            w.write(b"\x05\x01\x00")
            assert await r.readexactly(2) == b"\x05\x00"
            w.write(socks.build_request(host, port))
            reply = await asyncio.wait_for(r.readexactly(10), T)
            assert reply[:2] == b"\x05\x00"
            data = os.urandom(200_000)
            w.write(data)
            w.write_eof()
            assert await asyncio.wait_for(r.readexactly(len(data)), T) == data
            w.close()
        await wait_for(lambda: len(ended) == 2, T)
    assert all(s.zero_copy and s.up == s.down == 200_000 for s in ended)
    assert server.ctx.metrics["socks_tunnels"] == 2


async def test_a_refused_destination_gets_reply_5() -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        async with socks_server("tcp://127.0.0.1:0") as server:
            r, w = await _raw(server.endpoint())
            w.write(b"\x05\x01\x00" + socks.build_request("127.0.0.1", port))
            got = await asyncio.wait_for(r.read(), T)
            assert got[:2] == b"\x05\x00" and got[2:4] == b"\x05\x05"
            w.close()
            assert server.ctx.metrics["socks_refused"] == 1


@pytest.mark.parametrize(
    ("messages", "expect"),
    [
        ([b"\x05\x01\x00", socks.build_request("192.0.2.1", 80)], b"\x05\x02"),  # denied
        ([b"\x05\x01\x00", b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50"], b"\x05\x07"),  # BIND
        ([b"\x05\x01\x00", b"\x05\x01\x00\x09"], b"\x05\x08"),  # address type
        ([b"\x05\x01\x00", b"\x05\x01\x01\x01\x7f\x00\x00\x01\x00\x50"], b"\x05\x01"),  # RSV
        ([b"\x05\x01\x02"], b"\x05\xff"),  # only user/pass offered, none required
        ([b"\x05\x00"], b""),  # zero methods: closed
    ],
)
async def test_refusals_carry_the_right_reply(messages: list[bytes], expect: bytes) -> None:
    async with socks_server("tcp://127.0.0.1:0") as server:
        r, w = await _raw(server.endpoint())
        for m in messages:
            w.write(m)
        got = await asyncio.wait_for(r.read(), T)
        if expect[1:2] in (b"\xff", b""):
            assert got == expect
        else:
            assert got[:2] == b"\x05\x00" and got[2:4] == expect
        w.close()


async def test_a_client_that_stops_mid_request_is_cut() -> None:
    limits = Limits(handshake_timeout=scaled(0.2))
    async with socks_server("tcp://127.0.0.1:0", limits=limits) as server:
        r, w = await _raw(server.endpoint())
        w.write(b"\x05\x01\x00\x05\x01\x00\x03\x0aexamp")  # stops in the domain
        assert await asyncio.wait_for(r.read(), T) == b"\x05\x00"
        w.close()
        await wait_for(lambda: server.ctx.metrics["socks_incomplete"] == 1, T)


async def test_username_password_from_the_users_file(tmp_path: Path) -> None:
    from wirecat.auth import Users

    path = tmp_path / "users.toml"
    token = add_user(path, "ann", log_n=10)
    users = Users.load(path)
    async with (
        wirecat.listen("tcp://127.0.0.1:0", _echo) as target,
        socks_server("tcp://127.0.0.1:0", users=users) as server,
    ):
        port = target.endpoint().port or 0
        ok = f"socks5://ann:{token}@127.0.0.1:{server.endpoint().port}"
        async with wirecat.connect(f"tcp://127.0.0.1:{port}", proxy=ok, timeout=T) as c:
            await c.send(b"authenticated\n")
            assert await c.recv_line(timeout=T) == b"authenticated\n"
        bad = f"socks5://ann:wrong@127.0.0.1:{server.endpoint().port}"
        with pytest.raises(ProxyError, match="username or password"):
            await wirecat.connect(f"tcp://127.0.0.1:{port}", proxy=bad, timeout=T)
        assert server.ctx.metrics["auth_failures"] == 1


# -- proxy clients ----------------------------------------------------------------------------
class _FakeProxy(asyncio.Protocol):
    """Answers the first bytes with a canned reply that carries the server's greeting too."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.got = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got += data
        if self.got.endswith(b"\r\n\r\n") or (self.got[:1] == b"\x05" and len(self.got) > 3):
            self.transport.write(self.reply)


@pytest.mark.parametrize(
    ("url", "reply"),
    [
        ("http", b"HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0-greeting\r\n"),
        ("socks5", b"\x05\x00"),  # method selection; the request reply follows below
    ],
)
async def test_peer_data_in_the_same_segment_as_the_proxy_reply_is_kept(
    url: str, reply: bytes
) -> None:
    loop = asyncio.get_running_loop()
    if url == "socks5":
        # one write after the request: method reply already sent, then reply + greeting
        class Socks(_FakeProxy):
            def data_received(self, data: bytes) -> None:
                self.got += data
                if self.got == b"\x05\x01\x00":
                    self.transport.write(b"\x05\x00")
                elif len(self.got) >= 3 + 10:
                    self.transport.write(socks.build_reply(0) + b"SSH-2.0-greeting\r\n")

        server = await loop.create_server(lambda: Socks(b""), "127.0.0.1", 0)
    else:
        server = await loop.create_server(lambda: _FakeProxy(reply), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        conn = await wirecat.connect(
            "tcp://192.0.2.1:22", proxy=f"{url}://127.0.0.1:{port}", timeout=T
        )
        async with conn:
            assert await conn.recv_line(timeout=T) == b"SSH-2.0-greeting\r\n"
    finally:
        server.close()
        await server.wait_closed()


async def test_http_proxy_refusal_is_a_proxy_error() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _FakeProxy(b"HTTP/1.1 403 Forbidden\r\n\r\n"), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ProxyError, match="403") as info:
            await wirecat.connect("tcp://192.0.2.1:22", proxy=f"http://127.0.0.1:{port}")
        assert info.value.code == 403
    finally:
        server.close()
        await server.wait_closed()


async def test_tls_through_a_socks_tunnel() -> None:
    from wirecat.runtime.tls import self_signed, server_context

    made = self_signed()
    async with (
        wirecat.listen(
            "tls://127.0.0.1:0", _echo, tls=server_context(made.cert_pem, made.key_pem)
        ) as target,
        socks_server("tcp://127.0.0.1:0") as proxy,
    ):
        url = f"socks5://127.0.0.1:{proxy.endpoint().port}"
        async with wirecat.connect(
            target.endpoint(), proxy=url, pin=made.fingerprint, timeout=T
        ) as conn:
            await conn.send(b"tls in socks\n")
            assert await conn.recv_line(timeout=T) == b"tls in socks\n"


def test_bad_proxy_urls() -> None:
    from wirecat.runtime.proxy import parse_proxy

    for bad in ("ftp://h:1", "socks5://h", "http://h:1/path", "socks5://[::1:1"):
        with pytest.raises(wirecat.InvalidEndpoint):
            parse_proxy(bad)
    spec = parse_proxy("socks5://a%40b:p%3Aw@127.0.0.1:1080")
    assert (spec.username, spec.password, spec.endpoint.port) == ("a@b", "p:w", 1080)


# -- real peers -------------------------------------------------------------------------------
@contextmanager
def http_server(tmp_path: Path) -> Iterator[int]:
    (tmp_path / "index.html").write_text("hello through wirecat\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))

    class Quiet(http.server.ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass

    httpd = Quiet(("127.0.0.1", 0), lambda *a: handler(*a))  # type: ignore[arg-type,misc]
    httpd.RequestHandlerClass.log_message = lambda *a: None  # type: ignore[method-assign]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(T)


@contextmanager
def wirecat_socks(*args: str) -> Iterator[int]:
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "wirecat", "relay", "socks5://127.0.0.1:0", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        m = re.search(r"SOCKS5 server on socks5://127\.0\.0\.1:(\d+)", line)
        assert m, line
        yield int(m.group(1))
    finally:
        proc.terminate()
        proc.communicate(timeout=T)


@pytest.mark.interop
def test_curl_socks5_hostname_through_wirecat(tmp_path: Path) -> None:
    with http_server(tmp_path) as web, wirecat_socks() as port:
        for flag, host in (("--socks5-hostname", "localhost"), ("--socks5", "127.0.0.1")):
            out = subprocess.run(
                [
                    *(peer("curl"), "-sS", "--max-time", "10", flag),
                    f"127.0.0.1:{port}",
                    f"http://{host}:{web}/",
                ],
                capture_output=True,
                text=True,
                timeout=T,
            )
            assert out.stdout == "hello through wirecat\n", out.stderr
        denied = subprocess.run(
            [
                *(peer("curl"), "-sS", "--max-time", "10", "--socks5"),
                f"127.0.0.1:{port}",
                "http://192.0.2.1/",
            ],
            capture_output=True,
            timeout=T,
        )
        assert denied.returncode == 97  # curl: the proxy refused the connection


@pytest.mark.interop
def test_python_socks_client_through_wirecat(tmp_path: Path) -> None:
    from python_socks.sync import Proxy

    with http_server(tmp_path) as web, wirecat_socks() as port:
        proxy = Proxy.from_url(f"socks5://127.0.0.1:{port}")
        sock = proxy.connect(dest_host="127.0.0.1", dest_port=web, timeout=T)
        with sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.endswith(b"hello through wirecat\n")


@contextmanager
def microsocks(*args: str) -> Iterator[int]:
    """microsocks on 127.0.0.1 (``args``: e.g. ``-u USER -P PASS``); yields its port."""
    binary = shutil.which("microsocks")
    assert binary, "microsocks is not installed (scripts/test.sh installs it)"
    proc = subprocess.Popen(
        [binary, "-i", "127.0.0.1", "-p", "0", *args], stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + T
        port = None
        while port is None:  # read back the port it bound (ss), no pre-picking
            out = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True).stdout
            m = re.search(rf"127\.0\.0\.1:(\d+) .*pid={proc.pid},", out)
            if m:
                port = int(m.group(1))
            assert time.monotonic() < deadline, "microsocks did not listen"
        yield port
    finally:
        proc.terminate()
        proc.wait(T)


@pytest.mark.interop
def test_wirecat_connect_through_microsocks(tmp_path: Path) -> None:
    import sys

    with http_server(tmp_path) as web, microsocks() as port:
        out = subprocess.run(
            [
                *(sys.executable, "-m", "wirecat", "connect"),
                f"127.0.0.1:{web}",
                "--proxy",
                f"socks5://127.0.0.1:{port}",
                "--no-shutdown",  # microsocks ends both directions on a half-close
            ],
            input=b"GET / HTTP/1.0\r\n\r\n",
            capture_output=True,
            timeout=T,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.endswith(b"hello through wirecat\n")


def test_struct_sanity() -> None:
    assert struct.calcsize("!H") == 2 and socket.AF_INET
