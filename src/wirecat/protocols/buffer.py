"""A bounded byte buffer for one connection's input (sans-I/O).

Bytes are appended with :meth:`StreamBuffer.feed`; framed reads take them out. Every read
that waits for a terminator has a ``max_*`` bound in bytes, checked as bytes arrive, so a peer
can never make the buffer grow past ``max + len(one chunk)`` while waiting for a newline.
Scans resume where the last one stopped, so feeding a line one byte at a time costs O(n).

Model: websockets ``streams.py`` (StreamReader with ``read_line(m)``, ``read_exact(n)``).
"""

from __future__ import annotations

from ..errors import LimitExceeded, LineTooLong

__all__ = ["StreamBuffer"]


class StreamBuffer:
    """Input buffer with bounded line, delimiter and exact reads.

    All sizes are in bytes. Methods return ``None`` when not enough data has arrived yet;
    they never block and never allocate more than the data fed.
    """

    __slots__ = ("_buf", "_eof", "_pos", "_scan_sep", "_scanned")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of unread data
        self._scanned = 0  # absolute index up to which _scan_sep was not found
        self._scan_sep = b"\n"  # the separator _scanned refers to
        self._eof = False

    def __len__(self) -> int:
        return len(self._buf) - self._pos

    @property
    def at_eof(self) -> bool:
        """True once :meth:`feed_eof` was called (more data may still be buffered)."""
        return self._eof

    def feed(self, data: bytes) -> None:
        """Append received bytes.

        Raises:
            LocalProtocolError-like ``RuntimeError`` if called after :meth:`feed_eof`.
        """
        if self._eof:
            raise RuntimeError("feed() after feed_eof()")
        self._buf += data

    def feed_eof(self) -> None:
        """Record that the peer will send no more bytes."""
        self._eof = True

    def _consume(self, end: int) -> bytes:
        out = bytes(self._buf[self._pos : end])
        self._pos = end
        self._scanned = end
        if self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
            self._scanned = 0
        return out

    def _rescan_for(self, sep: bytes) -> None:
        # A scan for one separator says nothing about another: start over from _pos.
        if sep != self._scan_sep:
            self._scan_sep = sep
            self._scanned = self._pos

    def read_until(self, sep: bytes, max_size: int) -> bytes | None:
        """Return the bytes up to and including ``sep``, or ``None`` if it has not arrived.

        Args:
            sep: the terminator (non-empty bytes).
            max_size: the most bytes the result may hold, terminator included.

        Raises:
            LimitExceeded: ``max_size`` bytes are buffered and ``sep`` is not among them.
        """
        self._rescan_for(sep)
        start = max(self._pos, self._scanned - len(sep) + 1)
        idx = self._buf.find(sep, start)
        if idx < 0:
            self._scanned = len(self._buf)
            if len(self._buf) - self._pos > max_size:
                raise LimitExceeded(f"no {sep!r} within {max_size} bytes", limit=max_size)
            return None
        end = idx + len(sep)
        if end - self._pos > max_size:
            raise LimitExceeded(f"no {sep!r} within {max_size} bytes", limit=max_size)
        return self._consume(end)

    def read_line(self, max_line: int) -> bytes | None:
        """Return one line including its ``b"\\n"``, or ``None`` if none is complete.

        Args:
            max_line: the most bytes a line may hold, terminator included.

        Raises:
            LineTooLong: ``max_line`` bytes are buffered with no newline among them.
        """
        self._rescan_for(b"\n")
        start = self._scanned if self._scanned > self._pos else self._pos
        idx = self._buf.find(b"\n", start)
        if idx < 0:
            self._scanned = len(self._buf)
            if len(self._buf) - self._pos >= max_line:  # no room left for the b"\n"
                raise LineTooLong(f"line longer than {max_line} bytes", limit=max_line)
            return None
        if idx + 1 - self._pos > max_line:
            raise LineTooLong(f"line longer than {max_line} bytes", limit=max_line)
        return self._consume(idx + 1)

    def skip_line(self) -> tuple[int, bool]:
        """Discard bytes up to and including the next newline.

        Returns:
            ``(discarded, found)``: how many bytes were dropped and whether a newline ended
            the run (``False`` means everything buffered was dropped and the line goes on).
        """
        idx = self._buf.find(b"\n", self._pos)
        if idx < 0:
            n = len(self._buf) - self._pos
            self._buf.clear()
            self._pos = self._scanned = 0
            return n, False
        n = idx + 1 - self._pos
        self._consume(idx + 1)
        return n, True

    def read_exact(self, n: int) -> bytes | None:
        """Return exactly ``n`` bytes, or ``None`` if fewer are buffered."""
        if n < 0:
            raise ValueError("n must be >= 0")
        if len(self._buf) - self._pos < n:
            return None
        return self._consume(self._pos + n)

    def read_some(self, max_size: int = -1) -> bytes:
        """Return up to ``max_size`` buffered bytes (all if ``max_size < 0``); may be ``b""``."""
        avail = len(self._buf) - self._pos
        n = avail if max_size < 0 else min(avail, max_size)
        return self._consume(self._pos + n)
