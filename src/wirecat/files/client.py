"""Client of the files service: ``wirecat send``, ``get`` and ``ls`` call these.

Example::

    async with await FilesClient.connect("tcp://127.0.0.1:7071") as client:
        result = await client.upload("big.iso", "isos/big.iso")
        print(result.digest_name, result.digest)

Uploads go out with ``sendfile(2)`` on a thread while another hashes the local file;
downloads are received on threads straight from the socket, written and hashed
(:class:`~wirecat.files.pipeline.SocketBody`), into a hidden part file next to the
destination that is renamed into place only once the digest matched. ``tls://`` works too
(``ssl=``, ``pin=``), through the TLS transport. Both resume: an upload
continues from the ``partial`` bytes the server reports, a download from the local part file.

The client is an ``asyncio.Protocol`` of its own (not :func:`wirecat.connect`) so that body
bytes reach the file without passing through a stream buffer, and so it can ``sendfile``
and take the socket over for a body.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import ssl as _ssl
import stat
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..endpoints import Endpoint, parse_endpoint
from ..errors import (
    ConnectionClosedError,
    InvalidEndpoint,
    ProtocolError,
    RemoteProtocolError,
    TransferError,
    WirecatError,
    WirecatTimeout,
    translate_os_error,
)
from ..protocols.files import (
    AuthResult,
    BodyChunk,
    BodyEnd,
    EndOfStream,
    ErrorResponse,
    FilesClientProtocol,
    FilesEvent,
    GetStart,
    ListResult,
    PutResult,
    Ready,
    StatResult,
    Trailer,
)
from ..runtime.connection import open_transport
from .digest import Hasher, hash_fd, new_hasher
from .pipeline import BodyOutcome, FileHashJob, SocketBody, WriteBehind, executor
from .zerocopy import send_file_range

__all__ = ["FilesClient", "Progress", "TransferError", "TransferResult"]

T = TypeVar("T")
E = TypeVar("E")

#: ``progress(done, total)``: bytes of the file now held by the receiver, and its size.
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class TransferResult:
    """A verified transfer.

    Attributes:
        name: the name on the server.
        path: the local file.
        size: the file size in bytes.
        resumed_from: bytes that were already there (0 for a fresh transfer).
        transferred: bytes that crossed the network this time.
        digest_name: ``"blake3"`` or ``"sha256"``.
        digest: the verified whole-file digest (hex).
        seconds: wall time of the transfer.
        method: how the body was sent (``"sendfile"``, ``"copy"``)
            or ``"recv"`` for downloads.
    """

    name: str
    path: str
    size: int
    resumed_from: int
    transferred: int
    digest_name: str
    digest: str
    seconds: float
    method: str

    def as_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict (``rate`` in bytes per second)."""
        rate = self.transferred / self.seconds if self.seconds > 0 else 0.0
        return {
            "name": self.name,
            "path": self.path,
            "size": self.size,
            "resumed_from": self.resumed_from,
            "transferred": self.transferred,
            "digest_name": self.digest_name,
            "digest": self.digest,
            "seconds": round(self.seconds, 6),
            "rate": rate,
            "method": self.method,
            "verified": True,
        }


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.core = FilesClientProtocol()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.events: deque[FilesEvent] = deque()
        self.body_sink: Callable[[bytes], None] | None = None
        self.error: BaseException | None = None
        self.lost = False
        #: pause reading once a get's header arrived, so the body is read on threads
        self.take_over_body = False
        self.body_paused = False
        self.body: SocketBody | None = None  # receiving on threads: cancel it if we close
        self._closed = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.core.receive_data(data)
        except ProtocolError as exc:
            self.error = exc
            self.transport.abort()
            self._wakeup.set()
            return
        self._take()

    def _take(self) -> None:
        sink = self.body_sink
        wake = False
        for ev in self.core.events_received():
            if sink is not None and type(ev) is BodyChunk:
                sink(ev.data)
            else:
                if type(ev) is GetStart and self.take_over_body:
                    self._pause_for_body()
                self.events.append(ev)
                wake = True
        if wake:
            self._wakeup.set()

    def _pause_for_body(self) -> None:
        core = self.core
        if core.body_left and not core.buffered and not self.transport.is_closing():
            self.transport.pause_reading()
            self.body_paused = True

    def eof_received(self) -> bool:
        self.core.receive_eof()
        self._take()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._closed.set()
        if self.body is not None:
            self.body.cancel()
        if exc is not None and self.error is None:
            self.error = exc
        self._wakeup.set()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # RangeWriter
    def write(self, data: bytes) -> bool:
        if self.transport.is_closing():
            return False
        self.transport.write(data)
        return True

    async def wait_writable(self) -> None:
        while not self._writable.is_set():
            await self._writable.wait()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def wait_empty(self) -> None:
        t = self.transport
        if t.get_write_buffer_size() == 0 or self.lost:
            return
        high, low = t.get_write_buffer_limits()
        t.set_write_buffer_limits(high=0, low=0)
        try:
            while t.get_write_buffer_size() and not self.lost:
                self._writable.clear()
                await self._writable.wait()
        finally:
            if not self.lost:
                t.set_write_buffer_limits(high=high, low=low)

    async def next_event(self, timeout: float | None) -> FilesEvent:
        async with asyncio.timeout(timeout):
            while not self.events:
                if self.error is not None:
                    raise self.error
                if self.lost:
                    raise ConnectionClosedError("the server closed the connection")
                self._wakeup.clear()
                await self._wakeup.wait()
        return self.events.popleft()


