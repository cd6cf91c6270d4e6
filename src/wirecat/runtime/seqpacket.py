"""A transport for ``unix+seqpacket:`` sockets (``AF_UNIX``, ``SOCK_SEQPACKET``).

asyncio has no transport for sequenced-packet sockets (``create_unix_connection`` and
``create_server`` want ``SOCK_STREAM``, ``create_datagram_endpoint`` wants ``SOCK_DGRAM``), so
this small :class:`asyncio.Transport` drives one with ``add_reader``/``add_writer``. It speaks
to any ``asyncio.Protocol``: the client protocol of :func:`wirecat.connect` and the server
handlers, so a seqpacket peer is a :class:`~wirecat.runtime.connection.Connection` like any
other. Boundaries are kept: each ``data_received`` is one packet, each ``write`` sends its
bytes as one packet (split every ``max_packet`` bytes), and a
:class:`~wirecat.runtime.connection.Connection` over it returns at most one packet per
``recv`` (the relay forwards packets as packets).

A zero-length read is the end of the stream (the peer shut down writing or closed; Linux
cannot tell that apart from an empty packet, so empty packets are not sent). A packet
longer than ``max_packet`` bytes would be truncated by the kernel: the connection is
closed with :class:`~wirecat.errors.LimitExceeded` instead.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from typing import Any

from ..errors import LimitExceeded

__all__ = ["MAX_PACKET", "SeqpacketTransport"]

#: Largest packet read or written, in bytes (Linux caps a packet at the send buffer, about
#: 208 KiB by default).
MAX_PACKET = 64 * 1024


class SeqpacketTransport(asyncio.Transport):
    """A connected ``SOCK_SEQPACKET`` socket driving ``protocol``.

    Flow control as asyncio's own transports: ``pause_writing()`` on the protocol above the
    high-water mark of unsent bytes (default 64 KiB), ``resume_writing()`` below the low one;
    :meth:`pause_reading` stops reading (the kernel then pushes back on the peer).

    Args:
        loop: the running loop.
        sock: a connected, non-blocking ``AF_UNIX``/``SOCK_SEQPACKET`` socket (owned from now).
        protocol: gets ``connection_made`` at once (before this returns).
        max_packet: largest packet in bytes, both ways.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        *,
        max_packet: int = MAX_PACKET,
    ) -> None:
        super().__init__(
            {"socket": sock, "sockname": sock.getsockname(), "peername": _peername(sock)}
        )
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol: asyncio.Protocol = protocol  # type: ignore[assignment]
        self._max_packet = max_packet
        self._out: collections.deque[bytes] = collections.deque()
        self._out_size = 0
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._writing_paused = False
        self._reading = True
        self._reader = False
        self._writer = False
        self._closing = False
        self._eof_written = False
        self._lost = False
        self._protocol.connection_made(self)
        if self._reading and not self._closing:
            self._add_reader()

    # -- reading ---------------------------------------------------------------------------
    def _add_reader(self) -> None:
        if not self._reader and not self._lost:
            self._loop.add_reader(self._fd, self._read_ready)
            self._reader = True

    def _remove_reader(self) -> None:
        if self._reader:
            self._loop.remove_reader(self._fd)
            self._reader = False

    def _read_ready(self) -> None:
        if self._lost:
            return
        try:
            data, _, flags, _ = self._sock.recvmsg(self._max_packet)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._force_close(exc)
            return
        if flags & socket.MSG_TRUNC:
            self._force_close(
                LimitExceeded(
                    f"a packet longer than {self._max_packet} bytes arrived (truncated)",
                    limit=self._max_packet,
                )
            )
            return
        if not data:
            self._remove_reader()
            try:
                keep_open = self._protocol.eof_received()
            except BaseException as exc:
                self._force_close(exc)
                raise
            if not keep_open:
                self.close()
            return
        self._protocol.data_received(data)

    def pause_reading(self) -> None:
        self._reading = False
        self._remove_reader()

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self._add_reader()

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    # -- writing ---------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` as one packet (several when over ``max_packet`` bytes)."""
        if self._eof_written:
            raise RuntimeError("cannot write after write_eof()")
        if self._lost or self._closing or not data:
            return
        view = memoryview(data).cast("B")
        for start in range(0, len(view), self._max_packet):
            piece = view[start : start + self._max_packet]
            if not self._out:
                try:
                    self._sock.send(piece)
                    continue
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as exc:
                    self._force_close(exc)
                    return
            self._out.append(bytes(piece))
            self._out_size += len(piece)
        if self._out and not self._writer:
            self._loop.add_writer(self._fd, self._write_ready)
            self._writer = True
        self._maybe_pause_protocol()

    def _write_ready(self) -> None:
        while self._out:
            try:
                self._sock.send(self._out[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._force_close(exc)
                return
            self._out_size -= len(self._out.popleft())
        self._loop.remove_writer(self._fd)
        self._writer = False
        self._maybe_resume_protocol()
        if self._closing:
            self._finish(None)
        elif self._eof_written:
            self._shutdown_write()

    def _maybe_pause_protocol(self) -> None:
        if not self._writing_paused and self._out_size > self._high:
            self._writing_paused = True
            self._protocol.pause_writing()

    def _maybe_resume_protocol(self) -> None:
        if self._writing_paused and self._out_size <= self._low:
            self._writing_paused = False
            self._protocol.resume_writing()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Shut down our sending side once the queued packets are out (the peer reads EOF)."""
        if self._eof_written or self._closing:
            return
        self._eof_written = True
        if not self._out:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._force_close(exc)

    def get_write_buffer_size(self) -> int:
        return self._out_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    # -- closing ---------------------------------------------------------------------------
    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Send what is queued, then close. Idempotent."""
        if self._closing:
            return
        self._closing = True
        self._remove_reader()
        if not self._out:
            self._finish(None)

    def abort(self) -> None:
        """Close now, dropping queued packets."""
        self._force_close(None)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._out.clear()
        self._out_size = 0
        if self._writer:
            self._loop.remove_writer(self._fd)
            self._writer = False
        self._closing = True
        self._remove_reader()
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._remove_reader()
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)  # type: ignore[arg-type]
        finally:
            self._sock.close()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


def _peername(sock: socket.socket) -> Any:
    try:
        return sock.getpeername()
    except OSError:
        return ""
