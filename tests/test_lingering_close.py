"""Lingering close (issue #13, "bad input gets a clear error"): the reason line survives a
peer that is still sending.

When the server closes a connection whose peer keeps sending (a dribbler cut by the line
deadline, a flooder), bytes are unread in our receive queue at ``close()``, or arrive
after it: Linux then answers with a reset, and the peer's kernel may drop the reason line
we just wrote before the peer reads it. The runtime now half-closes, reads and discards for
a bounded time (``LINGER_TIME``), then closes: model nginx ``lingering_close``.
"""

from __future__ import annotations

import asyncio

from _chat import Peer
from helpers import scaled, serving, wait_for
from wirecat.endpoints import Endpoint
from wirecat.runtime.handler import LINGER_TIME
from wirecat.runtime.limits import Limits
from wirecat.services.chat import ChatService

LINE = scaled(0.2)  # the partial-line deadline that cuts the dribbler
T = scaled(5.0)


async def _dribble_until_closed(peer: Peer, pace: float) -> bytes:
    """Send a byte every ``pace`` seconds (never a newline) and never stop until the server
    has closed; return all it sent. The sending is the attack, not synchronisation."""
    loop = asyncio.get_running_loop()
    read = asyncio.ensure_future(peer.reader.read())
    end = loop.time() + T
    while not read.done() and loop.time() < end:
        try:
            peer.writer.write(b"x" * 64)
        except (ConnectionError, RuntimeError):
            break
        await asyncio.wait([read], timeout=pace)
    try:
        return await asyncio.wait_for(read, T)
    except ConnectionResetError:
        return b"<reset>"


async def test_a_peer_still_sending_reads_the_timeout_line_before_eof() -> None:
    ep = Endpoint("tcp", "127.0.0.1", 0)
    svc = ChatService([ep], max_rate=1000.0, burst=1000, banner_delay=0)
    lim = Limits(line_timeout=LINE, idle_timeout=scaled(5.0), max_line=1 << 20)
    for _ in range(3):  # each round is one chance for the reset to win the race
        async with serving(svc, limits=lim) as server:
            peer = await Peer.open(server.endpoint("chat"))
            try:
                await peer.until(b"*** Programs:")
                await peer.send(b"ann\n")
                await peer.until(b"*** in #lobby")
                rest = await _dribble_until_closed(peer, 0.001)
            finally:
                await peer.aclose()
            assert rest.endswith(f"!!! timeout: line not completed within {LINE:g} s\n".encode())
            assert server.ctx.metrics["line_timeouts"] == 1


async def test_lingering_is_bounded_for_a_peer_that_never_stops() -> None:
    """A peer that never reads our EOF and keeps sending is closed ``LINGER_TIME`` later;
    meanwhile it is no longer a connection (no cap counts it; on_close ran)."""
    ep = Endpoint("tcp", "127.0.0.1", 0)
    svc = ChatService([ep], max_rate=1000.0, burst=1000, banner_delay=0)
    lim = Limits(line_timeout=LINE, idle_timeout=scaled(5.0), max_line=1 << 20)
    async with serving(svc, limits=lim) as server:
        _, writer = await asyncio.open_connection(ep.host, server.endpoint("chat").port)
        loop = asyncio.get_running_loop()
        try:
            writer.write(b"ann\n")
            start = loop.time()
            end = start + T
            while server.ctx.metrics["line_timeouts"] == 0 and loop.time() < end:
                writer.write(b"x" * 64)
                await asyncio.sleep(0.005)
            assert server.ctx.metrics["line_timeouts"] == 1
            cut = loop.time()
            await wait_for(lambda: not server.ctx.connections, what="no connection")
            assert len(server.ctx.lingering) == 1
            while server.ctx.lingering and loop.time() < end:
                writer.write(b"x" * 64)  # still sending, never reading the EOF
                await asyncio.sleep(0.01)
            assert not server.ctx.lingering
            assert loop.time() - cut < LINGER_TIME + scaled(1.0)
        finally:
            writer.close()


async def test_a_drain_ends_lingering_at_once() -> None:
    ep = Endpoint("tcp", "127.0.0.1", 0)
    svc = ChatService([ep], max_rate=1000.0, burst=1000, banner_delay=0)
    lim = Limits(line_timeout=LINE, idle_timeout=scaled(5.0), max_line=1 << 20)
    loop = asyncio.get_running_loop()
    server_cm = serving(svc, limits=lim)
    server = await server_cm.__aenter__()
    _, writer = await asyncio.open_connection(ep.host, server.endpoint("chat").port)
    try:
        writer.write(b"ann\n")
        end = loop.time() + T
        while not server.ctx.lingering and loop.time() < end:
            writer.write(b"x" * 64)
            await asyncio.sleep(0.005)
        assert len(server.ctx.lingering) == 1
        start = loop.time()
        await server_cm.__aexit__(None, None, None)
        assert loop.time() - start < LINGER_TIME / 2
        assert not server.ctx.lingering
    finally:
        writer.close()
