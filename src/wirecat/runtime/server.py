"""Services and the server that runs them, with bounded, idempotent shutdown.

Shutdown (SIGINT/SIGTERM, or :meth:`Server.shutdown`): stop accepting, let each service
drain (chat tells members the server is going away), call ``on_shutdown()`` on every
connection (default: flush and close), wait up to ``shutdown_grace`` seconds for peers to
leave, abort the rest. A second signal aborts at once.

Model: uvicorn ``server.py``; websockets ``asyncio/server.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import signal
import ssl
from collections.abc import Awaitable, Callable, Sequence
from socket import SOCK_SEQPACKET
from typing import TYPE_CHECKING

from ..endpoints import Endpoint, Scheme, parse_endpoint
from ..errors import InvalidEndpoint
from . import systemd
from .connection import Connection, StreamState
from .handler import ServerContext, StreamHandler
from .limits import Limits
from .listeners import (
    Listener,
    open_datagram_listener,
    open_stream_listener,
    open_tls_listener,
)
from .proxyheader import ProxyHeaderAdapter, ProxyPolicy

if TYPE_CHECKING:
    from .websocket import WebSocketSettings

__all__ = [
    "ConnectionHandler",
    "HandlerService",
    "Server",
    "ServerContext",
    "Service",
    "listen",
    "run_until_signal",
]


class Service:
    """A named set of endpoints served by one kind of handler.

    Subclasses set :attr:`name` and implement :meth:`stream_handler` and/or
    :meth:`datagram_protocol`.

    Args:
        endpoints: where to listen.
        limits: limits for this service's connections; ``None`` uses the server's.
    """

    name: str = "service"

    #: Whether this service's stream listeners take the PROXY protocol when the server is
    #: configured for it (an admin listener such as metrics says False).
    accepts_proxy: bool = True

    def __init__(self, endpoints: Sequence[Endpoint], *, limits: Limits | None = None) -> None:
        self.endpoints = list(endpoints)
        self.limits = limits

    def stream_handler(self, ctx: ServerContext) -> StreamHandler:
        """Return the handler for one new stream connection."""
        raise NotImplementedError(f"{self.name} does not serve stream endpoints")

    def datagram_protocol(self, ctx: ServerContext) -> asyncio.DatagramProtocol:
        """Return the protocol for one bound datagram endpoint."""
        raise NotImplementedError(f"{self.name} does not serve datagram endpoints")

    async def start(self, ctx: ServerContext) -> None:
        """Called once before listening."""

    async def drain(self, ctx: ServerContext) -> None:
        """Called once when shutdown starts, before connections are asked to close."""

    async def stop(self) -> None:
        """Called once after every connection is gone."""


class Server:
    """Runs services on their endpoints.

    Args:
        services: what to run.
        limits: server-wide limits (``max_conns`` applies across services).
        ctx: an existing context to share (tests); default makes one from ``limits``.
        tls: the server ``SSLContext`` used by every ``tls://`` endpoint
            (see :func:`wirecat.runtime.tls.server_context`).
        reuse_port: bind with ``SO_REUSEPORT`` (several worker processes share the port).
        proxy: accept the PROXY protocol (v1, v2) from these balancers on every stream
            listener of services that take it (:attr:`Service.accepts_proxy`).

    Use as ``async with Server(...) as server:`` or call :meth:`start` and :meth:`shutdown`.
    Not safe to use from several event loops.
    """

    def __init__(
        self,
        services: Sequence[Service],
        *,
        limits: Limits | None = None,
        ctx: ServerContext | None = None,
        tls: ssl.SSLContext | None = None,
        reuse_port: bool = False,
        proxy: ProxyPolicy | None = None,
    ) -> None:
        self.services = list(services)
        self.tls = tls
        self.proxy = proxy
        self.ctx = ctx or ServerContext(limits)
        self.reuse_port = reuse_port
        self.listeners: list[tuple[str, Listener]] = []
        self._stopped: asyncio.Event | None = None
        self._shutdown_task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        """True once :meth:`start` succeeded."""
        return self._stopped is not None and bool(self.listeners)

    @property
    def bound(self) -> list[tuple[str, Endpoint]]:
        """``(service name, endpoint)`` for each open listener, with real ports."""
        return [(name, lst.endpoint) for name, lst in self.listeners]

    @property
    def endpoints(self) -> dict[str, list[Endpoint]]:
        """The bound endpoints by service name, with real ports (``:0`` resolved)."""
        out: dict[str, list[Endpoint]] = {}
        for name, ep in self.bound:
            out.setdefault(name, []).append(ep)
        return out

    def endpoint(self, service: str | None = None, scheme: str | None = None) -> Endpoint:
        """Return the first bound endpoint of ``service`` (any service when ``None``),
        optionally of ``scheme`` (``"tcp"``, ``"udp"``, ``"tls"``, ``"unix"``...).

        Raises:
            LookupError: no such listener (e.g. before :meth:`start`).
        """
        for name, ep in self.bound:
            if (service is None or name == service) and (scheme is None or ep.scheme == scheme):
                return ep
        what = " ".join(x for x in (scheme, "listener for service", repr(service)) if x)
        raise LookupError(f"no {what}" if service else f"no {scheme or ''} listener".strip())

    async def start(self) -> None:
        """Open every listener; on any failure close those already open and re-raise.

        Raises:
            AddressInUse, PermissionDenied, ListenError, InvalidEndpoint.
        """
        self._stopped = asyncio.Event()
        ctx = self.ctx
        try:
            for svc in self.services:
                await svc.start(ctx)
                for ep in svc.endpoints:
                    if ep.is_datagram:
                        lst = await open_datagram_listener(
                            ep,
                            functools.partial(svc.datagram_protocol, ctx),
                            reuse_port=self.reuse_port,
                        )
                    else:
                        factory = functools.partial(svc.stream_handler, ctx)
                        proxy = self.proxy if svc.accepts_proxy else None
                        if ep.scheme in ("tls", "wss") and self.tls is not None:
                            lst = await open_tls_listener(
                                ep,
                                factory,
                                ssl=self.tls,
                                handshake_timeout=ctx.limits.handshake_timeout,
                                reuse_port=self.reuse_port,
                                proxy=proxy,
                            )
                        else:
                            stream_factory: Callable[[], asyncio.Protocol] = factory
                            if proxy is not None:
                                stream_factory = functools.partial(
                                    ProxyHeaderAdapter, factory, proxy, ctx.metrics
                                )
                            lst = await open_stream_listener(
                                ep, stream_factory, reuse_port=self.reuse_port, ssl=self.tls
                            )
                    self.listeners.append((svc.name, lst))
                    ctx.log.info("%s listening on %s", svc.name, lst.endpoint)
        except BaseException:
            for _, lst in self.listeners:
                lst.close()
            self.listeners.clear()
            raise

    async def serve_forever(self) -> None:
        """Wait until :meth:`shutdown` completes (call :meth:`start` first)."""
        if self._stopped is None:
            await self.start()
        assert self._stopped is not None
        await self._stopped.wait()

    def shutdown_soon(self) -> asyncio.Task[None]:
        """Start a graceful shutdown in the background; idempotent. Returns its task."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.ensure_future(self._shutdown())
        return self._shutdown_task

    async def shutdown(self, grace: float | None = None) -> None:
        """Drain and stop: bounded by ``grace`` seconds (default ``limits.shutdown_grace``).

        Idempotent and safe to call concurrently; every caller returns once stopped.
        """
        if grace is not None and self._shutdown_task is None:
            self._shutdown_task = asyncio.ensure_future(self._shutdown(grace))
        await asyncio.shield(self.shutdown_soon())

    def abort(self) -> None:
        """Stop now: close listeners and abort every connection without waiting."""
        self.ctx.closing = True
        for _, lst in self.listeners:
            lst.close()
        for conn in list(self.ctx.connections):
            conn.abort("forced shutdown")
        if self._stopped is not None:
            self._stopped.set()

    async def _shutdown(self, grace: float | None = None) -> None:
        ctx = self.ctx
        ctx.closing = True
        grace = ctx.limits.shutdown_grace if grace is None else grace
        for _, lst in self.listeners:
            lst.close()
        for svc in self.services:
            try:
                await asyncio.wait_for(svc.drain(ctx), grace)
            except Exception:  # a service that fails to drain must not block shutdown
                ctx.log.exception("%s: drain failed", svc.name)
        for conn in list(ctx.connections):
            conn._guard(conn.on_shutdown)
        for lingering in list(ctx.lingering):  # a lingering close does not outlast the drain
            lingering.end()
        if ctx.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.wait_empty(), grace)
        for conn in list(ctx.connections):
            conn.abort("shutdown grace expired")
        if ctx.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.wait_empty(), 1.0)
        for svc in self.services:
            with contextlib.suppress(Exception):
                await svc.stop()
        for _, lst in self.listeners:
            if lst.server is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lst.server.wait_closed(), 1.0)
        if self._stopped is not None:
            self._stopped.set()

    async def reload(self) -> None:
        """Re-read what can change without a restart (SIGHUP). Here: nothing; subclasses
        (:class:`wirecat.Server`) reload the users file and the TLS certificate."""
        self.ctx.log.info("reload: nothing to reload")

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()


