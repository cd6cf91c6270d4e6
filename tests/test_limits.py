"""Protective limits under attack, on loopback: token buckets, access lists, slowloris,
connection caps and their release on every exit path, connection rate, allow/deny, UDP rate,
and how each hit shows in ``ctx.metrics`` and the JSON logs.

127.0.0.2, 127.0.0.3, ... act as separate sources (the client socket is bound to them).
Synchronisation is by reads and events with bounded timeouts, or ``wait_for`` on ``ctx``
state; pacing the slowloris bytes with ``asyncio.sleep`` is pacing, not synchronisation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import wirecat
from helpers import scaled, wait_for
from wirecat.endpoints import Endpoint, parse_endpoint
from wirecat.runtime.connection import Connection
from wirecat.runtime.handler import ServerContext, StreamHandler
from wirecat.runtime.limits import AccessList, KeyedRateLimiter, Limits, TokenBucket, read_rules
from wirecat.runtime.logs import JsonFormatter, configure_logging
from wirecat.runtime.server import Server, Service
from wirecat.services.chat import ChatService
from wirecat.services.echo import EchoService

TCP = "tcp://127.0.0.1:0"


# ==========================================================================================
# Unit: token buckets on a fake clock
# ==========================================================================================
def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(100.4)  # 0.8 token
    assert bucket.take(100.5)  # 1 token after 0.5 s at 2/s
    assert not bucket.take(100.5)


def test_token_bucket_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=5, now=0.0)
    for _ in range(5):
        assert bucket.take(0.0)
    assert bucket.full_at(0.5) and not bucket.full_at(0.49)
    # A long quiet period saves up at most ``burst`` tokens.
    assert [bucket.take(1000.0) for _ in range(6)] == [True] * 5 + [False]


def test_token_bucket_takes_n_and_ignores_a_clock_going_backwards() -> None:
    bucket = TokenBucket(rate=1.0, burst=4, now=10.0)
    assert bucket.take(10.0, n=3)
    assert not bucket.take(10.0, n=2)
    assert bucket.take(5.0)  # an earlier "now" spends the last token, refills nothing
    assert not bucket.take(5.0)
    assert not bucket.take(10.0)  # going back did not move the stamp: still empty
    assert bucket.take(11.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0), (1, 0.5)])
def test_token_bucket_rejects_bad_parameters(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=rate, burst=burst, now=0.0)


def test_keyed_rate_limiter_keys_are_independent() -> None:
    limiter = KeyedRateLimiter(rate=1.0, burst=2)
    assert [limiter.allow("127.0.0.2", 0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow("127.0.0.3", 0.0)
    assert not limiter.allow("127.0.0.2", 0.5)
    assert limiter.allow("127.0.0.2", 1.0)
    assert len(limiter) == 2


def test_keyed_rate_limiter_table_is_bounded_and_fails_closed() -> None:
    limiter = KeyedRateLimiter(rate=1.0, burst=2, max_keys=3)
    for key in ("a", "b", "c"):
        assert limiter.allow(key, 0.0)
    # The table is full and no bucket has refilled: a new source is refused...
    assert not limiter.allow("d", 0.5)
    assert len(limiter) == 3
    # ... known sources keep their own buckets ...
    assert limiter.allow("a", 0.5)
    # ... and once buckets have refilled they are forgotten to make room.
    assert limiter.allow("d", 10.0)
    assert len(limiter) <= 3


def test_keyed_rate_limiter_flood_of_sources_stays_bounded() -> None:
    limiter = KeyedRateLimiter(rate=1.0, burst=1, max_keys=100)
    results = [limiter.allow(f"10.0.{i // 256}.{i % 256}", 0.0) for i in range(10_000)]
    assert len(limiter) == 100
    assert results.count(True) == 100


# ==========================================================================================
# Unit: access lists and rule files
# ==========================================================================================
def test_access_list_deny_v4() -> None:
    acl = AccessList(deny=["127.0.0.2/32", "10.0.0.0/8"])
    assert not acl.permits("127.0.0.2")
    assert not acl.permits("10.200.1.1")
    assert acl.permits("127.0.0.3")
    assert acl.permits("::1")  # a v4 rule never matches a v6 peer


def test_access_list_allow_only() -> None:
    acl = AccessList(allow=["192.168.0.0/16"])
    assert acl.permits("192.168.4.5")
    assert not acl.permits("127.0.0.1")
    assert not acl.permits("::1")  # allow rules exist and none is v6


def test_access_list_deny_wins_over_allow() -> None:
    acl = AccessList(allow=["10.0.0.0/8"], deny=["10.1.0.0/16"])
    assert acl.permits("10.2.3.4")
    assert not acl.permits("10.1.2.3")
    assert not acl.permits("11.0.0.1")


def test_access_list_v6_and_zone_ids() -> None:
    acl = AccessList(allow=["::1/128", "fe80::/10"], deny=["2001:db8::/32"])
    assert acl.permits("::1")
    assert acl.permits("fe80::1%eth0")
    assert not acl.permits("2001:db8::5")
    assert not acl.permits("2001:db9::5")


def test_access_list_checks_v4_mapped_v6_as_v4() -> None:
    acl = AccessList(deny=["127.0.0.2/32"])
    assert not acl.permits("::ffff:127.0.0.2")
    assert acl.permits("::ffff:127.0.0.3")
    only = AccessList(allow=["127.0.0.0/8"])
    assert only.permits("::ffff:127.9.9.9")
    assert not only.permits("::ffff:10.0.0.1")


def test_access_list_unix_peers_and_garbage_hosts() -> None:
    acl = AccessList(allow=["10.0.0.0/8"])
    assert acl.permits(None)  # unix sockets have no address
    assert not acl.permits("not-an-ip")  # fail closed
    assert not acl.permits("")
    assert AccessList().permits("anything-at-all") in (True, False)  # never raises


def test_access_list_empty_is_falsy_and_permits_all() -> None:
    assert not AccessList()
    assert AccessList(deny=["10.0.0.0/8"])
    assert AccessList().permits("203.0.113.9")


@pytest.mark.parametrize("rule", ["10.0.0.0/33", "300.1.1.1", "::1/129", "bogus", "", "1.2.3.4/x"])
def test_access_list_invalid_rule_message(rule: str) -> None:
    with pytest.raises(ValueError, match="invalid network") as caught:
        AccessList(allow=[rule])
    assert repr(rule) in str(caught.value) and "CIDR" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_access_list_host_bits_are_accepted() -> None:
    acl = AccessList(deny=[" 10.1.2.3/8 "])
    assert not acl.permits("10.9.9.9")


def test_read_rules_comments_and_blanks(tmp_path: Path) -> None:
    path = tmp_path / "rules.txt"
    path.write_text(
        "# office networks\n\n10.0.0.0/8\n   \n192.168.1.0/24   # lab\n\t::1/128\n#::2/128\n",
        encoding="utf-8",
    )
    assert read_rules(str(path)) == ["10.0.0.0/8", "192.168.1.0/24", "::1/128"]
    AccessList(allow=read_rules(str(path)))  # every rule read is valid


def test_read_rules_missing_file(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        read_rules(str(tmp_path / "nope.txt"))


# ==========================================================================================
# Unit: admission bookkeeping
# ==========================================================================================
def test_admit_order_and_release() -> None:
    ctx = ServerContext(
        Limits(max_conns_per_source=2, conn_rate=1.0, conn_burst=3),
        access=AccessList(deny=["127.0.0.9/32"]),
    )
    assert ctx.admit("127.0.0.9", 0.0) == "denied"
    assert ctx.admit("127.0.0.2", 0.0) is None
    assert ctx.admit("127.0.0.2", 0.0) is None
    assert ctx.admit("127.0.0.2", 0.0) == "too many connections from your address"
    assert ctx.per_source == {"127.0.0.2": 2}
    ctx.release("127.0.0.2")
    assert ctx.admit("127.0.0.2", 0.0) is None  # third token of the burst
    ctx.release("127.0.0.2")
    assert ctx.admit("127.0.0.2", 0.0) == "connecting too fast"
    ctx.release("127.0.0.2")
    ctx.release("127.0.0.2")  # one more than taken: no negative count
    ctx.release(None)
    assert ctx.per_source == {}
    assert ctx.admit(None, 0.0) is None  # unix peers: no per-source bookkeeping
    assert ctx.per_source == {}
    ctx.closing = True
    assert ctx.admit("127.0.0.3", 0.0) == "server is shutting down"


# ==========================================================================================
# Real sockets: helpers
# ==========================================================================================
_OPEN_PEERS: list[Peer] = []


class Peer(asyncio.Protocol):
    """A raw TCP client: records what it receives and when the connection ends."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.exc: Exception | None = None
        self.got_eof = False
        self._changed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _OPEN_PEERS.append(self)

    def data_received(self, data: bytes) -> None:
        self.data += data
        self._changed.set()

    def eof_received(self) -> bool:
        self.got_eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.exc = exc
        if not self.closed.done():
            self.closed.set_result(None)
        self._changed.set()

    @property
    def is_closed(self) -> bool:
        return self.closed.done()

    @property
    def local_port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def expect(self, marker: bytes, timeout: float | None = None) -> None:
        """Wait until ``marker`` was received (fails if the connection ends first)."""
        async with asyncio.timeout(scaled(5) if timeout is None else timeout):
            while marker not in self.data:
                if self.is_closed:
                    raise AssertionError(f"closed before {marker!r}; got {bytes(self.data)!r}")
                self._changed.clear()
                await self._changed.wait()

    async def wait_closed(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(
            asyncio.shield(self.closed), scaled(5) if timeout is None else timeout
        )

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0)."""
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


async def open_peer(port: int, source: str = "127.0.0.1", *, rcvbuf: int | None = None) -> Peer:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), scaled(5))
        _, peer = await loop.create_connection(Peer, sock=sock)
    except BaseException:
        sock.close()
        raise
    return peer


async def echoes(peer: Peer, payload: bytes = b"ping\n") -> None:
    """The peer is being served: what it sends comes back."""
    peer.send(payload)
    await peer.expect(payload)


@contextlib.asynccontextmanager
async def running(
    *services: Service, limits: Limits | None = None, access: AccessList | None = None
) -> AsyncIterator[Server]:
    server = Server(list(services), ctx=ServerContext(limits, access=access))
    await server.start()
    try:
        yield server
    finally:
        for peer in _OPEN_PEERS:
            if peer.transport is not None:
                peer.transport.abort()
        _OPEN_PEERS.clear()
        await server.shutdown(grace=scaled(2))


def port_of(server: Server) -> int:
    (_, ep), *_ = server.bound
    assert ep.port is not None
    return ep.port


async def all_released(server: Server) -> None:
    ctx = server.ctx
    await wait_for(
        lambda: not ctx.per_source and not ctx.connections,
        what=f"counters released (per_source={ctx.per_source}, open={len(ctx.connections)})",
    )


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class _Handler(StreamHandler):
    """Echo with test controls: ``flood`` (never-read output), ``crash``, ``login``."""

    service: ControlService

    def on_connect(self) -> None:
        self.service.connected += 1

    def on_data(self, data: bytes) -> None:
        self.service.data_calls += 1
        if data.startswith(b"login"):
            self.login_complete()
            self.write(b"welcome\n")
        elif data.startswith(b"flood"):
            chunk = b"x" * 65536
            for _ in range(512):  # at most 32 MiB: the cut comes much sooner
                if not self.write(chunk):
                    return
        elif data.startswith(b"crash"):
            raise RuntimeError("handler bug")
        else:
            self.write(data)

    def on_close(self, exc: Exception | None) -> None:
        self.service.close_reasons.append(self.close_reason)


class _LoginHandler(_Handler):
    needs_login = True


class ControlService(Service):
    name = "control"

    def __init__(self, endpoints: Sequence[Endpoint], *, login: bool = False) -> None:
        super().__init__(endpoints)
        self.login = login
        self.connected = 0
        self.data_calls = 0
        self.close_reasons: list[str] = []

    def stream_handler(self, ctx: ServerContext) -> StreamHandler:
        return (_LoginHandler if self.login else _Handler)(ctx, self)


def control(*, login: bool = False) -> ControlService:
    return ControlService([parse_endpoint(TCP)], login=login)


# ==========================================================================================
# Slowloris against the chat login deadline
# ==========================================================================================
async def _chat_exchange(url: str, nick: str) -> float:
    """Log in to chat and say something; return how long it took (seconds)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    conn = await wirecat.connect(url, timeout=scaled(5))
    assert isinstance(conn, Connection)
    try:
        await conn.send(nick.encode() + b"\n")
        while not (await conn.recv_line(timeout=scaled(5))).startswith(b"*** in #lobby"):
            pass
        await conn.send(b"hello under attack\n")
        expected = f"#lobby <{nick}> hello under attack\n".encode()
        while (line := await conn.recv_line(timeout=scaled(5))) != expected:
            assert line, "chat closed the connection"
        return loop.time() - started
    finally:
        await conn.aclose()


