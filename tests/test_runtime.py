"""The runtime over real sockets (loopback only, port 0, both loops): services, limits,
flow control, shutdown, listeners, and the client stream API.

Synchronisation is by reads with bounded timeouts, events, and ``wait_for`` on ``ctx`` state;
never by sleeping. Every timeout goes through ``scaled()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import random
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

import wirecat
from helpers import scaled, serving, wait_for
from wirecat.cli.exits import exit_code_for
from wirecat.endpoints import Endpoint, parse_endpoint
from wirecat.errors import (
    AddressInUse,
    ConnectError,
    ConnectionClosedError,
    ConnectionClosedOK,
    ConnectionRefused,
    IdleTimeout,
    InvalidEndpoint,
    LimitExceeded,
    LineTooLong,
    ListenError,
    NameResolutionError,
    WirecatError,
)
from wirecat.runtime.connection import Connection, DatagramConnection, open_connection_listener
from wirecat.runtime.handler import ServerContext, StreamHandler, format_address
from wirecat.runtime.limits import Limits
from wirecat.runtime.listeners import open_datagram_listener, open_stream_listener, unix_address
from wirecat.runtime.server import Server, Service
from wirecat.services.echo import EchoService
from wirecat.services.greeting import DEFAULT_BANNER, GreetingService


def _have_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


HAVE_IPV6 = _have_ipv6()
# Outside CI a machine without ::1 may skip these; in CI (CI=true) a missing ::1 fails them.
needs_ipv6 = pytest.mark.skipif(
    not HAVE_IPV6 and not os.environ.get("CI"), reason="no IPv6 loopback (fails in CI)"
)

MiB = 1024 * 1024


def T(seconds: float = 5.0) -> float:
    return scaled(seconds)


def ep(text: str) -> Endpoint:
    return parse_endpoint(text)


def payload(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


# -- raw clients (asyncio streams: independent of wirecat's own client) ---------------------


async def open_raw(
    endpoint: Endpoint, *, rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if endpoint.is_unix:
        assert endpoint.path is not None
        # A connected socket of our own: uvloop's create_unix_connection() cannot take an
        # abstract ("\0name") address (see test_connect_abstract_unix).
        usock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            usock.setblocking(False)
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(usock, unix_address(endpoint.path)), T())
            return await asyncio.open_unix_connection(sock=usock)
        except BaseException:
            usock.close()
            raise
    assert endpoint.host is not None and endpoint.port is not None
    if rcvbuf is None:
        return await asyncio.wait_for(asyncio.open_connection(endpoint.host, endpoint.port), T())
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Before connect, so the window is small from the start and autotuning is off.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(sock, (endpoint.host, endpoint.port)), T())
        return await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise


async def close_raw(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), T())


@contextlib.asynccontextmanager
async def raw_client(
    endpoint: Endpoint, *, rcvbuf: int | None = None
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await open_raw(endpoint, rcvbuf=rcvbuf)
    try:
        yield reader, writer
    finally:
        await close_raw(writer)


async def read_all(reader: asyncio.StreamReader, timeout: float | None = None) -> bytes:
    """Everything until EOF (a reset counts as EOF here), bounded."""
    chunks: list[bytes] = []
    async with asyncio.timeout(T() if timeout is None else timeout):
        while True:
            try:
                chunk = await reader.read(256 * 1024)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


async def echo_round_trip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes = b"ping\n"
) -> None:
    writer.write(data)
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(len(data)), T())
    assert got == data


def only_connection(ctx: ServerContext) -> StreamHandler:
    assert len(ctx.connections) == 1, ctx.connections
    return next(iter(ctx.connections))


# -- greeting -------------------------------------------------------------------------------

STREAM_ENDPOINTS = [
    pytest.param("tcp://127.0.0.1:0", id="tcp4"),
    pytest.param("tcp://[::1]:0", id="tcp6", marks=needs_ipv6),
    pytest.param("unix:{dir}/greet.sock", id="unix"),
    pytest.param("unix:@wirecat-test-{rand}", id="unix-abstract"),
]


def stream_endpoint(template: str, unix_dir: str) -> Endpoint:
    return ep(template.format(dir=unix_dir, rand=os.urandom(6).hex()))


@pytest.mark.parametrize("template", STREAM_ENDPOINTS)
async def test_greeting_banner(template: str, unix_dir: str) -> None:
    async with serving(GreetingService([stream_endpoint(template, unix_dir)])) as server:
        bound = server.endpoint("greeting")
        if bound.is_inet:
            assert bound.port != 0  # the real port is read back
        for _ in range(2):
            async with raw_client(bound) as (reader, _):
                assert await read_all(reader) == DEFAULT_BANNER.encode() + b"\n"
        await wait_for(lambda: not server.ctx.connections, what="connections closed")
        assert server.ctx.metrics["accepted"] == 2


async def test_greeting_custom_banner_utf8() -> None:
    service = GreetingService([ep("tcp://127.0.0.1:0")], banner="h\u00e9llo \u2603")
    async with serving(service) as server, raw_client(server.endpoint("greeting")) as (r, _):
        assert await read_all(r) == "h\u00e9llo \u2603\n".encode()


def test_greeting_rejects_multiline_banner() -> None:
    with pytest.raises(ValueError, match="one line"):
        GreetingService([], banner="a\nb")


# -- echo -----------------------------------------------------------------------------------


@pytest.mark.parametrize("template", STREAM_ENDPOINTS[:3])
async def test_echo_half_close(template: str, unix_dir: str) -> None:
    """Client sends 1 MiB then shuts down its write side; it still gets all 1 MiB, then EOF."""
    data = payload(MiB)
    async with serving(EchoService([stream_endpoint(template, unix_dir)])) as server:
        async with raw_client(server.endpoint("echo")) as (reader, writer):

            async def send() -> None:
                for i in range(0, len(data), 64 * 1024):
                    writer.write(data[i : i + 64 * 1024])
                    await writer.drain()
                writer.write_eof()  # shutdown(SHUT_WR)

            sender = asyncio.ensure_future(send())
            got = await read_all(reader, T(15))
            await sender
        assert len(got) == len(data)
        assert got == data
        await wait_for(lambda: not server.ctx.connections, what="server closed its side")


async def test_echo_backpressure_bounds_server_output() -> None:
    """A client that sends 8 MiB without reading: echo stops reading instead of buffering."""
    data = payload(8 * MiB, seed=2)
    limits = Limits(write_high_water=64 * 1024, write_low_water=16 * 1024)
    async with serving(EchoService([ep("tcp://127.0.0.1:0")]), limits=limits) as server:
        ctx = server.ctx
        async with raw_client(server.endpoint("echo"), rcvbuf=64 * 1024) as (reader, writer):
            writer.write(data)  # no drain: the client transport buffers what the kernel refuses
            await wait_for(lambda: len(ctx.connections) == 1, what="accepted")
            handler = only_connection(ctx)
            await wait_for(
                lambda: handler.writing_paused and not handler.transport.is_reading(),
                T(10),
                what="echo paused reading while its output is above the high-water mark",
            )
            # Give the loop many turns: nothing is read while paused, so output stays bounded.
            bound = limits.write_high_water + 512 * 1024  # + at most one received chunk
            for _ in range(200):
                assert handler.output_size <= bound
                await asyncio.sleep(0)
            assert not handler.transport.is_reading()

            async def drain_and_eof() -> None:
                await writer.drain()
                writer.write_eof()

            sender = asyncio.ensure_future(drain_and_eof())
            got = await read_all(reader, T(20))
            await sender
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
        await wait_for(lambda: not ctx.connections, what="closed")


@needs_ipv6
async def test_dual_stack_accepts_ipv4_and_ipv6() -> None:
    async with serving(EchoService([ep("tcp://[::]:0")])) as server:
        port = server.endpoint("echo").port
        assert server.endpoint("echo").host == "::"
        for host in ("127.0.0.1", "::1"):
            async with raw_client(Endpoint("tcp", host, port)) as (reader, writer):
                await echo_round_trip(reader, writer, f"from {host}\n".encode())


@needs_ipv6
async def test_specific_ipv6_address_is_ipv6_only() -> None:
    async with serving(EchoService([ep("tcp://[::1]:0")])) as server:
        port = server.endpoint("echo").port
        # A v4 client on the same port number must not reach the ::1 listener.
        with pytest.raises(OSError):
            await open_raw(Endpoint("tcp", "127.0.0.1", port))


UDP_HOSTS = [
    pytest.param("127.0.0.1", id="udp4"),
    pytest.param("[::1]", id="udp6", marks=needs_ipv6),
]


@pytest.mark.parametrize("host", UDP_HOSTS)
async def test_udp_echo_exact_datagrams(host: str) -> None:
    async with serving(EchoService([ep(f"udp://{host}:0")])) as server:
        target = server.endpoint("echo", "udp")
        assert target.port != 0
        conn = await wirecat.connect_datagram(target, timeout=T())
        assert isinstance(conn, DatagramConnection)
        async with conn:
            # (0 bytes is left out: asyncio's sendto() silently drops empty datagrams.)
            sizes = [1, 100, 1472, 9000, 65507]
            for size in sizes:
                await conn.send(payload(size, seed=size))
            for size in sizes:
                got = await conn.recv(timeout=T())
                assert got == payload(size, seed=size)  # boundaries kept, exact bytes
            # Nothing extra: the next datagram received is the marker sent next.
            await conn.send(b"marker")
            assert await conn.recv(timeout=T()) == b"marker"
        assert server.ctx.metrics["echo_datagrams"] == len(sizes) + 1


async def test_udp_echo_drops_oversized_datagrams() -> None:
    service = EchoService([ep("udp://127.0.0.1:0")], max_datagram=100)
    async with serving(service) as server:
        conn = await wirecat.connect_datagram(server.endpoint("echo"), timeout=T())
        assert isinstance(conn, DatagramConnection)
        async with conn:
            await conn.send(b"x" * 101)
            await conn.send(b"y" * 100)
            assert await conn.recv(timeout=T()) == b"y" * 100
        assert server.ctx.metrics["echo_datagrams_too_large"] == 1


async def test_unix_dgram_echo(unix_dir: str) -> None:
    async with serving(EchoService([ep(f"unix+dgram:{unix_dir}/echo.sock")])) as server:
        conn = await wirecat.connect_datagram(server.endpoint("echo"), timeout=T())
        assert isinstance(conn, DatagramConnection)
        async with conn:
            for data in (b"one", b"x", b"three" * 1000):
                await conn.send(data)
                assert await conn.recv(timeout=T()) == data


async def test_udp_client_limits_and_timeout() -> None:
    async with serving(EchoService([ep("udp://127.0.0.1:0")])) as server:
        conn = await wirecat.connect_datagram(server.endpoint("echo"), timeout=T())
        assert isinstance(conn, DatagramConnection)
        async with conn:
            with pytest.raises(LimitExceeded, match="65507"):
                await conn.send(b"x" * 65508)
            with pytest.raises(IdleTimeout):
                await conn.recv(timeout=T(0.05))
            await conn.send(b"still usable")
            assert await conn.recv(timeout=T()) == b"still usable"


async def test_udp_send_after_aclose_raises() -> None:
    async with serving(EchoService([ep("udp://127.0.0.1:0")])) as server:
        conn = await wirecat.connect_datagram(server.endpoint("echo"), timeout=T())
        assert isinstance(conn, DatagramConnection)
        await conn.aclose()
        with pytest.raises(ConnectionClosedOK):
            await conn.send(b"after close")


# -- limits -----------------------------------------------------------------------------------


async def test_max_conns() -> None:
    limits = Limits(max_conns=2)
    async with serving(EchoService([ep("tcp://127.0.0.1:0")]), limits=limits) as server:
        ctx = server.ctx
        target = server.endpoint("echo")
        r1, w1 = await open_raw(target)
        r2, w2 = await open_raw(target)
        try:
            await echo_round_trip(r1, w1)
            await echo_round_trip(r2, w2)
            assert len(ctx.connections) == 2
            # The third peer gets one line with the reason, then EOF.
            async with raw_client(target) as (r3, _):
                refused = await read_all(r3)
            assert refused.startswith(b"error: too many connections")
            assert refused.endswith(b"\n") and refused.count(b"\n") == 1
            assert ctx.metrics["refused_max_conns"] == 1
            assert len(ctx.connections) == 2
            # One leaves; a new peer is admitted.
            await close_raw(w1)
            await wait_for(lambda: len(ctx.connections) == 1, what="first peer gone")
            async with raw_client(target) as (r4, w4):
                await echo_round_trip(r4, w4)
                assert len(ctx.connections) == 2
        finally:
            await close_raw(w1)
            await close_raw(w2)
        await wait_for(lambda: len(ctx.connections) == 0, what="registry empty")
        assert ctx.metrics["accepted"] == 3


async def test_idle_timeout_closes_idle_not_active() -> None:
    idle = T(0.2)
    limits = Limits(idle_timeout=idle)
    async with serving(EchoService([ep("tcp://127.0.0.1:0")]), limits=limits) as server:
        ctx = server.ctx
        target = server.endpoint("echo")
        loop = asyncio.get_running_loop()
        async with raw_client(target) as (idle_r, _), raw_client(target) as (act_r, act_w):
            idle_eof = asyncio.ensure_future(read_all(idle_r, T(10)))
            # Keep the other one busy with round trips while the idle one times out, and for
            # two more idle periods after that.
            deadline: float | None = None
            while deadline is None or loop.time() < deadline:
                await echo_round_trip(act_r, act_w, b"still here\n")
                if deadline is None and idle_eof.done():
                    deadline = loop.time() + 2 * idle
            assert await idle_eof == b""
            assert ctx.metrics["idle_timeouts"] == 1
            await echo_round_trip(act_r, act_w)  # the active one is still served
            assert len(ctx.connections) == 1


class _FloodHandler(StreamHandler):
    """Echo, except ``flood`` writes 16 MiB regardless of flow control (a broadcast-like
    producer that relies on ``write``'s ``max_output`` cap)."""

    def on_data(self, data: bytes) -> None:
        if data.startswith(b"flood"):
            chunk = b"f" * (256 * 1024)
            for _ in range(64):
                if not self.write(chunk):
                    break
        else:
            self.write(data)


class _FloodService(Service):
    name = "flood"

    def stream_handler(self, ctx: ServerContext) -> StreamHandler:
        return _FloodHandler(ctx, self)


async def test_slow_consumer_is_cut_and_others_are_served(
    wirecat_logs: pytest.LogCaptureFixture,
) -> None:
    limits = Limits(write_high_water=64 * 1024, write_low_water=16 * 1024, max_output=256 * 1024)
    async with serving(_FloodService([ep("tcp://127.0.0.1:0")]), limits=limits) as server:
        ctx = server.ctx
        target = server.endpoint("flood")
        async with raw_client(target) as (good_r, good_w):
            await echo_round_trip(good_r, good_w)
            async with raw_client(target, rcvbuf=32 * 1024) as (_, slow_w):
                slow_w.write(b"flood\n")  # ... and never read
                await wait_for(lambda: ctx.metrics["slow_consumers"] == 1, T(10), what="cut")
                await wait_for(lambda: len(ctx.connections) == 1, what="slow one dropped")
                await echo_round_trip(good_r, good_w, b"still served\n")
        assert any(getattr(rec, "reason", None) == "slow_consumer" for rec in wirecat_logs.records)


class _FragileHandler(StreamHandler):
    def on_data(self, data: bytes) -> None:
        if b"boom" in data:
            raise RuntimeError("handler bug")
        self.write(data)


class _FragileService(Service):
    name = "fragile"

    def stream_handler(self, ctx: ServerContext) -> StreamHandler:
        return _FragileHandler(ctx, self)


async def test_handler_exception_aborts_only_that_connection(
    wirecat_logs: pytest.LogCaptureFixture,
) -> None:
    # The conftest fails this test if the exception reaches the loop's exception handler.
    async with serving(_FragileService([ep("tcp://127.0.0.1:0")])) as server:
        ctx = server.ctx
        target = server.endpoint("fragile")
        async with raw_client(target) as (r1, w1), raw_client(target) as (r2, w2):
            await echo_round_trip(r1, w1)
            w2.write(b"boom\n")
            assert await read_all(r2) == b""
            await wait_for(lambda: ctx.metrics["handler_errors"] == 1, what="counted")
            await wait_for(lambda: len(ctx.connections) == 1, what="aborted")
            await echo_round_trip(r1, w1, b"fine\n")
        errors = [r for r in wirecat_logs.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1
        assert errors[0].exc_info is not None
        assert isinstance(errors[0].exc_info[1], RuntimeError)


# -- graceful shutdown ------------------------------------------------------------------------


class _PoliteHandler(StreamHandler):
    service: _PoliteService

    def on_connect(self) -> None:
        self.write(b"hello\n")

    def on_shutdown(self) -> None:
        self.service.shutdown_calls += 1
        self.write(b"bye\n")
        if self.service.close_on_shutdown:
            self.close("server shutdown")


class _PoliteService(Service):
    name = "polite"

    def __init__(self, endpoints: list[Endpoint], *, close_on_shutdown: bool = True) -> None:
        super().__init__(endpoints)
        self.close_on_shutdown = close_on_shutdown
        self.shutdown_calls = 0
        self.drain_calls = 0
        self.stop_calls = 0

    def stream_handler(self, ctx: ServerContext) -> StreamHandler:
        return _PoliteHandler(ctx, self)

    async def drain(self, ctx: ServerContext) -> None:
        assert ctx.closing
        self.drain_calls += 1

    async def stop(self) -> None:
        self.stop_calls += 1


async def test_graceful_shutdown_says_goodbye_within_grace() -> None:
    service = _PoliteService([ep("tcp://127.0.0.1:0")])
    server = Server([service], limits=Limits(shutdown_grace=T(5)))
    await server.start()
    forever = asyncio.ensure_future(server.serve_forever())
    target = server.endpoint("polite")
    loop = asyncio.get_running_loop()
    async with raw_client(target) as (r1, _), raw_client(target) as (r2, _):
        for r in (r1, r2):
            assert await asyncio.wait_for(r.readline(), T()) == b"hello\n"
        started = loop.time()
        # Idempotent and safe to call concurrently: every caller returns once stopped.
        await asyncio.wait_for(
            asyncio.gather(server.shutdown(), server.shutdown(), server.shutdown()), T(10)
        )
        assert loop.time() - started < T(5)  # peers left at once; no waiting for the grace
        for r in (r1, r2):
            assert await read_all(r) == b"bye\n"
    await asyncio.wait_for(forever, T())  # serve_forever returns after shutdown
    await server.shutdown()  # again, after the fact
    assert service.shutdown_calls == 2
    assert (service.drain_calls, service.stop_calls) == (1, 1)
    assert not server.ctx.connections
    with pytest.raises(ConnectionRefused):  # no longer accepting
        await wirecat.connect(target, timeout=T())


async def test_shutdown_aborts_peers_that_ignore_it(
    wirecat_logs: pytest.LogCaptureFixture,
) -> None:
    grace = T(0.3)
    service = _PoliteService([ep("tcp://127.0.0.1:0")], close_on_shutdown=False)
    server = Server([service])
    await server.start()
    loop = asyncio.get_running_loop()
    async with raw_client(server.endpoint("polite")) as (reader, _):
        assert await asyncio.wait_for(reader.readline(), T()) == b"hello\n"
        started = loop.time()
        shutdown = asyncio.ensure_future(server.shutdown(grace=grace))
        assert await asyncio.wait_for(reader.readline(), T()) == b"bye\n"
        assert not shutdown.done()  # waiting for the peer, which ignores the goodbye
        await asyncio.wait_for(shutdown, T(5))
        elapsed = loop.time() - started
        assert await read_all(reader) == b""
    assert elapsed >= grace * 0.5
    assert not server.ctx.connections
    assert any(
        "shutdown grace expired" in str(getattr(r, "reason", "")) for r in wirecat_logs.records
    )


async def test_shutdown_concurrent_with_different_grace_and_abort() -> None:
    service = _PoliteService([ep("tcp://127.0.0.1:0")], close_on_shutdown=False)
    server = Server([service])
    await server.start()
    async with raw_client(server.endpoint("polite")) as (reader, _):
        assert await asyncio.wait_for(reader.readline(), T()) == b"hello\n"
        first = asyncio.ensure_future(server.shutdown(grace=T(0.2)))
        second = asyncio.ensure_future(server.shutdown(grace=T(60)))  # joins the first
        await asyncio.wait_for(asyncio.gather(first, second), T(5))
        assert service.shutdown_calls == 1
    server.abort()  # after shutdown: harmless


async def test_abort_drops_everyone_now() -> None:
    server = Server([EchoService([ep("tcp://127.0.0.1:0")])])
    await server.start()
    forever = asyncio.ensure_future(server.serve_forever())
    async with raw_client(server.endpoint("echo")) as (reader, writer):
        await echo_round_trip(reader, writer)
        server.abort()
        assert await read_all(reader) == b""
    await asyncio.wait_for(forever, T())
    await wait_for(lambda: not server.ctx.connections, what="aborted")
    await server.shutdown()


# -- listeners --------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["tcp", "udp"])
async def test_address_in_use(scheme: str) -> None:
    async with serving(EchoService([ep(f"{scheme}://127.0.0.1:0")])) as server:
        taken = server.endpoint("echo")
        second = Server([EchoService([taken])])
        with pytest.raises(AddressInUse) as info:
            await second.start()
        assert str(taken) in str(info.value)
        assert "already in use" in str(info.value)
        assert isinstance(info.value.__cause__, OSError)
        assert info.value.__cause__.errno == errno.EADDRINUSE
        assert exit_code_for(info.value) == 71
        assert not second.listeners


async def test_failed_start_closes_listeners_already_open(unix_dir: str) -> None:
    async with serving(EchoService([ep("tcp://127.0.0.1:0")])) as server:
        taken = server.endpoint("echo")
        path = f"{unix_dir}/first.sock"
        second = Server([GreetingService([ep(f"unix:{path}")]), EchoService([taken])])
        with pytest.raises(AddressInUse):
            await second.start()
        assert not second.listeners
        assert not os.path.exists(path)  # the first listener was closed and unlinked


async def test_stale_unix_socket_is_replaced(unix_dir: str) -> None:
    path = f"{unix_dir}/stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays behind, nobody listens
    assert os.path.exists(path)
    service = GreetingService([ep(f"unix:{path}")])
    async with serving(service) as server, raw_client(server.endpoint("greeting")) as (r, _):
        assert await read_all(r) == DEFAULT_BANNER.encode() + b"\n"
    assert not os.path.exists(path)  # removed on shutdown


async def test_live_unix_socket_is_address_in_use(unix_dir: str) -> None:
    path = f"{unix_dir}/live.sock"
    async with serving(GreetingService([ep(f"unix:{path}")])):
        with pytest.raises(AddressInUse) as info:
            await Server([GreetingService([ep(f"unix:{path}")])]).start()
        assert exit_code_for(info.value) == 71
        assert os.path.exists(path)  # the live server's socket is untouched


async def test_non_socket_file_is_listen_error(unix_dir: str) -> None:
    path = f"{unix_dir}/notes.txt"
    with open(path, "w") as f:
        f.write("precious")
    with pytest.raises(ListenError) as info:
        await Server([GreetingService([ep(f"unix:{path}")])]).start()
    assert not isinstance(info.value, AddressInUse)
    assert "not a socket" in str(info.value)
    with open(path) as f:
        assert f.read() == "precious"


async def test_listeners_reject_the_wrong_kind() -> None:
    with pytest.raises(InvalidEndpoint):
        await open_stream_listener(ep("udp://127.0.0.1:0"), asyncio.Protocol)
    with pytest.raises(InvalidEndpoint):
        await open_datagram_listener(ep("tcp://127.0.0.1:0"), asyncio.DatagramProtocol)


# -- client API -------------------------------------------------------------------------------


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port that is bound (so nobody else takes it) but not listening: connects are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


async def test_connect_refused(closed_port: int) -> None:
    with pytest.raises(ConnectionRefused) as info:
        await wirecat.connect(f"tcp://127.0.0.1:{closed_port}", timeout=T())
    assert isinstance(info.value.__cause__, OSError)
    assert f"127.0.0.1:{closed_port}" in str(info.value)
    assert exit_code_for(info.value) == 69


async def test_connect_refused_unix(unix_dir: str) -> None:
    with pytest.raises(ConnectionRefused):
        await wirecat.connect(f"unix:{unix_dir}/nobody.sock", timeout=T())


async def _connect_abstract_unix() -> None:
    name = f"@wirecat-test-{os.urandom(6).hex()}"
    service = GreetingService([ep(f"unix:{name}")])
    async with serving(service), await stream_connect(f"unix:{name}") as conn:
        assert await conn.recv_line(timeout=T()) == DEFAULT_BANNER.encode() + b"\n"


@pytest.mark.loops("asyncio")
async def test_connect_abstract_unix() -> None:
    await _connect_abstract_unix()


@pytest.mark.loops("uvloop")
async def test_connect_abstract_unix_uvloop() -> None:
    await _connect_abstract_unix()


async def test_connect_name_resolution_error() -> None:
    # RFC 6761: .invalid never resolves; the local resolver answers without a server.
    with pytest.raises(NameResolutionError) as info:
        await wirecat.connect("tcp://nonexistent.invalid:1", timeout=T())
    assert "nonexistent.invalid" in str(info.value)
    assert exit_code_for(info.value) == 68


async def test_connect_invalid_endpoint() -> None:
    with pytest.raises(InvalidEndpoint):
        await wirecat.connect("tcp://::1:80")
    with pytest.raises(InvalidEndpoint, match="datagram endpoint"):
        await wirecat.connect("unix+dgram:/tmp/wirecat-none.sock")
    with pytest.raises(ConnectError):  # seqpacket is supported: no such file
        await wirecat.connect("unix+seqpacket:/tmp/wirecat-none.sock")


@contextlib.asynccontextmanager
async def scripted_peer(*steps: bytes | None) -> AsyncIterator[Endpoint]:
    """A TCP peer that sends ``steps`` in order (``None``: half-close), then waits for EOF."""
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for step in steps:
                if step is None:
                    writer.write_eof()
                else:
                    writer.write(step)
                    await writer.drain()
            await reader.read()  # until the client closes
        finally:
            writer.close()
            done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield Endpoint("tcp", "127.0.0.1", server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def stream_connect(target: Endpoint | str, **kwargs: object) -> Connection:
    conn = await wirecat.connect(target, timeout=T(), **kwargs)  # type: ignore[arg-type]
    assert isinstance(conn, Connection)
    return conn


async def test_recv_line_semantics() -> None:
    script = (b"one\ntwo\r\nthr", b"ee\n0123456789", None)
    async with scripted_peer(*script) as target, await stream_connect(target) as conn:
        assert await conn.recv_line(timeout=T()) == b"one\n"
        assert await conn.recv_line(timeout=T()) == b"two\r\n"
        assert await conn.recv_line(timeout=T()) == b"three\n"
        with pytest.raises(LineTooLong) as info:
            await conn.recv_line(8, timeout=T())
        assert info.value.limit == 8
        # The bytes stay buffered; at end of stream the unterminated rest comes back.
        assert await conn.recv_line(timeout=T()) == b"0123456789"
        assert await conn.recv_line(timeout=T()) == b""
        assert await conn.recv_line(timeout=T()) == b""
        assert conn.at_eof


async def test_recv_until_and_exact_semantics() -> None:
    script = (b"HEAD\r\n\r\nBODY", b"0123456789", b"tail", None)
    async with scripted_peer(*script) as target, await stream_connect(target) as conn:
        assert await conn.recv_until(b"\r\n\r\n", timeout=T()) == b"HEAD\r\n\r\n"
        assert await conn.recv_exact(4, timeout=T()) == b"BODY"
        assert await conn.recv_exact(0, timeout=T()) == b""
        with pytest.raises(LimitExceeded):
            await conn.recv_until(b";", 6, timeout=T())
        assert await conn.recv_exact(10, timeout=T()) == b"0123456789"
        with pytest.raises(ConnectionClosedOK):
            await conn.recv_exact(5, timeout=T())  # only b"tail" is left
        with pytest.raises(ConnectionClosedOK):
            await conn.recv_until(b";", timeout=T())
        assert await conn.recv(timeout=T()) == b"tail"  # partial data stayed buffered
        assert await conn.recv(timeout=T()) == b""
        with pytest.raises(ValueError):
            await conn.recv_until(b"")
        with pytest.raises(ValueError):
            await conn.recv_exact(-1)


async def test_recv_max_size_and_eof() -> None:
    async with scripted_peer(b"abcdef", None) as target, await stream_connect(target) as conn:
        assert await conn.recv_exact(6, timeout=T()) == b"abcdef"
        assert await conn.recv(4, timeout=T()) == b""
    async with scripted_peer(b"abcdef") as target, await stream_connect(target) as conn:
        got = b""
        while len(got) < 6:
            part = await conn.recv(4, timeout=T())
            assert 0 < len(part) <= 4
            got += part
        assert got == b"abcdef"


async def test_read_timeout_leaves_connection_usable() -> None:
    service = EchoService([ep("tcp://127.0.0.1:0")])
    async with serving(service) as server, await stream_connect(server.endpoint("echo")) as conn:
        with pytest.raises(TimeoutError):  # IdleTimeout once the bug below is fixed
            await conn.recv_line(timeout=T(0.05))
        await conn.send(b"late\n")
        assert await conn.recv_line(timeout=T()) == b"late\n"


@pytest.mark.parametrize("method", ["recv", "recv_line", "recv_until", "recv_exact"])
async def test_read_timeout_raises_idle_timeout(method: str) -> None:
    async with scripted_peer(b"partial") as target, await stream_connect(target) as conn:
        calls = {
            "recv": lambda: conn.recv(timeout=T(0.05)),
            "recv_line": lambda: conn.recv_line(timeout=T(0.05)),
            "recv_until": lambda: conn.recv_until(b";", timeout=T(0.05)),
            "recv_exact": lambda: conn.recv_exact(100, timeout=T(0.05)),
        }
        if method == "recv":
            assert await conn.recv_exact(7, timeout=T()) == b"partial"
        with pytest.raises(IdleTimeout):
            await calls[method]()


async def test_recv_until_after_recv_line_timeout() -> None:
    async with scripted_peer(b"a;b") as target, await stream_connect(target) as conn:
        with pytest.raises(TimeoutError):  # IdleTimeout: see the bug above
            await conn.recv_line(timeout=T(0.1))
        assert await conn.recv_until(b";", timeout=T(0.5)) == b"a;"


async def test_client_half_close_with_echo() -> None:
    data = payload(300_000, seed=3)
    async with serving(EchoService([ep("tcp://127.0.0.1:0")])) as server:
        async with await stream_connect(server.endpoint("echo"), read_high_water=64 * 1024) as c:
            assert c.peer_address == format_address(("127.0.0.1", server.endpoint("echo").port))
            assert c.local_address.startswith("127.0.0.1:")

            async def send() -> None:
                await c.send(data)
                await c.send_eof()

            sender = asyncio.ensure_future(send())
            got = b""
            while chunk := await c.recv(timeout=T()):
                got += chunk
            await sender
            assert got == data
            assert c.at_eof
        await c.aclose()  # idempotent


async def test_send_after_send_eof_is_a_wirecat_error() -> None:
    async with scripted_peer(b"x") as target, await stream_connect(target) as conn:
        await conn.send_eof()
        with pytest.raises(WirecatError):
            await conn.send(b"more")


async def test_reset_by_peer_is_connection_closed_error() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        # SO_LINGER 0: close() sends RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        async with await stream_connect(f"tcp://127.0.0.1:{port}") as conn:
            with pytest.raises((ConnectionClosedError, ConnectionClosedOK)):
                await conn.recv_exact(1, timeout=T())
    finally:
        server.close()
        await server.wait_closed()


async def test_open_connection_listener_round_trip(unix_dir: str) -> None:
    served = asyncio.Event()

    async def upper(conn: Connection) -> None:
        line = await conn.recv_line(timeout=T())
        await conn.send(line.upper())
        served.set()

    for text in ("tcp://127.0.0.1:0", f"unix:{unix_dir}/ocl.sock"):
        listener = await open_connection_listener(text, upper)
        try:
            async with await stream_connect(listener.endpoint) as conn:
                await conn.send(b"shout\n")
                assert await conn.recv_line(timeout=T()) == b"SHOUT\n"
                # The handler returned: the listener closed the connection.
                assert await conn.recv(timeout=T()) == b""
            await asyncio.wait_for(served.wait(), T())
            served.clear()
        finally:
            listener.close()
            listener.close()  # idempotent


def test_format_address() -> None:
    assert format_address(("127.0.0.1", 5)) == "127.0.0.1:5"
    assert format_address(("::1", 5, 0, 0)) == "[::1]:5"
    assert format_address("/tmp/x.sock") == "unix:/tmp/x.sock"
    assert format_address(b"\x00name") == "unix:@name"
    assert format_address("") == "unix"
    assert format_address(None) == "unix"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_line": 1},
        {"max_conns": 0},
        {"idle_timeout": 0},
        {"write_low_water": 10, "write_high_water": 5},
        {"max_output": 10},
        {"shutdown_grace": -1},
    ],
)
def test_limits_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Limits(**kwargs)  # type: ignore[arg-type]


async def test_run_until_signal_tunes_the_gc_and_restores_it() -> None:
    """While a server runs, start-up objects are frozen and the young generation is larger;
    after the signal the process's GC is as it was (library callers go on unchanged)."""
    import gc
    import signal

    from wirecat.runtime.server import GC_GEN0_THRESHOLD, run_until_signal

    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    seen: list[tuple[int, int]] = []
    server = Server([_PoliteService([ep("tcp://127.0.0.1:0")])])

    def started(_: Server) -> None:
        seen.append((gc.get_threshold()[0], gc.get_freeze_count()))
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGTERM)

    assert await asyncio.wait_for(run_until_signal(server, started), T(10)) == 0
    assert seen and seen[0][0] >= GC_GEN0_THRESHOLD and seen[0][1] > frozen
    assert gc.get_threshold() == before and gc.get_freeze_count() <= frozen
