"""Standard input/output as async byte streams, and bridges between them and connections.

This is the engine of ``wirecat connect`` and ``wirecat listen`` (netcat-style use), kept
here so that the CLI stays thin and scripts can reuse it.

::

    stdin = await open_stdin()
    stdout = await open_stdout()
    async with await connect("tcp://127.0.0.1:7007") as conn:
        result = await bridge_stream(conn, stdin, stdout)
    await stdout.aclose()

Standard input can be a pipe, a terminal, a regular file, a socket or ``/dev/null``:

- FIFOs (pipes) use ``loop.connect_read_pipe`` / ``loop.connect_write_pipe`` on a duplicate
  of the descriptor (blocking mode is restored on close).
- Everything else uses one daemon thread per direction. ``connect_read_pipe`` refuses
  regular files, and putting a terminal or a socket shared by stdin and stdout into
  non-blocking mode would leak into other processes using the same open file description.

Both directions are bounded: the stdin reader keeps at most ``max_chunks`` chunks read ahead,
and :meth:`StdoutWriter.write` waits while more than ``high_water`` bytes are unwritten, so
a slow consumer of our stdout slows the socket down (TCP pushes back) instead of growing
memory.

End of stream, stream connections (:func:`bridge_stream`): when stdin ends, the peer is
sent EOF (a TCP half-close, ``shutdown(SHUT_WR)``) unless ``half_close=False``, and
received bytes are copied to stdout until the peer closes its side, or until ``wait``
seconds have passed. When the peer closes first, stdin is still copied to the peer until it
ends (the peer may only have half-closed), except when stdin is a terminal: then the session
ends at once (``stop_on_peer_eof``).

Datagram connections (:func:`bridge_datagram`): each stdin line, newline included, is one
datagram; lines longer than ``max_datagram`` bytes are split. Every received datagram is
written to stdout as is. After stdin ends, replies are printed for ``wait`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import select
import stat
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConnectionClosed, ConnectionClosedOK, NetworkError
from .connection import Connection, DatagramConnection

__all__ = [
    "BridgeResult",
    "Fanout",
    "LineSplitter",
    "OutputClosed",
    "StdinReader",
    "StdoutWriter",
    "bridge_datagram",
    "bridge_stream",
    "lf_to_crlf",
    "open_stdin",
    "open_stdout",
]

_CHUNK = 64 * 1024  # bytes per read from stdin
_MAX_CHUNKS = 8  # chunks read ahead from stdin at most
_HIGH_WATER = 256 * 1024  # bytes unwritten to stdout before write() waits
_MAX_DATAGRAM = 65507  # largest UDP payload over IPv4


class OutputClosed(ConnectionClosedOK):
    """Standard output is gone (its reader closed the pipe: ``wirecat ... | head -1``)."""


def _is_fifo(fd: int) -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        return False


def _wait_fd(fd: int, *, write: bool) -> None:
    """Block until ``fd`` is ready (used when someone else made it non-blocking)."""
    if write:
        select.select([], [fd], [])
    else:
        select.select([fd], [], [])


# --------------------------------------------------------------------------------------------
# stdin
# --------------------------------------------------------------------------------------------


class StdinReader:
    """Reads standard input in chunks. Create with :func:`open_stdin`.

    Attributes:
        is_tty: True when stdin is a terminal.
        at_eof: True once :meth:`read` returned ``b""``.

    One reader at a time: concurrent :meth:`read` calls are not supported.
    """

    is_tty: bool = False
    at_eof: bool = False

    async def read(self) -> bytes:
        """Return the next chunk (at most 64 KiB); ``b""`` at end of input, and after.

        Raises:
            NetworkError: reading failed (the cause is the ``OSError``).
        """
        raise NotImplementedError

    def close(self) -> None:
        """Stop reading. Idempotent. A thread blocked in ``read(2)`` is left to exit later."""


class _PipeReader(StdinReader):
    def __init__(self, reader: asyncio.StreamReader, transport: asyncio.ReadTransport, fd: int):
        self._reader = reader
        self._transport = transport
        self._fd = fd

    async def read(self) -> bytes:
        if self.at_eof:
            return b""
        try:
            data = await self._reader.read(_CHUNK)
        except OSError as exc:
            self.at_eof = True
            raise NetworkError(f"cannot read standard input: {exc.strerror or exc}") from exc
        if not data:
            self.at_eof = True
        return data

    def close(self) -> None:
        if not self._transport.is_closing():
            self._transport.close()
        with contextlib.suppress(OSError):  # O_NONBLOCK is shared with whoever gave us stdin
            os.set_blocking(self._fd, True)


class _ThreadReader(StdinReader):
    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop, max_chunks: int) -> None:
        self._fd = fd
        self._loop = loop
        self._queue: asyncio.Queue[bytes | OSError] = asyncio.Queue()
        self._credits = threading.Semaphore(max_chunks)
        self._stop = threading.Event()
        self.is_tty = os.isatty(fd)
        threading.Thread(target=self._run, name="wirecat-stdin", daemon=True).start()

    def _run(self) -> None:
        while True:
            self._credits.acquire()
            if self._stop.is_set():
                return
            item: bytes | OSError
            try:
                item = os.read(self._fd, _CHUNK)
            except BlockingIOError:
                self._credits.release()
                _wait_fd(self._fd, write=False)
                continue
            except OSError as exc:
                item = exc
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is reading any more
                return
            if not isinstance(item, bytes) or not item:
                return

    async def read(self) -> bytes:
        if self.at_eof:
            return b""
        item = await self._queue.get()
        self._credits.release()
        if isinstance(item, OSError):
            self.at_eof = True
            raise NetworkError(f"cannot read standard input: {item.strerror or item}") from item
        if not item:
            self.at_eof = True
        return item

    def close(self) -> None:
        self._stop.set()
        self._credits.release()


async def open_stdin(fd: int = 0, *, max_chunks: int = _MAX_CHUNKS) -> StdinReader:
    """Open file descriptor ``fd`` (default standard input) for async reading.

    Args:
        fd: the descriptor to read; it is not closed by :meth:`StdinReader.close`.
        max_chunks: chunks of 64 KiB read ahead at most (regular files, terminals).

    Returns:
        A :class:`StdinReader`; pipes use the loop's pipe transport, anything else a thread.
    """
    loop = asyncio.get_running_loop()
    if _is_fifo(fd):
        dup = os.dup(fd)
        pipe = open(dup, "rb", buffering=0)  # noqa: SIM115 - owned by the transport
        reader = asyncio.StreamReader(limit=_CHUNK * max_chunks // 2, loop=loop)
        try:
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe
            )
        except BaseException:
            pipe.close()
            raise
        return _PipeReader(reader, transport, fd)
    return _ThreadReader(fd, loop, max_chunks)


# --------------------------------------------------------------------------------------------
# stdout
# --------------------------------------------------------------------------------------------


class StdoutWriter:
    """Writes to standard output with backpressure. Create with :func:`open_stdout`.

    Several tasks may call :meth:`write` concurrently; each chunk is written whole and in
    call order.
    """

    async def write(self, data: bytes) -> None:
        """Queue ``data``; waits while more than the high-water mark is unwritten.

        Raises:
            OutputClosed: standard output is closed (its reader went away).
        """
        raise NotImplementedError

    async def aclose(self) -> None:
        """Write everything queued, then stop. Idempotent; stdout itself stays open."""


class _WriteProtocol(asyncio.BaseProtocol):
    def __init__(self) -> None:
        self.paused = False
        self.exc: BaseException | None = None
        self.lost = False
        self._waiters: list[asyncio.Future[None]] = []
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.exc = exc
        self._wake()
        if not self.closed.done():
            self.closed.set_result(None)

    def _wake(self) -> None:
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    async def drain(self) -> None:
        while self.paused and not self.lost:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            await fut


class _PipeWriter(StdoutWriter):
    def __init__(self, transport: asyncio.WriteTransport, proto: _WriteProtocol, fd: int):
        self._t = transport
        self._p = proto
        self._fd = fd

    async def write(self, data: bytes) -> None:
        if self._p.lost or self._t.is_closing():
            raise OutputClosed("standard output is closed")
        self._t.write(data)
        await self._p.drain()
        if self._p.lost and self._p.exc is not None:
            raise OutputClosed("standard output is closed") from self._p.exc

    async def aclose(self) -> None:
        if not self._t.is_closing():
            self._t.close()
        await asyncio.shield(self._p.closed)
        with contextlib.suppress(OSError):
            os.set_blocking(self._fd, True)


class _ThreadWriter(StdoutWriter):
    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop, high_water: int) -> None:
        self._fd = fd
        self._loop = loop
        self._high = high_water
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._pending = 0  # bytes queued, not yet written (loop thread only)
        self._exc: OSError | None = None
        self._closed = False
        self._waiters: list[asyncio.Future[None]] = []
        self._thread = threading.Thread(target=self._run, name="wirecat-stdout", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            view = memoryview(data)
            try:
                while view:
                    try:
                        n = os.write(self._fd, view)
                    except BlockingIOError:
                        _wait_fd(self._fd, write=True)
                        continue
                    view = view[n:]
            except OSError as exc:
                self._post(self._failed, exc)
                return
            self._post(self._written, len(data))

    def _post(self, fn: Callable[..., None], arg: Any) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed: nobody waits any more
            self._loop.call_soon_threadsafe(fn, arg)

    def _written(self, n: int) -> None:
        self._pending -= n
        self._wake()

    def _failed(self, exc: OSError) -> None:
        self._exc = exc
        self._wake()

    def _wake(self) -> None:
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    async def _wait_below(self, level: int) -> None:
        while self._pending > level and self._exc is None:
            fut = self._loop.create_future()
            self._waiters.append(fut)
            await fut

    async def write(self, data: bytes) -> None:
        if self._exc is not None or self._closed:
            raise OutputClosed("standard output is closed") from self._exc
        if not data:
            return
        self._pending += len(data)
        self._queue.put(data)
        await self._wait_below(self._high)
        if self._exc is not None:
            raise OutputClosed("standard output is closed") from self._exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._wait_below(0)
        self._queue.put(None)


async def open_stdout(fd: int = 1, *, high_water: int = _HIGH_WATER) -> StdoutWriter:
    """Open file descriptor ``fd`` (default standard output) for async writing.

    Args:
        fd: the descriptor to write; it is not closed by :meth:`StdoutWriter.aclose`.
        high_water: :meth:`StdoutWriter.write` waits while more bytes than this are queued.
    """
    loop = asyncio.get_running_loop()
    if _is_fifo(fd):
        dup = os.dup(fd)
        pipe = open(dup, "wb", buffering=0)  # noqa: SIM115 - owned by the transport
        try:
            transport, proto = await loop.connect_write_pipe(_WriteProtocol, pipe)
        except BaseException:
            pipe.close()
            raise
        transport.set_write_buffer_limits(high=high_water)
        return _PipeWriter(transport, proto, fd)
    return _ThreadWriter(fd, loop, high_water)


# --------------------------------------------------------------------------------------------
# framing helpers
# --------------------------------------------------------------------------------------------

_BARE_LF = re.compile(rb"(?<!\r)\n")


def lf_to_crlf(data: bytes, after_cr: bool = False) -> bytes:
    """Turn every bare ``LF`` into ``CRLF`` (``CRLF`` stays as is).

    Args:
        data: the bytes to convert.
        after_cr: True when the previous chunk ended with ``CR`` (so a leading ``LF`` is not
            bare).
    """
    if after_cr and data.startswith(b"\n"):
        return b"\n" + _BARE_LF.sub(b"\r\n", data[1:])
    return _BARE_LF.sub(b"\r\n", data)


class _Crlf:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._after_cr = False

    def __call__(self, data: bytes) -> bytes:
        if not self.enabled or not data:
            return data
        out = lf_to_crlf(data, self._after_cr)
        self._after_cr = data.endswith(b"\r")
        return out


class LineSplitter:
    """Splits a byte stream into lines (newline kept), each at most ``max_size`` bytes.

    A line longer than ``max_size`` comes out in pieces of ``max_size`` bytes; unterminated
    bytes come out at :meth:`finish`. Never holds more than ``max_size`` bytes plus one chunk.
    """

    def __init__(self, max_size: int = _MAX_DATAGRAM) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self.max_size = max_size
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the complete lines (and oversized pieces) now available."""
        self._buf += data
        out: list[bytes] = []
        start = 0
        buf = self._buf
        while True:
            nl = buf.find(b"\n", start, start + self.max_size)
            if nl >= 0:
                out.append(bytes(buf[start : nl + 1]))
                start = nl + 1
            elif len(buf) - start >= self.max_size:
                out.append(bytes(buf[start : start + self.max_size]))
                start += self.max_size
            else:
                break
        del buf[:start]
        return out

    def finish(self) -> list[bytes]:
        """Return the unterminated rest (empty list if none)."""
        rest, self._buf = bytes(self._buf), bytearray()
        return [rest] if rest else []


