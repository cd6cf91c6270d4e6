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
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..endpoints import Endpoint, parse_endpoint
from ..errors import ConnectionClosed, InvalidEndpoint, NetworkError, WirecatError
from ..runtime.connection import Connection, connect
from ..runtime.handler import ServerContext
from ..runtime.limits import AccessList, Limits
from ..runtime.logs import logger as _log
from ..runtime.server import HandlerService, Server, Service

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
    """

    peer: str = ""
    target: str = ""
    up: int = 0
    down: int = 0
    started: float = field(default_factory=time.monotonic)
    duration: float = 0.0
    reason: str = ""


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

    Args:
        a, b: stream connections.
        idle_timeout: end after this many seconds with no byte either way (``None``: never).
        stats: where to count (default: a new :class:`RelayStats`).

    Returns:
        The :class:`RelayStats`: ``up`` counts ``a`` -> ``b``.

    Cancelling is safe: both directions stop before the cancellation propagates.
    """
    stats = stats if stats is not None else RelayStats()
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
        return Server([service], ctx=ctx)
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
    services: list[Service] = [
        HandlerService(group, handler, name="relay", websocket=websocket, ws_binary=not ws_text)
        for group in (others, ws_eps)
        if group
    ]
    return Server(services, ctx=ctx, tls=tls)


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
