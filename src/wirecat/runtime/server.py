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
import signal
import ssl
from collections.abc import Sequence

from ..endpoints import Endpoint
from .connection import ServerContext, StreamHandler
from .limits import Limits
from .listeners import (
    Listener,
    open_datagram_listener,
    open_stream_listener,
    open_tls_listener,
)

__all__ = ["Server", "ServerContext", "Service", "run_until_signal"]


class Service:
    """A named set of endpoints served by one kind of handler.

    Subclasses set :attr:`name` and implement :meth:`stream_handler` and/or
    :meth:`datagram_protocol`.

    Args:
        endpoints: where to listen.
        limits: limits for this service's connections; ``None`` uses the server's.
    """

    name: str = "service"

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
    ) -> None:
        self.services = list(services)
        self.tls = tls
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
                        if ep.scheme == "tls" and self.tls is not None:
                            lst = await open_tls_listener(
                                ep,
                                factory,
                                ssl=self.tls,
                                handshake_timeout=ctx.limits.handshake_timeout,
                                reuse_port=self.reuse_port,
                            )
                        else:
                            lst = await open_stream_listener(
                                ep, factory, reuse_port=self.reuse_port, ssl=self.tls
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

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()


async def run_until_signal(server: Server) -> int:
    """Start ``server`` (unless started) and serve until SIGINT or SIGTERM; return 0.

    The first signal drains gracefully (bounded by ``shutdown_grace``); a second one aborts
    every connection at once.
    """
    loop = asyncio.get_running_loop()
    if not server.started:
        await server.start()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            server.ctx.log.warning("shutting down (signal again to force)")
            server.shutdown_soon()
        else:
            server.ctx.log.warning("forced shutdown")
            server.abort()

    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread
            pass
    try:
        await server.serve_forever()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    return 0
