"""Send a byte range of a file to a transport, zero-copy when the kernel allows.

Two ways:

1. ``sendfile(2)`` on a worker thread (plain TCP and Unix sockets, any event loop): the
   transport's own buffer is drained first so bytes stay in order, then a thread calls
   ``os.sendfile`` on a duplicate of the socket's descriptor and waits for room with
   ``poll(2)`` -- no event-loop callback per ``EAGAIN``, no Python object per chunk. The
   descriptor stays non-blocking; the loop hears of progress every few MiB.
2. ``pread`` + ``transport.write`` in 256 KiB pieces with flow control (TLS, pipes, or
   ``zero_copy=False``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

__all__ = ["RangeWriter", "send_file_range"]

_SLICE = 32 * 1024 * 1024  # most bytes asked of one sendfile call
_REPORT = 4 * 1024 * 1024  # bytes sent between progress reports to the loop
_COPY_CHUNK = 256 * 1024


class RangeWriter(Protocol):
    """What :func:`send_file_range` needs from the connection it writes to."""

    @property
    def transport(self) -> asyncio.Transport: ...

    def write(self, data: bytes) -> bool: ...

    async def wait_writable(self) -> None:
        """Return once the transport is below its high-water mark (or closing)."""

    async def wait_empty(self) -> None:
        """Return once the transport's write buffer is empty (or closing)."""

    async def wait_closed(self) -> None:
        """Return once the connection is closing or closed."""


async def send_file_range(
    conn: RangeWriter,
    fd: int,
    offset: int,
    count: int,
    *,
    progress: Callable[[int], None] | None = None,
    zero_copy: bool = True,
    progress_interval: float = 1.0,
) -> str:
    """Write bytes ``[offset, offset + count)`` of the open file ``fd`` to ``conn``.

    Args:
        conn: the connection (see :class:`RangeWriter`).
        fd: a readable file descriptor (regular file).
        offset: first byte to send.
        count: how many bytes to send.
        progress: called on the loop thread with the bytes sent since the last call; an
            exception it raises stops the transfer and is raised here. Called at least every
            ``progress_interval`` seconds while bytes move (every 4 MiB at most), so the
            caller can tell a slow download from one that does not move at all.
        zero_copy: allow ``sendfile`` (a thread); False forces the copying path.
        progress_interval: seconds (> 0); see ``progress``.

    Returns:
        The method used: ``"sendfile"`` or ``"copy"``.

    Raises:
        OSError: the peer went away (``BrokenPipeError``, ``ConnectionResetError``), or the
            file shrank while being sent.
        ConnectionError: the transport closed before all bytes were sent.
    """
    report = progress or (lambda n: None)
    if count <= 0:
        return "copy"
    transport = conn.transport
    sock = transport.get_extra_info("socket")
    plain = zero_copy and sock is not None and transport.get_extra_info("sslcontext") is None
    if plain and hasattr(os, "sendfile"):
        await conn.wait_empty()
        if transport.is_closing():
            raise ConnectionError("connection closed before sendfile")
        await _ThreadSendfile(sock.fileno(), fd, report, progress_interval).run(conn, offset, count)
        return "sendfile"
    await _copy(conn, fd, offset, count, report)
    return "copy"


class _ThreadSendfile:
    """``os.sendfile`` in a loop on a thread, woken by ``poll`` (room, or :meth:`cancel`).

    The thread works on duplicates of both descriptors, closed on the loop thread once it
    is finished, so the caller may close its own at any time.
    """

    def __init__(
        self, sock_fd: int, fd: int, report: Callable[[int], None], interval: float = 1.0
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._report = report
        self._interval = interval
        self._fds: list[int] = []
        self._fds.append(os.dup(sock_fd))
        self._fds.append(os.dup(fd))
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._fds += [self._wake_r, self._wake_w]
        self._stop = False
        self._closed = False
        self._failed: BaseException | None = None  # raised by the progress callback
        self._error: BaseException | None = None  # raised on the thread
        self._done: asyncio.Future[None] = self._loop.create_future()

    def cancel(self) -> None:
        """Stop soon (loop thread; idempotent)."""
        self._stop = True
        if not self._closed:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    async def run(self, conn: RangeWriter, offset: int, count: int) -> None:
        threading.Thread(
            target=self._thread, args=(offset, count), name="wirecat-sendfile", daemon=True
        ).start()
        closed = asyncio.ensure_future(conn.wait_closed())
        try:
            await asyncio.wait([self._done, closed], return_when=asyncio.FIRST_COMPLETED)
            if not self._done.done():
                self.cancel()
                await asyncio.shield(self._done)
                if self._error is None and self._failed is None:
                    self._error = ConnectionError("connection closed during sendfile")
        except asyncio.CancelledError:
            self.cancel()
            raise
        finally:
            closed.cancel()
        if self._failed is not None:
            raise self._failed
        if self._error is not None:
            raise self._error

    def _progress(self, n: int) -> None:
        if self._failed is not None:
            return
        try:
            self._report(n)
        except BaseException as exc:
            self._failed = exc
            self.cancel()

    def _thread(self, offset: int, count: int) -> None:
        out, src = self._fds[0], self._fds[1]
        poller = select.poll()
        poller.register(out, select.POLLOUT)
        poller.register(self._wake_r, select.POLLIN)
        since = 0
        reported = time.monotonic()
        try:
            while count and not self._stop:
                try:
                    sent = os.sendfile(out, src, offset, min(count, _SLICE))
                except BlockingIOError:
                    if since and (
                        since >= _REPORT or time.monotonic() - reported >= self._interval
                    ):
                        self._loop.call_soon_threadsafe(self._progress, since)
                        since, reported = 0, time.monotonic()
                    poller.poll(int(self._interval * 1000) + 1 if since else -1)
                    continue
                if sent == 0:
                    raise OSError("file shrank while sending")
                offset += sent
                count -= sent
                since += sent
            if count:
                self._error = ConnectionError("sendfile stopped: the connection is closing")
        except BaseException as exc:
            self._error = exc
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                if since:
                    self._loop.call_soon_threadsafe(self._progress, since)
                self._loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        self._closed = True
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if not self._done.done():
            self._done.set_result(None)


async def _copy(
    conn: RangeWriter, fd: int, offset: int, count: int, report: Callable[[int], None]
) -> None:
    waiter: Callable[[], Awaitable[None]] = conn.wait_writable
    while count:
        data = os.pread(fd, min(count, _COPY_CHUNK), offset)
        if not data:
            raise OSError("file shrank while sending")
        if not conn.write(data) or conn.transport.is_closing():
            raise ConnectionError("connection closed while sending")
        offset += len(data)
        count -= len(data)
        report(len(data))
        await waiter()
