"""The files service: ``wirecat serve --files DIR`` (default ``tcp://127.0.0.1:7071``).

Wires :mod:`wirecat.protocols.files` (sans-I/O) and :class:`wirecat.files.store.FileStore`
to the runtime. Per connection, one request at a time: headers are parsed on the loop, every
file system call runs on a worker thread. An upload body is received on threads straight
from the socket while the transport is paused (:class:`~wirecat.files.pipeline.SocketBody`:
recv, write and hash overlap), or, on TLS, through the loop into a
:class:`~wirecat.files.pipeline.WriteBehind` (bounded, pausing the socket when the disk
lags). Downloads go out with ``sendfile(2)`` on a thread
(:func:`~wirecat.files.zerocopy.send_file_range`); TLS copies through the transport.

An upload is confirmed only after the digest matched and the file was fsynced, renamed and
its directory fsynced. A connection that drops mid-upload keeps its part file for a resume.

Against peers that hold resources without using them:

- a request header (or trailer) must be complete within ``header_timeout`` seconds of its
  first byte (an absolute deadline, like chat's login);
- an upload body must arrive at ``min_rate`` bytes per second or more, averaged over each
  ``rate_window`` seconds (Apache ``mod_reqtimeout`` MinRate, nginx ``client_body_timeout``);
  a slower one is cut with ``timeout`` and its quota reservation released (its part is kept
  for a resume);
- a download that makes no progress (the client does not read) for ``idle_timeout`` seconds
  is cut and its thread released; at most ``transfer_threads`` transfers run on threads of
  their own at once, the others on the event loop (:class:`~wirecat.files.pipeline.ThreadSlots`);
- part files nobody has written to for ``part_expiry`` seconds are deleted, at start and
  every ``part_expiry / 4`` seconds (at most hourly).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from ..auth import AuthFailures, User, Users, audit_login
from ..endpoints import Endpoint, parse_endpoint
from ..errors import LimitExceeded, LocalProtocolError, ProtocolError
from ..files.pipeline import SocketBody, ThreadSlots, WriteBehind, executor
from ..files.store import PART_EXPIRY, FileStore, FileStoreError, ReadHandle, Upload
from ..files.zerocopy import send_file_range
from ..protocols.files import (
    MAX_HEADER,
    AuthRequest,
    BodyChunk,
    BodyEnd,
    EndOfStream,
    FilesEvent,
    FilesServerProtocol,
    GetRequest,
    ListRequest,
    PutRequest,
    State,
    StatRequest,
    Trailer,
)
from ..runtime.handler import ServerContext, StreamHandler
from ..runtime.limits import Limits, MinRate
from ..runtime.server import Service

__all__ = [
    "DEFAULT_ENDPOINT",
    "HEADER_TIMEOUT",
    "MIN_RATE",
    "PART_EXPIRY",
    "RATE_WINDOW",
    "TRANSFER_THREADS",
    "FilesHandler",
    "FilesService",
]

#: Where ``wirecat serve --files DIR`` listens unless told otherwise.
DEFAULT_ENDPOINT = "tcp://127.0.0.1:7071"
#: Seconds from a request header's first byte to its end (``--files-header-timeout``).
HEADER_TIMEOUT = 10.0
#: Slowest upload body accepted, bytes per second (``--files-min-rate``).
MIN_RATE = 1024
#: Seconds over which :data:`MIN_RATE` is averaged; the first is a grace period.
RATE_WINDOW = 30.0
#: Transfers on threads of their own at once (``--files-transfer-threads``).
TRANSFER_THREADS = 32

T = TypeVar("T")


class FilesService(Service):
    """Serve a directory: ``stat``, ``list``, ``get`` and resumable, verified ``put``.

    Args:
        endpoints: where to listen (stream endpoints: tcp, tls, unix); empty means
            :data:`DEFAULT_ENDPOINT`.
        root: the directory served; created if missing. Nothing outside it is reachable.
        readonly: refuse uploads (``--files-readonly``).
        max_file_size: largest upload accepted, in bytes (``--max-file-size``; ``None``: any).
        quota: most bytes the root may hold, part files included (``--quota``; ``None``: any).
        max_header: longest request header line, in bytes.
        zero_copy: use ``sendfile(2)`` for downloads and receive upload bodies on threads
            straight from the socket, where the transport allows it (not TLS).
        limits: per-service limits (``None``: the server's).
        users: a users file (:class:`~wirecat.auth.Users`): every request but ``auth`` is
            refused with ``auth_required`` until the client authenticated.
        auth_failures: failed logins allowed per source (shared with other services).
        header_timeout: seconds from the first byte of a request header or trailer until
            its end (``None``: no deadline); then ``timeout`` and the connection closes.
        min_rate: slowest upload body accepted, in bytes per second averaged over each
            ``rate_window`` seconds (``None`` or 0: any); then ``timeout``, the connection
            closes, the part is kept and its quota reservation released.
        rate_window: seconds of each ``min_rate`` window (the first is the grace period).
        transfer_threads: transfers (``sendfile`` downloads, uploads received on threads)
            allowed on threads of their own at once; the others run on the event loop.
        part_expiry: seconds after which a part file nobody writes to is deleted (``None``:
            never). Parts count against the quota until then.

    Raises:
        OSError: ``root`` cannot be created or opened.
        ValueError: a timeout, window or expiry is not > 0, or ``min_rate`` is negative.
    """

    name = "files"

    def __init__(
        self,
        endpoints: Sequence[Endpoint] = (),
        root: str | os.PathLike[str] = ".",
        *,
        readonly: bool = False,
        max_file_size: int | None = None,
        quota: int | None = None,
        max_header: int = MAX_HEADER,
        zero_copy: bool = True,
        limits: Limits | None = None,
        users: Users | None = None,
        auth_failures: AuthFailures | None = None,
        header_timeout: float | None = HEADER_TIMEOUT,
        min_rate: int | None = MIN_RATE,
        rate_window: float = RATE_WINDOW,
        transfer_threads: int = TRANSFER_THREADS,
        part_expiry: float | None = PART_EXPIRY,
    ) -> None:
        super().__init__(list(endpoints) or [parse_endpoint(DEFAULT_ENDPOINT)], limits=limits)
        if header_timeout is not None and not header_timeout > 0:
            raise ValueError("header_timeout must be > 0 seconds (or None)")
        if (min_rate is not None and min_rate < 0) or not rate_window > 0:
            raise ValueError("min_rate must be >= 0 bytes/s and rate_window > 0 seconds")
        if part_expiry is not None and not part_expiry > 0:
            raise ValueError("part_expiry must be > 0 seconds (or None)")
        self.header_timeout = header_timeout
        self.min_rate = min_rate or None
        self.rate_window = rate_window
        self.slots = ThreadSlots(transfer_threads)
        self.part_expiry = part_expiry
        self._sweeper: asyncio.Task[None] | None = None
        self.users = users
        self.auth_failures = auth_failures if auth_failures is not None else AuthFailures()
        self.store = FileStore(root, readonly=readonly, max_file_size=max_file_size, quota=quota)
        self.max_header = max_header
        self.zero_copy = zero_copy
        self._cleanups: set[asyncio.Task[None]] = set()

    def stream_handler(self, ctx: ServerContext) -> StreamHandler:
        return FilesHandler(ctx, self)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def start(self, ctx: ServerContext) -> None:
        """Sweep abandoned part files now, then every ``part_expiry / 4`` s (at most 1 h)."""
        if self.part_expiry is not None:
            await self._sweep(ctx)
            self._sweeper = asyncio.ensure_future(self._sweep_forever(ctx))

    async def _sweep(self, ctx: ServerContext) -> None:
        assert self.part_expiry is not None
        loop = asyncio.get_running_loop()
        try:
            removed = await loop.run_in_executor(
                executor(), self.store.sweep_parts, self.part_expiry
            )
        except OSError as exc:
            ctx.log.warning("files: cannot sweep part files: %s", exc)
            return
        if removed:
            ctx.metrics["files_parts_expired"] += removed
            ctx.log.info(
                "files: deleted %d part file(s) not written for %g s",
                removed,
                self.part_expiry,
                extra={"event": "files_parts_expired"},
            )

    async def _sweep_forever(self, ctx: ServerContext) -> None:
        assert self.part_expiry is not None
        while True:
            await asyncio.sleep(min(self.part_expiry / 4, 3600.0))
            await self._sweep(ctx)

    async def stop(self) -> None:
        """Stop the part sweeper; wait for part files of dropped uploads to be flushed and
        unlocked."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        while self._cleanups:
            await asyncio.gather(*list(self._cleanups), return_exceptions=True)


class FilesHandler(StreamHandler):
    """One client connection of :class:`FilesService`."""

    service: FilesService

    def __init__(self, ctx: ServerContext, service: FilesService) -> None:
        super().__init__(ctx, service)
        self.service = service
        self.proto = FilesServerProtocol(max_header=service.max_header)
        self._task: asyncio.Task[None] | None = None
        self._upload: Upload | None = None
        self._sink: WriteBehind | None = None
        self._body: SocketBody | None = None
        self._closed = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._eof = False
        self._deadline: asyncio.TimerHandle | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        self._rate: MinRate | None = None  # the upload body's pace (loop path)
        self._rate_timer: asyncio.TimerHandle | None = None
        self._sending = False  # a download body is being written (its progress touches)
        self.user: User | None = None  # set by a successful auth request

    # -- runtime hooks ------------------------------------------------------------------
    def on_data(self, data: bytes) -> None:
        try:
            self.proto.receive_data(data)
        except ProtocolError as exc:
            self._fatal(exc)
            return
        self._pump()

    def on_eof(self) -> bool:
        self._eof = True
        self.proto.receive_eof()
        self._pump()
        return self._task is not None and not self._task.done()

    def on_close(self, exc: Exception | None) -> None:
        self._closed.set()  # stop a sendfile thread
        self._writable.set()  # wake a download; it sees the closed transport and stops
        if self._body is not None:
            self._body.cancel()
        for timer in (self._deadline, self._header_timer, self._rate_timer):
            if timer is not None:
                timer.cancel()
        self._drop_upload(keep=True)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._writable.clear()

    def on_writable(self) -> None:
        self._writable.set()

    def on_idle(self) -> None:
        if self._sending:
            # the download's progress touches the idle clock: none for idle_timeout seconds
            self.ctx.metrics["files_download_stalled"] += 1
            self.log.info(
                "download made no progress for %s s (the client does not read), cutting",
                self.limits.idle_timeout,
                extra={"event": "limit", "reason": "download_stalled"},
            )
            self.abort("download stalled")  # nothing to flush to a peer that does not read
            return
        if self._task is not None and not self._task.done():
            return  # the server is working on the request (hashing, committing)
        super().on_idle()

    def on_shutdown(self) -> None:
        if self.proto.state is State.IDLE and (self._task is None or self._task.done()):
            self.close("server shutdown")
        # otherwise let the transfer finish within the grace period

    # -- RangeWriter for send_file_range ----------------------------------------------
    async def wait_writable(self) -> None:
        while not self._writable.is_set() and not self.closing:
            await self._writable.wait()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def wait_empty(self) -> None:
        t = self.transport
        if t.get_write_buffer_size() == 0 or self.closing:
            return
        high, low = t.get_write_buffer_limits()
        t.set_write_buffer_limits(high=0, low=0)
        try:
            while t.get_write_buffer_size() and not self.closing:
                self._writable.clear()
                await self._writable.wait()
        finally:
            if not self.closing:
                t.set_write_buffer_limits(high=high, low=low)

    # -- event dispatch -----------------------------------------------------------------
    def _flush(self) -> None:
        for chunk in self.proto.data_to_send():
            self.write(chunk)

    def _pump(self) -> None:
        while True:
            events = self.proto.events_received()
            if not events:
                break
            for event in events:
                self._dispatch(event)
        self._flush()
        self._watch_header()

    # -- deadlines ----------------------------------------------------------------------
    def _watch_header(self) -> None:
        """Run the header deadline while part of a header or trailer line is waiting."""
        timeout = self.service.header_timeout
        if timeout is None:
            return
        waiting = self.proto.line_pending and not self.closing
        if waiting and self._header_timer is None:
            loop = asyncio.get_running_loop()
            self._header_timer = loop.call_later(timeout, self._header_expired)
        elif not waiting and self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_expired(self) -> None:
        self._header_timer = None
        if self.closing or not self.proto.line_pending:
            return
        timeout = self.service.header_timeout
        self.ctx.metrics["files_header_timeouts"] += 1
        self.log.info(
            "request header not complete within %s s, closing",
            timeout,
            extra={"event": "limit", "reason": "header_timeout"},
        )
        self._cut(f"request header not complete within {timeout:g} s")

    def _start_rate(self) -> None:
        """Hold the upload body arriving through the loop to the minimum rate."""
        if self.service.min_rate is None or self.proto.body_left == 0:
            return
        loop = asyncio.get_running_loop()
        self._rate = MinRate(self.service.min_rate, self.service.rate_window, loop.time())
        self._rate_timer = loop.call_later(self.service.rate_window, self._rate_tick)

    def _stop_rate(self) -> None:
        self._rate = None
        if self._rate_timer is not None:
            self._rate_timer.cancel()
            self._rate_timer = None

    def _rate_tick(self) -> None:
        self._rate_timer = None
        rate = self._rate
        if rate is None or self.closing or self.proto.state is not State.UPLOAD:
            return
        now = asyncio.get_running_loop().time()
        if rate.check(now):
            self._rate_timer = asyncio.get_running_loop().call_later(
                max(rate.due(now), 0.01), self._rate_tick
            )
            return
        self._too_slow()

    def _too_slow(self) -> None:
        self.ctx.metrics["files_upload_too_slow"] += 1
        message = (
            f"upload slower than {self.service.min_rate} bytes/s over "
            f"{self.service.rate_window:g} s; the part is kept for a resume"
        )
        self.log.info(message, extra={"event": "limit", "reason": "min_rate"})
        self._cut(message)

    def _cut(self, message: str) -> None:
        """Tell the peer it missed a deadline (``timeout``), drop its upload, close."""
        self._stop_rate()
        self._drop_upload(keep=True)  # releases the quota reservation; the part stays
        with contextlib.suppress(ProtocolError):
            self.proto.send_fatal("timeout", message)
        self._flush()
        self.close("timeout")

    def _pause_body(self) -> None:
        """WriteBehind is full: stop reading (our disk's time is not the peer's)."""
        if self._rate is not None:
            self._rate.pause(asyncio.get_running_loop().time())
        self.pause_reading()

    def _resume_body(self) -> None:
        if self._rate is not None:
            self._rate.resume(asyncio.get_running_loop().time())
        self.resume_reading()

    def _dispatch(self, event: FilesEvent) -> None:
        if isinstance(event, BodyChunk):
            if self._rate is not None:
                self._rate.add(len(event.data))
            if self._sink is not None:
                self._sink.push(event.data)
        elif isinstance(event, BodyEnd):
            self._stop_rate()
        elif isinstance(event, Trailer):
            upload, sink = self._upload, self._sink
            self._upload = self._sink = None  # the commit task owns it now
            if upload is not None:
                self._start(self._commit(upload, sink, event))
        elif isinstance(event, AuthRequest):
            self._start(self._auth(event))
        elif (
            isinstance(event, PutRequest | GetRequest | StatRequest | ListRequest)
            and self.service.users is not None
            and not self._certified()
        ):
            self.ctx.metrics["files_refused_auth_required"] += 1
            self.proto.send_error("auth_required", "this server needs a user: send auth first")
            self._flush()
        elif isinstance(event, PutRequest):
            self._start(self._put(event))
        elif isinstance(event, GetRequest):
            self._start(self._get(event))
        elif isinstance(event, StatRequest):
            self._start(self._stat(event))
        elif isinstance(event, ListRequest):
            self._start(self._list(event))
        elif isinstance(event, EndOfStream) and self._upload is not None and not event.clean:
            up = self._upload
            self.log.info(
                "upload of %r interrupted at %d of %d bytes; part kept",
                up.name,
                up.size - self.proto.body_left,
                up.size,
                extra={"event": "files_interrupted"},
            )
            self._drop_upload(keep=True)

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
        self._task = asyncio.ensure_future(coro)
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        self._watch_header()  # a partial header may wait behind the finished request
        exc = task.exception()
        deferred = self.proto.take_error()
        if isinstance(exc, ProtocolError) and not isinstance(exc, LocalProtocolError):
            deferred = deferred or exc
            exc = None
        if exc is None and deferred is not None:
            self._fatal(deferred)  # the peer pipelined a bad header behind a good request
            return
        if exc is not None:
            self.log.error("files request failed: %r", exc, exc_info=exc)
            self.ctx.metrics["handler_errors"] += 1
            self.abort("internal error")
            return
        if self._eof and self.proto.state in (State.IDLE, State.CLOSED):
            self.close("done")

    def _fatal(self, exc: ProtocolError) -> None:
        self.ctx.metrics["files_bad_requests"] += 1
        code = "bad_request"
        self.log.info("bad request: %s", exc, extra={"event": "files_bad_request"})
        if self.proto.state is State.ERROR:
            with contextlib.suppress(ProtocolError):
                self.proto.send_error(
                    code,
                    str(exc) if not isinstance(exc, LimitExceeded) else f"limit exceeded: {exc}",
                )
        self._drop_upload(keep=False)
        self._flush()
        self.close("bad request")

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor(), fn, *args)

    def _refuse(self, exc: FileStoreError) -> None:
        self.ctx.metrics[f"files_refused_{exc.code}"] += 1
        self.proto.send_error(exc.code, str(exc), offset=exc.offset)
        self._flush()

    def _certified(self) -> bool:
        """Whether the client is a user: by ``auth``, or by a verified client certificate
        whose commonName is a user's name (mTLS)."""
        users = self.service.users
        if self.user is None and users is not None and (subject := self.peer_subject):
            self.user = users.get(subject)
            if self.user is not None:
                audit_login(self.log, self.ctx.metrics, self.user.name, how="certificate")
        return self.user is not None

    # -- requests -----------------------------------------------------------------------
    async def _auth(self, req: AuthRequest) -> None:
        users, failures = self.service.users, self.service.auth_failures
        source, loop = self.source or "unix", asyncio.get_running_loop()
        user = None
        if users is None:
            reason = "this server has no users (do not send a token)"
        elif (refusal := failures.begin(source, req.user, loop.time())) is not None:
            reason = refusal
        else:
            reason = "wrong user name or token"
            try:
                user = await users.averify(req.user, req.token)
            finally:
                failures.end(source, req.user, ok=user is not None)
        if user is None:
            audit_login(self.log, self.ctx.metrics, req.user, refused=reason)
            self.proto.send_error("auth_failed", reason)
            self._flush()
            self.close("auth_failed")
            return
        self.user = user
        audit_login(self.log, self.ctx.metrics, user.name)
        self.proto.send_auth_result(user.name, user.roles)
        self._pump()

    async def _stat(self, req: StatRequest) -> None:
        try:
            info = await self._run(self.service.store.stat, req.name)
        except FileStoreError as exc:
            self._refuse(exc)
            return
        self.proto.send_stat(
            req.name, exists=info.exists, size=info.size, mtime=info.mtime, partial=info.partial
        )
        self._pump()

    async def _list(self, req: ListRequest) -> None:
        try:
            entries = await self._run(self.service.store.listdir, req.path)
        except FileStoreError as exc:
            self._refuse(exc)
            return
        self.proto.send_list(req.path, entries)
        self._pump()

    async def _get(self, req: GetRequest) -> None:
        store = self.service.store
        try:
            handle: ReadHandle = await self._run(store.open_read, req.name)
        except FileStoreError as exc:
            self._refuse(exc)
            return
        try:
            if req.offset > handle.size:
                self._refuse(
                    FileStoreError(
                        "conflict",
                        f"offset {req.offset} is beyond the size of {req.name!r}",
                        offset=handle.size,
                    )
                )
                return
            digest_name = req.digest
            cached = handle.cached_digest(digest_name)
            digest_job: asyncio.Future[str] | None = None
            if cached is None:
                digest_job = asyncio.ensure_future(self._run(handle.digest, digest_name))
            try:
                self.proto.send_get(
                    req.name, size=handle.size, offset=req.offset, digest=digest_name
                )
                self._flush()
                length = handle.size - req.offset
                threaded = self._thread_slot(length)
                self._sending = True
                try:
                    method = await send_file_range(
                        self,
                        handle.fd,
                        req.offset,
                        length,
                        zero_copy=threaded,
                        progress=self._sent_some,
                        progress_interval=self._progress_interval(),
                    )
                finally:
                    self._sending = False
                    if threaded:
                        self.service.slots.release()
                self.proto.body_sent(length)
                digest = await digest_job if digest_job is not None else cached or ""
            finally:
                if digest_job is not None and not digest_job.done():
                    digest_job.cancel()
                    with contextlib.suppress(BaseException):
                        await digest_job
            self.proto.send_trailer(digest)
            self.ctx.metrics["files_bytes_out"] += length
            self.ctx.metrics["files_gets"] += 1
            self.log.info(
                "sent %r (%d bytes from %d, %s)",
                req.name,
                length,
                req.offset,
                method,
                extra={"event": "files_get"},
            )
            self._pump()
        except (OSError, ConnectionError) as exc:
            self.abort(f"download failed: {exc}")
        finally:
            handle.close()

    async def _put(self, req: PutRequest) -> None:
        store = self.service.store
        try:
            upload = await self._run(
                lambda: store.begin_upload(
                    req.name,
                    size=req.size,
                    offset=req.offset,
                    digest=req.digest,
                    overwrite=req.overwrite,
                    restart=req.restart,
                )
            )
        except FileStoreError as exc:
            self._refuse(exc)
            return
        if self.closing:
            await self._run(upload.release)
            return
        self._upload = upload
        try:
            if upload.offset:
                await self._run(upload.hash_prefix)
        except OSError as exc:
            self._upload = None
            await self._run(upload.release)
            self._refuse(FileStoreError("io_error", f"cannot read the part: {exc}"))
            return
        if self.closing:
            self._drop_upload(keep=True)
            return
        takeover = self._takeover_ok(req.size - upload.offset)
        if takeover:
            self.pause_reading()  # the body is read on threads (SocketBody)
        else:
            self._sink = WriteBehind(
                upload.write,
                on_pause=self._pause_body,
                on_resume=self._resume_body,
                on_error=self._write_failed,
            )
        self.proto.send_ready()
        if not takeover:
            self._start_rate()
        self._pump()
        if takeover:
            await self._receive_body(upload)

    def _thread_slot(self, length: int) -> bool:
        """May this download use a ``sendfile`` thread? (takes a slot: release it)"""
        t = self.transport
        return (
            self.service.zero_copy
            and length > 0
            and t.get_extra_info("socket") is not None
            and t.get_extra_info("sslcontext") is None
            and self.service.slots.acquire()
        )

    def _sent_some(self, n: int) -> None:
        self.touch()  # a download that progresses is not idle

    def _progress_interval(self) -> float:
        idle = self.limits.idle_timeout
        return 1.0 if idle is None else min(1.0, idle / 4)

    def _takeover_ok(self, length: int) -> bool:
        """May the body be received on threads straight from the socket? (takes a slot)"""
        t = self.transport
        return (
            self.service.zero_copy
            and length > 0
            and not self.proto.buffered  # early body bytes: keep them in order, use the loop
            and t.get_extra_info("socket") is not None
            and t.get_extra_info("sslcontext") is None
            and self.service.slots.acquire()
        )

    async def _receive_body(self, upload: Upload) -> None:
        sock = self.transport.get_extra_info("socket")
        svc = self.service
        try:
            body = SocketBody(
                sock.fileno(),
                functools.partial(upload.write, digest=False),
                digest=upload.digest_update,
                idle_timeout=self.limits.idle_timeout,
                min_rate=None if svc.min_rate is None else (svc.min_rate, svc.rate_window),
            )
        except OSError as exc:  # out of descriptors: fall back to the loop
            svc.slots.release()
            self.log.warning("cannot take the socket over: %s", exc)
            self._sink = WriteBehind(
                upload.write,
                on_pause=self._pause_body,
                on_resume=self._resume_body,
                on_error=self._write_failed,
            )
            self._start_rate()
            self.resume_reading()
            return
        self._body = body
        try:
            outcome = await body.run(self.proto.body_left)
        finally:
            svc.slots.release()
        self._body = None
        if self._upload is not upload or self.closing:
            return  # the connection went away; _drop_upload waited for the threads
        self.proto.body_received(outcome.received)
        if outcome.end == "write_error":
            assert outcome.error is not None
            self._write_failed(outcome.error)
            return
        if outcome.end == "idle":
            # (the runtime's idle timer may also have counted "idle_timeouts": it saw no
            # data_received since the header, and on_idle left the decision to us)
            self.ctx.metrics["files_upload_idle"] += 1
            self.log.info(
                "no upload byte for %s s, closing",
                self.limits.idle_timeout,
                extra={"event": "idle_timeout"},
            )
            self.close("idle timeout")
            return
        if outcome.end == "slow":
            self._too_slow()
            return
        # done: the trailer follows; eof / recv_error: the transport finds out and reports
        self.resume_reading()
        self._pump()

    def _write_failed(self, exc: BaseException) -> None:
        code, message = "io_error", str(exc)
        if isinstance(exc, FileStoreError):
            code = exc.code
        self.log.warning("upload failed: %s", message, extra={"event": "files_write_error"})
        if self.proto.state in (State.UPLOAD, State.UPLOAD_TRAILER):
            self.proto.send_error(code, message)
        else:
            return  # the commit task reports it (its flush raises)
        self._drop_upload(keep=True)
        # Say why, half-close, and discard what is still in flight until the client stops
        # (closing at once would reset the connection and could lose our explanation).
        for chunk in self.proto.data_to_send():
            self.write(chunk)
        self.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(10.0, self.abort, f"{code}: client kept sending")
        else:
            self.close(code)

    async def _commit(self, upload: Upload, sink: WriteBehind | None, trailer: Trailer) -> None:
        try:
            if sink is not None:
                await sink.flush()
        except FileStoreError as exc:
            await self._run(upload.release)
            self._refuse(exc)
            return
        try:
            digest = await self._run(upload.commit, trailer.digest)
        except FileStoreError as exc:
            self.ctx.metrics[f"files_refused_{exc.code}"] += 1
            await self._run(upload.release)
            if self.proto.state == State.CLOSED:
                self.log.info("refused %r (%s); the client had left", upload.name, exc.code)
                return
            self.proto.send_error(exc.code, str(exc), offset=exc.offset)
            self._flush()
            return
        except BaseException:
            await self._run(upload.release)
            raise
        self.ctx.metrics["files_puts"] += 1
        self.ctx.metrics["files_bytes_in"] += upload.size - upload.offset
        self.log.info(
            "stored %r (%d bytes, resumed at %d, %s %s)",
            upload.name,
            upload.size,
            upload.offset,
            upload.digest_name,
            digest,
            extra={"event": "files_put"},
        )
        if self.proto.state == State.CLOSED:  # the uploader left after its last byte
            self.log.info(
                "stored %r; the client left before its confirmation",
                upload.name,
                extra={"event": "files_put"},
            )
            return
        self.proto.send_put_result(
            upload.name, size=upload.size, digest_name=upload.digest_name, digest=digest
        )
        self._pump()

    def _drop_upload(self, *, keep: bool) -> None:
        """Hand a dropped upload to a cleanup task: finish its writes, then unlock it."""
        upload, sink, body = self._upload, self._sink, self._body
        self._upload = self._sink = None
        if upload is None:
            return
        if body is not None:
            body.cancel()

        async def cleanup() -> None:
            if sink is not None:
                with contextlib.suppress(BaseException):
                    await sink.flush()
            if body is not None:
                await body.wait_done()
            await asyncio.get_running_loop().run_in_executor(
                executor(), upload.release if keep else upload.discard
            )

        self.service._track(asyncio.ensure_future(cleanup()))
