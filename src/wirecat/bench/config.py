"""What to run (:class:`BenchConfig`) and what came out (:class:`BenchReport`).

Sans-I/O: plain data, validation, splitting work across worker processes and merging their
results. Every duration is in seconds, every size in bytes, latencies in nanoseconds inside
and microseconds in reports.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..endpoints import Endpoint
from .histogram import Histogram

__all__ = [
    "CHAT_PROTOCOLS",
    "MODES",
    "BenchConfig",
    "BenchReport",
    "ChatProtocol",
    "Mode",
    "WorkerResult",
    "default_size",
]

Mode = Literal["echo", "stream", "connect", "chat"]
ChatProtocol = Literal["wirecat", "lines", "redis"]
MODES: tuple[Mode, ...] = ("echo", "stream", "connect", "chat")
CHAT_PROTOCOLS: tuple[ChatProtocol, ...] = ("wirecat", "lines", "redis")

#: Hard ceilings that keep a mistyped flag from becoming a denial of service on the host.
MAX_CONNS = 100_000
MAX_WORKERS = 64
MAX_SIZE = 16 * 1024 * 1024  # bytes
MAX_DURATION = 24 * 3600.0  # seconds

_DEFAULT_SIZES: dict[str, int] = {"echo": 64, "stream": 65536, "connect": 0, "chat": 64}

PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99_9", 99.9),
)


def default_size(mode: Mode) -> int:
    """Return the payload size in bytes a mode uses when ``--size`` is not given."""
    return _DEFAULT_SIZES[mode]


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """One load-generator run.

    Attributes:
        endpoint: where to connect: ``tcp``, ``tls``, ``unix``, or ``ws``/``wss`` (echo and
            chat modes: a WebSocket to the endpoint's path).
        mode: ``echo`` (ping-pong round trips of ``size`` bytes, one in flight per
            connection), ``stream`` (write ``size``-byte chunks as fast as the peer takes
            them, read and count whatever comes back), ``connect`` (open, exchange ``size``
            bytes if > 0, close; repeat) or ``chat`` (``conns`` members in one room,
            ``senders`` of them send; counts deliveries).
        conns: concurrent connections (chat: room members), 1-100000.
        size: payload bytes per message (chat: message text length), 0-16 MiB.
        duration: measuring time in seconds; a hard cap even with ``count``.
        count: stop after this many operations in total (round trips, chunks, connections,
            chat messages sent); ``None``: run for ``duration``.
        workers: load-generator processes, each with its own event loop; 1 runs in-process.
        warmup: seconds of traffic before measuring starts (not counted, not in ``duration``).
        connect_timeout: seconds allowed for opening all connections (per worker), and for
            each connection in ``connect`` mode.
        connect_concurrency: connections being opened at once during set-up (lower it for
            servers with a short listen backlog, such as ``ncat --broker``'s 10).
        loop: ``auto`` (uvloop when installed), ``asyncio`` or ``uvloop``.
        insecure: for ``tls``: skip certificate and host name verification.
        source_addresses: local IP addresses connections bind to, in turn (spreads
            connections over 127.0.0.x to get past the ephemeral port range); empty: any.
        senders: chat: how many members send (the first ``senders`` members), >= 1.
        rate: chat: messages per second per sender; ``None``: send as fast as the slowest
            member receives (one message in flight per sender).
        room: chat: the room (channel) name.
        chat_protocol: chat: ``wirecat`` (wirecat chat JSON lines), ``lines`` (plain lines,
            every line to every other peer, as ``ncat --broker``) or ``redis`` (SUBSCRIBE and
            PUBLISH over RESP).
    """

    endpoint: Endpoint
    mode: Mode = "echo"
    conns: int = 1
    size: int = 64
    duration: float = 10.0
    count: int | None = None
    workers: int = 1
    warmup: float = 0.0
    connect_timeout: float = 10.0
    connect_concurrency: int = 256
    loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    insecure: bool = False
    source_addresses: tuple[str, ...] = ()
    senders: int = 1
    rate: float | None = None
    room: str = "bench"
    chat_protocol: ChatProtocol = "wirecat"

    def validate(self) -> None:
        """Check every field against its range.

        Raises:
            ValueError: a field is out of range; the message names it.
        """
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if self.endpoint.scheme in ("ws", "wss"):
            if self.mode not in ("echo", "chat"):
                raise ValueError("bench speaks ws:// and wss:// in echo and chat modes")
            if self.mode == "chat" and self.chat_protocol == "redis":
                raise ValueError("--chat-protocol redis does not run over ws:// or wss://")
        if self.endpoint.scheme not in ("tcp", "tls", "unix", "ws", "wss"):
            raise ValueError(
                f"bench speaks tcp://, tls:// and unix: endpoints, not {self.endpoint.scheme}"
            )
        if not 1 <= self.conns <= MAX_CONNS:
            raise ValueError(f"--conns must be 1..{MAX_CONNS}, got {self.conns}")
        if not 0 <= self.size <= MAX_SIZE:
            raise ValueError(f"--size must be 0..{MAX_SIZE} bytes, got {self.size}")
        if self.mode in ("echo", "stream") and self.size < 1:
            raise ValueError(f"--size must be at least 1 byte in {self.mode} mode")
        if not (0 < self.duration <= MAX_DURATION) or math.isnan(self.duration):
            raise ValueError(f"--duration must be in (0, {MAX_DURATION:g}] s, got {self.duration}")
        if self.count is not None and self.count < 1:
            raise ValueError(f"--count must be at least 1, got {self.count}")
        if not 1 <= self.workers <= min(MAX_WORKERS, self.conns):
            raise ValueError(
                f"--workers must be 1..{min(MAX_WORKERS, self.conns)} "
                f"(at most one per connection), got {self.workers}"
            )
        if not 0 <= self.warmup <= MAX_DURATION:
            raise ValueError(f"--warmup must be 0..{MAX_DURATION:g} s, got {self.warmup}")
        if not 0 < self.connect_timeout <= 3600:
            raise ValueError(
                f"--connect-timeout must be in (0, 3600] s, got {self.connect_timeout}"
            )
        if not 1 <= self.connect_concurrency <= MAX_CONNS:
            raise ValueError(f"--connect-concurrency must be 1..{MAX_CONNS}")
        if self.mode == "chat":
            if self.workers != 1:
                raise ValueError("chat mode runs in one worker (--workers 1)")
            if not 1 <= self.senders <= self.conns:
                raise ValueError(f"--senders must be 1..--conns ({self.conns}), got {self.senders}")
            if self.rate is not None and not 0 < self.rate <= 1e7:
                raise ValueError(f"--rate must be in (0, 1e7] messages/s, got {self.rate}")
            if self.chat_protocol not in CHAT_PROTOCOLS:
                raise ValueError(f"unknown chat protocol {self.chat_protocol!r}")
            if not self.room or len(self.room) > 64 or any(c.isspace() for c in self.room):
                raise ValueError(f"--room must be 1-64 characters without spaces: {self.room!r}")

    def split(self) -> list[BenchConfig]:
        """Divide connections and ``count`` as evenly as possible over ``workers``.

        Returns:
            One config per worker, each with ``workers=1``; their ``conns`` and ``count``
            add up to this config's.
        """
        n = self.workers
        parts = []
        for i in range(n):
            conns = self.conns // n + (1 if i < self.conns % n else 0)
            count = None
            if self.count is not None:
                count = self.count // n + (1 if i < self.count % n else 0)
            parts.append(replace(self, conns=conns, count=count, workers=1))
        return parts


@dataclass(slots=True)
class WorkerResult:
    """What one worker measured (after warm-up).

    Attributes:
        ops: completed operations (round trips, chunks written, connections, chat messages
            sent and fully delivered).
        deliveries: chat: messages received by members (0 in other modes).
        bytes_sent: payload bytes handed to the transport.
        bytes_received: bytes received.
        connects: connections opened successfully (``echo``, ``stream``, ``chat``: at
            set-up, to compare with ``conns``; ``connect``: per measured operation).
        dropped: ``echo``, ``stream``, ``chat``: connections that opened, then were closed,
            reset or refused by the server before the run ended (0 in ``connect`` mode).
        elapsed: seconds measured (from the end of warm-up to the stop).
        errors: counts by kind (``connect_refused``, ``connect_timeout``, ``connect_error``,
            ``closed_by_peer``, ``reset``, ``unexpected_data``, ``undelivered``, ...).
        latency: nanoseconds per operation (round trip, connect, send-to-delivery).
    """

    ops: int = 0
    deliveries: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    connects: int = 0
    dropped: int = 0
    elapsed: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    latency: Histogram = field(default_factory=Histogram)

    def to_dict(self) -> dict[str, Any]:
        """Return a picklable, JSON-able dict (the latency histogram sparse)."""
        return {
            "ops": self.ops,
            "deliveries": self.deliveries,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "connects": self.connects,
            "dropped": self.dropped,
            "elapsed": self.elapsed,
            "errors": dict(self.errors),
            "latency": self.latency.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerResult:
        """Rebuild a result from :meth:`to_dict` output."""
        return cls(
            ops=int(data["ops"]),
            deliveries=int(data["deliveries"]),
            bytes_sent=int(data["bytes_sent"]),
            bytes_received=int(data["bytes_received"]),
            connects=int(data["connects"]),
            dropped=int(data.get("dropped", 0)),
            elapsed=float(data["elapsed"]),
            errors=Counter({str(k): int(v) for k, v in data["errors"].items()}),
            latency=Histogram.from_dict(data["latency"]),
        )


@dataclass(slots=True)
class BenchReport:
    """Merged results of every worker of one run.

    Rates divide totals by the longest worker's measured time (workers start together).
    """

    config: BenchConfig
    result: WorkerResult
    workers: int

    @classmethod
    def merge(cls, config: BenchConfig, results: list[WorkerResult]) -> BenchReport:
        """Add up worker results: counters summed, histograms merged, elapsed = the longest."""
        total = WorkerResult()
        for r in results:
            total.ops += r.ops
            total.deliveries += r.deliveries
            total.bytes_sent += r.bytes_sent
            total.bytes_received += r.bytes_received
            total.connects += r.connects
            total.dropped += r.dropped
            total.elapsed = max(total.elapsed, r.elapsed)
            total.errors.update(r.errors)
            total.latency.merge(r.latency)
        return cls(config=config, result=total, workers=len(results))

    @property
    def error_count(self) -> int:
        """Total errors of every kind."""
        return sum(self.result.errors.values())

    def rate(self, amount: int | float) -> float:
        """Return ``amount`` per second of measured time (0.0 if nothing was measured)."""
        return amount / self.result.elapsed if self.result.elapsed > 0 else 0.0

    def latency_us(self) -> dict[str, float]:
        """Return latency ``min``, ``mean``, ``p50``, ``p90``, ``p99``, ``p99_9``, ``max`` in µs."""
        h = self.result.latency
        values = h.percentiles(q for _, q in PERCENTILES)
        out = {"min": h.min / 1000, "mean": round(h.mean / 1000, 3)}
        out.update({name: v / 1000 for (name, _), v in zip(PERCENTILES, values, strict=True)})
        out["max"] = h.max / 1000
        return out

    def to_json(self) -> dict[str, Any]:
        """Return the machine-readable report (the ``--json`` output).

        Shape: ``{"mode", "endpoint", "conns", "size", "workers", "duration_s", "ops",
        "ops_per_s", "msgs_per_s", "deliveries", "deliveries_per_s", "bytes_sent",
        "bytes_received", "bytes_per_s", "connects", "connects_per_s", "conns_dropped",
        "errors", "errors_by_kind", "latency_us": {...}, "latency_samples"}``.
        ``bytes_per_s`` counts both directions; ``conns_dropped`` (not in ``connect``
        mode) counts connections closed, reset or refused by the server during the run.
        """
        c, r = self.config, self.result
        return {
            "mode": c.mode,
            "endpoint": str(c.endpoint),
            "conns": c.conns,
            "size": c.size,
            "workers": self.workers,
            "senders": c.senders if c.mode == "chat" else None,
            "chat_protocol": c.chat_protocol if c.mode == "chat" else None,
            "duration_s": round(r.elapsed, 6),
            "ops": r.ops,
            "ops_per_s": round(self.rate(r.ops), 3),
            "msgs_per_s": round(self.rate(r.ops), 3),
            "deliveries": r.deliveries,
            "deliveries_per_s": round(self.rate(r.deliveries), 3),
            "bytes_sent": r.bytes_sent,
            "bytes_received": r.bytes_received,
            "bytes_per_s": round(self.rate(r.bytes_sent + r.bytes_received), 3),
            "connects": r.connects,
            "connects_per_s": round(self.rate(r.connects), 3),
            "conns_dropped": r.dropped,
            "errors": self.error_count,
            "errors_by_kind": dict(sorted(r.errors.items())),
            "latency_us": self.latency_us(),
            "latency_samples": r.latency.count,
        }
