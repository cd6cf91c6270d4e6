"""Receiving file bodies off the event loop.

- :class:`SocketBody`: the fast path. The transport stops reading; threads ``recv`` the
  body straight from the socket into preallocated buffers, write and hash them.
- :class:`WriteBehind`: the loop path (TLS, ``zero_copy=False``, or too many bodies at
  once): the loop receives chunks and hands them to a worker thread that writes and hashes.

Write-behind: blocking file writes and hashing on a worker thread, in order, bounded.

The event loop receives a chunk and hands it over with :meth:`WriteBehind.push` (no copy);
a worker thread writes it to the file and feeds the digest while the loop goes back to the
socket. Writes and both hash functions release the GIL, so receiving, writing and hashing
overlap on separate cores. Unwritten bytes are bounded: past ``high_water`` the owner is told
to pause reading (``on_pause``), and below ``low_water`` to resume (``on_resume``): TCP then
pushes back on the sender, and memory stays bounded whatever the disk speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..runtime.limits import MinRate
from .digest import Hasher, hash_fd

__all__ = ["BodyOutcome", "FileHashJob", "SocketBody", "ThreadSlots", "WriteBehind", "executor"]

_executor: ThreadPoolExecutor | None = None
_REPORT_EVERY = 4 * 1024 * 1024  # bytes written between progress reports to the loop


def executor() -> ThreadPoolExecutor:
    """The shared worker pool for file I/O (created on first use; threads are daemonic)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="wirecat-files")
    return _executor