# --------------------------------------------------------------------------------------------
# bridges
# --------------------------------------------------------------------------------------------


@dataclass
class BridgeResult:
    """How a bridge ended.

    Attributes:
        sent: bytes sent to the peer (after ``crlf`` conversion).
        received: bytes received from the peer and written to stdout.
        reason: ``"peer closed"``, ``"wait expired"``, ``"peer quiet"`` (TLS),
            ``"stdout closed"`` or ``"stdin closed"`` (datagram bridges, after ``wait``).
    """

    sent: int = 0
    received: int = 0
    reason: str = ""


async def _finish(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def bridge_stream(
    conn: Connection,
    stdin: StdinReader,
    stdout: StdoutWriter,
    *,
    half_close: bool = True,
    wait: float | None = None,
    crlf: bool = False,
    stop_on_peer_eof: bool | None = None,
    no_half_close_linger: float = 1.0,
) -> BridgeResult:
    """Copy ``stdin`` to ``conn`` and ``conn`` to ``stdout`` until the session ends.

    Args:
        conn: a stream connection (tcp, tls, unix).
        stdin, stdout: from :func:`open_stdin` / :func:`open_stdout`.
        half_close: on stdin EOF, send EOF to the peer (``Connection.send_eof``) so it knows
            the request is complete. False keeps our side open (``--no-shutdown``).
        wait: after stdin EOF, wait at most this many seconds for the peer to close, then
            end; ``None`` waits as long as the peer keeps its side open.
        crlf: send every bare LF as CRLF.
        stop_on_peer_eof: end as soon as the peer closes its side, without waiting for stdin
            to end. ``None`` means "when stdin is a terminal".
        no_half_close_linger: where the connection cannot half-close (TLS) and ``wait`` is
            ``None``, after stdin EOF end once nothing arrived for this many seconds.

    Returns:
        A :class:`BridgeResult`. ``conn`` is left open; the caller closes it.

    Raises:
        ConnectionClosedError: the connection was reset before the peer closed cleanly.
        NetworkError: stdin could not be read.

    Cancelling is safe: both directions are stopped before the cancellation propagates.
    """
    result = BridgeResult()
    convert = _Crlf(crlf)
    if stop_on_peer_eof is None:
        stop_on_peer_eof = stdin.is_tty

    async def upstream() -> None:
        while data := await stdin.read():
            data = convert(data)
            await conn.send(data)
            result.sent += len(data)
        if half_close:
            await conn.send_eof()

    async def downstream() -> None:
        while data := await conn.recv():
            await stdout.write(data)
            result.received += len(data)

    up = asyncio.create_task(upstream())
    down = asyncio.create_task(downstream())
    try:
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if down.done():
            exc = down.exception()
            if isinstance(exc, OutputClosed):
                result.reason = "stdout closed"
                return result
            if exc is not None:
                raise exc
            result.reason = "peer closed"
            if stop_on_peer_eof or up.done():
                return result
            # The peer only promised to send no more: finish sending it our input. If it
            # closed completely, our next write is reset, which ends the session quietly.
            with contextlib.suppress(ConnectionClosed):
                await up
            return result
        up.result()  # stdin ended first (or reading it failed: raise)
        if wait is None and half_close and not conn.can_send_eof:
            # No half-close on TLS (RFC 8446 6.1), so the peer cannot learn that we are done
            # and may never close. Like socat -t: end once it has been quiet for a while.
            while True:
                before = result.received
                try:
                    async with asyncio.timeout(no_half_close_linger):
                        await asyncio.shield(down)
                    break
                except TimeoutError:
                    if result.received == before:
                        result.reason = "peer quiet"
                        return result
        try:
            async with asyncio.timeout(wait):
                await asyncio.shield(down)
        except TimeoutError:
            result.reason = "wait expired"
            return result
        exc = down.exception()
        if isinstance(exc, OutputClosed):
            result.reason = "stdout closed"
        elif exc is not None:
            raise exc
        else:
            result.reason = "peer closed"
        return result
    finally:
        await _finish(up, down)


async def bridge_datagram(
    conn: DatagramConnection,
    stdin: StdinReader,
    stdout: StdoutWriter,
    *,
    wait: float | None = 1.0,
    crlf: bool = False,
    max_datagram: int = _MAX_DATAGRAM,
) -> BridgeResult:
    """Send each stdin line as one datagram; write each received datagram to stdout.

    Args:
        conn: a connected datagram socket (udp, unix+dgram).
        wait: after stdin EOF, keep printing replies for this many seconds (``None``: until
            cancelled).
        crlf: send every bare LF as CRLF.
        max_datagram: longer lines are sent in pieces of this many bytes.

    Returns:
        A :class:`BridgeResult` (``reason`` is ``"stdin closed"`` or ``"stdout closed"``).

    Raises:
        ConnectionRefused: the peer's port is closed (ICMP port unreachable).
        LimitExceeded, NetworkError.
    """
    result = BridgeResult()
    convert = _Crlf(crlf)
    splitter = LineSplitter(max_datagram)

    async def upstream() -> None:
        while data := await stdin.read():
            for line in splitter.feed(convert(data)):
                await conn.send(line)
                result.sent += len(line)
        for line in splitter.finish():
            await conn.send(line)
            result.sent += len(line)

    async def downstream() -> None:
        while True:
            data = await conn.recv()
            await stdout.write(data)
            result.received += len(data)

    up = asyncio.create_task(upstream())
    down = asyncio.create_task(downstream())
    try:
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if not down.done():
            up.result()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await asyncio.shield(down)
        if down.done():
            exc = down.exception()
            if isinstance(exc, OutputClosed):
                result.reason = "stdout closed"
                return result
            if exc is not None:
                raise exc
        result.reason = "stdin closed"
        return result
    finally:
        await _finish(up, down)


@dataclass
class Fanout:
    """Many peers, one stdio: stdin is broadcast to every peer; every peer goes to stdout.

    The engine of ``wirecat listen --keep-open``. Use :meth:`serve` as the per-connection
    handler and run :meth:`pump_stdin` as one task.

    Stdin is read only while at least one peer is connected (nothing is read ahead to be
    lost). A peer that reads too slowly is never allowed to stall the others: each chunk is
    written to every peer at once, then the pump waits at most ``slow_timeout`` seconds for
    the peers to drain; a peer with more than ``max_output`` bytes unsent is disconnected
    (counted in :attr:`slow_consumers`). When stdin ends, every peer (and every later one)
    is sent EOF, unless ``half_close`` is False. A peer's session ends when it closes its
    side.

    Attributes:
        peers: the connected peers.
        slow_consumers: peers disconnected for reading too slowly.
        on_peer: called with each connection as it starts, and ``on_peer_done`` with it and
            its byte count when it ends (for ``-v`` messages).
    """

    stdin: StdinReader
    stdout: StdoutWriter
    half_close: bool = True
    crlf: bool = False
    max_output: int = 1024 * 1024
    slow_timeout: float = 10.0
    on_peer: Callable[[Connection], None] | None = None
    on_peer_done: Callable[[Connection, BridgeResult], None] | None = None
    peers: set[Connection] = field(default_factory=set)
    slow_consumers: int = 0
    _has_peers: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _convert: _Crlf = field(init=False)

    def __post_init__(self) -> None:
        self._convert = _Crlf(self.crlf)

    async def serve(self, conn: Connection) -> None:
        """Bridge one peer until it closes its side. Raises nothing for a reset peer."""
        result = BridgeResult()
        self.peers.add(conn)
        self._has_peers.set()
        if self.on_peer is not None:
            self.on_peer(conn)
        try:
            if self.stdin.at_eof and self.half_close:
                await conn.send_eof()
            while data := await conn.recv():
                await self.stdout.write(data)
                result.received += len(data)
            result.reason = "peer closed"
        except OutputClosed:
            result.reason = "stdout closed"
            raise
        except ConnectionClosed:
            result.reason = "peer reset"
        finally:
            self.peers.discard(conn)
            if not self.peers:
                self._has_peers.clear()
            if self.on_peer_done is not None:
                self.on_peer_done(conn, result)

    async def pump_stdin(self) -> None:
        """Read stdin while peers are connected and broadcast it; returns at stdin EOF."""
        while True:
            await self._has_peers.wait()
            data = await self.stdin.read()
            if not data:
                break
            await self.broadcast(self._convert(data))
        if self.half_close:
            for conn in list(self.peers):
                with contextlib.suppress(ConnectionClosed):
                    await conn.send_eof()

    async def broadcast(self, data: bytes) -> None:
        """Write ``data`` to every peer; cut peers over ``max_output``; bounded wait."""
        waits: list[Awaitable[None]] = []
        for conn in list(self.peers):
            transport = conn.transport
            if transport.is_closing():
                continue
            transport.write(data)
            if transport.get_write_buffer_size() > self.max_output:
                self.slow_consumers += 1
                conn.abort()
                continue
            waits.append(_drained(conn))
        if waits:
            tasks = [asyncio.ensure_future(w) for w in waits]
            _, pending = await asyncio.wait(tasks, timeout=self.slow_timeout)
            await _finish(*pending)


async def _drained(conn: Connection) -> None:
    with contextlib.suppress(ConnectionClosed):
        await conn.send(b"")  # writes nothing; waits for the transport to drain
