"""The relay: join two endpoints, both ways (``wirecat relay FROM TO``, socat's job).

::

    server = wirecat.relay("tcp://127.0.0.1:9000", "tcp://127.0.0.1:7007")
    async with server:                       # each peer of FROM gets its own connection to TO
        await server.serve_forever()

Stream relays (FROM and TO ``tcp``, ``tls``, ``unix``, ``unix+seqpacket``, ``ws``, ``wss``;
TO also ``exec:CMD``) run on the runtime's :class:`~wirecat.runtime.connection.Connection`
type, so every limit of
``wirecat serve`` applies to FROM (connection caps, rates, access lists, the TLS handshake
deadline, drain), and each direction has its own backpressure: a slow side stops the reading of
the other (at most ``read_high_water`` bytes buffered plus the transport's high-water mark, per
direction). Half-close is per direction (RFC 9293 3.6): EOF from one side shuts down writing
to the other, and the relay lives until both directions ended; TLS has no half-close (RFC 8446
6.1), so a TLS side is closed once both directions ended. Peer data is never lost across a
proxy handshake: it stays in the connection's buffer.

Message endpoints keep their boundaries where the other side has them too: a WebSocket
message or a seqpacket packet is read as one chunk and sent on as one message or packet;
toward a byte stream it is just its bytes, and each chunk read from a byte stream becomes
one message. WebSockets carry binary messages by default (``ws_text=True``: lines as text
messages, as websocat's ``--text``); EOF toward a WebSocket starts its closing handshake
(WebSocket has no half-close), and its close is an EOF toward the other side.

Datagram relays (FROM and TO ``udp`` or ``unix+dgram``) keep one session per client address,
each with its own socket to TO (so replies go back to the right client), an idle timeout
and a cap on sessions; datagram boundaries are kept.

Every relay ends after ``idle_timeout`` seconds with no byte in either direction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import os
import shlex
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..endpoints import Endpoint, parse_endpoint
from ..errors import ConnectionClosed, InvalidEndpoint, NetworkError, WirecatError
from ..runtime import splice as _splice
from ..runtime.connection import Connection, StreamState, connect
from ..runtime.handler import ServerContext, StreamHandler
from ..runtime.limits import AccessList, Limits
from ..runtime.listeners import unix_address
from ..runtime.logs import logger as _log
from ..runtime.server import ConnectionHandler, HandlerService, Server, Service

if TYPE_CHECKING:
    from ..runtime.websocket import WebSocketSettings

__all__ = [
    "DatagramRelayService",
    "RelayStats",
    "Target",
    "bridge",
    "relay",
    "relay_connection",
    "relay_pair",
]

_CHUNK = 256 * 1024


@dataclass(slots=True)
class RelayStats:
    """What one relay moved. Sizes in bytes, times in seconds.

    Attributes:
        peer: the FROM side's address.
        target: the TO endpoint.
        up: bytes from FROM to TO.
        down: bytes from TO to FROM.
        started: ``time.monotonic()`` at the start.
        duration: seconds from start to end.
        reason: how it ended (``"both closed"``, ``"idle timeout"``, ``"reset"``...).
        zero_copy: the bytes moved by ``os.splice`` (plain TCP/Unix on both sides), not
            through Python.
    """

    peer: str = ""
    target: str = ""
    up: int = 0
    down: int = 0
    started: float = field(default_factory=time.monotonic)
    duration: float = 0.0
    reason: str = ""
    zero_copy: bool = False


async def bridge(
    a: Connection,
    b: Connection,
    *,
    idle_timeout: float | None = 300.0,
    stats: RelayStats | None = None,
) -> RelayStats:
    """Copy ``a`` to ``b`` and ``b`` to ``a`` until both directions ended.

    EOF from one side is passed on as a half-close to the other where it can be (not TLS);
    a reset of either side ends both directions. Neither connection is closed here.

    Two plain TCP/Unix connections (not TLS, not WebSocket or seqpacket) are relayed by the
    kernel (:class:`~wirecat.runtime.splice.Splice`: ``os.splice`` through a bounded pipe
    per direction, on Linux): their transports stop reading, bytes already in their buffers
    (and an EOF already seen) go first, and ``stats.zero_copy`` is set. Other pairs are
    copied through the connections, at most 256 KiB per read.

    Args:
        a, b: stream connections.
        idle_timeout: end after this many seconds with no byte either way (``None``: never).
        stats: where to count (default: a new :class:`RelayStats`).

    Returns:
        The :class:`RelayStats`: ``up`` counts ``a`` -> ``b``.

    Cancelling is safe: both directions stop before the cancellation propagates.
    """
    stats = stats if stats is not None else RelayStats()
    if (
        _splice.available()
        and _spliceable(a)
        and _spliceable(b)
        and await _bridge_spliced(a, b, idle_timeout, stats)
    ):
        return stats
    last = [time.monotonic()]

    async def copy(src: Connection, dst: Connection, up: bool) -> None:
        while data := await src.recv(_CHUNK):
            last[0] = time.monotonic()
            await dst.send(data)
            if up:
                stats.up += len(data)
            else:
                stats.down += len(data)
        if dst.can_send_eof:
            await dst.send_eof()

    async def watchdog() -> None:
        assert idle_timeout is not None
        while True:
            left = last[0] + idle_timeout - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(left)  # a timer, not synchronisation: re-checks activity

    tasks = {
        asyncio.ensure_future(copy(a, b, True)),
        asyncio.ensure_future(copy(b, a, False)),
    }
    idle = asyncio.ensure_future(watchdog()) if idle_timeout else None
    try:
        pending = set(tasks)
        while pending:
            waiting = pending | ({idle} if idle is not None else set())
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if idle is not None and idle in done:
                stats.reason = "idle timeout"
                break
            pending -= done
            for task in done:
                exc = task.exception()
                if exc is not None:
                    stats.reason = "reset" if isinstance(exc, ConnectionClosed) else str(exc)
                    pending.clear()
        stats.reason = stats.reason or "both closed"
    finally:
        for task in (*tasks, *((idle,) if idle is not None else ())):
            task.cancel()
        await asyncio.gather(*tasks, *((idle,) if idle is not None else ()), return_exceptions=True)
        stats.duration = time.monotonic() - stats.started
    return stats


def _spliceable(conn: Connection) -> bool:
    """A plain TCP/Unix stream connection whose bytes ``os.splice`` can move: not TLS, not
    a framed subclass (WebSocket), not closing, nobody reading it, nothing half-closed."""
    t = conn.transport
    return (
        type(conn) is Connection
        and conn._reading is None
        and not conn._eof_sent
        and not conn._p.lost
        and not t.is_closing()
        and t.get_extra_info("sslcontext") is None
        and _splice.spliceable_socket(t.get_extra_info("socket"))
    )


async def _write_buffer_empty(conn: Connection) -> None:
    """Wait until the transport handed every written byte to the kernel (what we splice
    must come after it)."""
    t = conn.transport
    if not t.get_write_buffer_size():
        return
    high, low = t.get_write_buffer_limits()
    t.set_write_buffer_limits(high=0, low=0)  # pause_writing now, resume at empty
    try:
        await conn.drain()
    finally:
        if not t.is_closing():
            t.set_write_buffer_limits(high=high, low=low)


async def _bridge_spliced(
    a: Connection, b: Connection, idle_timeout: float | None, stats: RelayStats
) -> bool:
    """:func:`bridge` for two plain stream sockets: the kernel moves the bytes
    (:class:`wirecat.runtime.splice.Splice`). The transports stop reading; bytes already
    in a connection's buffer (and its EOF) go first; the transports' own write buffers are
    flushed before. The sockets are duplicated so the transports keep owning theirs.

    Returns False (reading resumed, nothing moved) when a side was lost while its write
    buffer drained: the buffered path then reports it as it does any loss."""
    for conn in (a, b):
        if conn.transport.is_reading():
            conn.transport.pause_reading()
    await _write_buffer_empty(a)
    await _write_buffer_empty(b)
    if not (_spliceable(a) and _spliceable(b)):
        for conn in (a, b):
            t = conn.transport
            if not t.is_closing() and not t.is_reading():
                t.resume_reading()
        return False
    loop = asyncio.get_running_loop()
    done: asyncio.Future[str] = loop.create_future()
    dups: list[socket.socket] = []
    engine: _splice.Splice | None = None

    def finished(reason: str) -> None:
        if not done.done():
            done.set_result(reason)

    def lost(_: object) -> None:  # a transport was closed under us (shutdown, abort)
        if engine is not None:
            engine.abort("closed")
        finished("closed")

    try:
        for conn in (a, b):
            sock = conn.transport.get_extra_info("socket")
            dups.append(socket.fromfd(sock.fileno(), sock.family, sock.type))
            dups[-1].setblocking(False)
        pa, pb = a._p, b._p
        engine = _splice.Splice(
            dups[0],
            dups[1],
            finished,
            idle_timeout=idle_timeout,
            pending_ab=pa.buffer.read_some() if len(pa.buffer) else b"",
            pending_ba=pb.buffer.read_some() if len(pb.buffer) else b"",
            eof_a=pa.eof,
            eof_b=pb.eof,
        )
        for st in (pa, pb):
            st._closed.add_done_callback(lost)
        engine.start()
        stats.reason = await done
        if stats.reason == "closed":
            stats.reason = "reset"
        stats.zero_copy = True
    finally:
        for st in (a._p, b._p):
            st._closed.remove_done_callback(lost)
        if engine is not None:
            engine.abort("cancelled")
            stats.up += engine.up
            stats.down += engine.down
        for dup in dups:
            dup.close()
        stats.duration = time.monotonic() - stats.started
    return True


@dataclass(frozen=True, slots=True)
class Target:
    """Where a relay goes: a stream endpoint (with client TLS settings) or a command.

    Attributes:
        endpoint: ``tcp``/``tls``/``unix``/``unix+seqpacket``/``ws``/``wss`` endpoint, or
            ``None`` for :attr:`command`.
        command: argv of ``exec:CMD`` (run per peer, its stdin/stdout relayed).
        connect_kwargs: keyword arguments for :func:`wirecat.connect` (``ssl``, ``pin``,
            ``server_hostname``, ``timeout``, ``proxy``, ``ws_binary``).
    """

    endpoint: Endpoint | None = None
    command: tuple[str, ...] = ()
    connect_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | Endpoint, **connect_kwargs: Any) -> Target:
        """``exec:CMD`` (split like a shell) or an endpoint string.

        Raises:
            InvalidEndpoint: not a stream endpoint, or an empty command.
        """
        if isinstance(text, str) and text.startswith("exec:"):
            argv = tuple(shlex.split(text[5:]))
            if not argv:
                raise InvalidEndpoint("exec: needs a command, e.g. exec:'cat'")
            return cls(command=argv)
        ep = parse_endpoint(text) if isinstance(text, str) else text
        return cls(endpoint=ep, connect_kwargs=connect_kwargs)

    def __str__(self) -> str:
        return f"exec:{shlex.join(self.command)}" if self.command else str(self.endpoint)


async def relay_connection(
    conn: Connection,
    target: Target,
    *,
    idle_timeout: float | None = 300.0,
    on_end: Callable[[RelayStats], None] | None = None,
) -> RelayStats:
    """Relay one accepted ``conn`` to ``target`` until both directions end.

    Raises:
        ConnectError, HandshakeError, ...: ``target`` could not be reached (``conn`` is
            left to the caller, who closes it).
    """
    stats = RelayStats(peer=conn.peer_address, target=str(target))
    try:
        if target.command:
            from ..runtime.process import bridge_process

            await bridge_process(conn, list(target.command))
            stats.reason = "process exited"
        else:
            assert target.endpoint is not None
            async with connect(target.endpoint, **target.connect_kwargs) as out:
                await bridge(conn, out, idle_timeout=idle_timeout, stats=stats)
    finally:
        stats.duration = time.monotonic() - stats.started
        if on_end is not None:
            on_end(stats)
    return stats


def _log_end(stats: RelayStats) -> None:
    _log.info(
        "relay %s -> %s ended (%s): %d bytes up, %d bytes down, %.3f s",
        stats.peer,
        stats.target,
        stats.reason,
        stats.up,
        stats.down,
        stats.duration,
        extra={"event": "relay_end", "reason": stats.reason},
    )


class DatagramRelayService(Service):
    """Relay datagrams from a bound ``udp``/``unix+dgram`` endpoint to ``target``.

    One session per client address: its own connected socket to ``target`` (replies go back
    to that client), ended after ``idle_timeout`` seconds without a datagram either way. At
    most ``max_sessions`` sessions exist; a datagram that would open one more is dropped
    and counted (``relay_sessions_refused``). Boundaries are kept; nothing is buffered
    beyond ``max_pending`` datagrams while a session's socket opens.
    """

    name = "relay"

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        target: Endpoint,
        *,
        idle_timeout: float = 60.0,
        max_sessions: int = 1024,
        max_pending: int = 64,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(endpoints, limits=limits)
        if not target.is_datagram:
            raise InvalidEndpoint(f"a datagram relay needs a datagram target, not {target}")
        self.target = target
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self.max_pending = max_pending

    def datagram_protocol(self, ctx: ServerContext) -> asyncio.DatagramProtocol:
        return _DatagramRelay(self, ctx)


class _Session(asyncio.DatagramProtocol):
    def __init__(self, owner: _DatagramRelay, client: Any) -> None:
        self.owner = owner
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] = []
        self.last = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        for data in self.pending:
            self.transport.sendto(data)  # type: ignore[union-attr]
        self.pending.clear()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.last = time.monotonic()
        listener = self.owner.transport
        if listener is not None:
            listener.sendto(data, self.client)

    def error_received(self, exc: Exception) -> None:
        self.owner.ctx.metrics["relay_datagram_errors"] += 1

    def send(self, data: bytes) -> None:
        self.last = time.monotonic()
        if self.transport is not None:
            self.transport.sendto(data)
        elif len(self.pending) < self.owner.service.max_pending:
            self.pending.append(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _DatagramRelay(asyncio.DatagramProtocol):
    def __init__(self, service: DatagramRelayService, ctx: ServerContext) -> None:
        self.service = service
        self.ctx = ctx
        self.transport: asyncio.DatagramTransport | None = None
        self.sessions: dict[Any, _Session] = {}
        self._opening: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._schedule()

    def _schedule(self) -> None:
        tick = max(0.01, min(self.service.idle_timeout / 4, 5.0))
        self._sweeper = asyncio.get_running_loop().call_later(tick, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        for client, session in list(self.sessions.items()):
            if now - session.last >= self.service.idle_timeout:
                session.close()
                del self.sessions[client]
        self._schedule()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.ctx.closing:
            return
        source = addr[0] if isinstance(addr, tuple) else None
        if not self.ctx.access.permits(source):
            self.ctx.metrics["refused_acl"] += 1
            return
        session = self.sessions.get(addr)
        if session is None:
            if len(self.sessions) >= self.service.max_sessions:
                self.ctx.metrics["relay_sessions_refused"] += 1
                return
            session = self.sessions[addr] = _Session(self, addr)
            self.ctx.metrics["relay_sessions"] += 1
            task = asyncio.ensure_future(self._open(session))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)
        session.send(data)

    async def _open(self, session: _Session) -> None:
        loop = asyncio.get_running_loop()
        target = self.service.target
        try:
            if target.scheme == "udp":
                await loop.create_datagram_endpoint(
                    lambda: session, remote_addr=(target.host or "", target.port or 0)
                )
            else:
                import os
                import secrets
                import socket
                import tempfile

                from ..runtime.listeners import unix_address

                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                local = os.path.join(
                    tempfile.gettempdir(), f"wirecat-relay-{os.getpid()}-{secrets.token_hex(4)}"
                )
                sock.bind(local)
                os.unlink(local)  # replies still reach the bound socket; no file left
                sock.connect(unix_address(target.path or ""))
                sock.setblocking(False)
                await loop.create_datagram_endpoint(lambda: session, sock=sock)
        except OSError as exc:
            self.ctx.log.warning("relay: cannot reach %s: %s", target, exc)
            self.sessions.pop(session.client, None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in self._opening:
            task.cancel()
        for session in self.sessions.values():
            session.close()
        self.sessions.clear()


def relay(
    from_: str | Endpoint | Sequence[str | Endpoint],
    to: str | Endpoint | Target,
    *,
    limits: Limits | None = None,
    access: AccessList | None = None,
    tls: Any = None,
    idle_timeout: float | None = 300.0,
    max_sessions: int = 1024,
    verbose: bool = False,
    on_end: Callable[[RelayStats], None] | None = None,
    reuse_port: bool = False,
    ws_text: bool = False,
    websocket: WebSocketSettings | None = None,
    **connect_kwargs: Any,
) -> Server:
    """A server that relays every peer of ``from_`` to ``to`` (not started: use
    ``async with`` or :meth:`Server.start`).

    Args:
        from_: where to listen: connection endpoints (``tcp``, ``tls``, ``unix``,
            ``unix+seqpacket``, ``ws``, ``wss``) or datagram ones (``udp``, ``unix+dgram``,
            then ``to`` must be a datagram endpoint too).
        to: the target: an endpoint, ``exec:CMD``, or a :class:`Target`.
        limits: limits of the FROM side (caps, rates, handshake deadline, drain). Their
            ``idle_timeout`` is replaced by the relay's own (activity either way counts).
        access: allow/deny rules for FROM peers.
        tls: the server ``SSLContext`` for ``tls://`` FROM endpoints.
        idle_timeout: end a relay after this many seconds with no byte either way.
        max_sessions: datagram relays: most client sessions at once.
        verbose: log each relay's bytes each way and duration at INFO when it ends.
        on_end: called with each relay's :class:`RelayStats` when it ends.
        reuse_port: bind with ``SO_REUSEPORT`` (several processes share FROM's port).
        ws_text: WebSocket sides (FROM or TO) carry lines as text messages instead of
            bytes as binary messages.
        websocket: :class:`~wirecat.runtime.websocket.WebSocketSettings` of a ws/wss FROM.
        connect_kwargs: for the TO side, as :func:`wirecat.connect` takes them (``ssl``,
            ``pin``, ``server_hostname``, ``timeout``, ``proxy``).

    Raises:
        InvalidEndpoint: an endpoint does not parse, or FROM and TO kinds do not match.
    """
    raw = [from_] if isinstance(from_, str | Endpoint) else list(from_)
    eps = [parse_endpoint(e) if isinstance(e, str) else e for e in raw]
    target = to if isinstance(to, Target) else Target.parse(to, **connect_kwargs)
    if target.endpoint is not None and target.endpoint.scheme in ("ws", "wss"):
        kwargs = {"ws_binary": not ws_text, **target.connect_kwargs}
        target = dataclasses.replace(target, connect_kwargs=kwargs)
    base = limits or Limits()
    lim = dataclasses.replace(base, idle_timeout=None)
    ctx = ServerContext(lim, access=access)
    if all(ep.is_datagram for ep in eps):
        if target.endpoint is None or not target.endpoint.is_datagram:
            raise InvalidEndpoint(f"a datagram FROM needs a datagram TO (udp, unix+dgram): {to}")
        service: Service = DatagramRelayService(
            eps, target.endpoint, idle_timeout=idle_timeout or 60.0, max_sessions=max_sessions
        )
        return Server([service], ctx=ctx, reuse_port=reuse_port)
    if any(ep.is_datagram for ep in eps):
        raise InvalidEndpoint("relay FROM endpoints must all be streams or all datagrams")
    if target.endpoint is not None and target.endpoint.is_datagram:
        raise InvalidEndpoint(
            f"a stream FROM needs a stream TO (tcp, tls, unix, unix+seqpacket, ws, wss, "
            f"exec:): {to}"
        )

    def ended(stats: RelayStats) -> None:
        ctx.metrics["relays"] += 1
        if verbose:
            _log_end(stats)
        if on_end is not None:
            on_end(stats)

    async def handler(conn: Connection) -> None:
        try:
            await relay_connection(conn, target, idle_timeout=idle_timeout, on_end=ended)
        except (NetworkError, WirecatError, OSError) as exc:
            ctx.metrics["relay_target_errors"] += 1
            ctx.log.warning("relay %s -> %s: %s", conn.peer_address, target, exc)

    ws_eps = [ep for ep in eps if ep.scheme in ("ws", "wss")]
    others = [ep for ep in eps if ep.scheme not in ("ws", "wss")]
    services: list[Service] = []
    dial = _direct_address(target) if _splice.available() else None
    if others and dial is not None:  # plain TCP/Unix peers: callbacks and the splice engine
        timeout = target.connect_kwargs.get("timeout", 10.0)
        services.append(
            _SpliceRelayService(others, handler, target, dial, timeout, idle_timeout, ended)
        )
    elif others:
        services.append(HandlerService(others, handler, name="relay"))
    if ws_eps:
        services.append(
            HandlerService(
                ws_eps, handler, name="relay", websocket=websocket, ws_binary=not ws_text
            )
        )
    return Server(services, ctx=ctx, tls=tls, reuse_port=reuse_port)


def _direct_address(target: Target) -> tuple[int, Any] | None:
    """``(family, sockaddr)`` when ``target`` can be dialled without a resolver, TLS or a
    proxy (plain ``tcp`` to an IP literal, or ``unix``), else ``None``."""
    ep = target.endpoint
    if ep is None or set(target.connect_kwargs) - {"timeout"}:
        return None
    if ep.scheme == "unix" and ep.path:
        return socket.AF_UNIX, unix_address(ep.path)
    if ep.scheme != "tcp":
        return None
    try:
        ip = ipaddress.ip_address(ep.host or "")
    except ValueError:
        return None
    if ip.version == 6:
        return socket.AF_INET6, (str(ip), ep.port or 0, 0, 0)
    return socket.AF_INET, (str(ip), ep.port or 0)


class _SpliceRelayService(HandlerService):
    """The stream relay when TO is dialled directly: each plain TCP/Unix peer is relayed by
    a :class:`_SpliceRelayHandler` (no task, no :class:`Connection`); TLS peers take the
    general path (``handler``)."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        handler: Callable[[Connection], Any],
        target: Target,
        dial: tuple[int, Any],
        timeout: float | None,
        idle_timeout: float | None,
        ended: Callable[[RelayStats], None],
    ) -> None:
        super().__init__(endpoints, handler, name="relay")
        self.target = target
        self.family, self.address = dial
        self.connect_timeout = timeout
        self.idle_timeout = idle_timeout
        self.ended = ended

    def stream_handler(self, ctx: ServerContext) -> StreamHandler:
        return _SpliceRelayHandler(ctx, self)


