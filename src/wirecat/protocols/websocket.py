"""WebSocket (RFC 6455) glue without I/O, around websockets' sans-I/O protocol objects.

The framing, masking, control frames, the opening handshake and permessage-deflate
(RFC 7692) are the `websockets` library's :class:`~websockets.server.ServerProtocol` and
:class:`~websockets.client.ClientProtocol`; this module adds what an application needs on
top of them and what our runtime drives:

- whole **messages** out of fragments (:class:`TextMessage`, :class:`BinaryMessage`), with
  text checked as UTF-8 frame by frame (invalid: close 1007) and the size of a message
  bounded by ``max_message`` bytes *before* its payload is read or inflated (over it:
  close 1009), so a 1 KiB compressed frame that would inflate to 1 GiB is refused after at
  most ``max_message`` bytes of output;
- one event list for the handshake, messages, pongs and the close
  (:meth:`WebSocket.events_received`);
- the close handshake as data (:attr:`WebSocket.close_sent`, :attr:`WebSocket.close_rcvd`);
- :func:`server_frame`, the bytes of one unmasked server frame, so one encoding can be
  written to many connections (fan-out), when no extension is negotiated;
- a **fast path** on both sides for the hot case: a complete, small (at most
  :data:`FAST_FRAME_MAX` bytes), unfragmented text or binary frame, masked as the RFC wants
  it (client frames masked, server frames not), with no extension negotiated, is unmasked
  and checked here (RSV bits zero, opcode, masking, size from the header before the payload
  is buffered, UTF-8 for text) without building a websockets ``Frame``; every other frame
  (control frames, fragments, wrongly masked or oversized frames, anything while a
  fragmented message is open, anything once the connection is not OPEN) is handed whole to
  websockets' parser, which sees the stream at frame boundaries only (the handshake head
  is handed over alone for that: request on the server, response on the client).
  Optionally, :attr:`WebSocket.message_handler` takes each message as it is parsed instead
  of a :class:`TextMessage`/:class:`BinaryMessage` event. With an extension
  negotiated nothing is parsed here, but frame boundaries are still followed the same way;
- :attr:`WebSocket.receiving`, what a runtime needs for a deadline on unfinished input (a
  peer dribbling a frame or a fragmented message one byte at a time).

::

    ws = WebSocket.server(max_message=65536)
    ws.receive_data(request_bytes)            # the HTTP upgrade request
    [req] = ws.events_received()              # HandshakeRequest
    ws.accept(req.request)                    # or ws.reject(403, "...")
    out = ws.data_to_send()                   # the 101 response: write it
    ws.receive_data(frame_bytes)
    ws.events_received()                      # [TextMessage("hi")]
    ws.send_text("hello")

``data_to_send()`` returns a list of ``bytes``; an empty ``bytes`` means "close the
transport now" (half-close for a client, which then waits for the server's close).

Model: websockets ``protocol.py`` (the object we wrap); h11 for the event style.
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

try:  # websockets' C helper; the pure-Python one otherwise (same function)
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "FAST_FRAME_MAX",
    "BinaryMessage",
    "CloseCode",
    "Closed",
    "HandshakeFailed",
    "HandshakeRequest",
    "Opened",
    "PongReceived",
    "Request",
    "Response",
    "TextMessage",
    "WebSocket",
    "WebSocketEvent",
    "server_frame",
]

#: Default largest message accepted, in bytes (after decompression).
DEFAULT_MAX_MESSAGE = 64 * 1024
#: Largest payload, in bytes, of a frame the server's fast path parses itself (bigger
#: frames go to websockets' parser, which reads them as they come).
FAST_FRAME_MAX = 16 * 1024
#: Most bytes buffered after the handshake request while it waits for its answer; past it
#: the frames behind the request go to websockets' parser (and its limits) directly.
_MAX_EARLY = DEFAULT_MAX_MESSAGE + 14

_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """Server: the opening handshake request arrived; answer with :meth:`WebSocket.accept`
    or :meth:`WebSocket.reject`."""

    request: Request


@dataclass(frozen=True, slots=True)
class Opened:
    """The opening handshake succeeded (server: our 101 is queued; client: the server's 101
    arrived). ``extensions`` names the negotiated extensions (``permessage-deflate``)."""

    extensions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """Client: the server refused the upgrade (or did not speak HTTP).

    Attributes:
        status: the HTTP status (0 when no valid response arrived).
        reason: one line saying why.
    """

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class TextMessage:
    """A complete text message (UTF-8 checked), however many frames it came in."""

    text: str


@dataclass(frozen=True, slots=True)
class BinaryMessage:
    """A complete binary message."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PongReceived:
    """A pong arrived (the answer to a ping, or unsolicited)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Closed:
    """The WebSocket is closing or closed: no more messages will come.

    Attributes:
        code: the close code received (1000 normal, 1001 going away, 1006 no close frame,
            ...), or the one we sent when we failed the connection.
        reason: the close reason, as text.
        by_peer: True when the peer started the close (or broke the connection).
    """

    code: int
    reason: str
    by_peer: bool


WebSocketEvent = (
    HandshakeRequest
    | Opened
    | HandshakeFailed
    | TextMessage
    | BinaryMessage
    | PongReceived
    | Closed
)


def _header(opcode: int, size: int) -> bytes:
    if size < 126:
        return bytes((0x80 | opcode, size))
    if size < 65536:
        return bytes((0x80 | opcode, 126)) + size.to_bytes(2, "big")
    return bytes((0x80 | opcode, 127)) + size.to_bytes(8, "big")


# Headers of small final frames, made once: one concatenation per frame built.
_TEXT_HEADS = tuple(_header(1, n) for n in range(126))
_BINARY_HEADS = tuple(_header(2, n) for n in range(126))


def _frame_length(head: bytes | bytearray) -> int | None:
    """The whole length (header, mask key, payload) of the frame starting ``head``, or
    ``None`` while the bytes that give it are not all there (RFC 6455 5.2)."""
    if len(head) < 2:
        return None
    b1 = head[1]
    size = b1 & 0x7F
    mask = 4 if b1 & 0x80 else 0
    if size < 126:
        return 2 + mask + size
    if size == 126:
        return None if len(head) < 4 else 4 + mask + ((head[2] << 8) | head[3])
    return None if len(head) < 10 else 10 + mask + int.from_bytes(head[2:10], "big")


def server_frame(payload: bytes, *, text: bool = True) -> bytes:
    """Return one final, unmasked frame (the server -> client form, RFC 6455 5.2).

    Valid only on connections without extensions (``WebSocket.extensions`` empty): the
    same bytes can then be written to every such connection (fan-out).

    Args:
        payload: the message (UTF-8 for text).
        text: a text frame (opcode 1), else binary (opcode 2).
    """
    size = len(payload)
    if size < 126:
        return (_TEXT_HEADS if text else _BINARY_HEADS)[size] + payload
    return _header(1 if text else 2, size) + payload


class WebSocket:
    """One WebSocket connection without I/O (either side). Build with :meth:`server` or
    :meth:`client`.

    Args:
        protocol: a websockets ``ServerProtocol`` or ``ClientProtocol``.

    Attributes:
        protocol: the wrapped websockets object (for its handshake details).
        max_message: the largest message accepted, in bytes (after decompression).
        message_handler: ``None`` (default): messages are :class:`TextMessage` and
            :class:`BinaryMessage` events. Else a callable given each message (``str`` for
            text, ``bytes`` for binary) as soon as it is parsed, in order with the other
            messages; the other events stay in :meth:`events_received` (so a pong or a
            close read in the same bytes is seen after the messages before it). It may
            send and close; an exception it raises propagates out of
            :meth:`receive_data` (the connection should then be dropped).

    Not thread-safe; every method returns at once.
    """

    __slots__ = (
        "_decoder",
        "_events",
        "_failed",
        "_fast",
        "_fast_max",
        "_fragments",
        "_head",
        "_head_done",
        "_head_tail",
        "_mask",
        "_opened",
        "_owed",
        "_pending",
        "_settled",
        "_text",
        "max_message",
        "message_handler",
        "protocol",
    )

    def __init__(self, protocol: ServerProtocol | ClientProtocol, max_message: int) -> None:
        self.protocol = protocol
        self.max_message = max_message
        self.message_handler: Callable[[str | bytes], object] | None = None
        self._events: list[WebSocketEvent] = []
        self._fragments: list[bytes] = []
        self._text = False
        self._decoder: codecs.IncrementalDecoder | None = None
        self._opened = protocol.state is State.OPEN
        self._failed = False
        # Fast path, both sides (see the module docstring). ``_fast``: on once OPEN (with an
        # extension ``_fast_max`` is -1: every frame is websockets'). ``_pending``: the
        # start of a frame we parse ourselves (at most FAST_FRAME_MAX + 14 bytes), or,
        # before the handshake is answered, the bytes that came behind the request.
        # ``_owed``: bytes websockets still needs to finish the frame it was handed (it is
        # at a frame boundary when this is 0).
        self._fast = False
        self._fast_max = min(max_message, FAST_FRAME_MAX)
        self._pending = bytearray()
        self._owed = 0  # -1: websockets has part of a header, kept in ``_head``
        self._head = b""
        # Messages and control frames completed outside a message (for :attr:`receiving`).
        self._settled = 0
        # Server handshake: websockets gets the request head only (up to the blank line),
        # so that it is at a frame boundary when the connection opens.
        # The client's handshake likewise: the response head only; the frames behind a 101
        # are then parsed here.
        self._head_done = protocol.state is not State.CONNECTING
        self._head_tail: bytes | None = b""  # None: the head is complete
        server = isinstance(protocol, ServerProtocol)
        self._mask = 0x80 if server else 0  # the MASK bit the peer's frames must have

    # -- construction --------------------------------------------------------------------
    @classmethod
    def server(
        cls,
        *,
        max_message: int = DEFAULT_MAX_MESSAGE,
        compression: bool = False,
        origins: Sequence[str | re.Pattern[str] | None] | None = None,
    ) -> WebSocket:
        """The server side: feed it the upgrade request, then frames.

        Args:
            max_message: largest message accepted, bytes (after decompression).
            compression: offer permessage-deflate (RFC 7692) when the client asks for it.
            origins: accepted ``Origin`` header values (``None`` in the list: no header);
                ``None``: any. Others are refused with 403.
        """
        if max_message < 1:
            raise ValueError("max_message must be >= 1 byte")
        extensions = [ServerPerMessageDeflateFactory()] if compression else None
        proto = ServerProtocol(
            origins=origins,  # type: ignore[arg-type]
            extensions=extensions,
            max_size=max_message,
        )
        return cls(proto, max_message)

    @classmethod
    def client(
        cls,
        uri: str,
        *,
        max_message: int = DEFAULT_MAX_MESSAGE,
        compression: bool = False,
        origin: str | None = None,
    ) -> WebSocket:
        """The client side of ``uri`` (``ws://host:port/path``); its handshake request is
        queued at once (read it with :meth:`data_to_send`).

        Raises:
            ValueError: ``uri`` is not a ws:// or wss:// URI.
        """
        if max_message < 1:
            raise ValueError("max_message must be >= 1 byte")
        try:
            parsed = parse_uri(uri)
        except Exception as exc:  # InvalidURI
            raise ValueError(f"not a WebSocket URI: {uri!r}") from exc
        extensions = [ClientPerMessageDeflateFactory()] if compression else None
        proto = ClientProtocol(
            parsed,
            origin=origin,  # type: ignore[arg-type]
            extensions=extensions,
            max_size=max_message,
        )
        proto.send_request(proto.connect())
        return cls(proto, max_message)

    # -- state ---------------------------------------------------------------------------
    @property
    def state(self) -> State:
        """CONNECTING, OPEN, CLOSING or CLOSED (RFC 6455 4.1, 7.1.3-4)."""
        return self.protocol.state

    @property
    def is_open(self) -> bool:
        """True while messages may be sent."""
        return self.protocol.state is State.OPEN

    @property
    def extensions(self) -> tuple[str, ...]:
        """Names of the negotiated extensions (empty: frames can be shared, see
        :func:`server_frame`)."""
        return tuple(ext.name for ext in self.protocol.extensions)

    @property
    def close_sent(self) -> Close | None:
        """The close frame we sent (``code``, ``reason``), if any."""
        return self.protocol.close_sent

    @property
    def close_rcvd(self) -> Close | None:
        """The close frame the peer sent, if any."""
        return self.protocol.close_rcvd

    @property
    def eof_sent(self) -> bool:
        """True once the transport should be (half-)closed."""
        return self.protocol.eof_sent

    @property
    def receiving(self) -> int | None:
        """``None`` when no frame and no fragmented message is unfinished; else a number
        that stays the same while the same one is unfinished and differs once another began
        (a runtime restarts the clock of its deadline when it changes). Cheap: no list is made.

        Exact once open (frame boundaries are followed, see the module docstring); before
        that only a fragmented message counts (none can be).
        """
        if self._pending or self._owed or self._fragments:
            return self._settled
        return None

    @property
    def has_events(self) -> bool:
        """True when :meth:`events_received` has something (cheap: no list is made)."""
        return bool(self._events)

    @property
    def has_data_to_send(self) -> bool:
        """True when :meth:`data_to_send` has something (cheap: no list is made)."""
        return bool(self.protocol.writes)

    # -- input ---------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer (any split of the stream); no-op once closed."""
        if self._fast:
            self._receive_fast(data)
            return
        proto = self.protocol
        if proto.reader.eof or proto.state is State.CLOSED:
            return
        if not self._head_done:
            self._receive_head(data)
            return
        proto.receive_data(data)
        self._collect()

    def _receive_head(self, data: bytes) -> None:
        """Before the handshake is answered: the request head (server) or the response head
        (client) goes to websockets; what follows it waits (bounded) until the connection
        opens (at once for a client: the response is the answer)."""
        proto = self.protocol
        tail = self._head_tail
        if tail is None:  # the head is complete: bytes behind it wait for the answer
            pending = self._pending
            pending += data
            if len(pending) > _MAX_EARLY:  # no answer yet: websockets' parser takes them
                self._head_done = True
                rest = bytes(pending)
                pending.clear()
                proto.receive_data(rest)
                self._collect()
            return
        probe = tail + data if tail else data
        end = probe.find(b"\r\n\r\n")
        if end < 0:
            self._head_tail = probe[-3:]
            proto.receive_data(data)
        else:
            cut = end + 4 - len(tail)
            self._head_tail = None
            self._pending += data[cut:]
            proto.receive_data(data[:cut])
        self._collect()  # a client that got a 101 has opened (and parsed what followed)
        if end >= 0 and not self._head_done and not self._mask:
            # A client without a 101 (a refusal, its body): websockets reads the rest.
            self._head_done = True
            rest = bytes(self._pending)
            self._pending.clear()
            if rest:
                proto.receive_data(rest)
                self._collect()

    def _receive_fast(self, data: bytes) -> None:
        """OPEN: parse hot frames here (no extension), hand the others to websockets at frame
        boundaries (see the module docstring). The same code reads masked frames (server)
        and unmasked ones (client)."""
        pending = self._pending
        n = len(data)
        if not pending and not self._owed and 6 <= n <= 131:
            # The commonest case on the server on its own: exactly one small (< 126 bytes)
            # masked frame arrived. (A client's frames go through the loop below.)
            b0 = data[0]
            b1 = data[1]
            if (
                (b0 == 0x81 or b0 == 0x82)
                and b1 - 0x80 == n - 6  # masked, and its length is what came
                and self._mask  # (we are the server: a client refuses a masked frame)
                and n - 6 <= self._fast_max
                and not self._fragments
                and not self._failed
                and self.protocol.state is State.OPEN
            ):
                payload = apply_mask(data[6:], data[2:6])
                handler = self.message_handler
                if b0 == 0x82:
                    if handler is not None:
                        handler(payload)
                    else:
                        self._events.append(BinaryMessage(payload))
                    return
                try:
                    text = payload.decode()
                except UnicodeDecodeError as exc:
                    self._bad_utf8(exc)
                    return
                if handler is not None:
                    handler(text)
                else:
                    self._events.append(TextMessage(text))
                return
        buf: bytes | bytearray
        if pending:
            pending += data
            buf = pending
        else:
            buf = data
        proto = self.protocol
        n = len(buf)
        i = 0
        fast_max = self._fast_max
        open_ = State.OPEN
        mask = self._mask  # 0x80: the peer masks its frames (we are the server); 0: not
        key = 4 if mask else 0  # the length of their masking key
        done = False  # a message was completed here (for ``receiving``)
        while i < n:
            if proto.state is not open_ or self._failed:
                # Closing or failed: websockets takes the rest of the stream (it has every
                # byte before ``i``) and the fast path is over.
                self._fast = False
                rest = bytes(buf[i:])
                pending.clear()
                if not proto.reader.eof and proto.state is not State.CLOSED:
                    proto.receive_data(rest)
                    self._collect()
                return
            owed = self._owed
            if owed > 0:  # websockets is inside a frame: give it the rest of that frame
                end = i + owed if owed < n - i else n
                self._owed = owed - (end - i)
                proto.receive_data(buf[i:end])
                i = end
                self._collect()
                continue
            if owed < 0:  # websockets has the start of a header: we learn the length
                start_of = self._head + bytes(buf[i : i + 10])
                total = _frame_length(start_of)
                if total is None:
                    self._head = start_of
                    proto.receive_data(buf[i:n])
                    i = n
                    self._collect()
                    continue
                self._owed = total - (len(self._head))
                self._head = b""
                continue
            if n - i < 2:
                break
            b0 = buf[i]
            b1 = buf[i + 1]
            size = b1 & 0x7F
            # Hot: FIN set, RSV1-3 clear, text or binary; masked as due (server: masked,
            # client: not); <= fast_max; no fragmented message open (its continuation
            # frames are websockets').
            if (
                (b0 == 0x81 or b0 == 0x82)
                and b1 & 0x80 == mask
                and size < 127
                and not self._fragments
            ):
                if size == 126:
                    if n - i < 4:
                        break
                    size = (buf[i + 2] << 8) | buf[i + 3]
                    head = 4 + key
                else:
                    head = 2 + key
                if size > fast_max:  # too big for the fast path: websockets reads it
                    self._owed = head + size
                    continue
                start = i + head
                end = start + size
                if end > n:
                    break  # wait for the rest (bounded by fast_max)
                if key:
                    payload = apply_mask(buf[start:end], buf[start - 4 : start])
                else:
                    payload = bytes(buf[start:end])
                i = end
                done = True
                handler = self.message_handler
                if b0 == 0x81:
                    try:
                        text = payload.decode()
                    except UnicodeDecodeError as exc:
                        self._bad_utf8(exc)  # closing: the next turn hands over the rest
                        continue
                    if handler is not None:
                        handler(text)
                    else:
                        self._events.append(TextMessage(text))
                elif handler is not None:
                    handler(payload)
                else:
                    self._events.append(BinaryMessage(payload))
                continue
            # Any other frame goes to websockets at once (it may refuse it from its first
            # bytes), which parses it and enforces the RFC on it: masking, RSV bits, opcode,
            # control frame rules, size. We only follow its length, to know where the next
            # frame starts; until the length is here, ``_head`` keeps what websockets got.
            total = _frame_length(buf[i : i + 10])
            if total is None:
                self._head = bytes(buf[i:n])
                self._owed = -1
                proto.receive_data(buf[i:n])
                i = n
                self._collect()
                continue
            self._owed = total
        if done:
            self._settled += 1
        if buf is pending:
            del pending[:i]
        elif i < n:
            pending += buf[i:]

    def _take_fast(self) -> None:
        """The connection is open: turn the fast path on (with an extension it only follows
        frame boundaries) and parse the frames that came behind the handshake."""
        self._head_done = True
        rest = bytes(self._pending)
        self._pending.clear()
        self._fast = True
        if self.protocol.extensions:  # frames are websockets' (it runs the extension):
            self._fast_max = -1  # only their boundaries are followed here
        if rest:
            self._receive_fast(rest)

    def receive_eof(self) -> None:
        """Feed the end of the stream. Idempotent."""
        proto = self.protocol
        was = proto.state
        if self._pending and not proto.reader.eof and proto.state is not State.CLOSED:
            # the start of a frame we were reading: websockets reports it cut short
            rest = bytes(self._pending)
            self._pending.clear()
            proto.receive_data(rest)
            self._collect()
        self._fast = False
        proto.receive_eof()
        self._collect()
        if was is State.OPEN and not self._failed:
            # The peer vanished without a close frame (RFC 6455 7.1.5: 1006).
            self._failed = True
            self._events.append(Closed(CloseCode.ABNORMAL_CLOSURE, "no close frame", True))

    def events_received(self) -> list[WebSocketEvent]:
        """Return (and forget) the events of the bytes fed so far."""
        events, self._events = self._events, []
        return events

    def _collect(self) -> None:
        proto = self.protocol
        for ev in proto.events_received():
            if isinstance(ev, Frame):
                self._frame(ev)
            elif isinstance(ev, Request):
                self._events.append(HandshakeRequest(ev))
            elif isinstance(ev, Response):
                if proto.handshake_exc is None and proto.state is State.OPEN:
                    self._opened = True
                    self._events.append(Opened(self.extensions))
                    if not self._head_done:  # client: the frames behind the 101 are ours
                        self._take_fast()
                else:
                    self._failed = True  # reported once, however the events are read
                    self._events.append(
                        HandshakeFailed(ev.status_code, _describe(proto.handshake_exc, ev))
                    )
        if (
            proto.handshake_exc is not None
            and not self._opened
            and not self._failed
            and isinstance(proto, ClientProtocol)
            and not any(isinstance(e, HandshakeFailed) for e in self._events)
        ):
            self._failed = True
            self._events.append(HandshakeFailed(0, _describe(proto.handshake_exc, None)))
        exc = proto.parser_exc
        if exc is not None and self._opened and not self._failed:
            self._failed = True
            sent = proto.close_sent
            code: int
            if isinstance(exc, EOFError):
                code, reason = CloseCode.ABNORMAL_CLOSURE, "no close frame"
            else:
                code = sent.code if sent is not None else CloseCode.PROTOCOL_ERROR
                reason = sent.reason if sent is not None and sent.reason else str(exc)
            self._events.append(Closed(code, reason, True))

    def _frame(self, frame: Frame) -> None:
        self._frame_data(frame)
        if not self._fragments:
            self._settled += 1

    def _frame_data(self, frame: Frame) -> None:
        op = frame.opcode
        if op is _TEXT or op is _BINARY or op is _CONT:
            if self._failed:
                return
            if op is not _CONT:
                self._text = op is _TEXT
                self._decoder = None
            data = bytes(frame.data)
            if self._text:
                if frame.fin and not self._fragments:
                    try:
                        text = data.decode()
                    except UnicodeDecodeError as exc:
                        self._bad_utf8(exc)
                        return
                    self._message(text)
                    return
                decoder = self._decoder
                if decoder is None:
                    decoder = self._decoder = codecs.getincrementaldecoder("utf-8")()
                try:
                    decoder.decode(data, frame.fin)  # checked as it comes, kept as bytes
                except UnicodeDecodeError as exc:
                    self._bad_utf8(exc)
                    return
            self._fragments.append(data)
            if frame.fin:
                whole = b"".join(self._fragments)
                self._fragments = []
                self._decoder = None
                self._message(whole.decode() if self._text else whole)
        elif op is Opcode.PONG:
            self._events.append(PongReceived(bytes(frame.data)))
        elif op is Opcode.CLOSE:
            rcvd = self.protocol.close_rcvd
            if not self._failed:
                self._failed = True
                code = rcvd.code if rcvd is not None else CloseCode.NO_STATUS_RCVD
                reason = rcvd.reason if rcvd is not None else ""
                by_peer = self.protocol.close_rcvd_then_sent is not False
                self._events.append(Closed(code, reason, by_peer))
        # PING: websockets queued the pong already.

    def _message(self, message: str | bytes) -> None:
        handler = self.message_handler
        if handler is not None:
            handler(message)
        elif isinstance(message, str):
            self._events.append(TextMessage(message))
        else:
            self._events.append(BinaryMessage(message))

    def _bad_utf8(self, exc: UnicodeDecodeError) -> None:
        self._fragments = []
        self._decoder = None
        reason = f"invalid UTF-8 in a text message ({exc.reason})"
        self.fail(CloseCode.INVALID_DATA, reason)
        self._events.append(Closed(CloseCode.INVALID_DATA, reason, True))

    # -- handshake (server) ----------------------------------------------------------------
    def accept(self, request: Request) -> Response:
        """Answer the handshake ``request``: 101, or an error response (bad handshake, 403
        for a refused Origin). The response is queued; it is returned for logging.

        An :class:`Opened` event follows a 101 (read it with :meth:`events_received`).
        """
        proto = self.protocol
        assert isinstance(proto, ServerProtocol)
        response = proto.accept(request)
        self.send_response(response)
        return response

    def reject(self, status: int, text: str, headers: Sequence[tuple[str, str]] = ()) -> Response:
        """Refuse the upgrade with an HTTP ``status`` and a short plain ``text`` body; the
        transport is then closed (``b""`` from :meth:`data_to_send`)."""
        proto = self.protocol
        assert isinstance(proto, ServerProtocol)
        response = proto.reject(status, text)
        for name, value in headers:
            response.headers[name] = value
        self.send_response(response)
        return response

    def send_response(self, response: Response) -> None:
        """Queue a handshake ``response`` made by :meth:`accept`-like code."""
        proto = self.protocol
        assert isinstance(proto, ServerProtocol)
        proto.send_response(response)
        if response.status_code == 101:
            self._opened = True
            self._events.append(Opened(self.extensions))
            self._take_fast()
        else:
            self._pending.clear()
            self._head_done = True

    # -- output ----------------------------------------------------------------------------
    def send_text(self, text: str | bytes) -> None:
        """Queue one text message (``bytes``: already UTF-8).

        Raises:
            websockets.exceptions.InvalidState: the connection is not open.
        """
        self.protocol.send_text(text.encode() if isinstance(text, str) else text)

    def send_bytes(self, data: bytes) -> None:
        """Queue one binary message.

        Raises:
            websockets.exceptions.InvalidState: the connection is not open.
        """
        self.protocol.send_binary(data)

    def send_ping(self, data: bytes | None = None) -> bytes:
        """Queue a ping; return its payload (4 random bytes unless given)."""
        payload = os.urandom(4) if data is None else data
        self.protocol.send_ping(payload)
        return payload

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake (RFC 6455 7.1.2); idempotent. ``reason`` is cut to
        fit a control frame (123 bytes of UTF-8)."""
        if self.protocol.state is not State.OPEN:
            return
        self.protocol.send_close(code, _cut(reason))

    def fail(self, code: int, reason: str = "") -> None:
        """Fail the connection (RFC 6455 7.1.7): send a close frame if we can, then close
        the transport without waiting for the peer's."""
        self._failed = True
        if self.protocol.state is State.CLOSED or self.protocol.eof_sent:
            return
        self.protocol.fail(code, _cut(reason))

    def data_to_send(self) -> list[bytes]:
        """Return (and forget) the bytes to write, in order; ``b""``: close the transport."""
        return self.protocol.data_to_send()


def _cut(reason: str) -> str:
    data = reason.encode()
    if len(data) <= 123:
        return reason
    return data[:123].decode(errors="ignore")


def _describe(exc: BaseException | None, response: Response | None) -> str:
    if response is not None and response.status_code != 101:
        body = (response.body or b"").decode(errors="replace").strip().splitlines()
        detail = f": {body[0][:200]}" if body else ""
        return f"HTTP {response.status_code} {response.reason_phrase}{detail}"
    if isinstance(exc, InvalidHandshake):
        text = str(exc)
        cause = exc.__cause__
        return f"{text}: {cause}" if cause is not None and str(cause) else text
    return str(exc) if exc is not None else "the WebSocket handshake failed"