@pytest.mark.async_timeout(45)
async def test_slowloris_is_cut_by_the_login_deadline_while_a_user_chats() -> None:
    raise_fd_limit()
    login = scaled(1.0)
    limits = Limits(login_timeout=login, max_conns_per_source=64, idle_timeout=scaled(30))
    chat = ChatService([parse_endpoint(TCP)], banner="welcome")
    loop = asyncio.get_running_loop()
    async with running(chat, limits=limits) as server:
        port = port_of(server)
        opened: list[float] = []
        attackers: list[Peer] = []
        for i in range(200):  # 20 sockets from each of 127.0.0.10-19
            attackers.append(await open_peer(port, f"127.0.0.{10 + i % 10}"))
            opened.append(loop.time())
        closed_at: dict[int, float] = {}

        async def drip() -> None:
            while len(closed_at) < len(attackers):
                for i, peer in enumerate(attackers):
                    if peer.is_closed:
                        closed_at.setdefault(i, loop.time())
                    else:
                        peer.send(b"a")  # one byte, never a newline
                await asyncio.sleep(scaled(0.1))  # pacing

        dripping = asyncio.ensure_future(drip())
        try:
            # A real user logs in and talks while the attack runs, with normal latency.
            took = await _chat_exchange(f"tcp://127.0.0.1:{port}", "ann")
            assert took < login, f"a normal chat exchange took {took:.2f} s under attack"
            await asyncio.wait_for(
                asyncio.gather(*(p.closed for p in attackers)), login + scaled(10)
            )
            await asyncio.wait_for(dripping, scaled(2))
        finally:
            dripping.cancel()
        ctx = server.ctx
        assert ctx.metrics["login_timeouts"] == 200
        assert ctx.metrics["idle_timeouts"] == 0
        for i, peer in enumerate(attackers):
            assert b"!!! timeout: login not completed" in peer.data, bytes(peer.data)
            held = closed_at.get(i, loop.time()) - opened[i]
            assert held < login + scaled(5), f"attacker {i} held its socket {held:.1f} s"
        # The user is unaffected by the deadline: logged-in peers are not cut.
        await _chat_exchange(f"tcp://127.0.0.1:{port}", "bob")
        await all_released(server)