async def run_until_signal(
    server: Server, on_started: Callable[[Server], None] | None = None
) -> int:
    """Start ``server`` (unless started) and serve until SIGINT or SIGTERM; return 0.

    The first signal drains gracefully (bounded by ``shutdown_grace``); a second one aborts
    every connection at once. SIGHUP calls :meth:`Server.reload` (one at a time). Under
    systemd, readiness, reloads and the stop are reported (``sd_notify``). The handlers
    are in place before the listeners open, so a signal right after a peer could connect
    (or after ``on_started`` announced the server) is never fatal.
    """
    loop = asyncio.get_running_loop()
    signals = 0
    reloading: asyncio.Task[None] | None = None
    gc_before: tuple[int, int, int] | None = None

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            systemd.notify("STOPPING=1")
            server.ctx.log.warning("shutting down (signal again to force)")
            server.shutdown_soon()
        else:
            server.ctx.log.warning("forced shutdown")
            server.abort()

    async def reload() -> None:
        systemd.notify("RELOADING=1")
        try:
            await server.reload()
        except Exception:  # a reload must never stop the server
            server.ctx.log.exception("reload failed; serving on with the old settings")
        finally:
            systemd.notify("READY=1")

    def on_hangup() -> None:
        nonlocal reloading
        if signals or (reloading is not None and not reloading.done()):
            return
        reloading = asyncio.ensure_future(reload())

    installed: list[signal.Signals] = []
    for sig, handler in (
        (signal.SIGINT, on_signal),
        (signal.SIGTERM, on_signal),
        (signal.SIGHUP, on_hangup),
    ):
        try:
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread
            pass
    try:
        if not server.started:
            await server.start()
        gc_before = _tune_gc()
        if on_started is not None:
            on_started(server)
        systemd.notify("READY=1")
        await server.serve_forever()
    finally:
        if gc_before is not None:  # a library caller's process goes on as it was
            gc.unfreeze()
            gc.set_threshold(*gc_before)
        for sig in installed:
            loop.remove_signal_handler(sig)
        if reloading is not None and not reloading.done():
            reloading.cancel()
    return 0


