"""Send a byte range of a file to a transport, zero-copy when the kernel allows.

Three ways, tried in order:

1. ``loop.sendfile(transport, file, offset, count, fallback=False)``: the standard asyncio
   path (``sendfile(2)`` on plain TCP and Unix sockets with the default loop).
2. ``os.sendfile`` on a duplicate of the socket's descriptor, waiting for writability with
   ``loop.add_writer``: the same zero-copy path on loops that lack ``loop.sendfile``
   (uvloop). The transport's own buffer is drained first so bytes stay in order.
3. ``pread`` + ``transport.write`` in 256 KiB pieces with flow control (TLS, pipes).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from collections.abc import Awaitable, Callable
from typing import Protocol

__all__ = ["RangeWriter", "send_file_range"]

_SLICE = 32 * 1024 * 1024  # bytes per sendfile call between progress reports
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


async def send_file_range(
    conn: RangeWriter,
    fd: int,
    offset: int,
    count: int,
    *,
    progress: Callable[[int], None] | None = None,
    zero_copy: bool = True,
) -> str:
    """Write bytes ``[offset, offset + count)`` of the open file ``fd`` to ``conn``.

    Args:
        conn: the connection (see :class:`RangeWriter`).
        fd: a readable file descriptor (regular file).
        offset: first byte to send.
        count: how many bytes to send.
        progress: called on the loop thread with the bytes sent since the last call.
        zero_copy: allow ``sendfile``; False forces the copying path.

    Returns:
        The method used: ``"loop.sendfile"``, ``"os.sendfile"`` or ``"copy"``.

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
        loop = asyncio.get_running_loop()
        if isinstance(loop, asyncio.BaseEventLoop):
            with io.FileIO(fd, "rb", closefd=False) as fobj:
                try:
                    while count:
                        n = min(count, _SLICE)
                        sent = await loop.sendfile(transport, fobj, offset, n, fallback=False)
                        if sent != n:
                            raise OSError(f"file shrank while sending (sent {sent} of {n})")
                        offset += n
                        count -= n
                        report(n)
                    return "loop.sendfile"
                except asyncio.SendfileNotAvailableError:
                    pass
        else:
            await _dup_sendfile(conn, sock.fileno(), fd, offset, count, report)
            return "os.sendfile"
    await _copy(conn, fd, offset, count, report)
    return "copy"


async def _dup_sendfile(
    conn: RangeWriter,
    sock_fd: int,
    fd: int,
    offset: int,
    count: int,
    report: Callable[[int], None],
) -> None:
    loop = asyncio.get_running_loop()
    await conn.wait_empty()
    out = os.dup(sock_fd)
    try:
        while count:
            if conn.transport.is_closing():
                raise ConnectionError("connection closed during sendfile")
            try:
                sent = os.sendfile(out, fd, offset, min(count, _SLICE))
            except BlockingIOError:
                await _writable(loop, out)
                continue
            if sent == 0:
                raise OSError("file shrank while sending")
            offset += sent
            count -= sent
            report(sent)
    finally:
        os.close(out)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_writer(fd, ready)
    try:
        await fut
    finally:
        with contextlib.suppress(Exception):
            loop.remove_writer(fd)


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
