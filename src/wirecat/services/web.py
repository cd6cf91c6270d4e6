"""The web service: the chat page over HTTP/1.1, the chat over a WebSocket, and a ws echo.

One listener (``wirecat serve``'s ``web``, default ``http://127.0.0.1:7080``, i.e.
``tcp://127.0.0.1:7080``) answers plain HTTP/1.1 through h11 and upgrades ``/chat`` to a
WebSocket::

    GET  /               the chat page (HTML, CSS and JavaScript modules: package data)
    GET  /app.js ...     the page's static files
    GET  /healthz        {"status": "ok", "members": N, "rooms": N, "connections": N}
    GET  /chat           Upgrade: websocket -> the chat, one JSON object per text message
    HEAD on any of them; 404 elsewhere, 405 for other methods, 426 for /chat without the
    upgrade, 400/431 for malformed or oversized requests.

``/chat`` speaks exactly the JSON-lines protocol of the chat service
(:mod:`wirecat.protocols.chat`), one object per text message instead of per line, on the
same :class:`~wirecat.chat.core.ChatCore`: a browser, an nc user (text mode) and a
JSON-lines program in one room see the same messages, in the same order, with the same ids.
The connection is a :class:`~wirecat.services.chat.ChatHandler` whose bytes go through a
WebSocket first (:class:`WebHandler`); its events are encoded once per room as WebSocket
text frames (:data:`WS_JSON_CODEC`), so fan-out costs no per-member work.

Every response carries a strict ``Content-Security-Policy`` (``default-src 'self'``, no
inline script), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` and
``X-Frame-Options: DENY``. A WebSocket from a page of another origin gets 403 (see
:func:`~wirecat.runtime.websocket.origin_allowed`).

:class:`WebSocketEchoService` echoes every message on ``ws://`` endpoints (``serve --echo
ws://127.0.0.1:7009``): the WebSocket twin of RFC 862, for tests and benchmarks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from http import HTTPStatus
from importlib import resources

import h11

from ..endpoints import Endpoint
from ..protocols.chat import JSON_CODEC, ChatServerProtocol, Codec, Mode, ServerEvent
from ..protocols.websocket import WebSocket, server_frame
from ..runtime.handler import ServerContext, StreamHandler
from ..runtime.limits import Limits
from ..runtime.server import Service
from ..runtime.websocket import WebSocketHandler, WebSocketSettings
from .chat import ChatHandler, ChatService

__all__ = [
    "SECURITY_HEADERS",
    "WS_JSON_CODEC",
    "WebHandler",
    "WebService",
    "WebSocketEchoService",
    "WebSocketJsonCodec",
]

#: Headers sent with every HTTP response of the web service.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)

_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".json": b"application/json",
    ".txt": b"text/plain; charset=utf-8",
}

#: Largest request head (request line and headers) accepted, in bytes (over it: 431).
MAX_REQUEST_HEAD = 16 * 1024
#: The WebSocket resource of the chat.
CHAT_PATH = "/chat"


class WebSocketJsonCodec:
    """Encodes chat events as JSON text frames (one object per WebSocket message).

    Stateless and shared (:data:`WS_JSON_CODEC`): the chat core encodes each event once
    for every WebSocket member without extensions.
    """

    __slots__ = ()
    name = "ws-json"

    def encode(self, event: ServerEvent) -> bytes:
        """Return the frame for ``event`` (the JSON line without its newline)."""
        data = JSON_CODEC.encode(event)
        return server_frame(data[:-1]) if data else b""

    def __repr__(self) -> str:
        return "WS_JSON_CODEC"


WS_JSON_CODEC = WebSocketJsonCodec()


class _DeflateCodec:
    """The codec of one connection that negotiated permessage-deflate: its frames are
    compressed with its own context, so they cannot be shared."""

    __slots__ = ("ws",)
    name = "ws-json-deflate"

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    def encode(self, event: ServerEvent) -> bytes:
        data = JSON_CODEC.encode(event)
        if not data or not self.ws.is_open:
            return b""
        self.ws.send_text(data[:-1])
        return b"".join(self.ws.data_to_send())


class _WebChatProtocol(ChatServerProtocol):
    """The chat protocol in JSON mode from the first message, answering in WebSocket frames."""

    __slots__ = ("ws_codec",)

    def __init__(self, *, max_line: int, max_text: int) -> None:
        super().__init__(max_line=max_line, max_text=max_text)
        self.mode = Mode.JSON
        self.ws_codec: WebSocketJsonCodec | _DeflateCodec = WS_JSON_CODEC

    @property
    def codec(self) -> Codec:
        return self.ws_codec  # type: ignore[return-value]


class _Static:
    """The page's files, read once from the package data."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, bytes]] = {}
        root = resources.files("wirecat").joinpath("web/static")
        for item in root.iterdir():
            name = item.name
            suffix = name[name.rfind(".") :] if "." in name else ""
            if item.is_file() and suffix in _TYPES:
                self.files["/" + name] = (_TYPES[suffix], item.read_bytes())
        if "/index.html" in self.files:
            self.files["/"] = self.files["/index.html"]


