"""The echo service (RFC 862) over streams and datagrams.

Stream: every byte received is sent back until the peer closes. A half-close from the peer
is honoured: everything it sent is echoed, then we close our side (RFC 862 over TCP; RFC
9293 3.6). Against dribbling, echo counts progress in lines: a newline, or ``max_line``
bytes without one, must arrive within ``limits.line_timeout`` seconds of the first byte
after the last one (nc and telnet send whole lines; binary streams pass ``max_line`` bytes
far faster), else the connection is closed without a word. While the peer does not read
its echoes, we stop reading from it: echo never buffers more than the write high-water mark
per connection.

Datagram: each datagram is answered with the same bytes, to its sender; a reply is never
larger than the request (no amplification).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ..endpoints import Endpoint
from ..runtime.handler import ServerContext, StreamHandler
from ..runtime.limits import KeyedRateLimiter, Limits
from ..runtime.server import Service

__all__ = ["EchoService"]


class _EchoHandler(StreamHandler):
    __slots__ = ()

    # Echo's idle clock restarts on every byte, so one byte every few seconds would hold a
    # connection for ever. A rate floor cannot tell that dribbler from a person typing a line
    # every ten seconds into nc (both ~3 B/s). What tells them apart is that a person's
    # terminal sends whole lines: so echo counts progress in lines (a newline, or max_line
    # bytes of binary) and a line must be complete within limits.line_timeout of its first
    # byte. Complete lines are real exchanges, bounded by the connection caps and idle timeout.
    line_framed = True

    def on_data(self, data: bytes) -> None:
        self._tx += len(data)
        self.transport.write(data)
        if self.writing_paused:
            self.pause_reading()  # backpressure: let TCP push back on the sender

    def on_writable(self) -> None:
        self.resume_reading()

    def on_eof(self) -> bool:
        return False  # the transport flushes our echoes, then closes

    def on_line_timeout(self) -> None:
        self.close("line timeout")  # no error line: echo sends nothing but echoes


class _EchoDatagram(asyncio.DatagramProtocol):
    def __init__(
        self, ctx: ServerContext, max_datagram: int, rate: KeyedRateLimiter | None
    ) -> None:
        self.ctx = ctx
        self.max_datagram = max_datagram
        self.rate = rate
        self.transport: asyncio.DatagramTransport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.transport is None or self.ctx.closing:
            return
        if len(data) > self.max_datagram:
            self.ctx.metrics["echo_datagrams_too_large"] += 1
            return
        rate = self.rate
        if (
            rate is not None
            and isinstance(addr, tuple)
            and not rate.allow(addr[0], self._loop.time())
        ):
            self.ctx.metrics["echo_datagrams_rate_limited"] += 1
            return
        self.ctx.metrics["echo_datagrams"] += 1
        if not addr:
            return  # an unbound unix+dgram sender cannot be answered
        if isinstance(addr, bytes):
            addr = addr.rstrip(b"\0")  # uvloop pads Linux abstract (autobind) addresses
        try:
            self.transport.sendto(data, addr)
        except (OSError, ValueError):
            self.ctx.metrics["echo_datagram_errors"] += 1

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from a previous reply (port unreachable): count, keep serving.
        self.ctx.metrics["echo_datagram_errors"] += 1


class EchoService(Service):
    """RFC 862 echo on stream (tcp, unix) and datagram (udp, unix+dgram) endpoints.

    Args:
        endpoints: where to listen; datagram and stream endpoints may be mixed.
        max_datagram: datagrams larger than this (bytes) are dropped, not echoed.
        datagram_rate: datagrams per second answered per source IP (token bucket with a
            burst of twice the rate); excess is dropped silently. ``None``: no limit.
    """

    name = "echo"

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        max_datagram: int = 65535,
        datagram_rate: float | None = None,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(endpoints, limits=limits)
        self.max_datagram = max_datagram
        self.datagram_rate = datagram_rate

    def stream_handler(self, ctx: ServerContext) -> StreamHandler:
        return _EchoHandler(ctx, self)

    def datagram_protocol(self, ctx: ServerContext) -> asyncio.DatagramProtocol:
        rate = self.datagram_rate
        limiter = KeyedRateLimiter(rate, max(1.0, 2 * rate)) if rate else None
        return _EchoDatagram(ctx, self.max_datagram, limiter)
