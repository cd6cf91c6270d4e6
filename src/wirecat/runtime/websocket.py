"""WebSockets (RFC 6455) on our ``asyncio.Protocol`` runtime, both sides.

Server side: :class:`WebSocketHandler` is a :class:`~wirecat.runtime.handler.StreamHandler`,
so everything a TCP or TLS listener does applies unchanged and *before* the upgrade: access
lists, connection caps and rates (at accept), the TLS handshake deadline, the login deadline
(it covers the HTTP upgrade: a peer that never finishes its handshake is cut), slow-consumer
cuts by unsent bytes, the idle timeout, drain and logs. The frames are handled by
:class:`~wirecat.protocols.websocket.WebSocket` (websockets' sans-I/O objects); websockets'
own asyncio server is never started. On top: a ping every ``ping_interval`` seconds with a
pong deadline (close 1011), a bounded close handshake (``close_timeout``, then the TCP
connection is aborted), an ``Origin`` check against cross-site WebSocket hijacking (403),
and one log line for every protocol limit hit (1009 too big, 1007 bad UTF-8, 1002).

Client side: :func:`connect_websocket` (and :func:`wirecat.connect` for ``ws://`` and
``wss://``) gives a :class:`WebSocketConnection`: messages (:meth:`~WebSocketConnection.send_text`,
:meth:`~WebSocketConnection.send_bytes`, :meth:`~WebSocketConnection.recv_message`) and,
because it is a :class:`~wirecat.runtime.connection.Connection`, the stream view that
``wirecat connect`` uses: each received text message is a line, each line sent is a text
message (as websocat's text mode).

Model: websockets ``asyncio/connection.py`` (keepalive, close timeout) on uvicorn-style
``asyncio.Protocol`` flow control.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any, Literal, Protocol

from websockets.protocol import State

from ..endpoints import Endpoint, parse_endpoint
from ..errors import (
    ConnectionClosedError,
    ConnectionClosedOK,
    HandshakeError,
    HandshakeTimeout,
    InvalidEndpoint,
    LocalProtocolError,
)
from ..escape import for_log
from ..protocols.websocket import (
    BinaryMessage,
    CloseCode,
    Closed,
    HandshakeFailed,
    HandshakeRequest,
    Opened,
    PongReceived,
    Request,
    TextMessage,
    WebSocket,
    WebSocketEvent,
)
from .connection import _READ_HIGH_WATER, Connection, Opening, StreamState, open_transport
from .handler import ServerContext, ServiceInfo, StreamHandler

__all__ = [
    "WebSocketConnection",
    "WebSocketConnectionHandler",
    "WebSocketHandler",
    "WebSocketSettings",
    "connect_websocket",
    "origin_allowed",
]


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    """Protocol hygiene of WebSocket connections. Sizes in bytes, times in seconds.

    Attributes:
        max_message: largest message accepted (after decompression); over it the
            connection is closed with 1009 and a log line. Checked from the frame header,
            before the payload is read or inflated.
        max_queue: messages ("frames in flight") a client connection buffers unread; above
            it, reading pauses and TCP pushes back on the peer. (Servers hand each message
            to their service at once.)
        ping_interval: send a ping this often (``None``: never).
        ping_timeout: close with 1011 when the pong has not come this long after a ping.
        close_timeout: longest wait for the peer's part of the closing handshake; then the
            TCP connection is aborted (the peer sees 1006).
        compression: negotiate permessage-deflate (RFC 7692) when the peer offers it.
            Off by default (compression and secrets mix badly: CRIME/BREACH).
        allow_origin: origins (``https://example.com``) allowed to open a server's
            WebSocket besides the page's own origin and clients sending no ``Origin``
            (non-browser clients). ``"*"`` allows any (not recommended).

    Raises:
        ValueError: a size below 1 or a time not above 0.
    """

    max_message: int = 64 * 1024
    max_queue: int = 16
    ping_interval: float | None = 20.0
    ping_timeout: float = 20.0
    close_timeout: float = 5.0
    compression: bool = False
    allow_origin: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.allow_origin, str):
            object.__setattr__(self, "allow_origin", (self.allow_origin,))
        else:
            object.__setattr__(self, "allow_origin", tuple(self.allow_origin))
        if self.max_message < 1:
            raise ValueError("max_message must be >= 1 byte")
        if self.max_queue < 1:
            raise ValueError("max_queue must be >= 1 message")
        if self.ping_interval is not None and not self.ping_interval > 0:
            raise ValueError("ping_interval must be > 0 seconds (or None)")
        if not self.ping_timeout > 0 or not self.close_timeout > 0:
            raise ValueError("ping_timeout and close_timeout must be > 0 seconds")
        for origin in self.allow_origin:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"allow_origin: {origin!r} is not http(s)://host[:port]")


def origin_allowed(origin: str | None, host: str | None, allow: Sequence[str] = ()) -> bool:
    """Decide whether a WebSocket upgrade from a page of ``origin`` may proceed.

    Allowed: no ``Origin`` header (a program, not a browser page), the page's own origin
    (``http(s)://`` + the ``Host`` header the browser sent), or one in ``allow`` (``"*"``:
    any). Everything else is a page of another site trying to use the visitor's browser
    against this server (cross-site WebSocket hijacking) and is refused.
    """
    if origin is None:
        return True
    if "*" in allow:
        return True
    origin = origin.strip().rstrip("/").lower()
    if host and origin in (f"http://{host.strip().lower()}", f"https://{host.strip().lower()}"):
        return True
    return origin in {a.rstrip("/").lower() for a in allow}


#: Close code per reason given to :meth:`StreamHandler.close` by the runtime and services.
_CLOSE_CODES = {
    "server shutdown": CloseCode.GOING_AWAY,
    "idle timeout": CloseCode.GOING_AWAY,
    "login timeout": CloseCode.POLICY_VIOLATION,
    "auth_failed": CloseCode.POLICY_VIOLATION,
    "flooding": CloseCode.POLICY_VIOLATION,
}

#: Metric counted (and logged) for each close code we send because of a peer's fault.
_LIMIT_METRICS = {
    CloseCode.MESSAGE_TOO_BIG: "ws_too_big",
    CloseCode.INVALID_DATA: "ws_bad_utf8",
    CloseCode.PROTOCOL_ERROR: "ws_protocol_errors",
}


class WebSocketHandler(StreamHandler):
    """A server-side WebSocket connection. Subclass and override the hooks.

    Hooks: :meth:`on_open`, :meth:`on_message`, :meth:`on_ws_close`, and
    :meth:`on_http_data` for a handler that serves plain HTTP before upgrading (the default
    hands every byte to the WebSocket handshake parser). Tools: :meth:`send_text`,
    :meth:`send_bytes`, :meth:`write` (already framed bytes, e.g. a shared fan-out frame),
    :meth:`close` (the closing handshake), :meth:`upgrade`, :meth:`write_raw`.

    Args:
        ctx: the server context.
        service: the service (name, limits).
        settings: the protocol hygiene (:class:`WebSocketSettings`).
        path: the resource path served (``None``: any); others get 404.

    The login deadline (``limits.login_timeout``) runs from accept until :meth:`on_open`
    returns (set :attr:`login_on_open` False to extend it over an application login).
    """

    #: The handshake deadline covers the HTTP upgrade.
    needs_login = True
    #: Lift the login deadline once the WebSocket is open (False: the application calls
    #: :meth:`login_complete` itself, e.g. after its own hello).
    login_on_open = True
    #: Frames, not lines: the partial-line deadline never applies, whatever a subclass
    #: mixes in (the web chat is also a line-framed ``ChatHandler``).
    line_framed = False

    def __init__(
        self,
        ctx: ServerContext,
        service: ServiceInfo | None,
        settings: WebSocketSettings,
        path: str | None = None,
    ) -> None:
        super().__init__(ctx, service)
        self._ws_init(settings, path)

    def _ws_init(self, settings: WebSocketSettings, path: str | None) -> None:
        """Set the WebSocket state (for subclasses whose ``__init__`` chain differs)."""
        self.ws_settings = settings
        self.ws_path = path
        self.ws: WebSocket | None = None
        self.ws_closed: Closed | None = None
        self._ping_handle: asyncio.TimerHandle | None = None
        self._ping_payload: bytes | None = None
        self._close_handle: asyncio.TimerHandle | None = None
        # True while delivering the messages of one chunk whose close frame came after them:
        # their answers may still go out, before our close reply (RFC 6455 5.5.1).
        self._delivering = False
        # Frames written while one chunk is handled (handlers without coalesce_writes):
        # they go out in one transport write at its end. ``_out`` is None otherwise.
        self._out: list[bytes] | None = None
        self._out_buf: list[bytes] = []

    def _may_send(self, ws: WebSocket) -> bool:
        proto = ws.protocol
        return proto.state is State.OPEN or (
            self._delivering and proto.close_rcvd_then_sent is True
        )

    # -- hooks -----------------------------------------------------------------------------
    def on_http_data(self, data: bytes) -> None:
        """Bytes before the upgrade. Default: all of it is the WebSocket handshake."""
        self.upgrade(data)

    def on_open(self) -> None:
        """The WebSocket is open (our 101 is queued)."""

    def on_message(self, message: str | bytes) -> None:
        """A complete message: ``str`` for text, ``bytes`` for binary."""

    def on_ws_close(self, code: int, reason: str) -> None:
        """The WebSocket closed (``code`` 1006: the peer vanished without a close frame)."""

    def accept_request(self, request: Request) -> tuple[int, str] | None:
        """Check the upgrade ``request``; return ``(status, text)`` to refuse it, else ``None``.

        Default: 404 for another path than :attr:`ws_path`; 403 for a page of another
        origin (see :func:`origin_allowed`), counted in ``ws_origin_refused`` and logged.
        """
        path = request.path.split("?", 1)[0]
        if self.ws_path is not None and path != self.ws_path:
            return 404, f"no WebSocket at {path[:100]}\n"
        origin = request.headers.get("Origin")
        host = request.headers.get("Host")
        if not origin_allowed(origin, host, self.ws_settings.allow_origin):
            self.ctx.metrics["ws_origin_refused"] += 1
            self.log.warning(
                "WebSocket from origin %s refused (host %s)",
                for_log(str(origin)[:200]),
                for_log(str(host)[:200]),
                extra={"event": "refused", "reason": "origin"},
            )
            return 403, "this origin may not open a WebSocket here\n"
        return None

    # -- tools -----------------------------------------------------------------------------
    @property
    def ws_open(self) -> bool:
        """True while messages may be sent."""
        ws = self.ws
        return ws is not None and ws.is_open

    def upgrade(self, data: bytes) -> None:
        """Hand the connection to the WebSocket protocol: ``data`` is the raw handshake
        request (``GET ... Upgrade: websocket``) and whatever followed it."""
        s = self.ws_settings
        self.ws = WebSocket.server(max_message=s.max_message, compression=s.compression)
        self.ws.receive_data(data)
        self._ws_pump(True)

    def write_raw(self, data: bytes) -> bool:
        """Write bytes as they are (HTTP before the upgrade)."""
        return super().write(data)

    def write(self, data: bytes) -> bool:
        """Queue already framed bytes (e.g. :func:`~wirecat.protocols.websocket.server_frame`
        output shared by many connections); dropped unless the WebSocket is open.

        Frames written while the bytes of one ``data_received`` are handled go out in one
        transport write when they are done (pipelined messages: one syscall)."""
        ws = self.ws
        if ws is None or not self._may_send(ws):
            return False
        out = self._out
        if out is not None and not self.closing:
            out.append(data)
            return True
        return super().write(data)

    def _flush_out(self) -> None:
        """Write the frames batched while handling one chunk (see :meth:`write`)."""
        out = self._out_buf
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            StreamHandler.write(self, data)

    def write_shared(self, shared: Any) -> bool:
        ws = self.ws
        if ws is None or not self._may_send(ws):
            return False
        return super().write_shared(shared)

    def send_text(self, text: str | bytes) -> bool:
        """Send one text message; False if the WebSocket is not open (dropped)."""
        ws = self.ws
        if ws is None or not ws.is_open or self.closing:
            return False
        ws.send_text(text)
        return self._ws_flush()

    def send_bytes(self, data: bytes) -> bool:
        """Send one binary message; False if the WebSocket is not open (dropped)."""
        ws = self.ws
        if ws is None or not ws.is_open or self.closing:
            return False
        ws.send_bytes(data)
        return self._ws_flush()

    def close(self, reason: str = "", code: int | None = None) -> None:
        """Close: the WebSocket closing handshake when open (code from ``reason``: 1001 for
        a shutdown or idle timeout, 1008 for a policy, else 1000), bounded by
        ``close_timeout``; a plain close before the upgrade. Idempotent."""
        ws = self.ws
        if ws is None or self.closing:
            super().close(reason)
            return
        if not ws.is_open:
            if ws.eof_sent:
                super().close(reason)
            return  # a closing handshake is under way (bounded by its timer)
        self._flush_out()
        if code is None:
            code = _CLOSE_CODES.get(reason, CloseCode.NORMAL_CLOSURE)
        if not self._close_reason:
            self._close_reason = reason
        ws.close(code, reason)
        self._ws_flush()
        self._arm_close_timer()

    # -- StreamHandler ---------------------------------------------------------------------
    def on_connect(self) -> None:
        pass

    def on_data(self, data: bytes) -> None:
        ws = self.ws
        if ws is None:
            self.on_http_data(data)
            return
        was_open = ws.protocol.state is State.OPEN
        self._delivering = was_open  # messages reach on_message during receive_data
        if self.coalesce_writes:
            ws.receive_data(data)
        else:
            self._out = self._out_buf
            try:
                ws.receive_data(data)
            finally:
                self._out = None
                self._flush_out()
        if ws.has_events or ws.has_data_to_send:
            self._ws_pump(was_open)
        else:
            self._delivering = False

    def _deliver(self, message: str | bytes) -> None:
        """The WebSocket's message handler once open: straight to :meth:`on_message`."""
        if self.closing:
            return
        ws = self.ws
        assert ws is not None
        if ws.protocol.state is State.OPEN or self._may_send(ws):
            self.on_message(message)

    def on_eof(self) -> bool:
        ws = self.ws
        if ws is not None:
            ws.receive_eof()
            self._ws_pump(False)
        return False

    def on_close(self, exc: Exception | None) -> None:
        self._cancel_timers()
        ws = self.ws
        if (
            ws is not None
            and self.ws_closed is None
            and ws.close_rcvd is None
            and (ws.close_sent is not None or self._opened_once())
        ):
            self._closed_event(Closed(CloseCode.ABNORMAL_CLOSURE, "connection lost", True))
        super().on_close(exc)

    def on_login_timeout(self) -> None:
        ws = self.ws
        if ws is not None and ws.is_open:
            self.close("login timeout")
        elif ws is None or ws.state is State.CONNECTING:  # the HTTP request never completed
            self.write_raw(_http_error(408, "Request Timeout", "handshake timeout\n"))
            super().close("login timeout")
        else:
            self.abort("login timeout")

    # -- internals -------------------------------------------------------------------------
    def _opened_once(self) -> bool:
        return self._ping_handle is not None or self._ping_payload is not None

    def _ws_pump(self, was_open: bool = False) -> None:
        """Handle the events of the bytes fed; messages that came before a close frame
        in the same chunk are delivered (and answered) before our close reply goes out."""
        ws = self.ws
        assert ws is not None
        self._delivering = was_open
        try:
            self._dispatch(ws)
        finally:
            self._delivering = False
        self._ws_flush()

    def _dispatch(self, ws: WebSocket) -> None:
        while events := ws.events_received():  # accepting the handshake adds Opened
            self._dispatch_events(ws, events)

    def _dispatch_events(self, ws: WebSocket, events: list[WebSocketEvent]) -> None:
        for ev in events:
            kind = type(ev)
            if kind is TextMessage:
                if not self.closing and self._may_send(ws):
                    self.on_message(ev.text)  # type: ignore[union-attr]
            elif kind is BinaryMessage:
                if not self.closing and self._may_send(ws):
                    self.on_message(ev.data)  # type: ignore[union-attr]
            elif kind is HandshakeRequest:
                self._handshake(ev.request)  # type: ignore[union-attr]
            elif kind is Opened:
                self._opened()
            elif kind is PongReceived:
                self._pong(ev.data)  # type: ignore[union-attr]
            elif kind is Closed:
                self._closed_event(ev)  # type: ignore[arg-type]

    def _ws_flush(self) -> bool:
        ws = self.ws
        if ws is None:
            return False
        self._flush_out()  # frames written before come first
        ok = True
        for data in ws.data_to_send():
            if data:
                ok = super().write(data) and ok
            else:  # the server closes the TCP connection first (RFC 6455 7.1.1)
                self._cancel_timers()
                super().close(self._close_reason or "websocket closed")
                return False
        return ok

    def _handshake(self, request: Request) -> None:
        ws = self.ws
        assert ws is not None
        refusal = self.accept_request(request)
        if refusal is not None:
            ws.reject(*refusal)
            return
        response = ws.accept(request)
        self._ws_flush()  # the 101 goes out before any answer to frames that came with it
        if response.status_code != 101:
            self.ctx.metrics["ws_handshake_failures"] += 1
            self.log.info(
                "WebSocket handshake refused: %d %s",
                response.status_code,
                response.reason_phrase,
                extra={"event": "refused", "reason": "ws_handshake"},
            )

    def _opened(self) -> None:
        self.ctx.metrics["ws_opened"] += 1
        if self.login_on_open:
            self.login_complete()
        self._schedule_ping()
        self._guard(self.on_open)
        ws = self.ws
        if ws is not None:  # later messages skip the event list
            ws.message_handler = self._deliver

    def _schedule_ping(self) -> None:
        interval = self.ws_settings.ping_interval
        if interval is not None and self._loop is not None and not self.closing:
            self._ping_handle = self._loop.call_later(interval, self._keepalive)

    def _keepalive(self) -> None:
        self._ping_handle = None
        ws = self.ws
        if ws is None or self.closing or not ws.is_open:
            return
        if self._ping_payload is not None:  # no pong within ping_timeout
            self.ctx.metrics["ws_ping_timeouts"] += 1
            self.log.info(
                "no pong within %.1f s, closing",
                self.ws_settings.ping_timeout,
                extra={"event": "limit", "reason": "ping_timeout"},
            )
            self.close("keepalive ping timeout", code=CloseCode.INTERNAL_ERROR)
            return
        self._ping_payload = ws.send_ping()
        self._ws_flush()
        assert self._loop is not None
        self._ping_handle = self._loop.call_later(self.ws_settings.ping_timeout, self._keepalive)

    def _pong(self, data: bytes) -> None:
        if self._ping_payload is not None and data == self._ping_payload:
            self._ping_payload = None
            if self._ping_handle is not None:
                self._ping_handle.cancel()
            self._schedule_ping()

    def _arm_close_timer(self) -> None:
        if self._close_handle is None and self._loop is not None and not self.closing:
            self._close_handle = self._loop.call_later(
                self.ws_settings.close_timeout, self._close_expired
            )

    def _close_expired(self) -> None:
        self._close_handle = None
        if not self.closing:
            self.ctx.metrics["ws_close_timeouts"] += 1
            self.abort(self._close_reason or "close timeout")

    def _cancel_timers(self) -> None:
        for handle in (self._ping_handle, self._close_handle):
            if handle is not None:
                handle.cancel()
        self._ping_handle = self._close_handle = None

    def _closed_event(self, ev: Closed) -> None:
        if self.ws_closed is not None:
            return
        self.ws_closed = ev
        metric = _LIMIT_METRICS.get(ev.code)  # type: ignore[call-overload]
        ws = self.ws
        sent = ws.close_sent if ws is not None else None
        if metric is not None and sent is not None and sent.code == ev.code:
            self.ctx.metrics[metric] += 1  # we closed it for the peer's fault
            self.log.warning(
                "closing WebSocket %d: %s",
                ev.code,
                for_log(ev.reason),
                extra={"event": "limit", "reason": metric},
            )
        if ws is not None and ws.close_sent is not None and not ws.eof_sent:
            self._arm_close_timer()
        self._guard(lambda: self.on_ws_close(ev.code, ev.reason))


def _http_error(status: int, phrase: str, text: str) -> bytes:
    body = text.encode()
    return (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


class _Driver(Protocol):
    """What a :class:`WebSocketConnection` drives: the client's :class:`_ClientProtocol`, or
    a server handler's :class:`_ServerDriver`."""

    state: StreamState
    messages: collections.deque[str | bytes]

    @property
    def ws(self) -> WebSocket: ...

    @property
    def settings(self) -> WebSocketSettings: ...

    @property
    def closed_ev(self) -> Closed | None: ...

    def _flush(self) -> None: ...

    def _arm_close_timer(self) -> None: ...


# -- server side of listen(): a WebSocketConnection per opened WebSocket ----------------------
class _ServerDriver:
    """The server handler's side of a :class:`WebSocketConnection` (see :class:`_Driver`):
    frames go out through the handler, so its output cap and close timer apply."""

    __slots__ = ("handler", "messages", "state")

    def __init__(self, handler: WebSocketConnectionHandler, read_high_water: int) -> None:
        self.handler = handler
        self.state = StreamState(read_high_water)
        self.messages: collections.deque[str | bytes] = collections.deque()

    @property
    def ws(self) -> WebSocket:
        ws = self.handler.ws
        assert ws is not None
        return ws

    @property
    def settings(self) -> WebSocketSettings:
        return self.handler.ws_settings

    @property
    def closed_ev(self) -> Closed | None:
        return self.handler.ws_closed

    def _flush(self) -> None:
        self.handler._ws_flush()

    def _arm_close_timer(self) -> None:
        self.handler._arm_close_timer()


class ConnectionOwner(Protocol):
    """What :class:`WebSocketConnectionHandler` needs of its service
    (:class:`wirecat.runtime.server.HandlerService`)."""

    @property
    def name(self) -> str: ...

    @property
    def limits(self) -> Any: ...

    read_high_water: int

    def _spawn(self, owner: StreamHandler, conn: Connection) -> None: ...


class WebSocketConnectionHandler(WebSocketHandler):
    """Server side of :func:`wirecat.listen` on ``ws://``/``wss://`` endpoints: each opened
    WebSocket is handed to the service's handler as a :class:`WebSocketConnection` (the type
    :func:`wirecat.connect` returns for ``ws://``), under every limit of the listener (the
    upgrade within the login deadline, origin check, keepalive, close timeout, output cap).

    Messages wait in a queue of at most ``max_queue`` before reading pauses (TCP then
    pushes back on the peer).

    Args:
        ctx: the server context.
        service: the :class:`~wirecat.runtime.server.HandlerService`.
        settings: WebSocket hygiene.
        path: the resource path served (``None``: any).
        binary: the stream view of the connections (see :class:`WebSocketConnection`).
    """

    def __init__(
        self,
        ctx: ServerContext,
        service: ConnectionOwner,
        settings: WebSocketSettings,
        path: str | None = None,
        *,
        binary: bool = False,
    ) -> None:
        super().__init__(ctx, service, settings, path)
        self.owner = service
        self.binary = binary
        self.driver = _ServerDriver(self, service.read_high_water)

    def on_open(self) -> None:
        state = self.driver.state
        state.transport = self.transport
        name = self.transport.get_extra_info("sockname")
        scheme: Literal["ws", "wss"] = (
            "wss" if self.transport.get_extra_info("sslcontext") is not None else "ws"
        )
        host, port = (str(name[0]), int(name[1])) if isinstance(name, tuple) else (None, None)
        endpoint = Endpoint(scheme, host, port, self.ws_path or "/")
        self.owner._spawn(self, WebSocketConnection(endpoint, self.driver, binary=self.binary))

    def on_message(self, message: str | bytes) -> None:
        driver = self.driver
        driver.messages.append(message)
        if len(driver.messages) > self.ws_settings.max_queue:
            self.pause_reading()  # the handler resumes it as it reads (TCP pushes back)
        driver.state._wake()

    def on_ws_close(self, code: int, reason: str) -> None:
        state = self.driver.state
        state.eof = True  # no more messages; the queued ones are still read
        state._wake()

    def on_close(self, exc: Exception | None) -> None:
        super().on_close(exc)
        state = self.driver.state
        state.eof = True  # (the byte buffer stays open: queued messages fill it)
        state.lost_with(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self.driver.state.pause_writing()

    def on_writable(self) -> None:
        self.driver.state.resume_writing()


# -- client ----------------------------------------------------------------------------------
class _ClientProtocol(asyncio.Protocol):
    """Feeds a client :class:`WebSocket`; queues messages for a :class:`WebSocketConnection`."""

    def __init__(self, ws: WebSocket, settings: WebSocketSettings, read_high_water: int) -> None:
        self.ws = ws
        self.settings = settings
        self.state = StreamState(read_high_water)
        self.messages: collections.deque[str | bytes] = collections.deque()
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed_ev: Closed | None = None
        self._ping_payload: bytes | None = None
        self._ping_handle: asyncio.TimerHandle | None = None
        self._close_handle: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.state.transport = transport  # type: ignore[assignment]
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        self._pump()

    def eof_received(self) -> bool:
        self.ws.receive_eof()
        self._pump()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        for handle in (self._ping_handle, self._close_handle):
            if handle is not None:
                handle.cancel()
        if not self.opened.done():
            self.opened.set_exception(
                ConnectionClosedError("the connection closed during the WebSocket handshake")
            )
        if self.closed_ev is None:
            self.closed_ev = Closed(CloseCode.ABNORMAL_CLOSURE, "connection lost", True)
        self.state.eof = True  # (the byte buffer stays open: queued messages fill it)
        self.state.lost_with(exc)

    def pause_writing(self) -> None:
        self.state.pause_writing()

    def resume_writing(self) -> None:
        self.state.resume_writing()

    # internals
    def _pump(self) -> None:
        woke = False
        for ev in self.ws.events_received():
            if isinstance(ev, TextMessage | BinaryMessage):
                self.messages.append(ev.text if isinstance(ev, TextMessage) else ev.data)
                woke = True
            elif isinstance(ev, Opened):
                if not self.opened.done():
                    self.opened.set_result(None)
                self._schedule_ping()
            elif isinstance(ev, HandshakeFailed):
                if not self.opened.done():
                    self.opened.set_exception(HandshakeError(ev.reason))
            elif isinstance(ev, PongReceived):
                if self._ping_payload is not None and ev.data == self._ping_payload:
                    self._ping_payload = None
                    if self._ping_handle is not None:
                        self._ping_handle.cancel()
                    self._schedule_ping()
            elif isinstance(ev, Closed):
                if self.closed_ev is None:
                    self.closed_ev = ev
                self._end()
                self._arm_close_timer()
        t = self.state.transport
        if woke:
            if len(self.messages) > self.settings.max_queue and t is not None and t.is_reading():
                t.pause_reading()  # frames in flight: TCP pushes back on the server
            self.state._wake()
        self._flush()

    def _flush(self) -> None:
        t = self.state.transport
        if t is None:
            return
        for data in self.ws.data_to_send():
            if t.is_closing():
                return
            if data:
                t.write(data)
            elif t.can_write_eof():
                t.write_eof()  # half-close; the server closes the TCP connection
                self._arm_close_timer()
            else:
                t.close()

    def _end(self) -> None:
        """No more messages will come: readers see the end once the queue is read."""
        self.state.eof = True
        self.state._wake()

    def _schedule_ping(self) -> None:
        interval = self.settings.ping_interval
        if interval is not None and self.ws.is_open:
            self._ping_handle = self._loop.call_later(interval, self._keepalive)

    def _keepalive(self) -> None:
        if not self.ws.is_open:
            return
        if self._ping_payload is not None:
            self.ws.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            if self.closed_ev is None:
                self.closed_ev = Closed(CloseCode.INTERNAL_ERROR, "keepalive ping timeout", False)
            self._end()
            self._flush()
            return
        self._ping_payload = self.ws.send_ping()
        self._flush()
        self._ping_handle = self._loop.call_later(self.settings.ping_timeout, self._keepalive)

    def _arm_close_timer(self) -> None:
        t = self.state.transport
        if self._close_handle is None and t is not None and not self.state.lost:
            self._close_handle = self._loop.call_later(self.settings.close_timeout, t.abort)


class WebSocketConnection(Connection):
    """A client WebSocket connection (``ws://``, ``wss://``), from :func:`connect_websocket`
    or :func:`wirecat.connect`.

    Messages::

        async with wirecat.connect("ws://127.0.0.1:7080/chat") as ws:
            await ws.send_text('{"type":"hello","nick":"bot"}')
            print(await ws.recv_message())       # '{"type":"welcome",...}'

    The stream view (a :class:`Connection`, as ``wirecat connect`` and ``wirecat relay``
    use it) comes in two kinds, as websocat's ``--text`` and ``--binary``:

    - lines (``binary=False``, the default): each text message received reads as one line
      (a ``\\n`` is added when it has none), a binary message as its bytes; :meth:`send`
      sends each complete line as one text message (without its ``\\n``; bytes that are not
      UTF-8 go as a binary message), :meth:`send_eof` sends the unterminated rest first.
    - binary (``binary=True``): each :meth:`send` is one binary message (split at
      ``max_message`` bytes), and every message received reads as its bytes, unchanged;
      :meth:`recv` returns at most one message, so a relay keeps message boundaries.

    In both, :meth:`send_eof` starts the closing handshake (1000; replies still arrive:
    WebSocket has no half-close, this is the nearest thing). Use one view per
    connection: a message partly read as a stream is returned in pieces.

    Server side, :func:`wirecat.listen` on a ``ws://`` endpoint gives the handler the same
    type for each opened WebSocket.

    Attributes:
        close_code: the close code received (``None`` while open; 1006: no close frame).
        close_reason: the close reason received.

    Concurrency: one reader at a time (:class:`~wirecat.errors.ConcurrencyError`
    otherwise); sends may run concurrently with a read. Cancelling a read loses nothing.
    """

    def __init__(self, endpoint: Endpoint, proto: _Driver, *, binary: bool = False) -> None:
        super().__init__(endpoint, proto.state)
        self._proto = proto
        self._ws = proto.ws
        self._partial = bytearray()
        self.binary = binary

    # -- messages ------------------------------------------------------------------------
    @property
    def close_code(self) -> int | None:
        ev = self._proto.closed_ev
        return ev.code if ev is not None else None

    @property
    def close_reason(self) -> str:
        ev = self._proto.closed_ev
        return ev.reason if ev is not None else ""

    @property
    def extensions(self) -> tuple[str, ...]:
        """Negotiated extensions (``("permessage-deflate",)`` with compression)."""
        return self._ws.extensions

    def _check_send(self) -> None:
        self._raise_if_lost()
        if not self._ws.is_open:
            raise self._closed_error()

    def _closed_error(self) -> ConnectionClosedOK | ConnectionClosedError:
        ev = self._proto.closed_ev
        code = ev.code if ev is not None else CloseCode.ABNORMAL_CLOSURE
        reason = ev.reason if ev is not None else ""
        text = f"WebSocket {self.endpoint} closed: {code}" + (f" {reason}" if reason else "")
        if code in (CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY):
            return ConnectionClosedOK(text, endpoint=str(self.endpoint), code=code, reason=reason)
        return ConnectionClosedError(text, endpoint=str(self.endpoint), code=code, reason=reason)

    async def send_text(self, text: str) -> None:
        """Send one text message; waits while the transport's buffer is full.

        Raises:
            ConnectionClosed: the WebSocket is closing or closed.
        """
        self._check_send()
        self._ws.send_text(text)
        self._proto._flush()
        await self._p.drain()

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary message (see :meth:`send_text`)."""
        self._check_send()
        self._ws.send_bytes(data)
        self._proto._flush()
        await self._p.drain()

    async def ping(self, data: bytes | None = None) -> None:
        """Send a ping (the keepalive sends its own; a pong is awaited by it only)."""
        self._check_send()
        self._ws.send_ping(data)
        self._proto._flush()

    async def recv_message(self, *, timeout: float | None = None) -> str | bytes:
        """Return the next message: ``str`` (text) or ``bytes`` (binary).

        Raises:
            ConnectionClosedOK: the WebSocket closed normally (1000, 1001) and every
                message was read; ConnectionClosedError for other codes (``code``,
                ``reason`` attributes).
            IdleTimeout: nothing arrived within ``timeout`` seconds.
        """
        out = await self._read(self._take_message, timeout, "recv_message")
        if out is None:
            raise self._closed_error()
        return out.decode() if self._last_text else out

    _last_text = False

    def _take_message(self) -> bytes | None:
        buf = self._p.buffer
        if len(buf):  # the rest of a message partly read through the stream view
            self._last_text = False
            return buf.read_some()
        msgs = self._proto.messages
        if not msgs:
            return None
        msg = msgs.popleft()
        self._resume()
        self._last_text = isinstance(msg, str)
        return msg.encode() if isinstance(msg, str) else msg

    def _resume(self) -> None:
        t = self._t
        low = len(self._proto.messages) <= self._proto.settings.max_queue // 2
        if low and not t.is_reading() and not t.is_closing() and not self._p.lost:
            t.resume_reading()

    def _fill(self) -> None:
        """Stream view: move the next queued message into the byte buffer."""
        msgs = self._proto.messages
        if msgs:
            msg = msgs.popleft()
            if self.binary:
                self._p.buffer.feed(msg.encode() if isinstance(msg, str) else msg)
            elif isinstance(msg, str):
                data = msg.encode()
                self._p.buffer.feed(data if data.endswith(b"\n") else data + b"\n")
            else:
                self._p.buffer.feed(msg)
            self._resume()

    async def _read_locked(self, take: Any, timeout: float | None) -> bytes | None:
        if take != self._take_message:
            inner = take

            def take() -> bytes | None:  # stream view: feed messages as they are needed
                while True:
                    out = inner()
                    if out is not None or not self._proto.messages:
                        return out  # type: ignore[no-any-return]
                    self._fill()

        return await super()._read_locked(take, timeout)

    # -- the stream view -------------------------------------------------------------------
    async def send(self, data: bytes) -> None:
        """Stream view: send each complete line of ``data`` as one text message (lines
        view), or ``data`` as one binary message (binary view; split every
        ``max_message`` bytes).

        Raises:
            ConnectionClosed: the WebSocket is closing or closed.
            LocalProtocolError: after :meth:`send_eof`.
        """
        if self._eof_sent:
            raise LocalProtocolError(f"send() after send_eof() on {self.endpoint}")
        self._check_send()
        limit = self._proto.settings.max_message
        if self.binary:
            view = memoryview(data)
            for start in range(0, len(view), limit):
                self._ws.send_bytes(bytes(view[start : start + limit]))
            self._proto._flush()
            await self._p.drain()
            return
        self._partial += data
        while True:
            cut = self._partial.find(b"\n")
            if cut < 0:
                if len(self._partial) < limit:
                    break
                cut = limit
                line, rest = bytes(self._partial[:cut]), self._partial[cut:]
            else:
                line, rest = bytes(self._partial[:cut]), self._partial[cut + 1 :]
            self._partial = bytearray(rest)
            self._send_line(line)
        self._proto._flush()
        await self._p.drain()

    def _send_line(self, line: bytes) -> None:
        line = line[:-1] if line.endswith(b"\r") else line
        try:
            line.decode()
        except UnicodeDecodeError:
            self._ws.send_bytes(line)
        else:
            self._ws.send_text(line)

    @property
    def can_send_eof(self) -> bool:
        return True

    async def send_eof(self) -> None:
        """Send the unterminated rest as a message, then start the closing handshake
        (1000); messages still arrive until the server's close."""
        if self._eof_sent:
            return
        self._eof_sent = True
        if self._ws.is_open:
            if self._partial:
                self._send_line(bytes(self._partial))
                self._partial.clear()
            self._ws.close(CloseCode.NORMAL_CLOSURE)
            self._proto._flush()
            self._proto._arm_close_timer()

    async def aclose(
        self, *, timeout: float | None = None, code: int = 1000, reason: str = ""
    ) -> None:
        """Close with ``code`` and ``reason``; waits for the server's close (at most
        ``timeout`` seconds, default ``close_timeout``), then drops the connection.
        Idempotent."""
        wait = self._proto.settings.close_timeout if timeout is None else timeout
        if self._ws.is_open:
            self._ws.close(code, reason)
            self._proto._flush()
        if not self._p.lost:  # the server closes the TCP connection after its close frame
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._p._closed), wait)
        if not self._p.lost:
            self._t.abort()

    async def __aenter__(self) -> WebSocketConnection:
        return self

    def __repr__(self) -> str:
        return f"<WebSocketConnection {self.endpoint} {self._ws.state.name}>"


def connect_websocket(
    endpoint: str | Endpoint,
    *,
    timeout: float | None = 10.0,
    ssl: SSLContext | None = None,
    server_hostname: str | None = None,
    pin: str | None = None,
    handshake_timeout: float = 10.0,
    origin: str | None = None,
    settings: WebSocketSettings | None = None,
    read_high_water: int = _READ_HIGH_WATER,
    binary: bool = False,
    proxy: Any = None,
) -> Opening[WebSocketConnection]:
    """Open a WebSocket to ``endpoint`` (``ws://host:port/path``, ``wss://...``).

    Await the result, or use it with ``async with``. ``wss://`` uses the TLS client of
    ``tls://`` (system CAs, ``ssl``, ``pin``, ``server_hostname``, client certificates
    through ``ssl``).

    Args:
        endpoint: the WebSocket endpoint (its path is the resource requested).
        timeout: seconds for name resolution plus TCP connect.
        ssl, server_hostname, pin: as in :func:`wirecat.connect` (``wss://`` only).
        handshake_timeout: deadline in seconds for the TLS handshake, and again for the
            WebSocket handshake.
        origin: an ``Origin`` header to send (``None``: none, as a program).
        settings: message size, queue, keepalive, close timeout, compression.
        read_high_water: bytes of a partly read message buffered before reading pauses.
        binary: the stream view: ``False`` lines (text messages), ``True`` bytes (binary
            messages); see :class:`WebSocketConnection`.
        proxy: reach the server through a SOCKS5 or HTTP CONNECT proxy, as
            :func:`wirecat.connect` takes it.

    Raises:
        InvalidEndpoint: not a ws:// or wss:// endpoint.
        ConnectionRefused, NameResolutionError, ConnectTimeout, ConnectError.
        HandshakeError: TLS failed, or the server refused the upgrade (HTTP status in the
            message).
        HandshakeTimeout: a handshake took longer than ``handshake_timeout``.
    """
    opts = settings or WebSocketSettings()

    async def opener() -> WebSocketConnection:
        ep = parse_endpoint(endpoint) if isinstance(endpoint, str) else endpoint
        if ep.scheme not in ("ws", "wss"):
            raise InvalidEndpoint(f"{ep} is not a WebSocket endpoint (ws:// or wss://)")
        host = ep.host or ""
        shown = f"[{host}]" if ":" in host else host
        uri = f"{ep.scheme}://{shown}:{ep.port}{ep.path or '/'}"
        ws = WebSocket.client(
            uri, max_message=opts.max_message, compression=opts.compression, origin=origin
        )
        transport, proto = await open_transport(
            ep,
            lambda: _ClientProtocol(ws, opts, read_high_water),
            timeout=timeout,
            ssl=ssl,
            server_hostname=server_hostname,
            pin=pin,
            handshake_timeout=handshake_timeout,
            proxy=proxy,
        )
        try:
            async with asyncio.timeout(handshake_timeout):
                await proto.opened
        except TimeoutError:
            transport.abort()
            raise HandshakeTimeout(
                f"WebSocket handshake with {ep} timed out", endpoint=str(ep)
            ) from None
        except HandshakeError as exc:
            transport.abort()
            raise HandshakeError(
                f"WebSocket handshake with {ep} failed: {exc}", endpoint=str(ep)
            ) from None
        except BaseException:
            transport.abort()
            raise
        return WebSocketConnection(ep, proto, binary=binary)

    return Opening(opener)