# ==========================================================================================
# Connection caps, and their release on every exit path
# ==========================================================================================
@pytest.mark.async_timeout(30)
async def test_per_source_cap_refuses_the_65th_and_frees_on_close() -> None:
    raise_fd_limit()
    service = control()
    async with running(service, limits=Limits(max_conns_per_source=64)) as server:
        port, ctx = port_of(server), server.ctx
        peers = [await open_peer(port, "127.0.0.2") for _ in range(64)]
        await wait_for(lambda: ctx.per_source.get("127.0.0.2") == 64, what="64 from .2")
        extra = await open_peer(port, "127.0.0.2")
        await extra.wait_closed()
        assert bytes(extra.data) == (
            b"error: too many connections from your address, try again later\n"
        )
        assert extra.got_eof or extra.exc is None
        other = await open_peer(port, "127.0.0.3")
        await echoes(other)  # another source is not affected
        assert ctx.metrics["refused_per_source"] == 1
        # Closing one from .2 admits the next.
        peers[0].transport.close()  # type: ignore[union-attr]
        await wait_for(lambda: ctx.per_source.get("127.0.0.2") == 63, what="one released")
        again = await open_peer(port, "127.0.0.2")
        await echoes(again)
        assert ctx.per_source == {"127.0.0.2": 64, "127.0.0.3": 1}
        for peer in [*peers[1:], other, again]:
            peer.transport.close()  # type: ignore[union-attr]
        await all_released(server)
        assert service.connected == 64 + 1 + 1


