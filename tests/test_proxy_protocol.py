"""The PROXY protocol (HAProxy's v1 and v2): sans-I/O parser, listeners, and real HAProxy."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import wirecat
from helpers import scaled, wait_for
from wirecat import LimitExceeded, RemoteProtocolError, ServeConfig
from wirecat.protocols.proxy import (
    MAX_V1,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderParser,
    encode_v1,
    encode_v2,
)
from wirecat.runtime.limits import Limits

T = scaled(10)

V1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 51000 443\r\n"
V1_6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 51000 443\r\n"
HEADERS = [
    (V1, ("192.0.2.1", 51000)),
    (V1_6, ("2001:db8::1", 51000)),
    (encode_v2(("192.0.2.9", 1234), ("198.51.100.2", 7)), ("192.0.2.9", 1234)),
    (encode_v2(("2001:db8::9", 1), ("2001:db8::2", 2), tlvs=b"\x04\x00\x02ok"), ("2001:db8::9", 1)),
    (encode_v2(None, None), None),
    (b"PROXY UNKNOWN\r\n", None),
]


def feed(data: bytes, sizes: int | None = None) -> tuple[ProxyHeader | None, bytes]:
    parser = ProxyHeaderParser()
    header = None
    step = sizes or len(data) or 1
    for i in range(0, len(data), step):
        header = parser.receive_data(data[i : i + step]) or header
    return header, parser.rest


@pytest.mark.parametrize(("data", "source"), HEADERS)
@pytest.mark.parametrize("step", [None, 1, 7])
def test_headers_whole_byte_by_byte_and_with_trailing_data(
    data: bytes, source: tuple[str, int] | None, step: int | None
) -> None:
    header, rest = feed(data + b"client bytes", step)
    assert header is not None and rest == b"client bytes"
    assert header.source == source and header.local == (source is None)


def test_incomplete_headers_wait() -> None:
    parser = ProxyHeaderParser()
    assert parser.receive_data(V1[:-1]) is None
    assert parser.receive_data(b"\n") is not None
    parser = ProxyHeaderParser()
    assert parser.receive_data(V2_SIGNATURE) is None


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"GET / HTTP/1.1\r\n", RemoteProtocolError, "no PROXY"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", RemoteProtocolError, "CRLF"),
        (b"PROXY TCP4 " + b"1" * 120, LimitExceeded, "107"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", RemoteProtocolError, "malformed"),
        (b"PROXY TCP4 ::1 ::1 1 2\r\n", RemoteProtocolError, "IPv4"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", RemoteProtocolError, "port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n", RemoteProtocolError, "range"),
        (b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n", RemoteProtocolError, "malformed"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 \xff 2\r\n", RemoteProtocolError, "ASCII"),
        (V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\0" * 12, RemoteProtocolError, "version"),
        (V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\0" * 12, RemoteProtocolError, "command"),
        (V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\0" * 4, RemoteProtocolError, "truncated"),
        (V2_SIGNATURE + b"\x21\x11\xff\xff", LimitExceeded, "exceeds"),
    ],
)
def test_bad_headers_are_refused_with_a_reason(
    data: bytes, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        ProxyHeaderParser().receive_data(data)
    with pytest.raises(error, match=words):  # and byte by byte
        parser = ProxyHeaderParser()
        for i in range(len(data)):
            parser.receive_data(data[i : i + 1])
        parser.receive_data(b"\r\n" * 60)


def test_v1_limit_is_checked_before_buffering() -> None:
    parser = ProxyHeaderParser()
    parser.receive_data(b"PROXY " + b"x" * (MAX_V1 - 10))
    with pytest.raises(LimitExceeded):
        parser.receive_data(b"x" * 1_000_000)


@given(
    st.tuples(st.ip_addresses(v=4), st.integers(0, 65535)),
    st.tuples(st.ip_addresses(v=4), st.integers(0, 65535)),
    st.binary(max_size=64),
    st.integers(1, 60),
    st.booleans(),
)
def test_any_split_gives_the_same_header(
    src: tuple[object, int], dst: tuple[object, int], rest: bytes, step: int, v2: bool
) -> None:
    s, d = (str(src[0]), src[1]), (str(dst[0]), dst[1])
    data = (encode_v2(s, d) if v2 else encode_v1(s, d)) + rest
    whole, whole_rest = feed(data)
    split, split_rest = feed(data, step)
    assert whole == split and whole is not None and whole.source == s
    assert whole_rest == split_rest == rest


# -- listeners --------------------------------------------------------------------------------
def _config(**kw: object) -> ServeConfig:
    base: dict[str, object] = {
        "greeting": [],
        "chat": [],
        "echo": ["tcp://127.0.0.1:0"],
        "proxy_protocol": True,
        "proxy_from": ["127.0.0.1/32"],
    }
    base.update(kw)
    return ServeConfig(**base)  # type: ignore[arg-type]


async def _open(
    ep: wirecat.Endpoint, header: bytes, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(ep.host, ep.port, local_addr=(source, 0))
    writer.write(header)
    return reader, writer


async def test_the_real_client_address_drives_per_source_limits() -> None:
    config = _config(limits=Limits(max_conns_per_source=1, handshake_timeout=T))
    async with wirecat.Server(config) as server:
        ep = server.endpoint("echo")
        r1, w1 = await _open(ep, encode_v1(("192.0.2.1", 1000), ("127.0.0.1", ep.port or 0)))
        w1.write(b"first\n")  # pipelined after the header: not lost
        assert await asyncio.wait_for(r1.readline(), T) == b"first\n"
        assert server.ctx.per_source == {"192.0.2.1": 1}
        r2, w2 = await _open(ep, encode_v2(("192.0.2.1", 1001), ("127.0.0.1", ep.port or 0)))
        assert b"too many connections from your address" in await asyncio.wait_for(r2.readline(), T)
        r3, w3 = await _open(ep, encode_v2(("192.0.2.2", 1002), ("127.0.0.1", ep.port or 0)))
        w3.write(b"third\n")
        assert await asyncio.wait_for(r3.readline(), T) == b"third\n"
        for w in (w1, w2, w3):
            w.close()


@pytest.mark.parametrize(
    ("source", "header"),
    [
        ("127.0.0.2", V1),  # not a trusted balancer
        ("127.0.0.1", b"GET / HTTP/1.1\r\n\r\n"),  # no header
        ("127.0.0.1", b"PROXY TCP4 1.2.3.4\r\n"),  # malformed
    ],
)
async def test_refused_before_any_service_byte(source: str, header: bytes) -> None:
    async with wirecat.Server(_config()) as server:
        reader, writer = await _open(server.endpoint("echo"), header + b"echo me\n", source)
        assert await asyncio.wait_for(reader.read(), T) == b""  # reset or closed, nothing sent
        writer.close()
        await wait_for(lambda: server.ctx.metrics["refused_proxy"] == 1, T)
        assert server.ctx.metrics["accepted"] == 0


async def test_a_slow_header_is_cut_at_the_deadline() -> None:
    config = _config(limits=Limits(handshake_timeout=scaled(0.2)))
    async with wirecat.Server(config) as server:
        reader, writer = await _open(server.endpoint("echo"), b"PROXY TCP4 ")
        assert await asyncio.wait_for(reader.read(), T) == b""
        writer.close()
        assert server.ctx.metrics["refused_proxy"] == 1


async def test_proxy_header_before_a_tls_handshake() -> None:
    config = _config(echo=["tls://127.0.0.1:0"], tls=wirecat.TLSConfig(self_signed=True))
    async with wirecat.Server(config) as server:
        ep = server.endpoint("echo")
        raw = socket.create_connection((ep.host, ep.port))
        raw.sendall(encode_v2(("192.0.2.7", 4000), ("127.0.0.1", ep.port or 0)))
        with pytest.raises(wirecat.HandshakeError):  # no header: reset before the handshake
            await wirecat.connect(ep, pin=server.fingerprint, timeout=T)
        raw.setblocking(False)
        loop = asyncio.get_running_loop()
        import ssl

        from wirecat.runtime.connection import Connection, _StreamProtocol

        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        _, proto = await loop.create_connection(
            lambda: _StreamProtocol(65536), sock=raw, ssl=ctx, server_hostname="localhost"
        )
        tls = Connection(ep, proto.state)
        await tls.send(b"over tls\n")
        assert await tls.recv_line(timeout=T) == b"over tls\n"
        assert "192.0.2.7" in server.ctx.per_source
        await tls.aclose()


def test_proxy_settings_are_checked() -> None:
    with pytest.raises(wirecat.ConfigError, match="balancers"):
        ServeConfig(proxy_protocol=True)
    with pytest.raises(wirecat.ConfigError, match="off"):
        ServeConfig(proxy_from=["127.0.0.1/32"])
    with pytest.raises(wirecat.ConfigError) as info:
        ServeConfig(proxy_protocol=True, proxy_from=["10.0.0.0/33"])
    assert info.value.field == "proxy_from"


# -- HAProxy ----------------------------------------------------------------------------------
@contextmanager
def haproxy(tmp_path: Path, backend_port: int, version: str) -> Iterator[int]:
    binary = shutil.which("haproxy")
    assert binary, "haproxy is not installed (scripts/test.sh installs Debian's haproxy)"
    front = socket.create_server(("127.0.0.1", 0))
    port = front.getsockname()[1]
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        "global\n  maxconn 100\n"
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n"
        "  timeout server 30s\n"
        f"frontend fe\n  bind fd@{front.fileno()}\n  default_backend be\n"
        f"backend be\n  server s1 127.0.0.1:{backend_port} {version}\n"
    )
    proc = subprocess.Popen(
        [binary, "-db", "-f", str(cfg)],
        pass_fds=(front.fileno(),),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    front.close()  # haproxy has its own copy: connections queue until it accepts
    try:
        yield port
    finally:
        proc.terminate()
        proc.communicate(timeout=T)


@pytest.mark.interop
@pytest.mark.parametrize("version", ["send-proxy", "send-proxy-v2"])
def test_haproxy_in_front_counts_real_client_addresses(
    tmp_path: Path, run: object, version: str
) -> None:
    async def main() -> None:
        config = _config(limits=Limits(max_conns_per_source=1, handshake_timeout=T))
        async with wirecat.Server(config) as server:
            backend = server.endpoint("echo").port or 0

            def client(source: str) -> socket.socket:
                sock = socket.socket()
                sock.bind((source, 0))
                sock.settimeout(T)
                sock.connect(("127.0.0.1", port))
                return sock

            with haproxy(tmp_path, backend, version) as port:
                loop = asyncio.get_running_loop()

                def exchange(sock: socket.socket, data: bytes) -> bytes:
                    sock.sendall(data)
                    return sock.makefile("rb").readline()

                a = client("127.0.0.2")
                assert await loop.run_in_executor(None, exchange, a, b"from .2\n") == b"from .2\n"
                b = client("127.0.0.3")  # another source: admitted
                assert await loop.run_in_executor(None, exchange, b, b"from .3\n") == b"from .3\n"
                c = client("127.0.0.2")  # the same source again: over its cap of 1
                line = await loop.run_in_executor(None, exchange, c, b"again\n")
                assert b"too many connections from your address" in line
                assert server.ctx.per_source == {"127.0.0.2": 1, "127.0.0.3": 1}
                for s in (a, b, c):
                    s.close()

    run(main)  # type: ignore[operator]


def test_os_has_loopback_aliases() -> None:
    # 127.0.0.2 and .3 are loopback on Linux without configuration; the tests above rely on it.
    with socket.socket() as s:
        s.bind(("127.0.0.3", 0))
    assert os.name == "posix"