class WebHandler(WebSocketHandler, ChatHandler):
    """One web connection: HTTP/1.1 requests (h11) until ``/chat`` upgrades it to a
    WebSocket chat member.

    After the upgrade it *is* a :class:`~wirecat.services.chat.ChatHandler` whose input is
    one JSON command per text message and whose output is WebSocket frames: the same
    login (token, deadline), rate limits, fan-out and slow-consumer rules as the TCP chat.
    """

    coalesce_writes = True
    needs_login = True
    login_on_open = False  # the chat's hello completes the login
    join_on_hello = False  # the page joins its rooms itself

    def __init__(self, ctx: ServerContext, web: WebService) -> None:
        ChatHandler.__init__(self, ctx, web.chat)
        self.service = web  # logs say "web"
        self.web = web
        self._ws_init(web.settings, CHAT_PATH)
        self.web_proto = _WebChatProtocol(max_line=self.limits.max_line, max_text=web.chat.max_text)
        self.proto = self.web_proto
        self.http: h11.Connection | None = h11.Connection(
            h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD
        )
        self._upgrade_req: h11.Request | None = None
        self._head_bytes = 0  # bytes received toward the current request head
        self._in_request = False  # a request head was parsed, its response not sent yet

    # -- WebSocket ---------------------------------------------------------------------------
    def on_open(self) -> None:
        ws = self.ws
        assert ws is not None
        if ws.extensions:
            self.web_proto.ws_codec = _DeflateCodec(ws)
        self.member = self.chat.core.connect(self)

    def on_message(self, message: str | bytes) -> None:
        data = message.encode() if isinstance(message, str) else message
        if b"\n" in data or b"\r" in data:
            # Outside strings, JSON newlines are whitespace; inside, they are invalid
            # anyway: one message stays one command.
            data = data.replace(b"\r", b" ").replace(b"\n", b" ")
        self.proto.receive_data(data + b"\n")
        self._pump()

    # -- HTTP --------------------------------------------------------------------------------
    def on_http_data(self, data: bytes) -> None:
        conn = self.http
        if conn is None:
            return
        if not self._in_request:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_REQUEST_HEAD + 4 and conn.their_state is h11.IDLE:
                self.ctx.metrics["http_bad_requests"] += 1  # h11 takes a complete huge head
                self._error(431, "request head too large", close=True)
                return
        try:
            conn.receive_data(data)
        except RuntimeError:  # data after the connection was closed by us
            return
        self._http_pump()

    def on_eof(self) -> bool:
        if self.ws is None and self.http is not None:
            self.http.receive_data(b"")
            self._http_pump()
            return False
        return super().on_eof()

    def _http_pump(self) -> None:
        conn = self.http
        while conn is not None and not self.closing and self.ws is None:
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                self.ctx.metrics["http_bad_requests"] += 1
                reason = "request head too large" if status == 431 else "malformed request"
                self._error(status, reason, close=True)
                return
            if ev is h11.NEED_DATA:
                return
            if ev is h11.PAUSED:
                if self._upgrade_req is not None:  # the request asked for a WebSocket
                    self._switch(conn)
                return
            if isinstance(ev, h11.Request):
                self._in_request = True
                self._request(ev)
            elif isinstance(ev, h11.EndOfMessage):
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    self._next_cycle(conn)
            elif isinstance(ev, h11.ConnectionClosed):
                self.close("http closed")
                return
            if conn.our_state is h11.MUST_CLOSE:
                self.close("http done")
                return

    def _request(self, req: h11.Request) -> None:
        self.ctx.metrics["http_requests"] += 1
        target = req.target.decode("ascii", "replace")
        path = target.split("?", 1)[0]
        upgrade = any(
            name == b"upgrade" and b"websocket" in value.lower() for name, value in req.headers
        )
        if upgrade:  # handled by the WebSocket protocol once h11 pauses
            self._upgrade_req = req
            return
        if req.method not in (b"GET", b"HEAD"):
            self._error(405, "method not allowed", close=True, extra=((b"allow", b"GET, HEAD"),))
            return
        head = req.method == b"HEAD"
        if path == CHAT_PATH:
            self._error(
                426, "this is a WebSocket: open the page at /", head=head, extra=_UPGRADE_HEADERS
            )
            return
        if path == "/healthz":
            self._respond(200, b"application/json", self._health(), head=head)
            return
        found = self.web.static.files.get(path)
        if found is None:
            self._error(404, "not found", head=head)
            return
        ctype, body = found
        self._respond(200, ctype, body, head=head, extra=((b"cache-control", b"no-cache"),))

    def _health(self) -> bytes:
        core = self.chat.core
        return json.dumps(
            {
                "status": "ok",
                "members": len(core),
                "rooms": len(core.rooms),
                "connections": len(self.ctx.connections),
                "hub": core.hub.stats(),
            }
        ).encode()

    def _respond(
        self,
        status: int,
        ctype: bytes,
        body: bytes,
        *,
        head: bool = False,
        close: bool = False,
        extra: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        conn = self.http
        assert conn is not None
        headers = [
            (b"content-type", ctype),
            (b"content-length", str(len(body)).encode()),
            *SECURITY_HEADERS,
            *extra,
        ]
        if close:
            headers.append((b"connection", b"close"))
        try:
            phrase = HTTPStatus(status).phrase.encode()
            out = conn.send(h11.Response(status_code=status, headers=headers, reason=phrase))
            if not head and body:
                out = (out or b"") + (conn.send(h11.Data(data=body)) or b"")
            out = (out or b"") + (conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:  # e.g. the peer broke the protocol mid-request
            out = _plain_response(status, body if not head else b"")
            close = True
        self.write_raw(out)
        if close or conn.our_state is h11.MUST_CLOSE:
            self.close("http done")
        elif conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            self._next_cycle(conn)

    def _next_cycle(self, conn: h11.Connection) -> None:
        """Keep-alive: get ready for the next request on this connection."""
        conn.start_next_cycle()
        self._in_request = False
        self._head_bytes = len(conn.trailing_data[0])

    def _error(
        self,
        status: int,
        text: str,
        *,
        head: bool = False,
        close: bool = False,
        extra: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        conn = self.http
        if conn is None or conn.our_state is not h11.SEND_RESPONSE:
            self.write_raw(_plain_response(status, (text + "\n").encode()))
            self.close(f"http {status}")
            return
        self._respond(
            status, b"text/plain; charset=utf-8", (text + "\n").encode(), head=head, close=close,
            extra=extra,
        )  # fmt: skip

    def _switch(self, conn: h11.Connection) -> None:
        req = self._upgrade_req
        assert req is not None
        trailing, _ = conn.trailing_data
        raw = b"".join(
            [
                req.method,
                b" ",
                req.target,
                b" HTTP/",
                req.http_version,
                b"\r\n",
                *(name + b": " + value + b"\r\n" for name, value in req.headers.raw_items()),
                b"\r\n",
            ]
        )
        self.http = None
        self._upgrade_req = None
        self.upgrade(raw + trailing)


_UPGRADE_HEADERS = ((b"upgrade", b"websocket"), (b"connection", b"Upgrade"))


def _plain_response(status: int, body: bytes) -> bytes:
    phrase = HTTPStatus(status).phrase
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
    ).encode()
    return head + b"".join(n + b": " + v + b"\r\n" for n, v in SECURITY_HEADERS) + b"\r\n" + body


class WebService(Service):
    """The chat page, ``/healthz`` and the WebSocket chat (``/chat``) on stream endpoints.

    Args:
        endpoints: where to listen (``tcp``/``ws``: plain HTTP; ``tls``/``wss``: HTTPS
            with the server's certificate; ``unix`` behind a reverse proxy).
        chat: the chat service whose core (rooms, history, hub, users) the WebSocket
            members share.
        settings: WebSocket hygiene (message size, keepalive, close timeout, compression,
            allowed origins).
        limits: limits for this service's connections (``None``: the server's).
    """

    name = "web"

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        chat: ChatService,
        settings: WebSocketSettings | None = None,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(endpoints, limits=limits)
        self.chat = chat
        self.settings = settings or WebSocketSettings()
        self.static = _Static()

    def stream_handler(self, ctx: ServerContext) -> StreamHandler:
        return WebHandler(ctx, self)


class _WebSocketEchoHandler(WebSocketHandler):
    """Echo every message back, same kind (text or binary); pause reading while the peer
    does not read its echoes."""

    _plain = False  # no extension: the echo frame is built here

    def on_open(self) -> None:
        ws = self.ws
        self._plain = ws is not None and not ws.extensions

    def on_message(self, message: str | bytes) -> None:
        if self._plain:
            if isinstance(message, str):
                self.write(server_frame(message.encode()))
            else:
                self.write(server_frame(message, text=False))
        elif isinstance(message, str):
            self.send_text(message)
        else:
            self.send_bytes(message)

    def pause_writing(self) -> None:
        super().pause_writing()
        self.pause_reading()  # the peer does not read its echoes: stop reading its messages

    def on_writable(self) -> None:
        self.resume_reading()


class WebSocketEchoService(Service):
    """Echo over WebSocket endpoints (``ws://``, ``wss://``): each message comes back as it
    was sent. The endpoint's path (default ``/``) is the resource served; others get 404.

    Args:
        endpoints: ``ws``/``wss`` endpoints.
        settings: WebSocket hygiene.
        limits: limits for this service's connections (``None``: the server's).
    """

    name = "echo"

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        settings: WebSocketSettings | None = None,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(endpoints, limits=limits)
        self.settings = settings or WebSocketSettings()
        paths = {ep.path or "/" for ep in endpoints}
        self.path = paths.pop() if len(paths) == 1 else None

    def stream_handler(self, ctx: ServerContext) -> StreamHandler:
        return _WebSocketEchoHandler(ctx, self, self.settings, self.path)