async def test_total_cap_refuses_across_sources_and_frees_on_exit() -> None:
    service = control()
    limits = Limits(max_conns=3, max_conns_per_source=None)
    async with running(service, limits=limits) as server:
        port, ctx = port_of(server), server.ctx
        peers = [await open_peer(port, f"127.0.0.{n}") for n in (2, 3, 4)]
        await wait_for(lambda: len(ctx.connections) == 3, what="3 open")
        refused = await open_peer(port, "127.0.0.5")
        await refused.wait_closed()
        assert bytes(refused.data) == b"error: too many connections, try again later\n"
        assert ctx.metrics["refused_max_conns"] == 1
        peers[0].reset()  # leaves by RST
        await wait_for(lambda: len(ctx.connections) == 2, what="RST released")
        admitted = await open_peer(port, "127.0.0.5")
        await echoes(admitted)
        for peer in (*peers[1:], admitted):
            peer.transport.close()  # type: ignore[union-attr]
        await all_released(server)


ExitPath = Callable[[Server, Peer], Awaitable[None]]


async def _peer_close(server: Server, peer: Peer) -> None:
    peer.transport.close()  # type: ignore[union-attr]


async def _peer_rst(server: Server, peer: Peer) -> None:
    peer.reset()


async def _peer_half_close(server: Server, peer: Peer) -> None:
    peer.transport.write_eof()  # type: ignore[union-attr]
    await peer.wait_closed()


