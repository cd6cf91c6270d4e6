"""Shared test helpers (plain functions; the fixtures that wrap them live in ``conftest.py``).

Import them in a test module with ``from helpers import scaled, wait_for, serving`` (``tests/``
is on ``sys.path`` because it has no ``__init__.py``).

- :data:`SCALE` / :func:`scaled`: the one time unit. Every timeout in the suite is
  ``scaled(seconds)``; set ``WIRECAT_TEST_TIMEOUT_SCALE=3`` on a slow machine.
- :func:`run_async`: run a coroutine function on a fresh asyncio or uvloop loop, bounded by a
  timeout, failing if anything reached the loop's exception handler.
- :func:`wait_for`: await a condition on shared state (``ctx.metrics``, ``ctx.connections``),
  bounded; the only place where the suite polls.
- :func:`serving`: ``async with serving(EchoService([...])) as server:`` starts a
  :class:`~wirecat.runtime.server.Server` and always shuts it down (bounded).
- :func:`echo`: a ``wirecat.listen`` handler that echoes bytes and passes the half-close on.
- :func:`serve_in_thread`: a plain asyncio server (a reference peer) on a thread of its own.
- :func:`short_unix_dir`: a short directory for Unix socket paths (``sun_path`` is 108 bytes;
  pytest's ``tmp_path`` can be longer).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from wirecat.runtime.connection import Connection
from wirecat.runtime.limits import Limits
from wirecat.runtime.loop import run as run_on_loop
from wirecat.runtime.server import Server, Service

__all__ = [
    "DEFAULT_TEST_TIMEOUT",
    "LOOP_KINDS",
    "SCALE",
    "LoopErrors",
    "echo",
    "run_async",
    "scaled",
    "serve_in_thread",
    "serving",
    "short_unix_dir",
    "wait_for",
]

#: The time unit: multiply every timeout by this (env ``WIRECAT_TEST_TIMEOUT_SCALE``, default 1).
SCALE: float = float(os.environ.get("WIRECAT_TEST_TIMEOUT_SCALE", "1") or "1")

#: Loops every async test runs on.
LOOP_KINDS: tuple[str, ...] = ("asyncio", "uvloop")

#: Default bound on one async test, in unscaled seconds.
DEFAULT_TEST_TIMEOUT = 20.0


def scaled(seconds: float) -> float:
    """Return ``seconds`` in the suite's time unit (``seconds * SCALE``)."""
    return seconds * SCALE


class LoopErrors:
    """Records every call to a loop's exception handler (install with :meth:`install`)."""

    def __init__(self) -> None:
        self.contexts: list[dict[str, Any]] = []

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.set_exception_handler(self._handler)

    def _handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.contexts.append(context)

    def report(self) -> str:
        parts = []
        for ctx in self.contexts:
            text = str(ctx.get("message", "?"))
            exc = ctx.get("exception")
            if isinstance(exc, BaseException):
                text += "\n" + "".join(traceback.format_exception(exc))
            others = {k: v for k, v in ctx.items() if k not in ("message", "exception")}
            if others:
                text += f"\n  context: {others!r}"
            parts.append(text)
        return "\n---\n".join(parts)


def run_async(
    fn: Callable[..., Awaitable[Any]],
    /,
    *args: Any,
    loop_kind: str = "asyncio",
    timeout: float | None = None,
    **kwargs: Any,
) -> Any:
    """Run ``await fn(*args, **kwargs)`` on a fresh loop of ``loop_kind`` and return its result.

    Args:
        timeout: seconds, already scaled; default ``scaled(DEFAULT_TEST_TIMEOUT)``.

    Raises:
        AssertionError: the coroutine did not finish in time, or anything reached the
            loop's exception handler (during the run or while the runner shut down).
    """
    limit = scaled(DEFAULT_TEST_TIMEOUT) if timeout is None else timeout
    errors = LoopErrors()
    timed_out = False

    async def main() -> Any:
        nonlocal timed_out
        errors.install(asyncio.get_running_loop())
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                return await fn(*args, **kwargs)
        except TimeoutError:
            timed_out = deadline.expired()  # our deadline, not a TimeoutError from the test
            raise

    try:
        result = run_on_loop(main(), loop=loop_kind)  # type: ignore[arg-type]
    except TimeoutError:
        if timed_out:
            raise AssertionError(f"async test did not finish within {limit:.1f} s") from None
        raise
    finally:
        gc.collect()  # "Task exception was never retrieved" and friends come out here
    assert not errors.contexts, "the loop's exception handler was called:\n" + errors.report()
    return result


