"""Server-side stream connections: one :class:`StreamHandler` per accepted peer.

The handler is an ``asyncio.Protocol`` (not a StreamReader) for speed: ``data_received``
hands bytes straight to the service, writes go straight to the transport. Around that it
adds what every server needs and the guides leave out:

- a connection id, a peer string and a logger carrying both;
- membership in the server's registry, and the server-wide ``max_conns`` cap;
- write flow control: high/low water marks on the transport, ``writing_paused``, and a hard
  ``max_output`` cap past which the peer is cut as a *slow consumer* instead of growing
  memory or stalling anyone else;
- an idle timer (no timer churn per chunk: one timestamp per ``data_received``);
- for line-framed handlers, a partial-line deadline (``limits.line_timeout``): the time the
  unfinished line began is noted per chunk and checked by the same sweep, so dribbling one
  byte at a time, which keeps the idle timer happy, cannot hold a connection for ever;
- half-close: ``on_eof()`` decides whether our write side stays open (RFC 9293 3.6).

Model: websockets ``asyncio/connection.py``; uvicorn ``protocols/http/flow_control.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol, cast

from .limits import AccessList, KeyedRateLimiter, Limits
from .logs import logger as _root_logger


class ServiceInfo(Protocol):
    """What a handler reads of its service (a :class:`wirecat.runtime.server.Service`)."""

    @property
    def name(self) -> str: ...

    @property
    def limits(self) -> Limits | None: ...


__all__ = ["ServerContext", "ServiceInfo", "SharedWrite", "StreamHandler", "format_address"]

_ids = itertools.count(1)

#: Lingering close (model: nginx ``lingering_close``/``lingering_time``): after a close whose
#: peer was still sending, read and discard for at most this many seconds before closing,
#: so that the peer's kernel does not drop our last bytes on a reset.
LINGER_TIME = 2.0
#: A peer counts as still sending if its last bytes arrived less than this many seconds ago
#: (and less than half the idle timeout).
LINGER_RECENT = 1.0
#: At most this many connections linger at once per server; beyond, close at once.
MAX_LINGERING = 1024

#: Counter name in ``ServerContext.metrics`` for each reason :meth:`ServerContext.admit` gives.
_REFUSAL_METRIC = {
    "denied": "refused_acl",
    "server is shutting down": "refused_closing",
    "too many connections": "refused_max_conns",
    "too many connections from your address": "refused_per_source",
    "connecting too fast": "refused_rate",
}


def format_address(addr: Any) -> str:
    """Format a socket address for logs: ``1.2.3.4:5``, ``[::1]:5``, ``unix:/p`` or ``unix``."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        if ":" in str(host):
            return f"[{host}]:{port}"
        return f"{host}:{port}"
    if isinstance(addr, str) and addr:
        return f"unix:{addr}"
    if isinstance(addr, bytes) and addr:
        return "unix:@" + addr.lstrip(b"\x00").decode(errors="replace")
    return "unix"