async def _idle(server: Server, peer: Peer) -> None:
    await peer.wait_closed()  # Limits(idle_timeout=...) below
    assert server.ctx.metrics["idle_timeouts"] == 1


async def _login(server: Server, peer: Peer) -> None:
    await peer.wait_closed()
    assert server.ctx.metrics["login_timeouts"] == 1
    assert b"error: login timeout\n" in peer.data


async def _slow_consumer(server: Server, peer: Peer) -> None:
    peer.transport.pause_reading()  # type: ignore[union-attr]
    peer.send(b"flood\n")
    await wait_for(lambda: server.ctx.metrics["slow_consumers"] == 1, what="slow consumer cut")


async def _server_abort(server: Server, peer: Peer) -> None:
    (handler,) = server.ctx.connections
    handler.abort("test abort")


async def _server_close(server: Server, peer: Peer) -> None:
    (handler,) = server.ctx.connections
    handler.close("test close")
    await peer.wait_closed()


async def _handler_crash(server: Server, peer: Peer) -> None:
    peer.send(b"crash\n")
    await peer.wait_closed()
    assert server.ctx.metrics["handler_errors"] == 1


EXIT_PATHS: dict[str, tuple[ExitPath, dict[str, Any]]] = {
    "peer-close": (_peer_close, {}),
    "peer-rst": (_peer_rst, {}),
    "peer-half-close": (_peer_half_close, {}),
    "idle-timeout": (_idle, {"idle_timeout": 0.2}),
    "login-timeout": (_login, {"login_timeout": 0.2}),
    "slow-consumer": (
        _slow_consumer,
        {"write_high_water": 16384, "write_low_water": 4096, "max_output": 65536},
    ),
    "server-abort": (_server_abort, {}),
    "server-close": (_server_close, {}),
    "handler-crash": (_handler_crash, {}),
}


@pytest.mark.parametrize("path", list(EXIT_PATHS))
async def test_counters_are_released_on_every_exit_path(path: str) -> None:
    """With a cap of 1 per source (and 1 in all), a stuck counter would refuse everyone."""
    leave, overrides = EXIT_PATHS[path]
    timing = {"idle_timeout", "login_timeout"}
    fields = {k: scaled(v) if k in timing else v for k, v in overrides.items()}
    limits = Limits(max_conns=1, max_conns_per_source=1, **fields)
    service = control(login=path == "login-timeout")
    async with running(service, limits=limits) as server:
        port = port_of(server)
        first = await open_peer(port, "127.0.0.2", rcvbuf=4096)
        if path != "login-timeout":  # logging in would lift the deadline
            await echoes(first, b"hello\n")
        await wait_for(lambda: len(server.ctx.connections) == 1, what="admitted")
        await leave(server, first)
        await all_released(server)
        # Not stuck: the same source (and the one server-wide slot) is free again.
        second = await open_peer(port, "127.0.0.2")
        if service.login:
            second.send(b"login\n")
            await second.expect(b"welcome\n")
        else:
            await echoes(second, b"hello again\n")
        second.transport.close()  # type: ignore[union-attr]
        await all_released(server)
    assert server.ctx.metrics["refused_per_source"] == 0
    assert server.ctx.metrics["refused_max_conns"] == 0


