"""Helpers for tests that run ``wirecat`` as a subprocess and talk to real peers.

- :func:`peer`: the path of a peer program (nc, ncat, socat); FAILS the test when missing.
- :func:`wirecat`: run ``wirecat ARGS`` to completion, bounded.
- :class:`Running`: a ``wirecat`` (or any) subprocess whose stderr is read line by line in a
  thread, so a test can wait for ``listening on ...`` instead of sleeping.
- :class:`TcpPeer`, :class:`UdpEcho`: plain blocking-socket servers in a thread (port 0).
- :class:`Services`: wirecat's own services on port 0 in a background thread with its loop.

Every wait is bounded by ``scaled()`` seconds; loopback only.
"""

from __future__ import annotations

import asyncio
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from helpers import scaled
from wirecat.endpoints import Endpoint
from wirecat.runtime.server import Server, Service

WIRECAT = [sys.executable, "-m", "wirecat.cli.main"]
LISTENING = re.compile(r"^wirecat: listening on (\S+)$")


def timeout(seconds: float = 10.0) -> float:
    """A bound for one subprocess or socket operation, in the suite's time unit."""
    return scaled(seconds)


def peer(name: str) -> str:
    """Return the path of peer program ``name``; fail (never skip) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not installed: scripts/test.sh installs the real peers")
    return path


def wirecat(
    *args: str,
    input: bytes | None = b"",
    stdin: Any = None,
    seconds: float = 10.0,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``wirecat ARGS`` with ``input`` (or an explicit ``stdin``) and capture its output."""
    return subprocess.run(
        [*WIRECAT, *args],
        input=input if stdin is None else None,
        stdin=stdin,
        capture_output=True,
        timeout=timeout(seconds),
        check=False,
    )


def one_line_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    """Assert stderr is exactly one ``wirecat: ...`` line (no traceback); return it."""
    err = proc.stderr.decode()
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("wirecat: "), err
    return lines[0]


