"""State and helpers shared by the load-generator modes (echo, stream, connect, chat).

Kept apart from :mod:`wirecat.bench.engine` (which runs a worker) and
:mod:`wirecat.bench.chat` (the chat mode) so that neither imports the other: the engine
imports the chat mode, and both import this.
"""

from __future__ import annotations

import asyncio
import errno
import resource
import ssl
from collections import Counter
from collections.abc import Callable
from time import perf_counter

from .config import BenchConfig
from .histogram import Histogram

__all__ = ["Run", "classify_error", "measure", "open_connection", "raise_fd_limit"]


def classify_error(exc: BaseException) -> str:
    """Return the error kind reported for ``exc`` (``connect_refused``, ``reset``, ...)."""
    if isinstance(exc, ConnectionRefusedError):
        return "connect_refused"
    if isinstance(exc, TimeoutError):
        return "connect_timeout"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset"
    if isinstance(exc, ssl.SSLError):
        return "tls_error"
    if isinstance(exc, OSError):
        if exc.errno == errno.EADDRNOTAVAIL:
            return "no_free_port"
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return "too_many_open_files"
        if exc.errno == errno.ENOENT:
            return "connect_refused"
        return "connect_error"
    return type(exc).__name__


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file soft limit toward ``wanted`` (at most the hard limit).

    Returns:
        The soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):  # pragma: no cover - refused by the OS
            pass
    return soft


class Run:
    """State shared by every client of one worker."""

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.hist = Histogram()
        self.errors: Counter[str] = Counter()
        self.ops = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.connects = 0
        #: connections that opened, then ended or were refused by the server, not on purpose
        self.dropped = 0
        self.deliveries = 0  # chat: messages received by members
        #: operations still allowed (-1: no count limit)
        self.remaining = config.count if config.count is not None else -1
        self.stop = False  # no new operations
        self.closing = False  # connections are being closed on purpose
        self.inflight = 0
        self.live = 0  # clients still able to work
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.on_measure: Callable[[str], None] | None = None

    def reset(self) -> None:
        """End of warm-up: forget what was measured so far (errors are kept)."""
        self.hist.reset()
        self.ops = self.bytes_sent = self.bytes_received = self.deliveries = 0
        if self.config.mode == "connect":
            self.connects = 0
        if self.config.count is not None:
            self.remaining = self.config.count

    def check_done(self) -> None:
        if self.done.done():
            return
        if self.live <= 0 or (self.remaining == 0 and self.inflight == 0):
            self.done.set_result(None)

    def note_refusal(self, data: bytes) -> bool:
        """Count a server's one-line refusal (``error: REASON, try again later``, as wirecat
        and many servers send before closing) under ``refused:REASON``; return whether
        ``data`` was one. Called only on unexpected or short replies: no cost per round trip."""
        if not data.startswith(b"error: "):
            return False
        line = data[7:].split(b"\n", 1)[0][:80].decode("utf-8", "replace")
        self.errors["refused:" + line.removesuffix(", try again later")] += 1
        return True

    def lost(self, exc: BaseException | None) -> None:
        """A client's connection ended."""
        self.live -= 1
        if not self.closing:
            self.dropped += 1
            self.errors[classify_error(exc) if exc is not None else "closed_by_peer"] += 1
        self.check_done()

    def refused(self) -> None:
        """A client's connection was refused by the server after it opened (its refusal line
        already counted by :meth:`note_refusal`): it no longer works."""
        self.live -= 1
        self.dropped += 1
        self.check_done()


def _tls_context(config: BenchConfig) -> ssl.SSLContext | None:
    if config.endpoint.scheme not in ("tls", "wss"):
        return None
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def open_connection(
    config: BenchConfig,
    factory: Callable[[], asyncio.Protocol],
    source: str | None = None,
) -> tuple[asyncio.Transport, asyncio.Protocol]:
    """Open one connection to ``config.endpoint`` with protocol ``factory()``.

    Args:
        config: the run (endpoint, TLS options).
        factory: builds the protocol instance.
        source: local IP address to bind to, or ``None``.

    Returns:
        The transport and protocol.

    Raises:
        OSError: the connection failed (callers classify it with :func:`classify_error`).
    """
    loop = asyncio.get_running_loop()
    ep = config.endpoint
    transport: asyncio.Transport
    proto: asyncio.Protocol
    if ep.is_unix:
        transport, proto = await loop.create_unix_connection(factory, ep.path)
    else:
        ctx = _tls_context(config)
        local = (source, 0) if source else None
        host, port = str(ep.host), int(ep.port or 0)
        if ctx is None:
            transport, proto = await loop.create_connection(factory, host, port, local_addr=local)
        else:
            transport, proto = await loop.create_connection(
                factory, host, port, ssl=ctx, server_hostname=host, local_addr=local
            )
    return transport, proto


async def measure(run: Run, kick: Callable[[], None]) -> float:
    """Start traffic, handle warm-up, stop at the duration cap or when done; return seconds."""
    loop = asyncio.get_running_loop()
    config = run.config
    hook = run.on_measure
    if config.warmup > 0:
        kick()
        await asyncio.wait([run.done], timeout=config.warmup)
        run.reset()
        if hook is not None:
            hook("start")
    else:
        if hook is not None:
            hook("start")
        kick()
    start = perf_counter()

    def time_up() -> None:
        if not run.done.done():
            run.done.set_result(None)

    handle = loop.call_later(config.duration, time_up)
    try:
        await run.done
    finally:
        handle.cancel()
    run.stop = True
    elapsed = perf_counter() - start
    if hook is not None:
        hook("stop")
    return elapsed