async def test_counters_are_released_by_server_shutdown() -> None:
    service = control()
    limits = Limits(max_conns_per_source=2, max_output=64 * 1024 * 1024)
    async with running(service, limits=limits) as server:
        peers = [await open_peer(port_of(server), "127.0.0.2") for _ in range(2)]
        for peer in peers:
            await echoes(peer)
        # A peer that does not read 32 MiB of output outlives the grace and is aborted.
        stuck = await open_peer(port_of(server), "127.0.0.3", rcvbuf=4096)
        await echoes(stuck)
        stuck.transport.pause_reading()  # type: ignore[union-attr]
        stuck.send(b"flood\n")
        await wait_for(lambda: service.data_calls == 3, what="flood started")
        await server.shutdown(grace=scaled(0.5))
        assert server.ctx.per_source == {} and not server.ctx.connections
        assert len(service.close_reasons) == 3
        assert set(service.close_reasons) <= {"server shutdown", "shutdown grace expired"}
        stuck.transport.resume_reading()  # type: ignore[union-attr]
        for peer in (*peers, stuck):
            await peer.wait_closed()


async def test_refused_peers_never_take_a_count() -> None:
    limits = Limits(max_conns_per_source=1, conn_rate=1000.0, conn_burst=1000)
    async with running(control(), limits=limits, access=AccessList(deny=["127.0.0.9/32"])) as srv:
        port, ctx = port_of(srv), srv.ctx
        keep = await open_peer(port, "127.0.0.2")
        await echoes(keep)
        for _ in range(20):
            refused = await open_peer(port, "127.0.0.2")
            denied = await open_peer(port, "127.0.0.9")
            await refused.wait_closed()
            await denied.wait_closed()
        assert ctx.per_source == {"127.0.0.2": 1}
        assert ctx.metrics["refused_per_source"] == 20
        assert ctx.metrics["refused_acl"] == 20
        keep.transport.close()  # type: ignore[union-attr]
        await all_released(srv)


# ==========================================================================================
# Connection rate
# ==========================================================================================
async def test_connection_rate_per_source() -> None:
    rate, burst = 5.0, 5
    limits = Limits(conn_rate=rate, conn_burst=burst, max_conns_per_source=None)
    loop = asyncio.get_running_loop()
    async with running(control(), limits=limits) as server:
        port, ctx = port_of(server), server.ctx
        started = loop.time()
        accepted: list[Peer] = []
        refused: Peer | None = None
        for _ in range(burst + 10):
            peer = await open_peer(port, "127.0.0.2")
            before = len(accepted)
            await wait_for(
                lambda: ctx.metrics["refused_rate"] > 0 or len(ctx.connections) > before,  # noqa: B023
                what="admitted or refused",
            )
            if ctx.metrics["refused_rate"]:
                refused = peer
                break
            accepted.append(peer)
        elapsed = loop.time() - started
        assert refused is not None, "the rate limit never applied"
        # The burst, plus at most the tokens refilled while we connected.
        assert burst <= len(accepted) <= burst + int(elapsed * rate) + 1, (len(accepted), elapsed)
        await refused.wait_closed()
        assert bytes(refused.data) == b"error: connecting too fast, try again later\n"
        other = await open_peer(port, "127.0.0.3")
        await echoes(other)  # another source has its own bucket
        for peer in accepted:
            await echoes(peer)  # those admitted are served normally
        assert ctx.metrics["refused_rate"] == 1


