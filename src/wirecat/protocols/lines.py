"""Newline-delimited framing (sans-I/O), the framing of every text service.

``recv(1024)`` is not a message: TCP delivers a byte stream, and one ``data_received`` may
hold half a line or ten. :class:`LineFramer` turns that stream into :class:`Line` events,
bounded by ``max_line`` bytes. A line that grows past the bound is not an error that kills
the connection: it yields one :class:`LineOverflow` event, its bytes are discarded up to the
next newline, and framing goes on, so the service can answer with a reason and keep serving.

Lines end with ``LF``; a ``CR`` before it is removed (telnet and ``nc -C`` send ``CRLF``,
RFC 854). At end of stream, unterminated bytes are delivered as a final :class:`Line` with
``terminated=False``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import LineTooLong, LocalProtocolError
from .buffer import StreamBuffer

__all__ = ["EndOfStream", "Line", "LineEvent", "LineFramer", "LineOverflow", "encode_line"]


@dataclass(frozen=True, slots=True)
class Line:
    """One received line, without its ``\\n`` or ``\\r\\n``.

    Attributes:
        data: the line's bytes.
        terminated: False for trailing bytes delivered at end of stream without a newline.
    """

    data: bytes
    terminated: bool = True


@dataclass(frozen=True, slots=True)
class LineOverflow:
    """A line exceeded ``limit`` bytes; it was discarded (``discarded`` bytes so far)."""

    limit: int
    discarded: int


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The peer half-closed its side; no more lines will arrive."""


LineEvent = Line | LineOverflow | EndOfStream


class LineFramer:
    """Bounded line framing for one direction of one connection.

    Args:
        max_line: the most bytes a line may hold including its terminator (default 4096).

    Feed bytes with :meth:`receive_data` / :meth:`receive_eof`, then take events from
    :meth:`events_received`. Outgoing lines are queued with :meth:`send_line` and taken with
    :meth:`data_to_send` (``b""`` there means: half-close the write side).
    """

    __slots__ = ("_buffer", "_discarded", "_discarding", "_eof", "_events", "_out", "max_line")

    def __init__(self, *, max_line: int = 4096) -> None:
        if max_line < 2:
            raise ValueError("max_line must be >= 2 bytes")
        self.max_line = max_line
        self._buffer = StreamBuffer()
        self._events: list[LineEvent] = []
        self._out: list[bytes] = []
        self._discarding = False
        self._discarded = 0
        self._eof = False

    # -- input ---------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the peer. Safe to call with any split of the stream."""
        if self._eof:
            raise LocalProtocolError("receive_data() after receive_eof()")
        if not data:
            return
        self._buffer.feed(data)
        self._parse()

    def receive_eof(self) -> None:
        """Feed the end of the stream. Idempotent."""
        if self._eof:
            return
        self._eof = True
        self._buffer.feed_eof()
        if self._discarding:
            self._discarding = False
            self._buffer.read_some()
        elif len(self._buffer):
            rest = self._buffer.read_some()
            if rest.endswith(b"\r"):
                rest = rest[:-1]
            self._events.append(Line(rest, terminated=False))
        self._events.append(EndOfStream())

    def _parse(self) -> None:
        buf = self._buffer
        events = self._events
        while True:
            if self._discarding:
                n, found = buf.skip_line()
                self._discarded += n
                if not found:
                    return
                self._discarding = False
                continue
            try:
                line = buf.read_line(self.max_line)
            except LineTooLong:
                self._discarding = True
                self._discarded = 0
                n, found = buf.skip_line()
                events.append(LineOverflow(self.max_line, n))
                if not found:
                    return
                self._discarding = False
                continue
            if line is None:
                return
            end = -2 if line.endswith(b"\r\n") else -1
            events.append(Line(line[:end]))

    def events_received(self) -> list[LineEvent]:
        """Return and clear the events parsed since the last call."""
        events, self._events = self._events, []
        return events

    # -- output --------------------------------------------------------------------------
    def send_line(self, data: bytes) -> None:
        """Queue one line; ``b"\\n"`` is appended.

        Raises:
            LocalProtocolError: ``data`` contains a newline or is longer than ``max_line - 1``.
        """
        self._out.append(encode_line(data, self.max_line))

    def send_eof(self) -> None:
        """Queue a half-close (an empty chunk in :meth:`data_to_send`)."""
        self._out.append(b"")

    def data_to_send(self) -> list[bytes]:
        """Return and clear the chunks to write; ``b""`` means half-close after the rest."""
        out, self._out = self._out, []
        return out


def encode_line(data: bytes, max_line: int | None = None) -> bytes:
    """Return ``data + b"\\n"``, checking that it is one line of at most ``max_line`` bytes.

    Raises:
        LocalProtocolError: ``data`` contains ``b"\\n"`` or the line would exceed ``max_line``.
    """
    if b"\n" in data:
        raise LocalProtocolError("a line cannot contain a newline")
    if max_line is not None and len(data) + 1 > max_line:
        raise LocalProtocolError(f"line of {len(data) + 1} bytes exceeds max_line={max_line}")
    return data + b"\n"
