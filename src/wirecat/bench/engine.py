"""One load-generator worker: raw ``asyncio.Protocol`` clients on one event loop.

The clients do as little as possible per message so that the load generator is not what is
measured: payloads are built once, replies are counted rather than parsed, and one latency
sample is one ``perf_counter_ns`` pair plus one histogram increment.

Model: the echo clients of MagicStack/uvloop's ``examples/bench``; wrk's connection loop.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

from ._run import Run, classify_error, measure, open_connection, raise_fd_limit
from .chat import run_chat
from .config import BenchConfig, WorkerResult

__all__ = ["classify_error", "open_connection", "raise_fd_limit", "run_worker"]

_STREAM_BURST = 64  # chunks written before yielding to the loop, whatever the kernel takes


class _EchoClient(asyncio.Protocol):
    """Ping-pong: send the payload, wait until as many bytes came back, repeat."""

    __slots__ = ("alive", "payload", "pending", "run", "size", "t0", "transport")

    def __init__(self, run: Run, payload: bytes) -> None:
        self.run = run
        self.payload = payload
        self.size = len(payload)
        self.pending = 0
        self.t0 = 0
        self.alive = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.alive = True

    def start(self) -> None:
        self._send(perf_counter_ns())

    def _send(self, now: int) -> None:
        run = self.run
        if run.stop or run.remaining == 0:
            run.check_done()
            return
        if run.remaining > 0:
            run.remaining -= 1
        run.inflight += 1
        self.pending = self.size
        self.t0 = now
        self.transport.write(self.payload)  # type: ignore[union-attr]
        run.bytes_sent += self.size

    def data_received(self, data: bytes) -> None:
        run = self.run
        n = len(data)
        run.bytes_received += n
        pending = self.pending - n
        if pending > 0:
            if self.pending == self.size and run.note_refusal(data):  # a short first reply
                self.pending = 0
                run.inflight -= 1
                self.alive = False  # counted as refused, not also as closed_by_peer
                run.refused()
                return
            self.pending = pending
            return
        now = perf_counter_ns()
        if pending < 0:
            if pending + n <= 0:  # nothing was expected at all
                if not run.note_refusal(data):
                    run.errors["unexpected_data"] += 1
                self.pending = 0
                return
            run.errors["unexpected_data"] += 1
        self.pending = 0
        run.inflight -= 1
        run.hist.record(now - self.t0)
        run.ops += 1
        self._send(now)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.alive:
            self.alive = False
            if self.pending > 0:
                self.run.inflight -= 1
                self.pending = 0
            self.run.lost(exc)


class _WebSocketEchoClient(_EchoClient):
    """Ping-pong over a WebSocket: the upgrade request goes first, then each round is one
    masked binary frame of the payload; its echo is the same payload in one unmasked frame.

    The frame is built once (a fixed mask key: the load generator is not a browser), so a
    round costs what a TCP round costs; the server does the real WebSocket work.
    """

    __slots__ = ("head",)

    def __init__(self, run: Run, payload: bytes, host: str, path: str) -> None:
        import base64
        import os

        size = len(payload)
        if size < 126:
            header = bytes((0x82, 0x80 | size))
        elif size < 65536:
            header = bytes((0x82, 0x80 | 126)) + size.to_bytes(2, "big")
        else:
            header = bytes((0x82, 0x80 | 127)) + size.to_bytes(8, "big")
        key = bytes((0x5A, 0x17, 0xC3, 0x81))
        masked = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
        super().__init__(run, header + key + masked)
        reply = 2 if size < 126 else 4 if size < 65536 else 10
        self.size = size + reply  # the echo: an unmasked frame header and the payload
        nonce = base64.b64encode(os.urandom(16)).decode()
        self.head = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {nonce}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport.write(self.head)  # type: ignore[attr-defined]
        self.head = b""  # from now on: the response head to skip

    def data_received(self, data: bytes) -> None:
        if self.head is not None:  # still reading the 101 response
            buf = self.head + data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 16384:
                    self.run.errors["bad_handshake"] += 1
                    self.transport.abort()  # type: ignore[union-attr]
                self.head = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.run.errors["refused_handshake"] += 1
                self.transport.abort()  # type: ignore[union-attr]
                return
            self.head = None  # type: ignore[assignment]
            data = buf[end + 4 :]
            if not data:
                return
        super().data_received(data)


class _StreamClient(asyncio.Protocol):
    """Bulk one-way: write chunks while the transport accepts them; count what comes back."""

    __slots__ = ("alive", "loop", "paused", "payload", "run", "size", "transport")

    def __init__(self, run: Run, payload: bytes) -> None:
        self.run = run
        self.payload = payload
        self.size = len(payload)
        self.paused = False
        self.alive = False
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.alive = True

    def start(self) -> None:
        self._pump()

    def _pump(self) -> None:
        run = self.run
        write = self.transport.write  # type: ignore[union-attr]
        payload, size = self.payload, self.size
        for _ in range(_STREAM_BURST):
            if self.paused or not self.alive:
                return
            if run.stop or run.remaining == 0:
                run.check_done()
                return
            if run.remaining > 0:
                run.remaining -= 1
            write(payload)
            run.bytes_sent += size
            run.ops += 1
        self.loop.call_soon(self._pump)  # the kernel took a burst: let reads and timers run

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def data_received(self, data: bytes) -> None:
        run = self.run
        if not run.bytes_received and run.note_refusal(data):  # a stream sink says nothing
            if self.alive:
                self.alive = False  # counted as refused, not also as closed_by_peer
                run.refused()
            return
        run.bytes_received += len(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.alive:
            self.alive = False
            self.run.lost(exc)


class _OneShotClient(asyncio.Protocol):
    """Connect mode: optionally wait for ``size`` bytes back, then report through a future."""

    __slots__ = ("pending", "replied", "run")

    def __init__(self, run: Run, size: int) -> None:
        self.run = run
        self.pending = size
        self.replied: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if size == 0:
            self.replied.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.run.bytes_received += len(data)
        self.pending -= len(data)
        if self.pending <= 0 and not self.replied.done():
            self.replied.set_result(None)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.replied.done():
            self.replied.set_exception(exc or ConnectionResetError("closed before the reply"))
            self.replied.exception()  # retrieved: no "never retrieved" warning if unused


async def _open_all(
    run: Run, make: Callable[[], asyncio.Protocol]
) -> list[tuple[asyncio.Transport, Any]]:
    """Open ``conns`` connections, ``connect_concurrency`` at once, bounded in time."""
    config = run.config
    sources = itertools.cycle(config.source_addresses or (None,))
    opened: list[tuple[asyncio.Transport, Any]] = []
    sem = asyncio.Semaphore(config.connect_concurrency)

    async def one(source: str | None) -> None:
        async with sem:
            try:
                t, p = await open_connection(config, make, source)
            except (OSError, ssl.SSLError) as exc:
                run.errors[classify_error(exc)] += 1
                return
            opened.append((t, p))

    tasks = [asyncio.ensure_future(one(next(sources))) for _ in range(config.conns)]
    try:
        async with asyncio.timeout(config.connect_timeout):
            await asyncio.gather(*tasks)
    except TimeoutError:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        missing = config.conns - len(opened) - sum(run.errors.values())
        if missing > 0:
            run.errors["connect_timeout"] += missing
    run.connects = len(opened)
    return opened


async def _run_persistent(run: Run, start: Callable[[], None] | None) -> float:
    config = run.config
    payload = (
        bytes(i % 251 for i in range(config.size))
        if config.size < 4096
        else (b"wirecat!" * (config.size // 8 + 1))[: config.size]
    )
    cls = _EchoClient if config.mode == "echo" else _StreamClient
    clients: list[_EchoClient | _StreamClient] = []
    ep = config.endpoint

    def make() -> asyncio.Protocol:
        c: _EchoClient | _StreamClient
        if ep.scheme in ("ws", "wss"):
            host = f"[{ep.host}]" if ":" in str(ep.host) else str(ep.host)
            c = _WebSocketEchoClient(run, payload, f"{host}:{ep.port}", ep.path or "/")
        else:
            c = cls(run, payload)
        clients.append(c)
        return c

    opened = await _open_all(run, make)
    live = [p for _, p in opened if p.alive]
    run.live = len(live)
    if not live:
        return 0.0
    if start is not None:
        start()

    def kick() -> None:
        for c in live:
            c.start()

    try:
        return await measure(run, kick)
    finally:
        run.closing = True
        for t, _ in opened:
            t.abort()
        await asyncio.sleep(0)


async def _run_connect(run: Run, start: Callable[[], None] | None) -> float:
    config = run.config
    payload = b"x" * config.size
    sources = itertools.cycle(config.source_addresses or (None,))
    if start is not None:
        start()
    run.live = config.conns

    async def slot() -> None:
        try:
            while not run.stop:
                if run.remaining == 0:
                    break
                if run.remaining > 0:
                    run.remaining -= 1
                run.inflight += 1
                t0 = perf_counter_ns()
                transport: asyncio.Transport | None = None
                try:
                    async with asyncio.timeout(config.connect_timeout):
                        transport, proto = await open_connection(
                            config, lambda: _OneShotClient(run, config.size), next(sources)
                        )
                        if config.size:
                            transport.write(payload)
                            run.bytes_sent += config.size
                        await proto.replied  # type: ignore[attr-defined]
                except (OSError, ssl.SSLError) as exc:
                    run.errors[classify_error(exc)] += 1
                    await asyncio.sleep(0.001)  # a refusing server must not turn this into a spin
                else:
                    run.hist.record(perf_counter_ns() - t0)
                    run.ops += 1
                    run.connects += 1
                finally:
                    run.inflight -= 1
                    if transport is not None:
                        transport.close()
        finally:
            run.live -= 1
            run.check_done()

    tasks: list[asyncio.Task[None]] = []

    def kick() -> None:
        tasks.extend(asyncio.ensure_future(slot()) for _ in range(config.conns))

    try:
        return await measure(run, kick)
    finally:
        run.closing = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_worker(
    config: BenchConfig,
    start: Callable[[], None] | None = None,
    on_measure: Callable[[str], None] | None = None,
) -> WorkerResult:
    """Run one worker's share of a benchmark on the running loop.

    Args:
        config: this worker's part (see :meth:`BenchConfig.split`); assumed valid.
        start: called (it may block) once every connection is open, right before traffic
            starts; workers use it to start together. ``None``: start at once.
        on_measure: called with ``"start"`` right before the measured window (after
            warm-up) and ``"stop"`` right after it, while every connection is still open;
            for sampling outside counters (a server's CPU time) over exactly that window.
            It runs on the loop: keep it short.

    Returns:
        What this worker measured. Connection failures are counted in ``errors``, never
        raised. Bounded in time: at most ``connect_timeout + warmup + duration`` seconds
        (plus the ``connect_timeout`` of operations in flight in ``connect`` mode).
    """
    raise_fd_limit(config.conns + 256)
    run = Run(config)
    run.on_measure = on_measure
    if config.mode == "chat":
        elapsed = await run_chat(run, start)
    elif config.mode == "connect":
        elapsed = await _run_connect(run, start)
    else:
        elapsed = await _run_persistent(run, start)
    return WorkerResult(
        ops=run.ops,
        deliveries=run.deliveries,
        bytes_sent=run.bytes_sent,
        bytes_received=run.bytes_received,
        connects=run.connects,
        dropped=run.dropped if config.mode != "connect" else 0,
        elapsed=elapsed,
        errors=run.errors,
        latency=run.hist,
    )