# ==========================================================================================
# Allow / deny
# ==========================================================================================
@pytest.mark.parametrize(
    "access",
    [AccessList(deny=["127.0.0.2/32"]), AccessList(allow=["127.0.0.3/32", "127.0.0.1/32"])],
    ids=["deny", "allow"],
)
async def test_denied_source_gets_nothing_and_no_byte_is_read(access: AccessList) -> None:
    service = control()
    async with running(service, access=access) as server:
        port, ctx = port_of(server), server.ctx
        denied = await open_peer(port, "127.0.0.2")
        denied.send(b"GET / HTTP/1.0\r\n\r\n" * 100)  # talks at once
        await denied.wait_closed()
        assert bytes(denied.data) == b""  # not even a reason
        assert service.connected == 0 and service.data_calls == 0  # on_data never ran
        assert ctx.metrics["refused_acl"] == 1 and ctx.metrics["accepted"] == 0
        allowed = await open_peer(port, "127.0.0.3")
        await echoes(allowed)
        assert service.connected == 1
        allowed.transport.close()  # type: ignore[union-attr]
        await all_released(server)


# ==========================================================================================
# UDP: per-source rate, no amplification
# ==========================================================================================
class _Udp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: list[bytes] = []
        self.changed = asyncio.Event()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.replies.append(data)
        self.changed.set()

    async def wait_replies(self, n: int) -> None:
        async with asyncio.timeout(scaled(5)):
            while len(self.replies) < n:
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def udp_client(port: int, source: str) -> AsyncIterator[_Udp]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        _Udp, local_addr=(source, 0), remote_addr=("127.0.0.1", port)
    )
    try:
        yield proto
    finally:
        transport.close()


async def test_udp_rate_per_source_and_no_amplification() -> None:
    rate = 10.0
    echo = EchoService([parse_endpoint("udp://127.0.0.1:0")], datagram_rate=rate, max_datagram=512)
    loop = asyncio.get_running_loop()
    async with running(echo) as server:
        port, metrics = port_of(server), server.ctx.metrics
        sent = [b"%03d:" % i + b"x" * (i * 5) for i in range(100)]
        async with udp_client(port, "127.0.0.2") as attacker:
            assert attacker.transport is not None
            started = loop.time()
            for datagram in sent:
                attacker.transport.sendto(datagram)
            await wait_for(
                lambda: metrics["echo_datagrams"] + metrics["echo_datagrams_rate_limited"] == 100,
                what="all 100 datagrams handled",
            )
            elapsed = loop.time() - started
            answered = metrics["echo_datagrams"]
            burst = int(2 * rate)
            assert 1 <= answered <= burst + int(elapsed * rate) + 1, (answered, elapsed)
            assert metrics["echo_datagrams_rate_limited"] == 100 - answered
            await attacker.wait_replies(answered)
            # Each reply is exactly one request: never larger, never merged.
            assert all(reply in sent for reply in attacker.replies)
            assert len(set(attacker.replies)) == len(attacker.replies)
        async with udp_client(port, "127.0.0.3") as other:
            assert other.transport is not None
            other.transport.sendto(b"x" * 1000)  # over max_datagram: dropped, not echoed
            other.transport.sendto(b"still answered")
            await other.wait_replies(1)
            assert other.replies == [b"still answered"]
            assert metrics["echo_datagrams_too_large"] == 1


# ==========================================================================================
# Every limit hit in ctx.metrics and in the JSON logs
# ==========================================================================================
class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(json.loads(self.format(record)))


@contextlib.contextmanager
def json_logs() -> Iterator[_Capture]:
    logger = logging.getLogger("wirecat")
    capture = _Capture()
    old_level = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    try:
        yield capture
    finally:
        logger.removeHandler(capture)
        logger.setLevel(old_level)


async def _hit_per_source(port: int) -> Peer:
    await echoes(await open_peer(port, "127.0.0.2"))
    peer = await open_peer(port, "127.0.0.2")
    await peer.wait_closed()
    return peer


async def _hit_max_conns(port: int) -> Peer:
    for n in (3, 4):
        await echoes(await open_peer(port, f"127.0.0.{n}"))
    peer = await open_peer(port, "127.0.0.2")
    await peer.wait_closed()
    return peer


async def _hit_rate(port: int) -> Peer:
    await echoes(await open_peer(port, "127.0.0.2"))
    peer = await open_peer(port, "127.0.0.2")
    await peer.wait_closed()
    return peer