class ServerContext:
    """State shared by every connection of one server.

    Attributes:
        limits: the server-wide :class:`Limits`.
        metrics: counters by name: ``accepted``, ``refused_acl``, ``refused_closing``,
            ``refused_max_conns``, ``refused_per_source``, ``refused_rate``,
            ``slow_consumers``, ``idle_timeouts``, ``login_timeouts``, ``line_timeouts``,
            ``handler_errors``,
            and services' own. A plain ``Counter``; read it any time.
        connections: the live stream handlers (the connection registry).
        closing: True once the server started draining; new peers are refused.
        log: the server's logger.
        access: the ``--allow``/``--deny`` rules, checked before any byte is read.
        per_source: open stream connections by source IP (entries vanish at zero).
        by_service: counters per (service name, counter): ``accepted``, the ``refused_*``
            of :attr:`metrics` by the service whose listener refused, and the
            ``bytes_received``/``bytes_sent`` of connections already closed (read
            :meth:`service_counters` for totals that include open connections). Bounded:
            one entry per service and counter, never per peer.
    """

    def __init__(
        self,
        limits: Limits | None = None,
        log: logging.Logger | None = None,
        access: AccessList | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.metrics: Counter[str] = Counter()
        #: Gauges read at each scrape, by name (e.g. ``chat_hub_up``): name -> callable.
        self.gauges: dict[str, Callable[[], float]] = {}
        self.by_service: Counter[tuple[str, str]] = Counter()
        self.connections: set[StreamHandler] = set()
        self.access = access or AccessList()
        self.per_source: dict[str, int] = {}
        self._dirty: list[StreamHandler] = []
        self._flush_scheduled = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_tick = 10.0
        rate = self.limits.conn_rate
        self.conn_rate = KeyedRateLimiter(rate, self.limits.conn_burst) if rate else None
        self.closing = False
        #: transports in a lingering close, no longer connections (at most ``MAX_LINGERING``)
        self.lingering: set[_Lingering] = set()
        self.log = log or _root_logger
        self._empty: asyncio.Event | None = None

    def admit(self, source: str | None, now: float) -> str | None:
        """Decide whether a new peer from ``source`` (IP, or ``None`` for unix) may stay.

        Returns:
            ``None`` to accept (the per-source count is then taken), or the reason to refuse.
            The checks are, in order: access list, draining, ``max_conns``,
            ``max_conns_per_source``, per-source connection rate.
        """
        lim = self.limits
        if not self.access.permits(source):
            return "denied"
        if self.closing:
            return "server is shutting down"
        if len(self.connections) >= lim.max_conns:
            return "too many connections"
        if source is not None:
            cap = lim.max_conns_per_source
            if cap is not None and self.per_source.get(source, 0) >= cap:
                return "too many connections from your address"
            if self.conn_rate is not None and not self.conn_rate.allow(source, now):
                return "connecting too fast"
            self.per_source[source] = self.per_source.get(source, 0) + 1
        return None

    def service_counters(self) -> Counter[tuple[str, str]]:
        """Counters per (service, name), with the bytes of open connections added: bytes
        received through ``data_received`` and bytes handed to the transport's ``write``
        (bytes that the kernel moves by itself, such as ``sendfile`` downloads, are not
        included: the files service counts them as ``files_bytes_out``/``files_bytes_in``)."""
        totals = self.by_service.copy()
        for h in self.connections:
            name = h.service.name if h.service is not None else "-"
            totals[(name, "bytes_received")] += h._rx
            totals[(name, "bytes_sent")] += h._tx
        return totals

    def release(self, source: str | None) -> None:
        """Give back the per-source count taken by :meth:`admit`."""
        if source is None:
            return
        n = self.per_source.get(source, 0) - 1
        if n > 0:
            self.per_source[source] = n
        else:
            self.per_source.pop(source, None)

    def _watch_idle(self, timeout: float) -> None:
        """Make sure the sweep runs often enough for a ``timeout`` (idle or partial line) of
        this many seconds: every quarter of it, between 0.01 and 10 s."""
        tick = min(max(timeout / 4, 0.01), 10.0)
        if self._idle_timer is not None and tick >= self._idle_tick:
            return
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_tick = tick
        self._idle_timer = asyncio.get_running_loop().call_later(tick, self._sweep_idle)

    def _sweep_idle(self) -> None:
        # One timer per server instead of one per connection: an idle connection costs no
        # timer, and a sweep is O(connections) every idle_timeout/4 seconds.
        loop = asyncio.get_running_loop()
        now = loop.time()
        for handler in list(self.connections):
            if handler.closing or handler.transport is None:  # None: a TLS handshake runs
                continue
            limits = handler.limits
            timeout = limits.idle_timeout
            if timeout is not None and now - handler._last_rx >= timeout:
                handler._idle_expired(now)
                continue
            since = handler._partial_since
            if since is not None and limits.line_timeout is not None:
                if not handler.transport.is_reading():
                    # We stopped reading (the peer does not read its output, a login is
                    # being checked): that time is ours, not the peer's: restart its clock.
                    handler._partial_since = now
                elif now - since >= limits.line_timeout:
                    handler._line_expired()
        if self.connections:
            self._idle_timer = loop.call_later(self._idle_tick, self._sweep_idle)
        else:
            self._idle_timer = None

    def _schedule_flush(self, handler: StreamHandler) -> None:
        self._dirty.append(handler)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_dirty)

    def _flush_dirty(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        for handler in dirty:
            try:
                handler._flush()
            except Exception:
                handler._crashed()

    def _discard(self, handler: StreamHandler) -> None:
        self.connections.discard(handler)
        if not self.connections and self._empty is not None:
            self._empty.set()

    async def wait_empty(self) -> None:
        """Return once no stream connection is open."""
        if not self.connections:
            return
        if self._empty is None or self._empty.is_set():
            self._empty = asyncio.Event()
        await self._empty.wait()


class SharedWrite:
    """Bytes that many connections receive at the same point of their output (fan-out).

    A fan-out source (a chat room) makes one per loop iteration and queues the same object
    on every receiving connection with :meth:`StreamHandler.write_shared`; each later
    message of that iteration is one :meth:`append` (no work per connection). The chunks
    are joined once, when the first of those connections flushes, and every connection
    then hands the same ``bytes`` to its transport: one ``transport.write`` per connection
    per iteration, however many messages, with no Python work per connection per message.

    Order is kept per connection: while this object is a connection's last queued item,
    appended bytes belong there; when something else is queued on that connection (its
    own reply, another room's batch), the connection *detaches*: its queued item becomes a
    copy of the bytes so far, and later appends reach it through :meth:`StreamHandler.write`.

    A source must stop appending (open a new one) when its receivers change: an append
    reaches every connection that queued this object and has not flushed yet.

    Attributes:
        size: bytes appended so far.
    """

    __slots__ = ("_chunks", "_data", "_detached", "size")

    def __init__(self, data: bytes) -> None:
        self._chunks = [data]
        self._data: bytes | None = None  # the joined bytes, once flushed
        self._detached: list[StreamHandler] = []
        self.size = len(data)

    @property
    def is_open(self) -> bool:
        """True until the first receiver flushed it (then :meth:`append` must not be called)."""
        return self._data is None

    def append(self, data: bytes) -> None:
        """Add ``data`` for every receiver (only while :attr:`is_open`)."""
        self._chunks.append(data)
        self.size += len(data)
        for handler in self._detached:
            handler.write(data)

    def join(self) -> bytes:
        """Return the bytes (joined once); no more appends after this."""
        data = self._data
        if data is None:
            chunks = self._chunks
            data = self._data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._chunks = []
            self._detached = []
        return data

    def _detach(self, handler: StreamHandler) -> bytes:
        """``handler`` queues something after this: give it the bytes so far, then each
        later append separately."""
        self._detached.append(handler)
        chunks = self._chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Lingering(asyncio.Protocol):
    """The rest of a lingering close (see :meth:`StreamHandler.close`): the transport's
    protocol once its handler is done: discard input until the peer's EOF or
    ``LINGER_TIME`` seconds, then close."""

    __slots__ = ("_ctx", "_handle", "_transport")

    def __init__(
        self, ctx: ServerContext, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._ctx = ctx
        self._transport = transport
        ctx.lingering.add(self)
        self._handle = loop.call_later(LINGER_TIME, self.end)

    def data_received(self, data: bytes) -> None:
        pass  # read and discarded: unread bytes at close would make the kernel reset

    def eof_received(self) -> bool:
        return False  # the peer is done too: the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._handle.cancel()
        self._ctx.lingering.discard(self)

    def end(self) -> None:
        """Close now (the time ran out, or the server drains); queued output still goes."""
        self._handle.cancel()
        self._ctx.lingering.discard(self)
        self._transport.close()


class _ConnLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs


class StreamHandler(asyncio.Protocol):
    """Base class of every server-side stream connection. Subclass and override the hooks.

    Hooks (all optional): :meth:`on_connect`, :meth:`on_data`, :meth:`on_eof`,
    :meth:`on_close`, :meth:`on_writable`, :meth:`on_shutdown`, :meth:`on_idle`.
    Tools: :meth:`write`, :meth:`close`, :meth:`abort`, :meth:`pause_reading`,
    :meth:`resume_reading`, :attr:`writing_paused`, :attr:`output_size`.

    All hooks run on the event loop thread; none may block. The handler never raises into
    the loop: an exception escaping a hook is logged and the connection is aborted.
    """

    # Slots keep an idle connection small (no per-instance __dict__); subclasses that add
    # attributes without their own __slots__ simply get a __dict__ back.
    __slots__ = (
        "_accepted",
        "_close_reason",
        "_id",
        "_last_rx",
        "_log",
        "_login_handle",
        "_loop",
        "_partial_len",
        "_partial_since",
        "_peer_eof",
        "_queued",
        "_rx",
        "_tx",
        "closing",
        "ctx",
        "limits",
        "service",
        "source",
        "transport",
        "writing_paused",
    )

    def __init__(self, ctx: ServerContext, service: ServiceInfo | None = None) -> None:
        self.ctx = ctx
        self.service = service
        self.limits: Limits = (service.limits if service and service.limits else None) or ctx.limits
        self._id: int | None = None  # assigned on first use (no int object per idle peer)
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self._log: logging.LoggerAdapter | None = None  # type: ignore[type-arg]
        self.writing_paused = False
        self.closing = False
        self._accepted = False
        self._last_rx = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._close_reason = ""
        self.source: str | None = None  # peer IP for per-source limits; None for unix
        self._login_handle: asyncio.TimerHandle | None = None
        # Coalesced writes of this loop iteration; the list is made on the first write and
        # kept (empty between iterations), so fan-out allocates no list per member.
        self._queued: list[bytes | SharedWrite] | None = None
        self._rx = 0  # bytes received, handed to the transport: per-service metrics
        self._tx = 0
        # line_framed only: when the line not yet ended by a newline began, and its length
        self._partial_since: float | None = None
        self._partial_len = 0
        self._peer_eof = False  # the peer half-closed: it sends nothing more

    #: Services whose peers must complete a login (first line, hello) set this to True and
    #: call :meth:`login_complete`; until then ``limits.login_timeout`` applies.
    needs_login = False

    #: Fan-out services set this to True: writes are coalesced per loop iteration (see
    #: :meth:`write`). Leave it False where bytes must reach the transport at once, e.g.
    #: before ``loop.sendfile`` or ``transport.write_eof``.
    coalesce_writes = False

    #: Services whose input is newline-terminated lines (chat's text and JSON-lines modes)
    #: set this to True: a line must then be complete within ``limits.line_timeout`` seconds
    #: of its first byte, else :meth:`on_line_timeout` runs (a run of ``max_line`` bytes
    #: without a newline counts as a line). The runtime looks at the raw bytes (the last
    #: ``\n`` of each chunk), so it needs nothing from the service's framer.
    line_framed = False

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self._accepted:  # admitted by the TLS accept loop before its handshake
            if self.closing:  # and closed (shutdown, idle) while the handshake ran
                self.transport.abort()
                return
            self._established()
            return
        reason = self.admit(transport.get_extra_info("peername"))
        if reason is not None:
            if reason == "denied":
                self.transport.abort()  # tell a denied peer nothing
            else:
                self.transport.write(f"error: {reason}, try again later\n".encode())
                self.transport.close()
            return
        self._established()

    def admit(self, peername: Any) -> str | None:
        """Run the server's admission checks for a peer at ``peername`` (by address only).

        Called by :meth:`connection_made`, or by a TLS listener before the handshake so that
        no byte is read or sent to a refused peer.

        Returns:
            ``None`` when admitted (the connection then counts against every limit until it
            is lost), else the reason for refusal (already counted and logged).
        """
        ctx = self.ctx
        if isinstance(peername, tuple) and peername:
            self.source = peername[0]
        self._loop = loop = asyncio.get_running_loop()
        reason = ctx.admit(self.source, loop.time())
        if reason is not None:
            metric = _REFUSAL_METRIC.get(reason, "refused")
            ctx.metrics[metric] += 1
            ctx.by_service[(self.service.name if self.service else "-", metric)] += 1
            self.log.warning("refused: %s", reason, extra={"event": "refused", "reason": reason})
            self.closing = True
            return reason
        self._accepted = True
        ctx.connections.add(self)
        self._last_rx = loop.time()
        return None

    def handshake_failed(self, exc: BaseException) -> None:
        """The TLS handshake of an admitted peer failed: count it and release its limits."""
        self.ctx.metrics["tls_handshake_failures"] += 1
        self.log.info(
            "TLS handshake failed: %s",
            str(exc) or type(exc).__name__,
            extra={"event": "tls_failure", "reason": type(exc).__name__},
        )
        self.closing = True
        if self._accepted:
            self._accepted = False
            self.ctx._discard(self)
            self.ctx.release(self.source)

    def _established(self) -> None:
        """The connection is admitted (and its TLS handshake done): start serving it."""
        loop = self._loop
        assert loop is not None
        ctx = self.ctx
        ctx.metrics["accepted"] += 1
        ctx.by_service[(self.service.name if self.service else "-", "accepted")] += 1
        # TCP_NODELAY: asyncio and uvloop both set it on every TCP transport already.
        lim = self.limits
        self.transport.set_write_buffer_limits(high=lim.write_high_water, low=lim.write_low_water)
        self._last_rx = loop.time()
        if lim.idle_timeout is not None:
            ctx._watch_idle(lim.idle_timeout)
        if self.line_framed and lim.line_timeout is not None:
            ctx._watch_idle(lim.line_timeout)
        if self.needs_login and lim.login_timeout is not None:
            self._login_handle = loop.call_later(lim.login_timeout, self._login_expired)
        if ctx.log.isEnabledFor(logging.DEBUG):  # don't build the per-connection logger
            self.log.debug("connected", extra={"event": "connect"})
        self._guard(self.on_connect)

    def data_received(self, data: bytes) -> None:
        self._last_rx = now = self._loop.time()  # type: ignore[union-attr]
        self._rx += len(data)
        if self.line_framed:
            if data[-1:] == b"\n":  # the common case: whole lines, nothing left partial
                if self._partial_since is not None:
                    self._partial_since = None
                    self._partial_len = 0
            else:
                self._note_partial_line(data, now)
        try:
            self.on_data(data)
        except Exception:
            self._crashed()

    def eof_received(self) -> bool | None:
        if not self._accepted:
            return False
        self._peer_eof = True
        try:
            keep_open = self.on_eof()
        except Exception:
            self._crashed()
            return False
        # TLS has no half-close: close_notify ends both directions (RFC 8446 6.1).
        keep_open = bool(keep_open) and self.transport.get_extra_info("sslcontext") is None
        if not keep_open:
            # The transport closes itself after we return: hand it what is queued first.
            self._flush()
            self.closing = True
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        if self._login_handle is not None:
            self._login_handle.cancel()
            self._login_handle = None
        self.closing = True
        if not self._accepted:
            return
        self._accepted = False
        ctx = self.ctx
        ctx._discard(self)
        ctx.release(self.source)
        name = self.service.name if self.service is not None else "-"
        ctx.by_service[(name, "bytes_received")] += self._rx
        ctx.by_service[(name, "bytes_sent")] += self._tx
        if ctx.log.isEnabledFor(logging.DEBUG):
            reason = self._close_reason or (str(exc) if exc else None)
            self.log.debug(
                "closed%s",
                f" ({self._close_reason})" if self._close_reason else "",
                extra={"event": "close", "reason": reason},
            )
        try:
            self.on_close(exc)
        except Exception:
            self.log.exception("error in on_close")

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._guard(self.on_writable)

    # -- hooks -----------------------------------------------------------------------------
    def on_connect(self) -> None:
        """The peer was accepted (after the ``max_conns`` check)."""

    def on_data(self, data: bytes) -> None:
        """Bytes arrived from the peer (any split of the stream: frame them yourself)."""

    def on_eof(self) -> bool:
        """The peer half-closed. Return True to keep our write side open; default False."""
        return False

    def on_close(self, exc: Exception | None) -> None:
        """The connection is gone (``exc`` is the OS error, ``None`` for a clean close)."""

    def on_writable(self) -> None:
        """Unsent output fell below the low-water mark after a pause."""

    def on_shutdown(self) -> None:
        """The server is draining. Default: flush and close. Override to say goodbye first."""
        self.close("server shutdown")

    def on_line_timeout(self) -> None:
        """A line was not complete ``limits.line_timeout`` seconds after its first byte
        (counted and logged already). Default: tell the peer in one text line and close;
        chat answers in its codec (a JSON ``error`` event with code ``timeout``), echo
        closes without a word (it sends nothing but echoes)."""
        self.write(b"error: line timeout\n")
        self.close("line timeout")

    def on_idle(self) -> None:
        """Nothing was received for ``idle_timeout`` seconds. Default: count, log, close.

        Override to keep a busy connection (e.g. one sending a download); the hook is called
        again after another idle period.
        """
        self.ctx.metrics["idle_timeouts"] += 1
        self.log.info(
            "idle for %.1f s, closing",
            self.limits.idle_timeout or 0.0,
            extra={"event": "limit", "reason": "idle_timeout"},
        )
        self.close("idle timeout")

    # -- tools -----------------------------------------------------------------------------
    @property
    def id(self) -> int:
        """This connection's number, unique in the process (for logs)."""
        if self._id is None:
            self._id = next(_ids)
        return self._id

    @property
    def peer(self) -> str:
        """The peer's address: ``127.0.0.1:5555``, ``[::1]:5555`` or ``unix``.

        Read from the transport when asked (nothing is stored per idle connection); after
        the transport is gone, the source address without its port.
        """
        addr = None
        if self.transport is not None:
            try:
                addr = self.transport.get_extra_info("peername")
            except (OSError, ValueError):  # uvloop, once closed: "negative file descriptor"
                addr = None
        if addr:
            return format_address(addr)
        return self.source if self.source is not None else "unix"

    @property
    def log(self) -> logging.LoggerAdapter:  # type: ignore[type-arg]
        """A logger that adds ``service``, ``conn_id`` and ``peer`` to every record."""
        log = self._log
        if log is None:
            name = self.service.name if self.service else "-"
            extra = {"service": name, "conn_id": self.id, "peer": self.peer}
            log = self._log = _ConnLog(self.ctx.log, extra)
        return log

    @property
    def close_reason(self) -> str:
        """Why we closed or aborted (``"slow_consumer"``, ``"idle timeout"``, ...); ``""``
        if the peer closed first or no reason was given. Valid in :meth:`on_close`."""
        return self._close_reason

    @property
    def peer_subject(self) -> str | None:
        """The commonName of a verified TLS client certificate (mTLS), else ``None``."""
        cert = self.transport.get_extra_info("peercert") if self.transport else None
        if not cert:
            return None
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return str(value)
        return None

    @property
    def output_size(self) -> int:
        """Bytes written but not yet handed to the kernel (coalesced ones included)."""
        if self.transport is None:
            return 0
        queued = sum(
            item.size if isinstance(item, SharedWrite) else len(item) for item in self._queued or ()
        )
        return self.transport.get_write_buffer_size() + queued

    def write(self, data: bytes) -> bool:
        """Queue ``data`` for the peer without blocking.

        With :attr:`coalesce_writes`, the bytes are held until the end of this loop
        iteration and every chunk queued meanwhile goes out in one ``transport.write``
        (one syscall per connection per iteration, however many messages fan out to it).

        Returns:
            True if queued; False if the connection is closing (the data is dropped) or if
            this write pushed unsent output past ``max_output`` bytes, in which case the
            peer was disconnected as a slow consumer (logged, counted in
            ``ctx.metrics["slow_consumers"]``).
        """
        if self.closing:
            return False
        if self.coalesce_writes:
            self._enqueue(data)
            return True
        self._tx += len(data)
        self.transport.write(data)
        if self.writing_paused:
            return self._check_output()
        return True

    def write_shared(self, shared: SharedWrite) -> bool:
        """Queue ``shared``: its bytes, including those appended to it later in this loop
        iteration, go out here, in order with this connection's other writes. Only for
        handlers with :attr:`coalesce_writes` (others write through at once).

        Returns:
            True if queued; False if the connection is closing (nothing is queued).
        """
        if self.closing:
            return False
        self._enqueue(shared)
        return True

    def _enqueue(self, item: bytes | SharedWrite) -> None:
        """Queue ``item`` for this iteration's flush (scheduled by the first item)."""
        queued = self._queued
        if not queued:
            if queued is None:
                self._queued = [item]
            else:
                queued.append(item)
            self.ctx._schedule_flush(self)
            return
        tail = queued[-1]
        if type(tail) is SharedWrite and tail._data is None:
            queued[-1] = tail._detach(self)  # later appends to it come after ``item``
        queued.append(item)

    def _flush(self) -> None:
        """Hand the coalesced chunks to the transport (called once per loop iteration)."""
        queued = self._queued
        if not queued:
            return
        if self.closing:  # aborted: queued output is dropped
            queued.clear()
            return
        if len(queued) == 1:
            item = queued[0]
            data = item.join() if isinstance(item, SharedWrite) else item
        else:
            data = b"".join([i.join() if isinstance(i, SharedWrite) else i for i in queued])
        queued.clear()  # kept: no new (garbage-collected) list per connection per iteration
        self._tx += len(data)
        self.transport.write(data)
        if self.writing_paused:
            self._check_output()

    def _check_output(self) -> bool:
        if self.transport.get_write_buffer_size() <= self.limits.max_output:
            return True
        self.ctx.metrics["slow_consumers"] += 1
        self.log.warning(
            "slow consumer: more than %d bytes unsent, disconnecting",
            self.limits.max_output,
            extra={"event": "limit", "reason": "slow_consumer"},
        )
        self.abort("slow_consumer")
        return False

    def close(self, reason: str = "") -> None:
        """Flush queued output, then close. Idempotent.

        If the peer is still sending (bytes arrived in the last ``LINGER_RECENT`` seconds and
        half the idle timeout, and we are reading them), the close *lingers* (model: nginx
        ``lingering_close``): our write side is shut down after the output (the peer reads it,
        then EOF), and what the peer still sends is read and discarded until its EOF, at most
        ``LINGER_TIME`` seconds, then the connection closes. Without it, bytes unread or
        arriving at ``close()`` make the kernel send a reset, and the peer's kernel may drop our
        last bytes (the reason of the close) before the peer reads them. Plain TCP and Unix
        sockets only (TLS has no half-close: it closes as before); not while the server drains;
        at most ``MAX_LINGERING`` at once per server (beyond, close at once). The handler is
        done with a lingering transport: :meth:`on_close` runs at once (as for a plain close
        whose output is sent) and the connection no longer counts against any limit.
        """
        if self.closing:
            return
        self._flush()  # before closing is set, so the queued bytes still go out
        self.closing = True
        self._close_reason = reason
        transport = self.transport
        if transport is None:
            return
        if self._may_linger(transport):
            self._linger(transport)
        else:
            transport.close()

    def _may_linger(self, transport: asyncio.Transport) -> bool:
        ctx = self.ctx
        if self._peer_eof or ctx.closing or len(ctx.lingering) >= MAX_LINGERING:
            return False
        if not self._accepted:
            return False
        # False for TLS transports (no half-close: close_notify ends both directions).
        if not transport.can_write_eof() or transport.is_closing():
            return False
        loop = self._loop
        if loop is None:
            return False
        # "Still sending": input arrived in the last second, and within half the idle
        # timeout (an idle peer is not sending). Not if we stopped reading: a handler that
        # paused its transport may be moving the socket's bytes itself (relay's splice).
        recent = LINGER_RECENT
        idle = self.limits.idle_timeout
        if idle is not None and idle / 2 < recent:
            recent = idle / 2
        return transport.is_reading() and loop.time() - self._last_rx < recent

    def _linger(self, transport: asyncio.Transport) -> None:
        loop = self._loop
        assert loop is not None
        transport.write_eof()  # after the queued output: the peer reads it, then EOF
        transport.set_protocol(_Lingering(self.ctx, transport, loop))
        # The connection is over for us: bookkeeping and on_close on the next iteration, as
        # asyncio does for a transport closed with its output sent.
        loop.call_soon(self.connection_lost, None)

    def abort(self, reason: str) -> None:
        """Drop queued output and close now. Idempotent."""
        self.closing = True
        self._queued = None
        if not self._close_reason:
            self._close_reason = reason
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self) -> None:
        """Stop reading from the peer (the kernel buffers, then TCP pushes back)."""
        if self.transport is not None and self.transport.is_reading():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Resume reading after :meth:`pause_reading`."""
        if self.transport is not None and not self.closing and not self.transport.is_reading():
            self.transport.resume_reading()

    def login_complete(self) -> None:
        """The peer finished its login/handshake: the ``login_timeout`` deadline is lifted."""
        if self._login_handle is not None:
            self._login_handle.cancel()
            self._login_handle = None

    # -- internals -------------------------------------------------------------------------
    def _login_expired(self) -> None:
        self._login_handle = None
        if self.closing:
            return
        self.ctx.metrics["login_timeouts"] += 1
        self.log.info(
            "login not completed within %.1f s, closing",
            self.limits.login_timeout,
            extra={"event": "limit", "reason": "login_timeout"},
        )
        self._guard(self.on_login_timeout)

    def on_login_timeout(self) -> None:
        """The login deadline passed (counted and logged already). Default: tell the peer
        in one text line and close; a framed protocol (WebSocket) overrides it."""
        self.write(b"error: login timeout\n")
        self.close("login timeout")

    def _note_partial_line(self, data: bytes, now: float) -> None:
        """Track the line this chunk leaves unfinished: its length, and since when it runs
        (the time of the chunk holding its first byte). One ``rfind`` per chunk, no timer."""
        max_line = self.limits.max_line
        size = len(data)
        # Only the last max_line bytes matter (a bulk chunk is not scanned whole).
        end = data.rfind(b"\n", size - max_line if size > max_line else 0)
        done = True  # a line ended in this chunk: any rest starts a new one now
        if end >= 0:
            n = size - end - 1
        elif size >= max_line:  # the chunk alone holds a run of max_line bytes
            n = size % max_line
        else:
            n = self._partial_len + size
            done = False
        if n >= max_line:  # a run of max_line bytes without a newline counts as a line
            n %= max_line
            done = True
        self._partial_len = n
        if n == 0:
            self._partial_since = None
        elif done or self._partial_since is None:
            self._partial_since = now

    def _line_expired(self) -> None:
        """Called by the sweep once a partial line outlived ``limits.line_timeout``."""
        self._partial_since = None
        self.ctx.metrics["line_timeouts"] += 1
        self.log.info(
            "line not completed within %.1f s, closing",
            self.limits.line_timeout or 0.0,
            extra={"event": "limit", "reason": "line_timeout"},
        )
        self._guard(self.on_line_timeout)

    def _idle_expired(self, now: float) -> None:
        """Called by the server's idle sweep once ``idle_timeout`` passed without input."""
        self._guard(self.on_idle)  # (reads the old _last_rx: an idle close does not linger)
        self._last_rx = now  # a hook that keeps the connection is asked again a period later

    def touch(self) -> None:
        """Count as activity for the idle timeout (for handlers moving bytes off the loop)."""
        if self._loop is not None:
            self._last_rx = self._loop.time()

    def _guard(self, hook: Any) -> None:
        try:
            hook()
        except Exception:
            self._crashed()

    def _crashed(self) -> None:
        self.ctx.metrics["handler_errors"] += 1
        self.log.exception("internal error in handler, aborting connection")
        self.abort("internal error")