class SpliceHandler(ConnectionHandler):
    """A server-side peer whose bytes end up relayed by the splice engine, with callbacks
    only (no task, no :class:`Connection`): :meth:`dial` a non-blocking connect, then
    :meth:`on_dialled` (default: :meth:`splice`), then :meth:`on_spliced` with the
    :class:`RelayStats` when the relay ended. Subclasses decide when to dial (at once for the
    relay, after a handshake for SOCKS) in :meth:`on_connect` / :meth:`on_data`, and call
    ``super().on_connect()`` for peers :attr:`direct` cannot serve (TLS): those get a
    :class:`Connection` and the service's coroutine handler, the general path.

    Bytes the peer sends before :meth:`splice` (through asyncio: uvloop starts reading after
    ``connection_made``, a PROXY header adapter passes the rest of its segment) are kept in
    :attr:`pending` and sent first.
    """

    def __init__(self, ctx: ServerContext, service: HandlerService) -> None:
        # Not ConnectionHandler.__init__: no StreamState for a peer the engine relays (one
        # allocation per connection saved); the general path makes it in on_connect().
        StreamHandler.__init__(self, ctx, service)
        self.handler_service = service
        self.out: socket.socket | None = None
        self.dup: socket.socket | None = None
        self.engine: _splice.Splice | None = None
        self.pending = b""
        self.eof = False
        self.direct = False
        self.timer: asyncio.TimerHandle | None = None
        self.stats = RelayStats()
        self.idle_timeout: float | None = None
        self._after_flush: bytes | None = None
        self._handshake_bytes = 0
        self._family = 0  # the peer socket's address family, known once can_splice()
        self.early = False

    def on_connect(self) -> None:
        """The general path (a :class:`Connection` and the coroutine handler); subclasses
        call it for the peers :attr:`direct` cannot serve."""
        self.state = StreamState(self.handler_service.read_high_water)
        super().on_connect()

    def pause_writing(self) -> None:
        if self.direct:
            StreamHandler.pause_writing(self)
        else:
            super().pause_writing()

    def can_splice(self) -> bool:
        """Whether this peer's transport is a plain TCP/Unix socket (not TLS)."""
        t = self.transport
        if t.get_extra_info("sslcontext") is not None:
            return False
        sock = t.get_extra_info("socket")
        if not _splice.spliceable_socket(sock):
            return False
        self._family = int(sock.family)  # read once: each read is an enum conversion
        return True

    def dial(
        self, family: int, address: Any, timeout: float | None, *, early: bool = False
    ) -> None:
        """Connect to ``address`` without blocking; :meth:`on_dialled` or
        :meth:`on_dial_failed` follows (never synchronously).

        ``early``: call :meth:`on_dialled` while the connect is still in flight (no wait
        for it: bytes for the target wait in memory until it is writable); a refusal then
        ends the relay with a connect error, reported by :meth:`on_dial_failed` all the same.
        For a relay, not for a handshake that must tell the peer whether the target answered.
        """
        loop = self._loop
        assert loop is not None
        # SOCK_NONBLOCK: non-blocking from the start (no ioctl for setblocking()).
        out = self.out = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        if family != socket.AF_UNIX:
            out.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = out.connect_ex(address)
        if err == 0:
            loop.call_soon(self._connected_now)
        elif err == errno.EINPROGRESS:  # (a unix socket's EAGAIN is a full backlog: failed)
            if early:
                self.early = True
                loop.call_soon(self.on_dialled)  # after uvloop started reading the peer
            else:
                try:  # over loopback the handshake is usually done when connect() returns
                    out.getpeername()
                except OSError:
                    loop.add_writer(out.fileno(), self._connected)
                else:
                    loop.call_soon(self._connected_now)
                    return
            if timeout:
                self.timer = loop.call_later(timeout, self._connect_deadline)
        else:
            loop.call_soon(self._dial_failed, err)

    def _connect_deadline(self) -> None:
        self.timer = None
        out = self.out
        if out is None or self.closing:
            return
        try:
            out.getpeername()
        except OSError:  # still not connected
            if self.engine is not None:
                self.engine.error = TimeoutError(errno.ETIMEDOUT, "timed out")
                self.engine.abort("reset")
            else:
                self._dial_failed(None)

    def on_data(self, data: bytes) -> None:
        if not self.direct:
            super().on_data(data)
        elif self.engine is None:
            self.pending += data
            if len(self.pending) > self.handler_service.read_high_water:
                self.pause_reading()

    def on_eof(self) -> bool:
        if not self.direct:
            return super().on_eof()
        self.eof = True
        return True

    def on_dialled(self) -> None:
        """Connected (or, with ``dial(early=True)``, connecting): start relaying (override
        to answer a handshake first)."""
        if not self.closing and self.out is not None:
            self.splice()

    def on_dial_failed(self, why: str, err: int | None) -> None:
        """The dial failed (``err``: the errno, ``None`` for a timeout). Default: close."""
        self.close("target unreachable")

    def on_spliced(self, stats: RelayStats) -> None:
        """The relay ended (both directions closed, idle, reset, shutdown)."""

    def splice(self, to_peer: bytes = b"") -> None:
        """Hand both sockets to the engine: :attr:`pending` goes to the target first,
        ``to_peer`` (a handshake's reply) to the peer first."""
        out = self.out
        assert out is not None
        t = self.transport
        if t.is_reading():
            t.pause_reading()  # from here the kernel keeps the bytes until the engine
        if t.get_write_buffer_size():  # what we wrote through asyncio must go first
            self._after_flush = to_peer
            t.set_write_buffer_limits(high=0, low=0)  # resume_writing once it is empty
            return
        try:  # a socket of our own on the transport's connection (it keeps its fd)
            fd = os.dup(t.get_extra_info("socket").fileno())
        except OSError as exc:  # out of file descriptors
            self._dial_failed(exc.errno)
            return
        try:
            self.dup = socket.socket(self._family, socket.SOCK_STREAM, 0, fd)
        except OSError as exc:
            os.close(fd)
            self._dial_failed(exc.errno)
            return
        self._handshake_bytes = len(to_peer)
        self.engine = _splice.Splice(
            self.dup,
            out,
            self._ended,
            idle_timeout=self.idle_timeout,
            pending_ab=self.pending,
            pending_ba=to_peer,
            eof_a=self.eof,
            loop=self._loop,
        )
        self.pending = b""
        self.engine.start()

    def on_writable(self) -> None:
        to_peer = self._after_flush
        if to_peer is None:
            if not self.direct:
                super().on_writable()
            return
        self._after_flush = None
        lim = self.limits
        self.transport.set_write_buffer_limits(high=lim.write_high_water, low=lim.write_low_water)
        if not self.closing and self.out is not None:
            self.splice(to_peer)

    def _connected_now(self) -> None:
        if self.out is not None and not self.closing:
            self.on_dialled()

    def _connected(self) -> None:
        out = self.out
        if out is None or self.closing:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._loop.remove_writer(out.fileno())  # type: ignore[union-attr]
        err = out.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._dial_failed(err)
            return
        self.on_dialled()

    def _dial_failed(self, err: int | None) -> None:
        if self.closing or self.out is None:
            return
        self._release()
        self.on_dial_failed(os.strerror(err) if err else "timed out", err)

    def _ended(self, reason: str) -> None:
        stats = self.stats
        engine = self.engine
        assert engine is not None
        error = engine.error
        if self.early and error is not None and error.errno in _CONNECT_ERRORS:
            self._release()  # the early dial failed: no relay took place
            self.on_dial_failed(os.strerror(error.errno or 0), error.errno)
            return
        stats.reason = reason
        stats.up += engine.up
        stats.down += max(engine.down - self._handshake_bytes, 0)  # not the peer's bytes
        stats.zero_copy = True
        stats.duration = time.monotonic() - stats.started
        self._release()
        if not self.closing:
            self.close(reason)
        self.on_spliced(stats)

    def _release(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        out, self.out = self.out, None
        if out is not None:
            if self.engine is None:
                self._loop.remove_writer(out.fileno())  # type: ignore[union-attr]
            out.close()
        dup, self.dup = self.dup, None
        if dup is not None:
            dup.close()

    def on_close(self, exc: Exception | None) -> None:
        if not self.direct:
            super().on_close(exc)
        elif self.engine is not None and not self.engine.ended:
            self.engine.abort("closed")  # shutdown or abort: _ended() reports it
        else:
            self._release()


#: Errors that only a connect gives: an early-started relay ending with one never reached TO.
_CONNECT_ERRORS = frozenset(
    (errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENOENT)
)


class _SpliceRelayHandler(SpliceHandler):
    """One relayed peer: accept -> dial TO -> splice -> close."""

    def __init__(self, ctx: ServerContext, service: _SpliceRelayService) -> None:
        super().__init__(ctx, service)
        self.relay = service
        self.idle_timeout = service.idle_timeout

    def on_connect(self) -> None:
        if not self.can_splice():
            super().on_connect()  # TLS: the general path
            return
        self.direct = True
        svc = self.relay
        self.stats.peer = self.peer
        self.stats.target = str(svc.target)
        self.dial(svc.family, svc.address, svc.connect_timeout, early=True)

    def on_dial_failed(self, why: str, err: int | None) -> None:
        self.ctx.metrics["relay_target_errors"] += 1
        self.log.warning("relay %s -> %s: %s", self.peer, self.relay.target, why)
        self.close("target unreachable")

    def on_spliced(self, stats: RelayStats) -> None:
        self.relay.ended(stats)


async def relay_pair(
    a: str | Endpoint,
    b: str | Endpoint,
    *,
    idle_timeout: float | None = 300.0,
    a_kwargs: dict[str, Any] | None = None,
    b_kwargs: dict[str, Any] | None = None,
) -> RelayStats:
    """Dial both ``a`` and ``b`` and relay between them once (``--connect-first``).

    Raises:
        ConnectError, HandshakeError, ...: either side could not be reached.
    """
    async with connect(a, **(a_kwargs or {})) as ca, connect(b, **(b_kwargs or {})) as cb:
        stats = RelayStats(peer=str(a), target=str(b))
        return await bridge(ca, cb, idle_timeout=idle_timeout, stats=stats)