#: Young-generation threshold of the cyclic GC while a server runs (Python's default: 700).
GC_GEN0_THRESHOLD = 20_000


def _tune_gc() -> tuple[int, int, int]:
    """A long-running server's objects (modules, classes, the server itself) exist from its
    start: :func:`gc.freeze` takes them out of every later collection, and a higher
    young-generation threshold runs the collector less often per connection (nearly all
    per-connection objects are freed by reference counting, not by the collector).
    Returns the thresholds before (restored, and the objects unfrozen, when the server
    stops)."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(max(before[0], GC_GEN0_THRESHOLD), before[1], before[2])
    return before


class ConnectionHandler(StreamHandler):
    """Server side of :func:`listen`: gives each accepted peer to ``handler(conn)`` as a
    :class:`~wirecat.runtime.connection.Connection`, the type :func:`connect` returns.

    The connection lives under every limit of the server (admission, caps, idle timeout,
    TLS handshake deadline, drain); the handler's task ends when the peer goes, and the
    connection is closed when the handler returns or raises (logged and counted in
    ``handler_errors``).
    """

    def __init__(self, ctx: ServerContext, service: HandlerService) -> None:
        super().__init__(ctx, service)
        self.handler_service = service
        self.state = StreamState(service.read_high_water)

    def on_connect(self) -> None:
        state = self.state
        state.transport = self.transport
        state.keep_boundaries(self.transport)  # unix+seqpacket: recv() gives one packet
        conn = Connection(_local_endpoint(self.transport), state)
        self.handler_service._spawn(self, conn)

    def on_data(self, data: bytes) -> None:
        self.state.feed(data)

    def on_eof(self) -> bool:
        self.state.feed_eof()
        return True  # half-close: the handler decides when to stop writing

    def on_close(self, exc: Exception | None) -> None:
        self.state.lost_with(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self.state.pause_writing()

    def on_writable(self) -> None:
        self.state.resume_writing()


def _local_endpoint(transport: asyncio.BaseTransport) -> Endpoint:
    """The endpoint a peer reached, from the socket's own address."""
    name = transport.get_extra_info("sockname")
    if isinstance(name, tuple):
        scheme: Scheme = "tls" if transport.get_extra_info("sslcontext") is not None else "tcp"
        return Endpoint(scheme, str(name[0]), int(name[1]))
    path = name.decode(errors="replace") if isinstance(name, bytes) else str(name or "")
    sock = transport.get_extra_info("socket")
    kind: Scheme = "unix+seqpacket" if getattr(sock, "type", None) == SOCK_SEQPACKET else "unix"
    return Endpoint(kind, path=path.replace("\0", "@", 1) or "@")