class ThreadSlots:
    """A count of transfers allowed on threads of their own at once (loop thread only).

    A transfer that gets no slot runs on the event loop instead (``sendfile`` downloads fall
    back to copying through the transport, uploads to :class:`WriteBehind`): slower, but no
    thread and no extra descriptors, so the number of transfer threads stays bounded
    whatever the number of transfers.

    Args:
        limit: slots (>= 0; 0 keeps every transfer on the loop).
    """

    __slots__ = ("in_use", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        self.limit = limit
        self.in_use = 0

    def acquire(self) -> bool:
        """Take a slot; False if all are busy."""
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        """Give back a slot taken by :meth:`acquire`."""
        self.in_use = max(0, self.in_use - 1)


class WriteBehind:
    """Run ``write(chunk)`` for each pushed chunk, in order, on a worker thread.

    Args:
        write: a blocking callable taking one chunk (bytes); it may raise.
        high_water: unwritten bytes above which ``on_pause`` is called (bytes).
        low_water: unwritten bytes below which ``on_resume`` follows a pause (bytes).
        on_pause / on_resume: called on the loop thread.
        on_error: called once on the loop thread with the first exception ``write`` raised;
            later chunks are dropped.

    Use from one event loop thread only. :meth:`push` never blocks.
    """

    def __init__(
        self,
        write: Callable[[bytes], None],
        *,
        high_water: int = 8 * 1024 * 1024,
        low_water: int = 2 * 1024 * 1024,
        on_pause: Callable[[], None] | None = None,
        on_resume: Callable[[], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._write = write
        self._loop = asyncio.get_running_loop()
        self._high = high_water
        self._low = low_water
        self._on_pause = on_pause
        self._on_resume = on_resume
        self._on_error = on_error
        self._queue: deque[bytes] = deque()
        self._lock = threading.Lock()
        self._running = False
        self._paused = False
        self._pending = 0  # bytes pushed but not reported written (loop thread only)
        self.error: BaseException | None = None
        self._error_reported = False
        self._idle: asyncio.Future[None] | None = None

    @property
    def pending(self) -> int:
        """Bytes pushed but not yet written (as last reported by the worker)."""
        return self._pending

    def push(self, data: bytes) -> None:
        """Queue ``data`` for writing. Dropped silently once an error happened."""
        if self.error is not None or not data:
            return
        self._pending += len(data)
        with self._lock:
            self._queue.append(data)
            start = not self._running
            self._running = True
        if start:
            executor().submit(self._drain)
        if not self._paused and self._pending > self._high:
            self._paused = True
            if self._on_pause is not None:
                self._on_pause()

    async def flush(self) -> None:
        """Wait until every pushed chunk is written.

        Raises:
            BaseException: the first error ``write`` raised (also given to ``on_error``).
        """
        while True:
            with self._lock:
                busy = self._running
            if not busy:
                break
            self._idle = self._loop.create_future()
            await self._idle
        if self.error is not None:
            raise self.error

    # -- worker thread --------------------------------------------------------------------
    def _drain(self) -> None:
        done = 0
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    break
                chunk = self._queue.popleft()
            try:
                self._write(chunk)
            except BaseException as exc:
                with self._lock:
                    self.error = exc
                    self._queue.clear()
                    self._running = False
                break
            done += len(chunk)
            if done >= _REPORT_EVERY:
                self._report(done, final=False)
                done = 0
        self._report(done, final=True)

    def _report(self, done: int, *, final: bool) -> None:
        # RuntimeError: the loop is closed, nobody is waiting any more
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._progress, done, final)

    # -- loop thread ----------------------------------------------------------------------
    def _progress(self, done: int, final: bool) -> None:
        self._pending -= done
        if self.error is not None and not self._error_reported:
            self._error_reported = True
            self._pending = 0
            if self._on_error is not None:
                self._on_error(self.error)
        if self._paused and self._pending <= self._low:
            self._paused = False
            if self._on_resume is not None:
                self._on_resume()
        if final and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)


# -- hashing a file on a thread of its own ------------------------------------------------
class FileHashJob:
    """Hash bytes ``[start, end)`` of a file on a thread of its own (not the shared pool).

    The thread reads a duplicate of ``fd`` (and closes it), so the caller may close its
    descriptor at any time; :meth:`cancel` makes it stop between 1 MiB chunks. Await
    :attr:`future`: it raises what the hashing raised. (On the shared pool a cancelled job
    kept hashing, from a descriptor its caller had already closed.)
    """

    def __init__(self, fd: int, hasher: Hasher, start: int, end: int) -> None:
        self._loop = asyncio.get_running_loop()
        self.future: asyncio.Future[None] = self._loop.create_future()
        self._stopped = False
        dup = os.dup(fd)
        threading.Thread(
            target=self._run, args=(dup, hasher, start, end), name="wirecat-hash", daemon=True
        ).start()

    def cancel(self) -> None:
        """Stop soon (loop thread; the future is cancelled)."""
        self._stopped = True
        if not self.future.done():
            self.future.cancel()

    def _run(self, fd: int, hasher: Hasher, start: int, end: int) -> None:
        error: BaseException | None = None
        try:
            hash_fd(fd, hasher, start, end, stop=lambda: self._stopped)
        except BaseException as exc:
            error = exc
        finally:
            os.close(fd)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self._loop.call_soon_threadsafe(self._settle, error)

    def _settle(self, error: BaseException | None) -> None:
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(None)


# -- taking a socket over for one body ------------------------------------------------------
_BODY_CHUNK = 1024 * 1024  # bytes per receive buffer
_BODY_BUFFERS = 6  # buffers in flight between the receiving, writing and hashing threads
_BODY_REPORT = 4 * 1024 * 1024  # bytes written between progress reports to the loop
_MAX_TAKEOVERS = 16  # bodies received on threads at once (per process); others use the loop

_takeovers = 0


@dataclass(frozen=True, slots=True)
class BodyOutcome:
    """How :meth:`SocketBody.run` ended.

    Attributes:
        received: body bytes taken from the socket (give them to ``body_received``).
        written: bytes ``write`` accepted (less than ``received`` after a write error).
        end: ``"done"`` (all of it), ``"eof"`` (the peer ended its stream early), ``"idle"``
            (nothing arrived for ``idle_timeout`` seconds), ``"slow"`` (below ``min_rate``),
            ``"cancelled"``,
            ``"recv_error"`` or ``"write_error"`` (see ``error``).
        error: the exception for ``recv_error`` / ``write_error``.
    """

    received: int
    written: int
    end: str
    error: BaseException | None = None


class SocketBody:
    """Receive one body of known length straight from a socket, on threads.

    While the event loop does not read the socket (its transport is paused), one thread
    ``recv``s into a few preallocated 1 MiB buffers, a second runs ``write(view)`` on each
    and a third ``digest(view)`` (all release the GIL): a three-stage pipeline in which
    receiving, writing and hashing overlap, and no Python object is made per chunk. Nothing
    past the body is read: what follows (a trailer) stays in the kernel for the transport
    once it resumes.

    The socket descriptor is duplicated, so closing the transport meanwhile cannot make a
    thread use a reused descriptor number; :meth:`cancel` (also called when the awaiting
    task is cancelled) wakes the threads. At most ``_MAX_TAKEOVERS`` bodies per process run
    this way (:meth:`acquire`); buffers cost ``6 MiB`` per body.

    Args:
        sock_fd: the connected socket (non-blocking; it stays so).
        write: a blocking callable taking a ``memoryview`` valid only during the call.
        digest: a blocking callable fed the same views, in order, after ``write`` (on its own
            thread); ``None`` if ``write`` hashes itself.
        prefix: body bytes that already arrived through the transport, written first.
        idle_timeout: seconds without a byte after which the body ends as ``"idle"``.
        min_rate: ``(bytes per second, window in seconds)``: the body ends as ``"slow"``
            when a window of time spent waiting for the peer (not for our own writer)
            brought fewer bytes (:class:`~wirecat.runtime.limits.MinRate`); ``None``: none.
        progress: called on the loop thread with bytes written since the last call.
    """

    def __init__(
        self,
        sock_fd: int,
        write: Callable[[memoryview], object],
        *,
        digest: Callable[[memoryview], object] | None = None,
        prefix: list[bytes] | None = None,
        idle_timeout: float | None = None,
        min_rate: tuple[float, float] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self._write = write
        self._min_rate = min_rate
        self._digest = digest
        self._prefix = [p for p in prefix or () if p]
        self._idle_ms = -1 if idle_timeout is None else max(1, int(idle_timeout * 1000))
        self._progress = progress
        self._loop = asyncio.get_running_loop()
        self._stop = False
        self._fd = os.dup(sock_fd)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._views = [memoryview(bytearray(_BODY_CHUNK)) for _ in range(_BODY_BUFFERS)]
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._full: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._written_q: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        for i in range(_BODY_BUFFERS):
            self._free.put(i)
        self._received = 0
        self._written = 0
        self._end = "done"
        self._error: BaseException | None = None
        self._write_error: BaseException | None = None
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._threads_left = 3 if digest is not None else 2
        self._closed = False  # set on the loop thread once the descriptors are closed

    @staticmethod
    def acquire() -> bool:
        """Take one of the per-process slots; False if all are busy (use the loop path)."""
        global _takeovers
        if _takeovers >= _MAX_TAKEOVERS:
            return False
        _takeovers += 1
        return True

    @staticmethod
    def release() -> None:
        """Give back a slot taken by :meth:`acquire`."""
        global _takeovers
        _takeovers = max(0, _takeovers - 1)

    def cancel(self) -> None:
        """Stop receiving soon (thread-safe, idempotent); :meth:`run` ends as ``cancelled``."""
        self._stop = True
        if not self._closed:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    async def wait_done(self) -> None:
        """Return once both threads are finished (the descriptors are closed by then)."""
        await asyncio.shield(self._done)

    async def run(self, length: int) -> BodyOutcome:
        """Receive ``length`` body bytes (after the prefix) and write them; call once."""
        jobs: list[tuple[Callable[..., None], tuple[object, ...]]] = [
            (self._recv_loop, (length,)),
            (self._write_loop, ()),
        ]
        if self._digest is not None:
            jobs.append((self._digest_loop, ()))
        for target, args in jobs:
            threading.Thread(
                target=self._thread, args=(target, *args), name="wirecat-body", daemon=True
            ).start()
        try:
            await asyncio.shield(self._done)
        except asyncio.CancelledError:
            self.cancel()
            raise
        if self._write_error is not None:
            return BodyOutcome(self._received, self._written, "write_error", self._write_error)
        return BodyOutcome(self._received, self._written, self._end, self._error)

    # -- threads --------------------------------------------------------------------------
    def _thread(self, target: Callable[..., None], *args: object) -> None:
        try:
            target(*args)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._loop.call_soon_threadsafe(self._thread_done)

    def _thread_done(self) -> None:
        self._threads_left -= 1
        if self._threads_left == 0:
            self._closed = True
            for fd in (self._fd, self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            if not self._done.done():
                self._done.set_result(None)

    def _recv_loop(self, length: int) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        got = 0
        rate = None if self._min_rate is None else MinRate(*self._min_rate, time.monotonic())
        try:
            while got < length and not self._stop:
                if rate is not None:
                    rate.pause(time.monotonic())  # waiting for our writer: not the peer's time
                idx = self._free.get()
                if rate is not None:
                    rate.resume(time.monotonic())
                if self._stop:
                    self._free.put(idx)
                    break
                view = self._views[idx]
                want = min(len(view), length - got)
                pos = 0
                while pos < want and not self._stop:
                    try:
                        n = os.readv(self._fd, [view[pos:want]])
                    except BlockingIOError:
                        if pos:
                            break  # hand over what we have; wait with the writer busy
                        wait = self._idle_ms
                        if rate is not None:
                            due = max(1, int(rate.due(time.monotonic()) * 1000) + 1)
                            wait = due if wait < 0 else min(wait, due)
                        ready = poller.poll(wait)
                        if rate is not None and not rate.check(time.monotonic()):
                            self._end = "slow"
                            self._stop = True
                        elif not ready and wait == self._idle_ms:
                            self._end = "idle"
                            self._stop = True
                        elif not ready:
                            pass  # the rate window ended in time; go on waiting
                        elif any(fd == self._wake_r for fd, _ in ready):
                            self._end = "cancelled" if self._end == "done" else self._end
                            self._stop = True
                        continue
                    except OSError as exc:
                        self._end, self._error, self._stop = "recv_error", exc, True
                        break
                    if n == 0:
                        self._end, self._stop = "eof", True
                        break
                    pos += n
                    if rate is not None:
                        rate.add(n)
                got += pos
                self._received = got
                if pos:
                    self._full.put((idx, pos))
                else:
                    self._free.put(idx)
            if self._stop and self._end == "done":
                self._end = "cancelled"
        finally:
            self._full.put(None)

    def _write_loop(self) -> None:
        since = 0
        digest = self._digest
        try:
            for chunk in self._prefix:
                self._write(memoryview(chunk))
                if digest is not None:
                    digest(memoryview(chunk))
                self._written += len(chunk)
                since += len(chunk)
        except BaseException as exc:
            self._fail_write(exc)
        while True:
            item = self._full.get()
            if item is None:
                break
            idx, n = item
            if self._write_error is None:
                try:
                    self._write(self._views[idx][:n])
                except BaseException as exc:
                    self._fail_write(exc)
                else:
                    self._written += n
                    since += n
                    if since >= _BODY_REPORT:
                        self._report(since)
                        since = 0
                    if digest is not None:
                        self._written_q.put(item)
                        continue
            self._free.put(idx)
        if digest is not None:
            self._written_q.put(None)
        if since:
            self._report(since)

    def _digest_loop(self) -> None:
        assert self._digest is not None
        while True:
            item = self._written_q.get()
            if item is None:
                break
            idx, n = item
            if self._write_error is None:
                try:
                    self._digest(self._views[idx][:n])
                except BaseException as exc:
                    self._fail_write(exc)
            self._free.put(idx)

    def _fail_write(self, exc: BaseException) -> None:
        self._write_error = exc
        self.cancel()

    def _report(self, n: int) -> None:
        if self._progress is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._progress, n)
