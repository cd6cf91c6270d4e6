"""Zero-copy stream relaying on Linux: ``os.splice`` through a pipe, driven by the event loop.

:class:`Splice` moves bytes both ways between two stream sockets (TCP or Unix) without
bringing them into Python: per direction, ``splice(src -> pipe)`` and ``splice(pipe -> dst)``
(``SPLICE_F_NONBLOCK | SPLICE_F_MOVE``), each driven by ``loop.add_reader`` /
``loop.add_writer``. Per direction:

- the pipe is the only buffer (``pipe_size`` bytes at most; memory per relay is bounded);
  when the destination cannot take more, reading the source stops until the pipe drains
  (backpressure: the source's kernel buffer fills and TCP pushes back on its sender);
- end of stream from the source is passed on as ``shutdown(SHUT_WR)`` of the destination
  once the pipe is empty (half-close, RFC 9293 3.6); the relay ends when both directions
  ended, or at once on an error (a reset) of either side;
- a direction starts by copying (``read``/``write``, no pipe): a short exchange costs two
  system calls each way; the first read that fills 64 KiB (bulk) moves it to the pipe for
  good; a write the destination cannot take whole waits in memory (one read at most),
  reading paused, until the destination is writable;
- bytes already read from the source into memory (a connection's buffer after a proxy
  handshake or PROXY header) go first (``pending``), never lost.

An idle timer ends the relay after ``idle_timeout`` seconds without a byte read either way
(checked every quarter of it: no per-chunk timer or clock read).

The sockets belong to the caller: :class:`Splice` never closes them (give it duplicates,
``socket.fromfd``, of sockets an asyncio transport owns, and pause that transport's reading).
Model: HAProxy's and Linux ``tcp_splice_read`` users; socat ``-b`` for the copy it saves.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import sys
from collections.abc import Callable

__all__ = ["DEFAULT_PIPE_SIZE", "Splice", "available", "spliceable_socket"]

#: Pipe capacity per direction (bytes) once a direction turns out to be bulk (a read filled
#: the default 64 KiB pipe); short exchanges never pay for the resize. Unprivileged users
#: have a budget (``/proc/sys/fs/pipe-user-pages-soft``); past it pipes keep 64 KiB.
DEFAULT_PIPE_SIZE = 1024 * 1024

_DEFAULT_PIPE = 65536  # what pipe2() gives (16 pages)
_ROUNDS = 4  # splices per readable event at most (a fast source refills at once)
_SMALL = 65536  # reads below this are copied; a full one makes the direction use the pipe

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_FLAGS = getattr(os, "SPLICE_F_NONBLOCK", 2) | getattr(os, "SPLICE_F_MOVE", 1)


def available() -> bool:
    """Whether this platform has ``os.splice`` (Linux, Python >= 3.10)."""
    return sys.platform == "linux" and hasattr(os, "splice")


_STREAM_FAMILIES = frozenset((int(socket.AF_INET), int(socket.AF_INET6), int(socket.AF_UNIX)))


def spliceable_socket(sock: object) -> bool:
    """Whether ``sock`` (a transport's ``"socket"`` extra) is a plain stream socket that
    ``splice`` can read and write: TCP over IPv4/IPv6 or a Unix stream socket."""
    return (
        getattr(sock, "type", None) == socket.SOCK_STREAM
        and getattr(sock, "family", None) in _STREAM_FAMILIES
    )


def _ignore(reason: str) -> None:
    pass


class _Flow:
    """One direction: ``src`` -> pipe -> ``dst``."""

    __slots__ = (
        "buffered",
        "done",
        "dst",
        "dst_sock",
        "eof",
        "moved",
        "owner",
        "pending",
        "pipe_r",
        "pipe_w",
        "reading",
        "size",
        "src",
        "writing",
    )

    def __init__(
        self, owner: Splice, src: socket.socket, dst: socket.socket, pending: bytes, eof: bool
    ) -> None:
        self.owner = owner
        self.src = src.fileno()
        self.dst = dst.fileno()
        self.dst_sock = dst
        self.pending = memoryview(pending) if pending else None
        self.eof = eof  # the source already ended (its EOF was seen before we took over)
        self.buffered = 0  # bytes in the pipe
        self.moved = 0  # bytes delivered to dst
        self.reading = False
        self.writing = False
        self.done = False
        self.pipe_r = self.pipe_w = -1
        self.size = 0

    def _open_pipe(self) -> None:
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.size = _DEFAULT_PIPE  # grown to pipe_size once a read fills it (bulk)

    def _grow(self) -> None:
        want = self.owner.pipe_size
        try:
            self.size = fcntl.fcntl(self.pipe_w, _F_SETPIPE_SZ, want)
        except OSError:  # over the per-user pipe budget (pipe-user-pages-soft): keep it
            self.owner.pipe_size = self.size

    def start(self) -> None:
        if self.pending is not None:  # a handshake's reply, early bytes: usually one write
            self._write_pending()
        elif self.eof:
            self._finish()
        else:
            self._read_on()

    # -- registration ---------------------------------------------------------------------
    def _read_on(self) -> None:
        if not self.reading:
            self.reading = True
            self.owner.loop.add_reader(self.src, self._readable)

    def _read_off(self) -> None:
        if self.reading:
            self.reading = False
            self.owner.loop.remove_reader(self.src)

    def _write_on(self) -> None:
        if not self.writing:
            self.writing = True
            self.owner.loop.add_writer(self.dst, self._writable)

    def _write_off(self) -> None:
        if self.writing:
            self.writing = False
            self.owner.loop.remove_writer(self.dst)

    # -- moving bytes ---------------------------------------------------------------------
    def _readable(self) -> None:
        if self.pipe_w < 0:
            self._copy()
            return
        for _ in range(_ROUNDS):  # a busy source: a few rounds per wake-up, not one
            room = self.size - self.buffered
            try:
                n = os.splice(self.src, self.pipe_w, room, flags=_FLAGS)
            except BlockingIOError:
                if self.buffered:  # the pipe has no free slot left: wait for dst
                    self._read_off()
                return
            except OSError as exc:
                self.owner._failed(exc)
                return
            if n == 0:
                self.eof = True
                self._read_off()
                if not self.buffered:
                    self._finish()
                return
            self.buffered += n
            self.owner.activity += 1
            if not self.writing:
                self._flush()
            if self.done:
                return
            if n == room and self.size < self.owner.pipe_size:
                self._grow()
            if self.buffered >= self.size:
                self._read_off()
                return
            if n < room or self.writing:
                return  # the source is drained (or dst is full): back to the loop

    def _copy(self) -> None:
        """Until the first big read: read, then write (two system calls, no pipe to make and
        close for a short exchange). A read that fills ``_SMALL`` means bulk: the direction
        takes the pipe for what follows. What ``dst`` cannot take now waits in memory (at
        most one read), reading paused meanwhile."""
        try:
            data = os.read(self.src, _SMALL)
        except BlockingIOError:
            return
        except OSError as exc:
            self.owner._failed(exc)
            return
        if not data:
            self.eof = True
            self._finish()
            return
        self.owner.activity += 1
        if len(data) == _SMALL:
            try:
                self._open_pipe()
            except OSError as exc:  # out of file descriptors
                self.owner._failed(exc)
                return
        try:
            m = os.write(self.dst, data)
        except BlockingIOError:
            m = 0
        except OSError as exc:
            self.owner._failed(exc)
            return
        self.moved += m
        if m < len(data):
            self.pending = memoryview(data)[m:]
            self._read_off()
            self._write_on()

    def _flush(self) -> None:
        """Move the pipe to ``dst`` until it is empty or ``dst`` is full (then wait for it)."""
        while self.buffered:
            try:
                m = os.splice(self.pipe_r, self.dst, self.buffered, flags=_FLAGS)
            except BlockingIOError:
                self._write_on()
                return
            except OSError as exc:
                self.owner._failed(exc)
                return
            if m == 0:  # cannot happen with bytes in the pipe; never spin on it
                self._write_on()
                return
            self.buffered -= m
            self.moved += m

    def _writable(self) -> None:
        if self.pending is not None:
            self._write_pending()
            return
        self._flush()
        if self.buffered or self.done:
            return
        self._write_off()
        if self.eof:
            self._finish()
        else:
            self._read_on()

    def _write_pending(self) -> None:
        """Write the bytes held in memory straight to ``dst``; once they are out, carry on
        (EOF passed on, or reading again)."""
        view = self.pending
        assert view is not None
        try:
            n = os.write(self.dst, view)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self.owner._failed(exc)
            return
        self.moved += n
        if n < len(view):
            self.pending = view[n:]
            self._write_on()
            return
        self.pending = None
        self._write_off()
        if self.eof:
            self._finish()
        else:
            self._read_on()

    def _finish(self) -> None:
        """The source ended and everything reached ``dst``: half-close it."""
        self.done = True
        self._read_off()
        self._write_off()
        try:  # noqa: SIM105 - per connection: a plain try costs less than suppress()
            self.dst_sock.shutdown(socket.SHUT_WR)
        except OSError:  # the peer is gone already: the other direction will say so
            pass
        if self.pipe_r >= 0:
            self._close_pipe()
        self.owner._flow_done()

    def stop(self) -> None:
        self.done = True
        if self.reading:
            self._read_off()
        if self.writing:
            self._write_off()
        if self.pipe_r >= 0:
            self._close_pipe()

    def _close_pipe(self) -> None:
        for fd in (self.pipe_r, self.pipe_w):
            if fd >= 0:
                os.close(fd)
        self.pipe_r = self.pipe_w = -1


class Splice:
    """Relay two connected stream sockets both ways with ``os.splice`` (see the module doc).

    Args:
        a, b: connected stream sockets (TCP or Unix), non-blocking, whose descriptors no
            one else has registered with the loop; they stay the caller's to close.
        on_done: called once with the reason the relay ended: ``"both closed"``,
            ``"idle timeout"``, ``"reset"`` (an ``OSError`` on either side, e.g.
            ``ECONNRESET``, ``EPIPE``; :attr:`error` holds it) or the reason given to
            :meth:`abort`. Called from the loop (or from :meth:`start`/:meth:`abort`).
        idle_timeout: seconds without a byte read either way before ending (``None``: never).
        pending_ab, pending_ba: bytes already read from ``a`` (for ``b``) and from ``b``
            (for ``a``), sent before anything else.
        eof_a, eof_b: that side's end of stream was already seen (the other side is
            half-closed once its pending bytes are out).
        pipe_size: pipe capacity per direction in bytes (the memory bound per direction;
            default :data:`DEFAULT_PIPE_SIZE`; 0 keeps the kernel's default, 64 KiB).
        loop: the running event loop, if the caller has it at hand (default: looked up).

    Attributes:
        up: bytes delivered from ``a`` to ``b``; down: from ``b`` to ``a``.
        error: the ``OSError`` that ended the relay, if any.

    Use from the event loop thread only. :meth:`abort` is idempotent and safe at any time.
    """

    __slots__ = (
        "_ab",
        "_ba",
        "_last_activity",
        "_quiet_since",
        "_timer",
        "activity",
        "ended",
        "error",
        "idle_timeout",
        "loop",
        "on_done",
        "pipe_size",
    )

    def __init__(
        self,
        a: socket.socket,
        b: socket.socket,
        on_done: Callable[[str], None],
        *,
        idle_timeout: float | None = None,
        pending_ab: bytes = b"",
        pending_ba: bytes = b"",
        eof_a: bool = False,
        eof_b: bool = False,
        pipe_size: int | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # (``asyncio.get_running_loop()`` costs a getpid() system call on Python < 3.12.)
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        self.on_done = on_done
        self.idle_timeout = idle_timeout
        self.pipe_size = DEFAULT_PIPE_SIZE if pipe_size is None else pipe_size
        self.activity = 0
        self.ended = False
        self.error: OSError | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_activity = -1
        self._quiet_since = 0.0
        self._ab = _Flow(self, a, b, pending_ab, eof_a)
        self._ba = _Flow(self, b, a, pending_ba, eof_b)

    @property
    def up(self) -> int:
        return self._ab.moved

    @property
    def down(self) -> int:
        return self._ba.moved

    def start(self) -> None:
        """Start both directions (and the idle timer)."""
        if self.idle_timeout:
            self._quiet_since = self.loop.time()
            self._timer = self.loop.call_later(self._tick(), self._check_idle)
        try:
            self._ab.start()
            if not self.ended:
                self._ba.start()
        except OSError as exc:  # pipe2 over the fd limit
            self._failed(exc)

    def abort(self, reason: str = "aborted") -> None:
        """Stop both directions now (pipes closed, nothing more is moved); idempotent."""
        self._end(reason)

    # -- internals ------------------------------------------------------------------------
    def _tick(self) -> float:
        assert self.idle_timeout is not None
        return max(self.idle_timeout / 4, 0.005)

    def _check_idle(self) -> None:
        if self.ended:
            return
        now = self.loop.time()
        if self.activity != self._last_activity:
            self._last_activity = self.activity
            self._quiet_since = now
        elif self.idle_timeout is not None and now - self._quiet_since >= self.idle_timeout:
            self._end("idle timeout")
            return
        self._timer = self.loop.call_later(self._tick(), self._check_idle)

    def _flow_done(self) -> None:
        if self._ab.done and self._ba.done:
            self._end("both closed")

    def _failed(self, exc: OSError) -> None:
        self.error = exc
        self._end("reset")

    def _end(self, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._ab.stop()
        self._ba.stop()
        on_done, self.on_done = self.on_done, _ignore
        # No cycles left (engine <-> flows, engine <-> its owner): reference counting frees
        # a finished relay at once, not the cyclic GC (a cost per short connection).
        self._ab.owner = self._ba.owner = None  # type: ignore[assignment]
        on_done(reason)