class HandlerService(Service):
    """A service that runs ``handler(conn)`` for every accepted peer (see :func:`listen`).

    On ``ws://``/``wss://`` endpoints the handler gets a
    :class:`~wirecat.runtime.websocket.WebSocketConnection` for each WebSocket opened (the
    upgrade, origin check and keepalive done by the runtime); on ``unix+seqpacket:`` a
    :class:`Connection` whose ``recv`` returns one packet at a time.

    Args:
        endpoints: connection endpoints to listen on (tcp, tls, unix, unix+seqpacket), or
            WebSocket ones (ws, wss), not both kinds in one service.
        handler: ``async def handler(conn: Connection) -> None``.
        name: the service name in logs and :attr:`Server.endpoints`.
        read_high_water: stop reading a peer past this many unread bytes.
        limits: per-service limits (``None``: the server's).
        websocket: WebSocket hygiene for ws/wss endpoints (default
            :class:`~wirecat.runtime.websocket.WebSocketSettings`).
        ws_binary: the stream view of the WebSocket connections: binary messages instead
            of lines as text messages.

    Raises:
        InvalidEndpoint: a datagram or stdio endpoint, or ws and non-ws ones mixed.
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        handler: Callable[[Connection], Awaitable[None]],
        *,
        name: str = "handler",
        read_high_water: int = 256 * 1024,
        limits: Limits | None = None,
        websocket: WebSocketSettings | None = None,
        ws_binary: bool = False,
    ) -> None:
        for ep in endpoints:
            if ep.is_datagram or ep.scheme == "stdio":
                raise InvalidEndpoint(
                    f"listen() needs stream endpoints (tcp, tls, unix, unix+seqpacket, ws, "
                    f"wss), not {ep}"
                )
        kinds = {ep.scheme in ("ws", "wss") for ep in endpoints}
        if len(kinds) > 1:
            raise InvalidEndpoint("one service listens on ws:// endpoints or on others, not both")
        super().__init__(endpoints, limits=limits)
        self.name = name
        self.handler = handler
        self.read_high_water = read_high_water
        self.websocket = websocket
        self.ws_binary = ws_binary
        self._ws = kinds == {True}
        paths = {ep.path or "/" for ep in endpoints}
        self._ws_path = paths.pop() if len(paths) == 1 else None
        self._tasks: set[asyncio.Task[None]] = set()

    def stream_handler(self, ctx: ServerContext) -> StreamHandler:
        if self._ws:
            from .websocket import WebSocketConnectionHandler, WebSocketSettings

            settings = self.websocket or WebSocketSettings()
            return WebSocketConnectionHandler(
                ctx, self, settings, self._ws_path, binary=self.ws_binary
            )
        return ConnectionHandler(ctx, self)

    def _spawn(self, owner: StreamHandler, conn: Connection) -> None:
        async def run() -> None:
            try:
                await self.handler(conn)
            except asyncio.CancelledError:
                raise
            except Exception:
                owner.ctx.metrics["handler_errors"] += 1
                owner.log.exception("connection handler failed")
            finally:
                await conn.aclose(timeout=owner.limits.shutdown_grace)

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def listen(
    endpoint: str | Endpoint | Sequence[str | Endpoint],
    handler: Callable[[Connection], Awaitable[None]],
    *,
    limits: Limits | None = None,
    tls: ssl.SSLContext | None = None,
    read_high_water: int = 256 * 1024,
    reuse_port: bool = False,
) -> Server:
    """Serve ``handler`` on ``endpoint``: ``async def handler(conn)`` runs once per accepted
    peer, with the same :class:`~wirecat.runtime.connection.Connection` type that
    :func:`connect` returns, under the same limits, TLS and drain as wirecat's services.

    ::

        async def echo(conn: wirecat.Connection) -> None:
            async for line in conn:
                await conn.send(line)

        async with wirecat.listen("tcp://127.0.0.1:0", echo) as server:
            print(server.endpoint())             # the real port
            await server.serve_forever()

    Args:
        endpoint: one stream endpoint (or several) to listen on; port 0 picks a free one.
        handler: the coroutine function run per peer; the connection is closed when it
            returns or raises (an exception is logged, never raised into the server).
        limits: server limits (default :class:`Limits`: 1024 connections, 64 per source,
            300 s idle timeout, 5 s shutdown grace).
        tls: the server ``SSLContext`` for ``tls://`` endpoints
            (:func:`wirecat.runtime.tls.server_context`).
        read_high_water: stop reading a peer past this many unread bytes.
        reuse_port: bind with ``SO_REUSEPORT``.

    Returns:
        A :class:`Server`, not yet started: use ``async with`` or :meth:`Server.start`.

    Raises:
        InvalidEndpoint: an endpoint is not a stream endpoint, or does not parse.
        (On start) AddressInUse, PermissionDenied, ListenError.
    """
    raw = [endpoint] if isinstance(endpoint, str | Endpoint) else list(endpoint)
    eps = [parse_endpoint(e) if isinstance(e, str) else e for e in raw]
    if any(ep.scheme in ("tls", "wss") for ep in eps) and tls is None:
        raise InvalidEndpoint("tls:// and wss:// endpoints need a server SSLContext (tls=...)")
    service = HandlerService(eps, handler, read_high_water=read_high_water)
    return Server([service], limits=limits, tls=tls, reuse_port=reuse_port)
