"""A friendly async stream API for library users and scripts, on ``asyncio.Protocol``.

::

    async with await wirecat.connect("tcp://127.0.0.1:7007") as conn:
        await conn.send(b"hello\\n")
        line = await conn.recv_line()          # b"hello\\n"

Reads are framed from one bounded buffer per connection (:class:`StreamBuffer`); reading
stops (TCP pushes back on the peer) while more than ``read_high_water`` bytes wait unread.
Writes wait for the transport to drain below its high-water mark (backpressure).
Datagram endpoints (``udp``, ``unix+dgram``) give a :class:`DatagramConnection`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import secrets
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from ssl import SSLContext
from typing import Any, Generic, TypeVar, cast

from ..endpoints import Endpoint, parse_endpoint
from ..errors import (
    ConcurrencyError,
    ConnectError,
    ConnectionClosedError,
    ConnectionClosedOK,
    ConnectTimeout,
    HandshakeError,
    IdleTimeout,
    InvalidEndpoint,
    LimitExceeded,
    LocalProtocolError,
    translate_os_error,
)
from ..protocols.buffer import StreamBuffer
from .handler import format_address
from .listeners import Listener, unix_address
from .logs import logger as _log

__all__ = [
    "Connection",
    "DatagramConnection",
    "Opening",
    "StreamState",
    "connect",
    "connect_datagram",
    "open_connection_listener",
    "open_transport",
]

_READ_HIGH_WATER = 256 * 1024  # bytes buffered unread before we stop reading
_DEFAULT_MAX_LINE = 64 * 1024


class StreamState:
    """The receive buffer and flow-control state behind one :class:`Connection`.

    Fed by a client protocol (:class:`_StreamProtocol`) or a server handler
    (:class:`wirecat.runtime.server.ConnectionHandler`): bytes in (:meth:`feed`), end of
    stream (:meth:`feed_eof`), loss (:meth:`lost_with`), and the transport's
    ``pause_writing``/``resume_writing``. Reading pauses above ``read_high_water`` unread
    bytes (TCP then pushes back on the peer) and resumes as the reader catches up.

    Over a transport that keeps message boundaries (``unix+seqpacket``), :meth:`keep_boundaries`
    makes it remember the size of each chunk fed, so that ``Connection.recv`` returns at
    most one message.
    """

    __slots__ = (
        "_closed",
        "_drain",
        "_paused_writing",
        "_waiter",
        "buffer",
        "eof",
        "exc",
        "lost",
        "read_high_water",
        "sizes",
        "transport",
    )

    def __init__(self, read_high_water: int) -> None:
        self.buffer = StreamBuffer()
        self.transport: asyncio.Transport | None = None
        self.read_high_water = read_high_water
        self.exc: BaseException | None = None
        self.eof = False
        self.lost = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused_writing = False
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: Sizes of the unread messages, oldest first (``None``: a byte stream).
        self.sizes: collections.deque[int] | None = None

    def keep_boundaries(self, transport: asyncio.BaseTransport | None = None) -> None:
        """Remember message sizes from now on; with ``transport``, only when its socket is
        a ``SOCK_SEQPACKET`` one."""
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if getattr(sock, "type", None) != socket.SOCK_SEQPACKET:
                return
        if self.sizes is None:
            self.sizes = collections.deque()

    def consumed(self, n: int) -> None:
        """``n`` bytes were read from :attr:`buffer` (message-size bookkeeping)."""
        sizes = self.sizes
        while n > 0 and sizes:
            if sizes[0] <= n:
                n -= sizes.popleft()
            else:
                sizes[0] -= n
                n = 0

    def feed(self, data: bytes) -> None:
        if self.sizes is not None and data:
            self.sizes.append(len(data))
        self.buffer.feed(data)
        if len(self.buffer) > self.read_high_water and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def feed_eof(self) -> None:
        self.eof = True
        self.buffer.feed_eof()
        self._wake()

    def lost_with(self, exc: BaseException | None) -> None:
        self.lost = True
        if exc is not None:
            self.exc = exc
        if not self.eof:
            self.eof = True
            self.buffer.feed_eof()
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait_data(self) -> None:
        t = self.transport
        if t is not None and not self.lost and not t.is_reading() and not t.is_closing():
            t.resume_reading()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def drain(self) -> None:
        """Wait while writing is paused; several writers share one waiter."""
        if self.lost or not self._paused_writing:
            return
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._drain)


class _StreamProtocol(asyncio.Protocol):
    """Client-side protocol of :func:`connect`: feeds a :class:`StreamState`."""

    def __init__(self, read_high_water: int) -> None:
        self.state = StreamState(read_high_water)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.state.transport = cast(asyncio.Transport, transport)
        self.state.keep_boundaries(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.state.feed(data)

    def eof_received(self) -> bool:
        self.state.feed_eof()
        # Keep our write side open: half-close is the caller's choice. TLS has no
        # half-close (a close_notify ends both directions, RFC 8446 6.1).
        t = self.state.transport
        return t is None or t.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.lost_with(exc)

    def pause_writing(self) -> None:
        self.state.pause_writing()

    def resume_writing(self) -> None:
        self.state.resume_writing()


class Connection:
    """One stream connection (tcp, unix), from :func:`connect` or a listener.

    Attributes:
        endpoint: the endpoint it was opened with (or the listener's, server side).
        local_address: our address as a string (``127.0.0.1:51234``, ``[::1]:51234``, ``unix``).
        peer_address: the peer's address, same format.

    Concurrency: one reader and any number of writers at a time. A read and writes may run
    concurrently; a second concurrent read raises :class:`ConcurrencyError` (each would
    get a random part of the stream). Concurrent :meth:`send` calls are safe: each write is
    handed to the transport whole, in call order. Cancelling a read leaves unread bytes in
    the buffer for the next call.

    ``async for line in conn`` reads lines (each with its ``b"\\n"``; the unterminated rest
    last) until the peer closes.
    """

    def __init__(self, endpoint: Endpoint, state: StreamState) -> None:
        assert state.transport is not None
        self.endpoint = endpoint
        self._p = state
        self._t = state.transport
        self.local_address = format_address(self._t.get_extra_info("sockname"))
        self.peer_address = format_address(self._t.get_extra_info("peername"))
        self._eof_sent = False
        self._reading: str | None = None

    @property
    def transport(self) -> asyncio.Transport:
        """The underlying transport (for ``loop.sendfile`` and socket options)."""
        return self._t

    @property
    def at_eof(self) -> bool:
        """True when the peer closed its side and every received byte was read."""
        return self._p.eof and not len(self._p.buffer)

    def _raise_if_lost(self) -> None:
        if self._p.lost:
            exc = self._p.exc
            if exc is not None:
                raise ConnectionClosedError(f"connection to {self.endpoint} lost: {exc}") from exc
            raise ConnectionClosedOK(f"connection to {self.endpoint} is closed")

    async def send(self, data: bytes) -> None:
        """Send bytes; waits while the transport's buffer is above its high-water mark.

        Raises:
            ConnectionClosed: the connection is gone.
            LocalProtocolError: :meth:`send_eof` was called before.
        """
        self._raise_if_lost()
        if self._t.is_closing():
            raise ConnectionClosedOK(f"connection to {self.endpoint} is closing")
        if self._eof_sent:
            raise LocalProtocolError(f"send() after send_eof() on {self.endpoint}")
        self._t.write(data)
        await self._p.drain()

    @property
    def can_send_eof(self) -> bool:
        """False where a half-close does not exist (TLS: close_notify ends both directions)."""
        return self._t.can_write_eof()

    @property
    def write_buffer_size(self) -> int:
        """Bytes written but not yet handed to the kernel."""
        return self._t.get_write_buffer_size()

    async def drain(self) -> None:
        """Wait until the write buffer is below its high-water mark (returns at once if it is,
        or if the connection is gone)."""
        await self._p.drain()

    async def send_eof(self) -> None:
        """Half-close: tell the peer we will send no more (TCP FIN); reading goes on."""
        t = self._t
        if not (self._p.lost or self._eof_sent or t.is_closing()) and t.can_write_eof():
            self._eof_sent = True
            t.write_eof()

    async def _read(
        self, take: Callable[[], bytes | None], timeout: float | None, what: str
    ) -> bytes | None:
        if self._reading is not None:
            raise ConcurrencyError(
                f"{what}() called on {self.endpoint} while another coroutine is in "
                f"{self._reading}(): one reader at a time"
            )
        self._reading = what
        try:
            out = await self._read_locked(take, timeout)
        finally:
            self._reading = None
        if out and self._p.sizes is not None:
            self._p.consumed(len(out))
        return out

    async def _read_locked(
        self, take: Callable[[], bytes | None], timeout: float | None
    ) -> bytes | None:
        p = self._p
        try:
            async with asyncio.timeout(timeout):
                while True:
                    out = take()
                    if out is not None:
                        if (
                            len(p.buffer) < p.read_high_water
                            and not p.lost
                            and not self._t.is_reading()
                            and not self._t.is_closing()
                        ):
                            self._t.resume_reading()
                        return out
                    if p.eof:
                        if p.exc is not None:
                            raise ConnectionClosedError(
                                f"connection to {self.endpoint} lost: {p.exc}"
                            ) from p.exc
                        return None
                    await p.wait_data()
        except TimeoutError:
            raise IdleTimeout(f"no data from {self.endpoint} within {timeout} s") from None

    async def recv(self, max_size: int = 65536, *, timeout: float | None = None) -> bytes:
        """Return up to ``max_size`` bytes as soon as any arrive; ``b""`` at end of stream.

        Over a transport that keeps message boundaries (``unix+seqpacket``), at most one
        message (the rest of it when a read took part of it before).

        Raises:
            IdleTimeout: nothing arrived within ``timeout`` seconds.
            ConnectionClosedError: the connection was reset.
        """
        buf = self._p.buffer
        sizes = self._p.sizes

        def take() -> bytes | None:
            if not len(buf):
                return None
            return buf.read_some(min(max_size, sizes[0]) if sizes else max_size)

        out = await self._read(take, timeout, "recv")
        return out or b""

    async def recv_line(
        self, max_line: int = _DEFAULT_MAX_LINE, *, timeout: float | None = None
    ) -> bytes:
        """Return one line including its ``b"\\n"``.

        At end of stream, returns the unterminated rest (``b""`` if nothing is left).

        Raises:
            LineTooLong: ``max_line`` bytes arrived without a newline (they stay buffered).
            IdleTimeout, ConnectionClosedError.
        """
        buf = self._p.buffer
        out = await self._read(lambda: buf.read_line(max_line), timeout, "recv_line")
        return out if out is not None else buf.read_some()

    async def recv_until(
        self, separator: bytes, max_size: int = _DEFAULT_MAX_LINE, *, timeout: float | None = None
    ) -> bytes:
        """Return the bytes up to and including ``separator`` (at most ``max_size``).

        Raises:
            LimitExceeded: ``max_size`` bytes arrived without the separator.
            ConnectionClosedOK: the stream ended first (the partial data stays buffered).
            IdleTimeout, ConnectionClosedError.
        """
        if not separator:
            raise ValueError("separator must not be empty")
        buf = self._p.buffer
        out = await self._read(lambda: buf.read_until(separator, max_size), timeout, "recv_until")
        if out is None:
            raise ConnectionClosedOK(f"end of stream before {separator!r} from {self.endpoint}")
        return out

    async def recv_exact(self, n: int, *, timeout: float | None = None) -> bytes:
        """Return exactly ``n`` bytes.

        Raises:
            ConnectionClosedOK: the stream ended before ``n`` bytes arrived.
            IdleTimeout, ConnectionClosedError.
        """
        if n < 0:
            raise ValueError("n must be >= 0")
        buf = self._p.buffer
        out = await self._read(lambda: buf.read_exact(n), timeout, "recv_exact")
        if out is None:
            raise ConnectionClosedOK(
                f"end of stream after {len(buf)} of {n} bytes from {self.endpoint}"
            )
        return out

    async def aclose(self, *, timeout: float = 5.0) -> None:
        """Flush and close; waits (at most ``timeout`` seconds) for the close. Idempotent."""
        if not self._t.is_closing():
            self._t.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._p._closed), timeout)
        if not self._p.lost:
            self._t.abort()

    def abort(self) -> None:
        """Close now, discarding unsent data (may send a TCP RST)."""
        self._t.abort()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[bytes]:
        while line := await self.recv_line():
            yield line

    def __repr__(self) -> str:
        return f"<Connection {self.local_address} -> {self.peer_address}>"


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, max_queue: int) -> None:
        self.queue: collections.deque[tuple[bytes, Any]] = collections.deque()
        self.max_queue = max_queue
        self.dropped = 0
        self.exc: Exception | None = None
        self.lost = False
        self._waiter: asyncio.Future[None] | None = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(self.queue) >= self.max_queue:
            self.dropped += 1  # a datagram socket may drop; we drop the newest, bounded
            return
        self.queue.append((data, addr))
        self._wake()

    def error_received(self, exc: Exception) -> None:
        self.exc = exc
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class DatagramConnection:
    """A connected datagram socket (udp, unix+dgram): message boundaries are kept.

    At most ``max_queue`` received datagrams wait unread; newer ones are dropped and counted
    in :attr:`dropped`, as the kernel would.
    """

    def __init__(
        self, endpoint: Endpoint, transport: asyncio.DatagramTransport, proto: _DatagramProtocol
    ) -> None:
        self.endpoint = endpoint
        self._t = transport
        self._p = proto
        self.local_address = format_address(transport.get_extra_info("sockname"))
        self.peer_address = format_address(transport.get_extra_info("peername"))
        self._unlink: str | None = None

    @property
    def dropped(self) -> int:
        """Datagrams dropped because the receive queue was full."""
        return self._p.dropped

    async def send(self, datagram: bytes) -> None:
        """Send one datagram (at most 65,507 bytes over IPv4 UDP).

        Raises:
            LimitExceeded: the datagram is larger than the transport allows.
            ConnectionClosed: the socket is closed.
        """
        if self._p.lost or self._t.is_closing():
            raise ConnectionClosedOK(f"datagram socket for {self.endpoint} is closed")
        if self.endpoint.scheme == "udp" and len(datagram) > 65507:
            raise LimitExceeded(f"datagram of {len(datagram)} bytes exceeds 65507", limit=65507)
        self._t.sendto(datagram)

    async def recv(self, *, timeout: float | None = None) -> bytes:
        """Return the next datagram.

        Raises:
            ConnectionRefused: the peer's port is closed (ICMP port unreachable).
            IdleTimeout: nothing arrived within ``timeout`` seconds.
            ConnectionClosed: the socket is closed.
        """
        p = self._p
        if p._waiter is not None:
            raise ConcurrencyError(
                f"recv() called on {self.endpoint} while another coroutine is in recv()"
            )
        try:
            async with asyncio.timeout(timeout):
                while not p.queue:
                    if p.exc is not None:
                        exc, p.exc = p.exc, None
                        if isinstance(exc, OSError):
                            raise translate_os_error(exc, what=str(self.endpoint)) from exc
                        raise ConnectionClosedError(str(exc)) from exc
                    if p.lost or self._t.is_closing():
                        raise ConnectionClosedOK(f"datagram socket for {self.endpoint} is closed")
                    p._waiter = asyncio.get_running_loop().create_future()
                    try:
                        await p._waiter
                    finally:
                        p._waiter = None
        except TimeoutError:
            raise IdleTimeout(f"no datagram from {self.endpoint} within {timeout} s") from None
        return p.queue.popleft()[0]

    async def aclose(self) -> None:
        """Close the socket. Idempotent."""
        self._t.close()
        if self._unlink:
            with contextlib.suppress(OSError):
                os.unlink(self._unlink)
            self._unlink = None

    async def __aenter__(self) -> DatagramConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


P = TypeVar("P", bound=asyncio.BaseProtocol)


async def open_transport(
    endpoint: Endpoint,
    factory: Callable[[], P],
    *,
    timeout: float | None = 10.0,
    ssl: SSLContext | None = None,
    server_hostname: str | None = None,
    pin: str | None = None,
    handshake_timeout: float = 10.0,
    proxy: Any = None,
) -> tuple[asyncio.Transport, P]:
    """Connect a connection-oriented endpoint (``tcp``, ``tls``, ``unix``,
    ``unix+seqpacket``; ``ws``/``wss`` give their TCP/TLS connection) to a protocol from
    ``factory``.

    The one place that resolves, connects, goes through a proxy, runs and checks the TLS
    handshake (SNI, ``pin``) and translates errors; :func:`connect`, the WebSocket client
    and the files client all use it.

    Args:
        endpoint: where to connect.
        factory: makes the protocol (called once).
        timeout, ssl, server_hostname, pin, handshake_timeout, proxy: as in :func:`connect`.

    Returns:
        ``(transport, protocol)``.

    Raises:
        InvalidEndpoint: not a connection-oriented endpoint, or a proxy for a unix one.
        ConnectionRefused, NameResolutionError, ConnectTimeout, ConnectError,
        HandshakeError, HandshakeTimeout, ProxyError.
    """
    ep = endpoint
    if proxy is not None:
        return await _open_via_proxy(
            ep,
            factory,
            proxy,
            timeout=timeout,
            ssl=ssl,
            server_hostname=server_hostname,
            pin=pin,
            handshake_timeout=handshake_timeout,
        )
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            if ep.scheme in ("tcp", "tls", "ws", "wss"):  # ws: over tcp, wss: over tls
                kwargs: dict[str, Any] = {}
                if isinstance(loop, asyncio.BaseEventLoop):  # uvloop lacks Happy Eyeballs
                    kwargs["happy_eyeballs_delay"] = 0.25  # RFC 8305
                if ep.scheme in ("tls", "wss"):
                    from .tls import client_context

                    kwargs["ssl"] = ssl or client_context(pinned=pin is not None)
                    kwargs["server_hostname"] = server_hostname or ep.host
                    kwargs["ssl_handshake_timeout"] = handshake_timeout
                transport, proto = await loop.create_connection(
                    factory, ep.host or "", ep.port or 0, **kwargs
                )
                if pin is not None:
                    from .tls import check_pin

                    if not check_pin(transport.get_extra_info("ssl_object"), pin):
                        transport.abort()
                        raise HandshakeError(
                            f"TLS certificate of {ep} does not match the pinned {pin}"
                        )
                return transport, proto
            if ep.scheme in ("unix", "unix+seqpacket"):
                assert ep.path is not None
                # Connect the socket ourselves: uvloop rejects abstract ("\0name") paths, and
                # asyncio has no SOCK_SEQPACKET transport.
                seqpacket = ep.scheme == "unix+seqpacket"
                usock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_SEQPACKET if seqpacket else socket.SOCK_STREAM
                )
                try:
                    usock.setblocking(False)
                    await loop.sock_connect(usock, unix_address(ep.path))
                    if seqpacket:
                        from .seqpacket import SeqpacketTransport

                        sproto = factory()
                        return SeqpacketTransport(loop, usock, sproto), sproto
                    return await loop.create_unix_connection(factory, sock=usock)
                except BaseException:
                    usock.close()
                    raise
    except TimeoutError:
        raise ConnectTimeout(f"timed out after {timeout} s connecting to {ep}") from None
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as exc:
        if ep.scheme in ("tls", "wss") and "handshake" not in str(exc).lower():
            raise HandshakeError(
                f"TLS handshake with {ep} failed: the server closed the connection "
                "(does it require a client certificate, or another TLS version?)"
            ) from exc
        raise translate_os_error(exc, what=str(ep), phase="connect") from exc
    except OSError as exc:
        raise translate_os_error(exc, what=str(ep), phase="connect") from exc
    raise InvalidEndpoint(f"{ep} is not a stream endpoint (tcp, tls, unix, unix+seqpacket)")


async def _open_via_proxy(
    ep: Endpoint,
    factory: Callable[[], P],
    proxy: Any,
    *,
    timeout: float | None,
    ssl: SSLContext | None,
    server_hostname: str | None,
    pin: str | None,
    handshake_timeout: float,
) -> tuple[asyncio.Transport, P]:
    """:func:`open_transport` through a SOCKS5 or HTTP CONNECT proxy: the tunnel is asked
    for on a plain connection, then the transport is handed to ``factory()``'s protocol
    (through the TLS handshake with ``ep`` for ``tls``/``wss``). Bytes ``ep`` sent in the
    same segment as the proxy's reply are given to that protocol first, never lost."""
    from .proxy import parse_proxy, tunnel

    spec = parse_proxy(proxy)
    if ep.scheme not in ("tcp", "tls", "ws", "wss"):
        raise InvalidEndpoint(f"a proxy tunnels tcp, tls, ws and wss endpoints, not {ep}")
    try:
        transport, at_proxy = await open_transport(
            spec.endpoint, lambda: _StreamProtocol(_READ_HIGH_WATER), timeout=timeout
        )
    except (ConnectError, ConnectTimeout) as exc:  # say it is the proxy that is unreachable
        raise type(exc)(f"cannot reach the proxy: {exc}", endpoint=exc.endpoint) from exc
    try:
        await tunnel(
            Connection(spec.endpoint, at_proxy.state),
            spec,
            ep.host or "",
            ep.port or 0,
            timeout=timeout,
        )
        state = at_proxy.state
        early = state.buffer.read_some() if len(state.buffer) else b""
        proto = factory()
        if ep.scheme in ("tls", "wss"):
            from .tls import check_pin, client_context

            if early:
                raise HandshakeError(f"{ep} sent {len(early)} bytes before the TLS handshake")
            try:
                tls_transport = await asyncio.get_running_loop().start_tls(
                    transport,
                    proto,
                    ssl or client_context(pinned=pin is not None),
                    server_hostname=server_hostname or ep.host,
                    ssl_handshake_timeout=handshake_timeout,
                )
            except OSError as exc:
                raise translate_os_error(exc, what=str(ep), phase="connect") from exc
            assert tls_transport is not None
            transport = tls_transport
            proto.connection_made(transport)  # start_tls does not call it
            if pin is not None and not check_pin(transport.get_extra_info("ssl_object"), pin):
                raise HandshakeError(f"TLS certificate of {ep} does not match the pinned {pin}")
            return transport, proto
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if early:
            proto.data_received(early)  # type: ignore[attr-defined]
        if state.lost:
            lost = state.exc if isinstance(state.exc, Exception) else None
            proto.connection_lost(lost)
        elif state.eof and not proto.eof_received():  # type: ignore[attr-defined]
            transport.close()
        return transport, proto
    except BaseException:
        transport.abort()
        raise


C = TypeVar("C", bound="Connection | DatagramConnection")


class Opening(Generic[C]):
    """What :func:`connect` and :func:`connect_datagram` return: await it for the
    connection, or use it as ``async with`` (the connection is closed on exit).

    ::

        conn = await wirecat.connect("tcp://127.0.0.1:7007")
        async with wirecat.connect("tcp://127.0.0.1:7007") as conn:
            ...

    Model: websockets' ``connect``, awaitable and an async context manager.
    """

    __slots__ = ("_conn", "_opener")

    def __init__(self, opener: Callable[[], Coroutine[Any, Any, C]]) -> None:
        self._opener: Callable[[], Coroutine[Any, Any, C]] = opener
        self._conn: C | None = None

    def __await__(self) -> Generator[Any, None, C]:
        return self._opener().__await__()

    async def __aenter__(self) -> C:
        self._conn = await self._opener()
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            await self._conn.aclose()


def _parse(endpoint: str | Endpoint) -> Endpoint:
    return parse_endpoint(endpoint) if isinstance(endpoint, str) else endpoint


def connect(
    endpoint: str | Endpoint,
    *,
    timeout: float | None = 10.0,
    read_high_water: int = _READ_HIGH_WATER,
    ssl: SSLContext | None = None,
    server_hostname: str | None = None,
    pin: str | None = None,
    handshake_timeout: float = 10.0,
    proxy: Any = None,
    ws_binary: bool = False,
) -> Opening[Connection]:
    """Open a connection to ``endpoint`` (``tcp``, ``tls``, ``unix``, ``unix+seqpacket``,
    ``ws``, ``wss``).

    ``ws://`` and ``wss://`` give a :class:`~wirecat.runtime.websocket.WebSocketConnection`
    (messages: ``send_text``, ``send_bytes``, ``recv_message``; lines: each text message);
    :func:`~wirecat.runtime.websocket.connect_websocket` takes its WebSocket options.
    ``unix+seqpacket:`` keeps message boundaries: each :meth:`Connection.send` is one
    packet and :meth:`Connection.recv` returns at most one.

    Await the result, or use it with ``async with`` (see :class:`Opening`).

    Args:
        endpoint: an :class:`Endpoint` or a string for :func:`parse_endpoint`
            (``tcp://host:port``, ``host:port``, ``tls://host:port``, ``unix:/path``).
        timeout: seconds allowed for name resolution plus connect; ``None`` waits forever.
        read_high_water: stop reading (TCP pushes back) past this many unread bytes.
        ssl: client context for ``tls://`` (default: verify against the system CAs, see
            :func:`wirecat.runtime.tls.client_context`).
        server_hostname: name to send as SNI (RFC 6066 3) and to verify; default the host.
        pin: ``sha256:HEX`` of the server's certificate; when given, the certificate must
            match it (and chain/name checks are skipped, so self-signed servers work).
        handshake_timeout: absolute TLS handshake deadline in seconds.
        proxy: tunnel through a proxy: ``"socks5://[user:pass@]host:port"`` or
            ``"http://host:port"`` (HTTP CONNECT), or a
            :class:`wirecat.runtime.proxy.ProxySpec` (``tcp``, ``tls``, ``ws``, ``wss``).
        ws_binary: ``ws``/``wss`` only: the stream view sends and reads binary messages
            instead of lines as text messages (see
            :class:`~wirecat.runtime.websocket.WebSocketConnection`).

    Returns:
        An :class:`Opening` that gives a :class:`Connection`.

    Raises:
        InvalidEndpoint: the string does not parse, or it is a datagram endpoint (use
            :func:`connect_datagram`).
        ConnectionRefused, NameResolutionError, ConnectTimeout, ConnectError.
        HandshakeError: TLS verification failed, or the certificate does not match ``pin``.
        HandshakeTimeout: the TLS handshake took longer than ``handshake_timeout``.
        ProxyError: the proxy refused the tunnel.
    """

    async def opener() -> Connection:
        ep = _parse(endpoint)
        if ep.is_datagram:
            raise InvalidEndpoint(f"{ep} is a datagram endpoint: use connect_datagram()")
        if ep.scheme in ("ws", "wss"):  # a message-oriented Connection (WebSocketConnection)
            from .websocket import connect_websocket

            return await connect_websocket(
                ep,
                timeout=timeout,
                ssl=ssl,
                server_hostname=server_hostname,
                pin=pin,
                handshake_timeout=handshake_timeout,
                read_high_water=read_high_water,
                binary=ws_binary,
                proxy=proxy,
            )
        _, proto = await open_transport(
            ep,
            lambda: _StreamProtocol(read_high_water),
            timeout=timeout,
            ssl=ssl,
            server_hostname=server_hostname,
            pin=pin,
            handshake_timeout=handshake_timeout,
            proxy=proxy,
        )
        return Connection(ep, proto.state)

    return Opening(opener)


def connect_datagram(
    endpoint: str | Endpoint, *, timeout: float | None = 10.0, max_queue: int = 1024
) -> Opening[DatagramConnection]:
    """Open a connected datagram socket to ``endpoint`` (``udp://host:port``,
    ``unix+dgram:/path``): message boundaries are kept.

    Await the result, or use it with ``async with`` (see :class:`Opening`).

    Args:
        endpoint: an :class:`Endpoint` or a string for :func:`parse_endpoint`.
        timeout: seconds allowed for name resolution plus the socket set-up.
        max_queue: keep at most this many unread datagrams (newer ones are dropped and
            counted in :attr:`DatagramConnection.dropped`).

    Raises:
        InvalidEndpoint: the string does not parse, or it is not a datagram endpoint.
        NameResolutionError, ConnectTimeout, ConnectError.
    """

    async def opener() -> DatagramConnection:
        ep = _parse(endpoint)
        if not ep.is_datagram:
            raise InvalidEndpoint(f"{ep} is not a datagram endpoint: use connect()")
        return await _open_datagram(ep, timeout=timeout, max_queue=max_queue)

    return Opening(opener)


async def _open_datagram(
    ep: Endpoint, *, timeout: float | None, max_queue: int
) -> DatagramConnection:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            if ep.scheme == "udp":
                dtransport, dproto = await loop.create_datagram_endpoint(
                    lambda: _DatagramProtocol(max_queue), remote_addr=(ep.host or "", ep.port or 0)
                )
                return DatagramConnection(ep, dtransport, dproto)
            assert ep.path is not None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            # Bind a real path so replies reach us (uvloop cannot reply to abstract
            # autobind addresses); it is removed again by aclose().
            local = os.path.join(
                tempfile.gettempdir(), f"wirecat-{os.getpid()}-{secrets.token_hex(4)}.sock"
            )
            try:
                sock.bind(local)
                sock.connect(unix_address(ep.path))
                sock.setblocking(False)
            except BaseException:
                sock.close()
                with contextlib.suppress(OSError):
                    os.unlink(local)
                raise
            dtransport, dproto = await loop.create_datagram_endpoint(
                lambda: _DatagramProtocol(max_queue), sock=sock
            )
            conn = DatagramConnection(ep, dtransport, dproto)
            conn._unlink = local
            return conn
    except TimeoutError:
        raise ConnectTimeout(
            f"timed out after {timeout} s connecting to {ep}", endpoint=str(ep)
        ) from None
    except OSError as exc:
        raise translate_os_error(exc, what=str(ep), phase="connect") from exc


async def open_connection_listener(
    endpoint: str | Endpoint,
    handler: Callable[[Connection], Awaitable[None]],
    *,
    read_high_water: int = _READ_HIGH_WATER,
    backlog: int = 128,
) -> Listener:
    """Listen on a stream endpoint and run ``handler(conn)`` as a task per accepted peer.

    The connection is closed when the handler returns or raises (the exception is logged to
    the ``wirecat`` logger, never left unretrieved). Close the listener to stop accepting;
    open connections stay.

    Raises:
        AddressInUse, PermissionDenied, ListenError, InvalidEndpoint.
    """
    from .listeners import open_stream_listener

    ep = parse_endpoint(endpoint) if isinstance(endpoint, str) else endpoint
    tasks: set[asyncio.Task[None]] = set()
    bound: list[Endpoint] = [ep]  # replaced by the real endpoint once bound

    class _Accepting(_StreamProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            conn = Connection(bound[0], self.state)

            async def run() -> None:
                try:
                    await handler(conn)
                except Exception:
                    _log.exception("connection handler for %s failed", conn.peer_address)
                finally:
                    await conn.aclose()

            task = asyncio.ensure_future(run())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    listener = await open_stream_listener(ep, lambda: _Accepting(read_high_water), backlog=backlog)
    bound[0] = listener.endpoint
    return listener