async def _hit_acl(port: int) -> Peer:
    peer = await open_peer(port, "127.0.0.2")
    await peer.wait_closed()
    return peer


async def _hit_login(port: int) -> Peer:
    peer = await open_peer(port, "127.0.0.2")
    await peer.wait_closed()
    return peer


async def _hit_idle(port: int) -> Peer:
    peer = await open_peer(port, "127.0.0.2")
    await echoes(peer)
    await peer.wait_closed()
    return peer


async def _hit_slow(port: int) -> Peer:
    peer = await open_peer(port, "127.0.0.2", rcvbuf=4096)
    await echoes(peer)
    peer.transport.pause_reading()  # type: ignore[union-attr]
    peer.send(b"flood\n")
    return peer


_SLOW = {"write_high_water": 16384, "write_low_water": 4096, "max_output": 65536}
LIMIT_HITS: list[Any] = [
    pytest.param(
        _hit_per_source,
        {"max_conns_per_source": 1},
        None,
        ("refused_per_source", "refused", "too many connections from your address"),
        id="per-source",
    ),
    pytest.param(
        _hit_max_conns,
        {"max_conns": 2},
        None,
        ("refused_max_conns", "refused", "too many connections"),
        id="max-conns",
    ),
    pytest.param(
        _hit_rate,
        {"conn_rate": 0.01, "conn_burst": 1},
        None,
        ("refused_rate", "refused", "connecting too fast"),
        id="rate",
    ),
    pytest.param(_hit_acl, {}, ["127.0.0.2/32"], ("refused_acl", "refused", "denied"), id="acl"),
    pytest.param(
        _hit_login,
        {"login_timeout": 0.2},
        None,
        ("login_timeouts", "limit", "login_timeout"),
        id="login-timeout",
    ),
    pytest.param(
        _hit_slow, _SLOW, None, ("slow_consumers", "limit", "slow_consumer"), id="slow-consumer"
    ),
    pytest.param(
        _hit_idle,
        {"idle_timeout": 0.2},
        None,
        ("idle_timeouts", "limit", "idle_timeout"),
        id="idle-timeout",
    ),
]


@pytest.mark.parametrize(("hit", "fields", "deny", "expected"), LIMIT_HITS)
async def test_limit_hit_is_counted_and_logged_as_json(
    hit: Callable[[int], Awaitable[Peer]],
    fields: dict[str, Any],
    deny: list[str] | None,
    expected: tuple[str, str, str],
) -> None:
    metric, event, reason = expected
    timing = {"idle_timeout", "login_timeout"}
    limits = Limits(**{k: scaled(v) if k in timing else v for k, v in fields.items()})
    login = "login_timeout" in fields
    with json_logs() as logs:
        async with running(
            control(login=login), limits=limits, access=AccessList(deny=deny or ())
        ) as server:
            peer = await hit(port_of(server))
            await wait_for(lambda: server.ctx.metrics[metric] == 1, what=f"{metric} == 1")
            peer_str = f"127.0.0.2:{peer.local_port}"
            await wait_for(
                lambda: any(r.get("peer") == peer_str for r in logs.records),
                what="a log record for the peer",
            )
    records = [r for r in logs.records if r.get("peer") == peer_str and r.get("event") == event]
    assert records, logs.records
    (record,) = [r for r in records if r.get("reason") == reason] or [records[0]]
    assert record["reason"] == reason, record
    assert isinstance(record["conn_id"], int) and record["service"] == "control"
    assert record["level"] in ("info", "warning") and record["msg"]


async def test_configure_logging_json_prints_refusals_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logger = logging.getLogger("wirecat")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    configure_logging("json", verbosity=1)
    try:
        async with running(control(), access=AccessList(deny=["127.0.0.2/32"])) as server:
            peer = await open_peer(port_of(server), "127.0.0.2")
            await peer.wait_closed()
            await wait_for(lambda: server.ctx.metrics["refused_acl"] == 1, what="refused")
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    refusals = [r for r in lines if r.get("event") == "refused"]
    assert len(refusals) == 1, lines
    assert refusals[0]["reason"] == "denied"
    assert refusals[0]["peer"] == f"127.0.0.2:{peer.local_port}"
    assert refusals[0]["level"] == "warning" and isinstance(refusals[0]["conn_id"], int)
