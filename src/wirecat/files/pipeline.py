"""Write-behind: blocking file writes and hashing on a worker thread, in order, bounded.

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
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["WriteBehind", "executor"]

_executor: ThreadPoolExecutor | None = None
_REPORT_EVERY = 4 * 1024 * 1024  # bytes written between progress reports to the loop


def executor() -> ThreadPoolExecutor:
    """The shared worker pool for file I/O (created on first use; threads are daemonic)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="wirecat-files")
    return _executor


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
