"""wirecat relay: both directions, half-close, backpressure, limits, UDP sessions, real peers."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import wirecat
from _peers import Running, peer
from helpers import echo, scaled, wait_for
from wirecat.runtime.limits import Limits
from wirecat.runtime.splice import Splice
from wirecat.services.relay import RelayStats, bridge, relay

T = scaled(10)


async def test_relay_forwards_both_ways_and_reports() -> None:
    ended: list[RelayStats] = []
    async with wirecat.listen("tcp://127.0.0.1:0", echo) as target:
        server = relay("tcp://127.0.0.1:0", target.endpoint(), on_end=ended.append)
        async with server, wirecat.connect(server.endpoint(), timeout=T) as conn:
            await conn.send(b"hello\n")
            assert await conn.recv_line(timeout=T) == b"hello\n"
            await conn.send_eof()
            assert await conn.recv(timeout=T) == b""  # the target's EOF came through
        await wait_for(lambda: len(ended) == 1, T)
    assert (ended[0].up, ended[0].down, ended[0].reason) == (6, 6, "both closed")
    assert ended[0].zero_copy  # plain TCP both sides: os.splice, not Python


async def test_half_close_each_direction() -> None:
    # Client -> target first: the target reads to EOF, then answers and closes.
    async def answer_after_eof(conn: wirecat.Connection) -> None:
        got = b""
        while data := await conn.recv():
            got += data
        await conn.send(b"got %d\n" % len(got))
        await conn.send_eof()

    async with (
        wirecat.listen("tcp://127.0.0.1:0", answer_after_eof) as target,
        relay("tcp://127.0.0.1:0", target.endpoint()) as server,
        wirecat.connect(server.endpoint(), timeout=T) as conn,
    ):
        await conn.send(b"x" * 100_000)
        await conn.send_eof()
        assert await conn.recv_line(timeout=T) == b"got 100000\n"
        assert await conn.recv(timeout=T) == b""

    # Target -> client first: the target says goodbye and half-closes; the client still
    # sends afterwards and the target still reads it.
    heard = asyncio.get_running_loop().create_future()

    async def speak_first(conn: wirecat.Connection) -> None:
        await conn.send(b"bye\n")
        await conn.send_eof()
        heard.set_result(await conn.recv_line(timeout=T))

    async with (
        wirecat.listen("tcp://127.0.0.1:0", speak_first) as target,
        relay("tcp://127.0.0.1:0", target.endpoint()) as server,
        wirecat.connect(server.endpoint(), timeout=T) as conn,
    ):
        assert await conn.recv_line(timeout=T) == b"bye\n"
        assert await conn.recv(timeout=T) == b""
        await conn.send(b"after your eof\n")
        assert await asyncio.wait_for(heard, T) == b"after your eof\n"


@pytest.mark.async_timeout(60)
async def test_a_large_stream_arrives_byte_exact() -> None:
    size = 64 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    digest = hashlib.sha256(block * (size // len(block))).hexdigest()
    got = hashlib.sha256()
    count = 0

    async def sink(conn: wirecat.Connection) -> None:
        nonlocal count
        while data := await conn.recv():
            got.update(data)
            count += len(data)
        await conn.send(b"done\n")

    async with (
        wirecat.listen("tcp://127.0.0.1:0", sink) as target,
        relay("tcp://127.0.0.1:0", target.endpoint()) as server,
        wirecat.connect(server.endpoint(), timeout=T) as conn,
    ):
        for _ in range(size // len(block)):
            await conn.send(block)
        await conn.send_eof()
        assert await conn.recv_line(timeout=scaled(30)) == b"done\n"
    assert count == size and got.hexdigest() == digest


async def test_backpressure_stops_a_fast_sender() -> None:
    gate = asyncio.Event()
    received = 0

    async def slow(conn: wirecat.Connection) -> None:
        nonlocal received
        await gate.wait()
        while data := await conn.recv():
            received += len(data)

    # More than the kernel may buffer on the way (autotuned: up to tcp_rmem max per
    # receiving socket, 32 MiB here, twice, plus the send buffers), so the sender must stop.
    size = 96 * 1024 * 1024
    async with (
        wirecat.listen("tcp://127.0.0.1:0", slow) as target,
        relay("tcp://127.0.0.1:0", target.endpoint()) as server,
        wirecat.connect(server.endpoint(), timeout=T) as conn,
    ):
        sending = asyncio.ensure_future(conn.send(b"z" * size))
        done, _ = await asyncio.wait({sending}, timeout=scaled(0.5))
        assert not done  # held back: the target does not read, nothing grows
        held = sum(h.transport.get_write_buffer_size() for h in server.ctx.connections)
        assert held <= 1024 * 1024
        gate.set()
        await asyncio.wait_for(sending, T)
        await conn.send_eof()
        await wait_for(lambda: received == size, T)


async def test_relay_applies_the_server_limits() -> None:
    async with wirecat.listen("tcp://127.0.0.1:0", echo) as target:
        limits = Limits(max_conns_per_source=1)
        async with (
            relay("tcp://127.0.0.1:0", target.endpoint(), limits=limits) as server,
            wirecat.connect(server.endpoint(), timeout=T) as first,
        ):
            await first.send(b"1\n")
            assert await first.recv_line(timeout=T) == b"1\n"
            async with wirecat.connect(server.endpoint(), timeout=T) as second:
                assert b"too many connections" in await second.recv_line(timeout=T)


async def test_idle_relays_end() -> None:
    ended: list[RelayStats] = []
    async with wirecat.listen("tcp://127.0.0.1:0", echo) as target:
        server = relay(
            "tcp://127.0.0.1:0", target.endpoint(), idle_timeout=scaled(0.2), on_end=ended.append
        )
        async with server, wirecat.connect(server.endpoint(), timeout=T) as conn:
            await conn.send(b"once\n")
            assert await conn.recv_line(timeout=T) == b"once\n"
            await wait_for(lambda: ended, T)
    assert ended[0].reason == "idle timeout"


async def test_exec_target() -> None:
    async with (
        relay("tcp://127.0.0.1:0", "exec:tr a-z A-Z") as server,
        wirecat.connect(server.endpoint(), timeout=T) as conn,
    ):
        await conn.send(b"shout\n")
        await conn.send_eof()
        assert await conn.recv(timeout=T) == b"SHOUT\n"


async def test_tls_termination() -> None:
    from wirecat.runtime.tls import self_signed, server_context

    made = self_signed()
    tls = server_context(made.cert_pem, made.key_pem)
    async with (
        wirecat.listen("tcp://127.0.0.1:0", echo) as target,
        relay("tls://127.0.0.1:0", target.endpoint(), tls=tls) as server,
    ):
        ep = server.endpoint()
        async with wirecat.connect(ep, pin=made.fingerprint, timeout=T) as conn:
            await conn.send(b"in clear behind\n")
            assert await conn.recv_line(timeout=T) == b"in clear behind\n"


async def test_bridge_reports_a_reset() -> None:
    async def reset(conn: wirecat.Connection) -> None:
        conn.transport.abort()

    async with (
        wirecat.listen("tcp://127.0.0.1:0", reset) as a,
        wirecat.listen("tcp://127.0.0.1:0", echo) as b,
    ):
        ca = await wirecat.connect(a.endpoint(), timeout=T)
        cb = await wirecat.connect(b.endpoint(), timeout=T)
        stats = await asyncio.wait_for(bridge(ca, cb), T)
        assert stats.reason in ("reset", "both closed")
        await ca.aclose()
        await cb.aclose()


# -- the zero-copy engine (os.splice) -------------------------------------------------------
def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def _recv_all(sock: socket.socket, digest: hashlib._Hash) -> int:
    loop = asyncio.get_running_loop()
    total = 0
    while data := await loop.sock_recv(sock, 1 << 20):
        digest.update(data)
        total += len(data)
    return total


async def _send_all(sock: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)
    sock.shutdown(socket.SHUT_WR)


@pytest.mark.async_timeout(30)
async def test_splice_moves_both_ways_byte_exact_with_half_close() -> None:
    # client <-> [a | Splice | b] <-> server, 24 MiB up and 8 MiB down at the same time.
    client, a = _pair()
    b, server = _pair()
    up, down = os.urandom(24 << 20), os.urandom(8 << 20)
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    engine = Splice(a, b, ended.set_result, idle_timeout=T)
    engine.start()
    with client, a, b, server:
        got_up, got_down = hashlib.sha256(), hashlib.sha256()
        n_up, n_down, _, _ = await asyncio.gather(
            _recv_all(server, got_up),  # ends at the EOF the engine passed on
            _recv_all(client, got_down),
            _send_all(client, up),
            _send_all(server, down),
        )
        assert await asyncio.wait_for(ended, T) == "both closed"
    assert (n_up, n_down) == (len(up), len(down)) == (engine.up, engine.down)
    assert got_up.digest() == hashlib.sha256(up).digest()
    assert got_down.digest() == hashlib.sha256(down).digest()


async def test_splice_half_close_keeps_the_other_direction() -> None:
    client, a = _pair()
    b, server = _pair()
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[str] = loop.create_future()
    engine = Splice(a, b, ended.set_result)
    engine.start()
    with client, a, b, server:
        client.shutdown(socket.SHUT_WR)  # client -> server ends first
        assert await asyncio.wait_for(loop.sock_recv(server, 10), T) == b""
        await loop.sock_sendall(server, b"still talking\n")  # server -> client goes on
        assert await asyncio.wait_for(loop.sock_recv(client, 100), T) == b"still talking\n"
        assert not ended.done()
        server.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(loop.sock_recv(client, 10), T) == b""
        assert await asyncio.wait_for(ended, T) == "both closed"


async def test_splice_backpressure_bounds_memory() -> None:
    # The server does not read: the engine holds at most its pipe and stops reading the
    # client, whose sends then stall (TCP would push back on the sender).
    client, a = _pair()
    b, server = _pair()
    for s in (client, a, b, server):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    loop = asyncio.get_running_loop()
    engine = Splice(a, b, lambda reason: None, pipe_size=256 * 1024)
    engine.start()
    with client, a, b, server:
        sending = asyncio.ensure_future(loop.sock_sendall(client, b"z" * (32 << 20)))
        flow = engine._ab
        await wait_for(lambda: not flow.reading and flow.writing, T)
        assert not sending.done()  # held back
        assert flow.buffered <= 256 * 1024 and flow.size <= 256 * 1024  # the pipe
        assert flow.pending is None or len(flow.pending) <= 64 * 1024  # at most one read
        received = 0
        while received < 32 << 20:  # now read: everything arrives
            received += len(await asyncio.wait_for(loop.sock_recv(server, 1 << 20), T))
        await asyncio.wait_for(sending, T)
        engine.abort("test over")


async def test_splice_sends_pending_bytes_first_then_eof() -> None:
    # Bytes read into memory before the switch (more than one pipe) and an EOF already seen.
    client, a = _pair()
    b, server = _pair()
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[str] = loop.create_future()
    pending = os.urandom(300 * 1024)
    engine = Splice(a, b, ended.set_result, pending_ab=pending, eof_a=True)
    with client, a, b, server:
        await loop.sock_sendall(client, b"never read: the EOF was seen before")
        engine.start()
        got = hashlib.sha256()
        assert await asyncio.wait_for(_recv_all(server, got), T) == len(pending)
        assert got.digest() == hashlib.sha256(pending).digest()
        server.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(ended, T) == "both closed"


async def test_splice_idle_timeout_and_reset() -> None:
    client, a = _pair()
    b, server = _pair()
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[str] = loop.create_future()
    Splice(a, b, ended.set_result, idle_timeout=scaled(0.1)).start()
    with client, a, b, server:
        assert await asyncio.wait_for(ended, T) == "idle timeout"
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        c2 = socket.create_connection(lsock.getsockname())
        a2, _ = lsock.accept()
    a2.setblocking(False)
    b2, s2 = _pair()
    ended2: asyncio.Future[str] = loop.create_future()
    engine = Splice(a2, b2, ended2.set_result)
    engine.start()
    with c2, a2, b2, s2:
        c2.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        c2.close()  # RST
        assert await asyncio.wait_for(ended2, T) in ("reset", "both closed")


async def test_bridge_flushes_buffered_bytes_before_splicing() -> None:
    # The relay's FROM side has read a header line and more (and the EOF) into its buffer
    # before bridge() switches to splice: nothing is lost, the EOF comes through.
    got = hashlib.sha256()
    count = 0
    done = asyncio.Event()

    async def sink(conn: wirecat.Connection) -> None:
        nonlocal count
        while data := await conn.recv():
            got.update(data)
            count += len(data)
        done.set()

    payload = os.urandom(200 * 1024)
    stats: list[RelayStats] = []

    async def front(conn: wirecat.Connection) -> None:
        assert await conn.recv_line(timeout=T) == b"HEADER\n"
        await wait_for(lambda: conn._p.eof, T)  # all of it buffered, EOF included
        async with wirecat.connect(target.endpoint(), timeout=T) as out:
            stats.append(await bridge(conn, out, idle_timeout=T))

    async with (
        wirecat.listen("tcp://127.0.0.1:0", sink) as target,
        wirecat.listen("tcp://127.0.0.1:0", front, read_high_water=1 << 20) as server,
        wirecat.connect(server.endpoint(), timeout=T) as conn,
    ):
        await conn.send(b"HEADER\n" + payload)
        await conn.send_eof()
        await asyncio.wait_for(done.wait(), T)
        assert await conn.recv(timeout=T) == b""
    assert count == len(payload) and got.digest() == hashlib.sha256(payload).digest()
    assert stats[0].zero_copy and stats[0].up == len(payload)


async def test_unix_to_tcp_is_spliced() -> None:
    from helpers import short_unix_dir

    ended: list[RelayStats] = []
    with short_unix_dir() as d:
        async with (
            wirecat.listen("tcp://127.0.0.1:0", echo) as target,
            relay(f"unix:{d}/r.sock", target.endpoint(), on_end=ended.append) as server,
            wirecat.connect(server.endpoint(), timeout=T) as conn,
        ):
            data = os.urandom(3 << 20)
            sending = asyncio.ensure_future(conn.send(data))
            got = b""
            while len(got) < len(data):
                got += await conn.recv(1 << 20, timeout=T)
            await sending
            await conn.send_eof()
            assert await conn.recv(timeout=T) == b"" and got == data
        await wait_for(lambda: ended, T)
    assert ended[0].zero_copy and ended[0].up == ended[0].down == len(data)


async def test_an_unreachable_target_closes_the_peer_and_is_counted() -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        async with (
            relay("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}") as server,
            wirecat.connect(server.endpoint(), timeout=T) as conn,
        ):
            await conn.send(b"anyone?\n")
            # closed (a reset when our bytes were still unread: RFC 9293 3.6.1)
            with contextlib.suppress(wirecat.ConnectionClosedError):
                assert await conn.recv(timeout=T) == b""
            await wait_for(lambda: server.ctx.metrics["relay_target_errors"] == 1, T)


async def test_shutdown_ends_spliced_relays() -> None:
    async with wirecat.listen("tcp://127.0.0.1:0", echo) as target:
        server = relay("tcp://127.0.0.1:0", target.endpoint())
        async with server, wirecat.connect(server.endpoint(), timeout=T) as conn:
            await conn.send(b"hi\n")
            assert await conn.recv_line(timeout=T) == b"hi\n"
            await asyncio.wait_for(server.shutdown(grace=scaled(1)), T)
            assert await conn.recv(timeout=T) == b""  # the relay's socket really closed


# -- datagrams --------------------------------------------------------------------------------
class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.transport.sendto(b"re:" + data, addr)


async def test_udp_relay_keeps_sessions_apart_and_caps_them() -> None:
    loop = asyncio.get_running_loop()
    echo_t, _ = await loop.create_datagram_endpoint(_UdpEcho, local_addr=("127.0.0.1", 0))
    port = echo_t.get_extra_info("sockname")[1]
    try:
        server = relay("udp://127.0.0.1:0", f"udp://127.0.0.1:{port}", max_sessions=3)
        async with server:
            clients = [
                await wirecat.connect_datagram(server.endpoint(), timeout=T) for _ in range(5)
            ]
            try:
                for i, c in enumerate(clients[:3]):
                    await c.send(b"client %d" % i)
                for i, c in enumerate(clients[:3]):
                    assert await c.recv(timeout=T) == b"re:client %d" % i  # its own reply
                for c in clients[3:]:  # beyond the cap: dropped, counted
                    await c.send(b"flood")
                await wait_for(lambda: server.ctx.metrics["relay_sessions_refused"] == 2, T)
                await clients[0].send(b"again")
                assert await clients[0].recv(timeout=T) == b"re:again"
            finally:
                for c in clients:
                    await c.aclose()
    finally:
        echo_t.close()


# -- the command, with real peers -------------------------------------------------------------
@contextmanager
def wirecat_relay(*args: str) -> Iterator[tuple[str, int]]:
    argv = [sys.executable, "-m", "wirecat", "relay", *args]
    with Running(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL) as proc:
        m = proc.wait_line(r"relaying \S+://(\S+):(\d+) ->")
        yield m.group(1).strip("[]"), int(m.group(2))


@pytest.mark.interop
def test_nc_through_wirecat_relay_to_socat() -> None:
    # socat as the target (an echo that honours half-close), nc as the client.
    socat = subprocess.Popen(
        [peer("socat"), "-d", "-d", "TCP-LISTEN:0,bind=127.0.0.1,reuseaddr", "EXEC:cat"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert socat.stderr is not None
        line = socat.stderr.readline()  # "... listening on AF=2 127.0.0.1:PORT"
        port = int(re.search(r"listening on .*:(\d+)", line).group(1))  # type: ignore[union-attr]
        with wirecat_relay("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}") as (host, rport):
            data = os.urandom(1 << 20)
            out = subprocess.run(
                [peer("nc"), "-N", host, str(rport)], input=data, capture_output=True, timeout=T
            )
            assert out.stdout == data
    finally:
        socat.kill()
        socat.communicate(timeout=T)


@pytest.mark.interop
def test_nc_udp_through_wirecat_relay() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as target:
        target.bind(("127.0.0.1", 0))
        target.settimeout(T)
        tport = target.getsockname()[1]
        with wirecat_relay("udp://127.0.0.1:0", f"udp://127.0.0.1:{tport}") as (host, rport):
            nc = subprocess.Popen(
                [peer("nc"), "-u", host, str(rport)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            try:
                assert nc.stdin is not None and nc.stdout is not None
                nc.stdin.write(b"ping\n")
                nc.stdin.flush()
                data, addr = target.recvfrom(100)
                assert data == b"ping\n"
                target.sendto(b"pong\n", addr)
                assert nc.stdout.readline() == b"pong\n"
            finally:
                nc.kill()
                nc.communicate(timeout=T)


def test_connect_first_dials_both() -> None:
    with socket.create_server(("127.0.0.1", 0)) as a, socket.create_server(("127.0.0.1", 0)) as b:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "wirecat", "relay", "--connect-first", "-v"),
                f"tcp://127.0.0.1:{a.getsockname()[1]}",
                f"tcp://127.0.0.1:{b.getsockname()[1]}",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        a.settimeout(T)
        b.settimeout(T)
        ca, _ = a.accept()
        cb, _ = b.accept()
        with ca, cb:
            ca.sendall(b"from a\n")
            assert cb.recv(100) == b"from a\n"
            cb.sendall(b"from b\n")
            assert ca.recv(100) == b"from b\n"
            ca.shutdown(socket.SHUT_WR)
            assert cb.recv(100) == b""
            cb.shutdown(socket.SHUT_WR)
        _, err = proc.communicate(timeout=T)
        assert proc.returncode == 0 and "7 bytes up, 7 bytes down" in err


class _EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def test_relay_workers_share_the_port() -> None:
    from helpers import serve_in_thread

    holder = socket.socket()  # SO_REUSEPORT, bound, never listening: the port stays ours
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    with holder:
        for target in serve_in_thread(_EchoProtocol):
            proc = subprocess.Popen(
                [sys.executable, "-m", "wirecat", "relay", "--workers", "2",
                 f"tcp://127.0.0.1:{port}", target],
                stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                assert proc.stderr is not None
                for _ in range(2):  # one line per worker, once it listens
                    assert "relaying" in proc.stderr.readline()
                for i in range(8):  # the kernel spreads them; each comes back whole
                    with socket.create_connection(("127.0.0.1", port), timeout=T) as c:
                        c.sendall(b"ping %d\n" % i)
                        assert c.recv(100) == b"ping %d\n" % i
            finally:
                proc.terminate()
                proc.communicate(timeout=T)
            assert proc.returncode == 0


def test_relay_usage_errors() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "wirecat", "relay", *args], capture_output=True, text=True
        )

    r = run("udp://127.0.0.1:0", "tcp://127.0.0.1:9")
    assert r.returncode == 64 and "datagram" in r.stderr
    r = run("tcp://127.0.0.1:0", "tcp:/127.0.0.1:9")
    assert r.returncode == 64 and "write tcp://127.0.0.1:9" in r.stderr
    r = run("tls://127.0.0.1:0", "tcp://127.0.0.1:9")
    assert r.returncode == 78 and "certificate" in r.stderr
    r = run("--workers", "2", "tcp://127.0.0.1:0", "tcp://127.0.0.1:9")
    assert r.returncode == 64 and "fixed port" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("tcp://127.0.0.1:0", "tcp://127.0.0.1:9", "--allow-origin", "http://a.example"), "ws://"),
        (("tcp://127.0.0.1:0", "tcp://127.0.0.1:9", "--ws-text"), "ws://"),
        (("tcp://127.0.0.1:0", "tcp://127.0.0.1:9", "--socks-allow", "10.0.0.0/8"), "socks5://"),
        (("tcp://127.0.0.1:0", "tcp://127.0.0.1:9", "--users", "u.toml"), "http-proxy://"),
        (("tcp://127.0.0.1:0", "unix:/tmp/x.sock", "--proxy", "socks5://127.0.0.1:1"), "not unix:"),
        (("tcp://127.0.0.1:0", "tcp://127.0.0.1:9", "--proxy", "ftp://127.0.0.1:1"), "socks5://"),
        (("socks5://127.0.0.1:0", "--proxy", "socks5://127.0.0.1:1"), "no TO"),
        (("http-proxy://127.0.0.1:0", "--connect-first"), "listens"),
    ],
)
def test_relay_refuses_flags_that_would_do_nothing(args: tuple[str, ...], words: str) -> None:
    from click.testing import CliRunner

    from wirecat.cli.relay import relay_command

    result = CliRunner().invoke(relay_command, list(args))
    assert result.exit_code == 64, result.output
    assert words in result.output and "Traceback" not in result.output