class Running:
    """A subprocess with its stderr read in a thread (lines kept for :meth:`wait_line`).

    Args:
        argv: the command.
        stdin: ``subprocess.PIPE`` (default), ``DEVNULL`` or a file.
        stdout: ``subprocess.PIPE`` (default) or a file.
    """

    def __init__(self, argv: Sequence[str], *, stdin: Any = subprocess.PIPE, stdout: Any = None):
        self.proc = subprocess.Popen(
            list(argv),
            stdin=stdin,
            stdout=subprocess.PIPE if stdout is None else stdout,
            stderr=subprocess.PIPE,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.stderr_lines: list[str] = []
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self._lines.put(raw.decode(errors="replace").rstrip("\n"))
        self._lines.put(None)

    def wait_line(self, pattern: str | re.Pattern[str], seconds: float = 10.0) -> re.Match[str]:
        """Return the match of the first new stderr line matching ``pattern`` (bounded)."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        try:
            while True:
                line = self._lines.get(timeout=timeout(seconds))
                if line is None:
                    raise AssertionError(
                        f"process ended before {rx.pattern!r}; stderr: {self.stderr_lines}"
                    )
                self.stderr_lines.append(line)
                m = rx.search(line)
                if m:
                    return m
        except queue.Empty:
            raise AssertionError(
                f"no stderr line matching {rx.pattern!r} in time; stderr: {self.stderr_lines}"
            ) from None

    def wait_listening(self) -> str:
        """Wait for ``wirecat: listening on ENDPOINT`` and return ENDPOINT."""
        return self.wait_line(LISTENING).group(1)

    def write(self, data: bytes, *, close: bool = False) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()
        if close:
            self.proc.stdin.close()

    def finish(self, seconds: float = 10.0) -> tuple[int, bytes, str]:
        """Close stdin, wait for exit (bounded), return (code, stdout, stderr text)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        out = b""
        try:
            if self.proc.stdout is not None and not self.proc.stdout.closed:
                out = _read_all(self.proc.stdout, timeout(seconds))
            code = self.proc.wait(timeout=timeout(seconds))
        finally:
            self.close()
        return code, out, self.stderr_text()

    def signal(self, sig: int = signal.SIGINT) -> None:
        self.proc.send_signal(sig)

    def stderr_text(self) -> str:
        self._reader.join(timeout(5))
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.stderr_lines.append(line)
        return "\n".join(self.stderr_lines)

    def close(self) -> None:
        """Kill the process if still running and close every pipe. Idempotent."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout(5))
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None and not f.closed:
                f.close()
        self._reader.join(timeout(5))
        if self.proc.stderr is not None and not self.proc.stderr.closed:
            self.proc.stderr.close()

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_all(f: Any, seconds: float) -> bytes:
    """Read a pipe to EOF in a thread, bounded by ``seconds``."""
    chunks: list[bytes] = []
    t = threading.Thread(target=lambda: chunks.append(f.read()), daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise AssertionError(f"output did not end within {seconds:.1f} s")
    return b"".join(chunks)


def recv_all(sock: socket.socket) -> bytes:
    """Read until the peer closes its side (EOF)."""
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def recv_until(sock: socket.socket, sep: bytes) -> bytes:
    buf = b""
    while sep not in buf:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
    return buf


class TcpPeer:
    """A blocking socket server in a thread: accepts ``count`` peers, runs ``handler`` on each.

    ``handler(conn)`` returns anything; results land in :attr:`results`, exceptions in
    :attr:`errors` (checked by :meth:`join`). ``family`` may be ``AF_UNIX`` with ``path``.
    """

    def __init__(
        self,
        handler: Callable[[socket.socket], Any],
        *,
        count: int = 1,
        family: socket.AddressFamily = socket.AF_INET,
        path: str | None = None,
    ) -> None:
        self.handler = handler
        self.count = count
        self.results: list[Any] = []
        self.errors: list[BaseException] = []
        self.accepted = threading.Event()
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout())
        if family == socket.AF_UNIX:
            assert path is not None
            self.sock.bind(path)
            self.endpoint = f"unix:{path}"
        else:
            self.sock.bind(("127.0.0.1", 0))
            self.port = self.sock.getsockname()[1]
            self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for _ in range(self.count):
                conn, _ = self.sock.accept()
                self.accepted.set()
                with conn:
                    conn.settimeout(timeout())
                    self.results.append(self.handler(conn))
        except BaseException as exc:
            self.errors.append(exc)

    def join(self) -> list[Any]:
        self.thread.join(timeout())
        assert not self.thread.is_alive(), "server thread did not finish"
        self.sock.close()
        if self.errors:
            raise self.errors[0]
        return self.results

    def __enter__(self) -> TcpPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        self.thread.join(timeout())


class UdpEcho:
    """A blocking UDP (or unix datagram) echo in a thread; keeps every datagram it got."""

    def __init__(self, family: socket.AddressFamily = socket.AF_INET, path: str | None = None):
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_UNIX:
            assert path is not None
            self.sock.bind(path)
            self.endpoint = f"unix+dgram:{path}"
        else:
            self.sock.bind(("127.0.0.1", 0))
            self.endpoint = f"udp://127.0.0.1:{self.sock.getsockname()[1]}"
        self.sock.settimeout(0.05)
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append(data)
            if addr:
                self.sock.sendto(data, addr)

    def __enter__(self) -> UdpEcho:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(timeout())
        self.sock.close()


class Services:
    """wirecat services on a background thread with its own asyncio loop.

    ``with Services(EchoService([...])) as s: s.endpoint("echo", "udp")``. Anything that
    reaches the loop's exception handler fails the test at exit.
    """

    def __init__(self, *services: Service) -> None:
        self.server = Server(list(services))
        self.errors: list[dict[str, Any]] = []
        self._started = threading.Event()
        self._startup_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        loop.set_exception_handler(lambda _loop, ctx: self.errors.append(ctx))
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:
            self._startup_error = exc
            self._started.set()
            return
        self._started.set()
        await self._stop.wait()
        await self.server.shutdown(grace=scaled(2))

    def endpoint(self, service: str, scheme: str | None = None) -> Endpoint:
        return self.server.endpoint(service, scheme)

    def __enter__(self) -> Services:
        self.thread.start()
        assert self._started.wait(timeout()), "services did not start"
        if self._startup_error is not None:
            raise self._startup_error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout())
        assert not self.thread.is_alive(), "services did not stop"
        assert not self.errors, f"loop exception handler called: {self.errors}"


def host_port(endpoint: str | Endpoint) -> tuple[str, str]:
    """``("127.0.0.1", "7007")`` for nc-style peers."""
    text = str(endpoint)
    m = re.match(r"^\w+://(\[[^\]]+\]|[^:]+):(\d+)$", text)
    assert m, text
    return m.group(1).strip("[]"), m.group(2)