async def wait_for(
    predicate: Callable[[], object],
    timeout: float | None = None,
    *,
    what: str = "",
    interval: float = 0.002,
) -> None:
    """Wait until ``predicate()`` is true, yielding to the loop between checks.

    Prefer awaiting an event or a read; use this for state that has no event (``ctx``
    counters, the connection registry, transport flags).

    Args:
        timeout: seconds (already scaled); default ``scaled(5)``.
        what: describes the condition in the failure message.

    Raises:
        AssertionError: the condition did not hold within ``timeout``.
    """
    limit = scaled(5.0) if timeout is None else timeout
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    spins = 0
    while not predicate():
        if loop.time() >= deadline:
            raise AssertionError(f"condition not met within {limit:.2f} s: {what or predicate}")
        # A few bare yields first (callbacks scheduled with call_soon), then short naps.
        await asyncio.sleep(0 if spins < 20 else interval)
        spins += 1


@contextlib.asynccontextmanager
async def serving(
    *services: Service, limits: Limits | None = None, grace: float | None = None
) -> AsyncIterator[Server]:
    """Start a server for ``services`` and shut it down on exit (within ``grace`` seconds).

    ``grace`` defaults to ``scaled(2)``; shutdown is bounded by it.
    """
    server = Server(list(services), limits=limits)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(grace=scaled(2.0) if grace is None else grace)


@contextlib.contextmanager
def short_unix_dir() -> Iterator[str]:
    """Yield a fresh, short directory (under ``/tmp``) for Unix socket paths; removed after."""
    base = "/tmp" if os.path.isdir("/tmp") else None
    path = tempfile.mkdtemp(prefix="wc-", dir=base)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def serve_in_thread(factory: Callable[[], asyncio.Protocol]) -> Iterator[str]:
    """Run a server of ``factory`` protocols on its own asyncio loop in a thread, on
    127.0.0.1 port 0; yield its endpoint string (``tcp://127.0.0.1:PORT``); stop it after.

    Use with ``yield from`` in a generator fixture (or iterate once)."""
    ready = threading.Event()
    state: dict[str, object] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(factory, "127.0.0.1", 0)
        stop = asyncio.Event()
        state["port"] = server.sockets[0].getsockname()[1]
        state["stop"] = (loop, stop)
        ready.set()
        async with server:
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield f"tcp://127.0.0.1:{state['port']}"
    finally:
        loop, stop = state["stop"]  # type: ignore[misc]
        loop.call_soon_threadsafe(stop.set)  # type: ignore[attr-defined]
        thread.join(10)


def files_serve_argv(root: os.PathLike[str] | str, endpoint: str, *args: str) -> list[str]:
    """``wirecat serve`` running only the files service on ``endpoint``, printing one JSON
    ready line (``--json``) once bound; per-source limits lifted for tests and benchmarks."""
    import sys

    return [
        *(sys.executable, "-m", "wirecat.cli.main", "serve"),
        *("--no-greeting", "--no-echo", "--no-chat", "--load-test", "--json"),
        *("--idle-timeout", "0", "--files", str(root), "--files-create"),
        *("--files-endpoint", endpoint, *args),
    ]


def read_ready(stream: Any, timeout: float) -> dict[str, Any]:
    """Read ``wirecat serve --json``'s ready line from a text ``stream`` (bounded wait)."""
    import json
    import select

    ready, _, _ = select.select([stream], [], [], timeout)
    line = stream.readline() if ready else ""
    assert line.startswith("{"), f"no ready line from wirecat serve: {line!r}"
    data: dict[str, Any] = json.loads(line)
    return data


async def echo(conn: Connection) -> None:
    """A stream handler: send back every byte received, then half-close after the peer's EOF."""
    while data := await conn.recv():
        await conn.send(data)
    await conn.send_eof()


def ports_in_use(ports: dict[str, tuple[int, ...]], host: str = "127.0.0.1") -> list[str]:
    """Which of ``ports`` (transport -> port numbers) cannot be bound on ``host`` now, one
    message per port, naming the process that holds it when ``ss -lnp`` can tell."""
    busy: list[str] = []
    for kind, numbers in ports.items():
        sock_type = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
        for port in numbers:
            with socket.socket(socket.AF_INET, sock_type) as sock:
                # As the servers do: a connection in TIME_WAIT does not hold the port.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((host, port))
                except OSError as exc:
                    holder = _port_holder(kind, port)
                    busy.append(f"{kind} port {port} is in use ({exc.strerror}){holder}")
    return busy


def _port_holder(kind: str, port: int) -> str:
    """``": held by users:((...))"`` from ``ss``, or ``""`` if it cannot tell."""
    flag = "-Htlnp" if kind == "tcp" else "-Hulnp"
    try:
        out = subprocess.run(
            ["ss", flag, f"sport = :{port}"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    users = re.findall(r"users:\(\(.*?\)\)", out)
    return f": held by {' '.join(users)}" if users else ""