class FilesClient:
    """One connection to a files service. Requests run one at a time (not concurrency-safe).

    Create with :meth:`connect`; close with :meth:`aclose` or ``async with``.

    Args:
        endpoint: the server's endpoint (for messages).
        protocol: the connected protocol (internal).
        timeout: seconds to wait for any single response (``None``: forever).
    """

    def __init__(self, endpoint: Endpoint, protocol: _Protocol, *, timeout: float | None) -> None:
        self.endpoint = endpoint
        self._p = protocol
        self.timeout = timeout

    @classmethod
    async def connect(
        cls,
        endpoint: str | Endpoint,
        *,
        timeout: float | None = 10.0,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        pin: str | None = None,
        handshake_timeout: float = 10.0,
        user: str | None = None,
        token: str | None = None,
        proxy: Any = None,
    ) -> FilesClient:
        """Connect to a files service at ``endpoint`` (``tcp://``, ``host:port``, ``tls://``,
        ``unix:``).

        Args:
            endpoint: where the service listens.
            timeout: seconds for the connection, and later for each response.
            ssl: client context for ``tls://`` (default: verify against the system CAs, or
                no chain check when ``pin`` is given; see
                :func:`wirecat.runtime.tls.client_context`).
            server_hostname: name to send as SNI and to verify; default the endpoint's host.
            pin: ``sha256:HEX`` of the server's certificate; the connection is refused
                unless it matches (works with self-signed servers).
            handshake_timeout: TLS handshake deadline in seconds.
            user, token: authenticate with :meth:`auth` first (servers with ``--users``).
            proxy: go through a SOCKS5 (``socks5://[user:pass@]host:port``) or HTTP CONNECT
                (``http://host:port``) proxy, as :func:`wirecat.connect` takes it (``tcp``
                and ``tls`` endpoints).

        Raises:
            ProxyError: the proxy refused the tunnel.
            InvalidEndpoint, ConnectionRefused, NameResolutionError, ConnectTimeout, ConnectError,
            HandshakeError (verification failed or the pin does not match), HandshakeTimeout,
            TransferError (``auth_failed``).
        """
        ep = parse_endpoint(endpoint) if isinstance(endpoint, str) else endpoint
        if ep.scheme not in ("tcp", "tls", "unix"):
            raise InvalidEndpoint(f"the files service speaks tcp, tls or unix, not {ep}")
        _, proto = await open_transport(
            ep,
            _Protocol,
            timeout=timeout,
            ssl=ssl,
            server_hostname=server_hostname,
            pin=pin,
            handshake_timeout=handshake_timeout,
            proxy=proxy,
        )
        client = cls(ep, proto, timeout=timeout)
        if token is not None:
            try:
                await client.auth(user or "", token)
            except BaseException:
                client.abort()
                raise
        return client

    async def aclose(self) -> None:
        """Close the connection. Idempotent."""
        t = self._p.transport
        if t is not None and not t.is_closing():
            t.close()

    def abort(self) -> None:
        """Drop the connection now (tests use it to cut a transfer). Idempotent."""
        t = self._p.transport
        if t is not None:
            t.abort()

    async def __aenter__(self) -> FilesClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- plumbing ------------------------------------------------------------------------
    def _flush(self) -> None:
        for chunk in self._p.core.data_to_send():
            self._p.transport.write(chunk)

    async def _expect(self, kind: type[E], timeout: float | None = -1.0) -> E:
        try:
            ev = await self._p.next_event(self.timeout if timeout == -1.0 else timeout)
        except TimeoutError:
            raise WirecatTimeout(f"no answer from {self.endpoint} in time") from None
        except OSError as exc:
            raise translate_os_error(exc, what=str(self.endpoint), phase="io") from exc
        if isinstance(ev, ErrorResponse):
            raise TransferError(ev.code, f"server: {ev.message}", offset=ev.offset)
        if isinstance(ev, EndOfStream):
            raise ConnectionClosedError(f"{self.endpoint} closed the connection mid-request")
        if not isinstance(ev, kind):
            raise RemoteProtocolError(f"expected {kind.__name__}, got {type(ev).__name__}")
        return ev

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor(), fn, *args)

    # -- requests ------------------------------------------------------------------------
    async def auth(self, user: str, token: str) -> AuthResult:
        """Authenticate as ``user`` (servers started with ``--users`` ask for it first).

        Raises:
            TransferError: ``auth_failed`` (the server then closes the connection).
            ConnectionClosedError, WirecatTimeout, ProtocolError.
        """
        self._p.core.send_auth(user, token)
        self._flush()
        return await self._expect(AuthResult)

    async def stat(self, name: str) -> StatResult:
        """Ask about ``name`` (exists, size, partial upload held).

        Raises:
            TransferError: ``bad_name`` and similar refusals.
            ConnectionClosedError, WirecatTimeout, ProtocolError.
        """
        self._p.core.send_stat(name)
        self._flush()
        return await self._expect(StatResult)

    async def list(self, path: str = "") -> ListResult:
        """List directory ``path`` (``""``: the root). Raises like :meth:`stat`."""
        self._p.core.send_list(path)
        self._flush()
        return await self._expect(ListResult)

    async def upload(
        self,
        path: str | os.PathLike[str],
        name: str | None = None,
        *,
        digest: str = "blake3",
        overwrite: bool = False,
        resume: bool = True,
        progress: Progress | None = None,
        zero_copy: bool = True,
    ) -> TransferResult:
        """Upload the local file ``path`` as ``name`` and wait for the server's confirmation.

        The server confirms only after the whole-file digest matched and the file is durable
        (fsynced and renamed). With ``resume``, an interrupted earlier upload of the same name
        is continued from where the server stopped.

        Args:
            path: the local file to send.
            name: the name on the server (default: the file's base name).
            digest: ``"blake3"`` or ``"sha256"``.
            overwrite: replace an existing file on the server.
            resume: continue a partial upload held by the server.
            progress: ``progress(done, total)`` in bytes, called on the loop thread.
            zero_copy: send with ``sendfile(2)`` where possible.

        Returns:
            The :class:`TransferResult`.

        Raises:
            TransferError: refused (``exists``, ``locked``, ``too_large``, ``quota``,
                ``no_space``, ``digest_mismatch``, ...).
            OSError: the local file cannot be read.
            ConnectionClosedError, WirecatTimeout, ProtocolError.
        """
        name = name or os.path.basename(os.fspath(path))
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise TransferError("local_io", f"{os.fspath(path)!r} is not a regular file")
            size = st.st_size
            offset, restart = 0, False
            if resume:
                info = await self.stat(name)
                if info.exists and not overwrite:
                    raise TransferError(
                        "exists", f"{name!r} exists on the server (use --overwrite to replace it)"
                    )
                if info.partial is not None:
                    if info.partial <= size:
                        offset = info.partial
                    else:
                        restart = True
            else:
                restart = True
            started = time.perf_counter()
            hasher = new_hasher(digest)
            # on a thread of its own, in parallel with sendfile, reading a duplicate of fd
            # (so closing fd below cannot pull it from under a hash still running)
            job = FileHashJob(fd, hasher, 0, size)
            hash_job = job.future
            try:
                offset = await self._start_put(name, size, offset, digest, overwrite, restart)
                if progress is not None:
                    progress(offset, size)
                done = offset

                def report(n: int) -> None:
                    nonlocal done
                    done += n
                    if progress is not None:
                        progress(done, size)
                    self._check_refused()  # e.g. no_space: stop sending at once

                try:
                    method = await send_file_range(
                        self._p, fd, offset, size - offset, progress=report, zero_copy=zero_copy
                    )
                except (OSError, ConnectionError) as exc:
                    raise await self._server_reason(exc) from exc
                # a refusal (no_space) that arrived just as the last byte went out has closed
                # the conversation: report it rather than a local protocol error
                self._check_refused()
                self._p.core.body_sent(size - offset)
                await hash_job
            finally:
                if not hash_job.done():
                    job.cancel()  # the thread stops at its next 1 MiB
                    with contextlib.suppress(BaseException):
                        await hash_job
            local = hasher.hexdigest()
            self._check_refused()  # (as above, if it arrived while the hash finished)
            self._p.core.send_trailer(local)
            self._flush()
            # the server flushes, fsyncs and renames before answering: allow for the disk
            slack = None if self.timeout is None else self.timeout + size / 50e6
            result = await self._expect(PutResult, timeout=slack)
            if result.digest != local or result.size != size:
                raise TransferError(
                    "digest_mismatch", f"server confirmed {result.digest}, expected {local}"
                )
            return TransferResult(
                name,
                os.fspath(path),
                size,
                offset,
                size - offset,
                digest,
                local,
                time.perf_counter() - started,
                method,
            )
        finally:
            os.close(fd)

    async def _start_put(
        self, name: str, size: int, offset: int, digest: str, overwrite: bool, restart: bool
    ) -> int:
        core = self._p.core
        for _ in range(2):
            core.send_put(
                name,
                size=size,
                offset=offset,
                digest=digest,
                overwrite=overwrite,
                restart=restart and offset == 0,
            )
            self._flush()
            try:
                ready = await self._expect(Ready)
            except TransferError as exc:
                if exc.code == "conflict" and exc.offset is not None and exc.offset <= size:
                    offset = exc.offset  # tus: the server says where it stands; continue there
                    continue
                raise
            return ready.offset
        raise TransferError("conflict", f"the server's offset for {name!r} keeps changing")

    def _check_refused(self) -> None:
        """Raise the server's refusal if one arrived while we were sending."""
        for ev in self._p.events:
            if isinstance(ev, ErrorResponse):
                raise TransferError(ev.code, f"server: {ev.message}", offset=ev.offset)

    async def _server_reason(self, exc: BaseException) -> BaseException:
        """After a failed send: the server's explanation if it sent one (bounded wait)."""
        try:
            self._check_refused()
            while not self._p.lost:
                ev = await self._p.next_event(1.0)
                if isinstance(ev, ErrorResponse):
                    return TransferError(ev.code, f"server: {ev.message}", offset=ev.offset)
        except TransferError as refused:
            return refused
        except (TimeoutError, OSError, WirecatError):
            pass
        return ConnectionClosedError(f"upload to {self.endpoint} cut: {exc}")

    async def _wait_while_moving(self, kind: type[E], moved: Callable[[], int]) -> E:
        """Wait for ``kind``; time out only if no byte moved for ``self.timeout`` seconds."""
        last = moved()
        while True:
            try:
                return await self._expect(kind)
            except WirecatTimeout:
                now = moved()
                if now == last:
                    raise
                last = now

    async def download(
        self,
        name: str,
        dest: str | os.PathLike[str],
        *,
        digest: str = "blake3",
        overwrite: bool = False,
        resume: bool = True,
        progress: Progress | None = None,
        zero_copy: bool = True,
    ) -> TransferResult:
        """Download ``name`` to the local path ``dest``, verified and atomically placed.

        Bytes go to ``.<dest name>.wcpart`` next to ``dest`` (:func:`local_part_name`);
        once the server's whole-file
        digest matches what arrived, the part is fsynced and renamed to ``dest``. With
        ``resume``, an existing part continues from its size.

        On a plain socket the body is received on two threads straight from the socket
        into preallocated buffers (:class:`~wirecat.files.pipeline.SocketBody`);
        ``zero_copy=False`` (and TLS) receive it through the event loop instead.

        Raises:
            TransferError: ``local_exists`` (``dest`` exists and not ``overwrite``),
                ``not_found``, ``digest_mismatch`` (the part is deleted), ``conflict``.
            OSError: ``dest`` cannot be written.
            ConnectionClosedError, WirecatTimeout, ProtocolError.
        """
        dest = os.path.abspath(os.fspath(dest))
        if os.path.lexists(dest) and not overwrite:
            raise TransferError("local_exists", f"{dest} exists (use --overwrite to replace it)")
        directory, base = os.path.split(dest)
        part = os.path.join(directory, local_part_name(base))
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            return await self._download(
                name, dest, part, fd, digest, overwrite, resume, progress, zero_copy
            )
        except BaseException:
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_size == 0:  # nothing worth keeping for a resume
                    os.unlink(part)
            raise
        finally:
            os.close(fd)

    async def _download(
        self,
        name: str,
        dest: str,
        part: str,
        fd: int,
        digest: str,
        overwrite: bool,
        resume: bool,
        progress: Progress | None,
        zero_copy: bool,
    ) -> TransferResult:
        offset = os.fstat(fd).st_size if resume else 0
        if not resume:
            os.ftruncate(fd, 0)
        started = time.perf_counter()
        hasher = new_hasher(digest)
        if offset:
            await self._run(hash_fd, fd, hasher, 0, offset)
        p = self._p
        t = p.transport
        takeover = (
            zero_copy
            and t.get_extra_info("socket") is not None
            and t.get_extra_info("sslcontext") is None
            and SocketBody.acquire()
        )
        p.take_over_body = takeover
        try:
            try:
                start = await self._start_get(name, offset, digest)
            except TransferError as exc:
                if exc.code != "conflict":
                    raise
                os.ftruncate(fd, 0)  # our part is longer than the file: start over
                hasher, offset = new_hasher(digest), 0
                start = await self._start_get(name, 0, digest)
            return await self._receive(
                name, dest, part, fd, digest, overwrite, progress, start, offset, hasher, started
            )
        finally:
            p.take_over_body = False
            if takeover:
                SocketBody.release()

    async def _receive(
        self,
        name: str,
        dest: str,
        part: str,
        fd: int,
        digest: str,
        overwrite: bool,
        progress: Progress | None,
        start: GetStart,
        offset: int,
        hasher: Hasher,
        started: float,
    ) -> TransferResult:
        os.lseek(fd, offset, os.SEEK_SET)
        size = start.size
        done = offset
        if progress is not None:
            progress(done, size)

        def write_only(chunk: bytes | memoryview) -> None:
            view = memoryview(chunk)
            pos = 0
            while pos < len(view):
                pos += os.write(fd, view[pos:])

        def write(chunk: bytes | memoryview) -> None:
            write_only(chunk)
            hasher.update(chunk)

        def written(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, size)

        p = self._p
        if p.body_paused:
            trailer = await self._receive_on_threads(part, write_only, hasher.update, written)
            return await self._finish_download(
                name, dest, part, fd, digest, overwrite, size, offset, hasher, trailer, started
            )
        sink = WriteBehind(
            write, on_pause=p.transport.pause_reading, on_resume=p.transport.resume_reading
        )

        def push(chunk: bytes) -> None:
            sink.push(chunk)
            written(len(chunk))

        p.body_sink = push
        queued = list(p.events)
        p.events.clear()
        for ev in queued:  # chunks that arrived with the header
            if isinstance(ev, BodyChunk):
                push(ev.data)
            else:
                p.events.append(ev)
        try:
            await self._wait_while_moving(BodyEnd, lambda: done)
            trailer = await self._wait_while_moving(Trailer, lambda: sink.pending)
        finally:
            p.body_sink = None
            with contextlib.suppress(BaseException):
                await sink.flush()
        if sink.error is not None:
            raise TransferError("local_io", f"cannot write {part}: {sink.error}")
        return await self._finish_download(
            name, dest, part, fd, digest, overwrite, size, offset, hasher, trailer, started
        )

    async def _receive_on_threads(
        self,
        part: str,
        write: Callable[[memoryview], object],
        digest: Callable[[memoryview], object],
        written: Callable[[int], None],
    ) -> Trailer:
        """The body straight from the socket (:class:`SocketBody`); the loop only waits."""
        p = self._p
        prefix: list[bytes] = []
        queued = list(p.events)
        p.events.clear()
        for ev in queued:  # chunks that arrived with the header
            if isinstance(ev, BodyChunk):
                prefix.append(ev.data)
            else:
                p.events.append(ev)
        sock = p.transport.get_extra_info("socket")
        body = SocketBody(
            sock.fileno(),
            write,
            digest=digest,
            prefix=prefix,
            idle_timeout=self.timeout,
            progress=written,
        )
        p.body = body
        try:
            outcome = await body.run(p.core.body_left)
        except BaseException:
            self.abort()
            raise
        finally:
            p.body = None
        if outcome.end != "done":
            self.abort()
            raise self._body_failure(outcome, part)
        p.core.body_received(outcome.received)
        p.body_paused = False
        p.transport.resume_reading()
        p._take()  # BodyEnd
        await self._expect(BodyEnd)
        return await self._expect(Trailer)

    def _body_failure(self, outcome: BodyOutcome, part: str) -> BaseException:
        if outcome.end == "write_error":
            return TransferError("local_io", f"cannot write {part}: {outcome.error}")
        if outcome.end == "idle":
            return WirecatTimeout(f"no data from {self.endpoint} for {self.timeout} s")
        if outcome.end == "recv_error" and isinstance(outcome.error, OSError):
            return translate_os_error(outcome.error, what=str(self.endpoint), phase="io")
        return ConnectionClosedError(
            f"{self.endpoint} closed the connection mid-download "
            f"({outcome.received} bytes received this time)"
        )

    async def _finish_download(
        self,
        name: str,
        dest: str,
        part: str,
        fd: int,
        digest: str,
        overwrite: bool,
        size: int,
        offset: int,
        hasher: Hasher,
        trailer: Trailer,
        started: float,
    ) -> TransferResult:
        local = hasher.hexdigest()
        if local != trailer.digest:
            with contextlib.suppress(OSError):
                os.unlink(part)
            raise TransferError(
                "digest_mismatch",
                f"{digest} mismatch for {name!r}: got {local}, server says "
                f"{trailer.digest}; the partial download was deleted",
            )
        await self._run(_commit_local, fd, part, dest, overwrite)
        return TransferResult(
            name,
            dest,
            size,
            offset,
            size - offset,
            digest,
            local,
            time.perf_counter() - started,
            "recv",
        )

    async def _start_get(self, name: str, offset: int, digest: str) -> GetStart:
        self._p.core.send_get(name, offset=offset, digest=digest)
        self._flush()
        return await self._expect(GetStart)


def _commit_local(fd: int, part: str, dest: str, overwrite: bool) -> None:
    os.fsync(fd)
    if overwrite:
        os.replace(part, dest)
    else:
        try:
            os.link(part, dest)
        except FileExistsError:
            raise TransferError("local_exists", f"{dest} appeared meanwhile") from None
        os.unlink(part)
    dfd = os.open(os.path.dirname(dest) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def local_part_name(base: str) -> str:
    """The name of a download's part file next to its destination ``base``.

    ``.BASE.wcpart``, or ``.wcpart-SHA256.wcpart`` (the SHA-256 of ``base`` in hex) when
    that would pass the 255 bytes a file name may have (a ``base`` of 247-255 bytes).
    """
    name = f".{base}.wcpart"
    if len(os.fsencode(name)) <= 255:
        return name
    return f".wcpart-{hashlib.sha256(os.fsencode(base)).hexdigest()}.wcpart"


def hash_file(path: str | os.PathLike[str], digest: str = "blake3") -> str:
    """Return the hex digest of a local file (blocking). Handy to check a transfer."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        hasher: Hasher = new_hasher(digest)
        hash_fd(fd, hasher, 0, os.fstat(fd).st_size)
        return hasher.hexdigest()
    finally:
        os.close(fd)
