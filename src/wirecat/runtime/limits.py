"""Limits that bound every connection. Every size is in bytes, every time in seconds."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["AccessList", "KeyedRateLimiter", "Limits", "MinRate", "TokenBucket", "read_rules"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Limits:
    """Protective limits shared by all services of a server.

    Attributes:
        max_line: longest line a text protocol accepts, terminator included (bytes).
        max_conns: stream connections open at once across the server; the next peer gets a
            one-line reason and is closed.
        max_conns_per_source: stream connections open at once from one source IP
            (``None``: no cap).
        conn_rate: new connections per second allowed from one source IP (token bucket);
            ``None`` (the library default) turns it off; ``wirecat serve`` sets 20.
        conn_burst: connections one source may open in a burst before ``conn_rate`` applies.
        login_timeout: absolute deadline (seconds) from accept until a service that needs a
            handshake (chat: the first complete line / hello) declares it complete; against
            slowloris. ``None`` disables it.
        idle_timeout: close a connection that received nothing for this long (seconds);
            ``None`` disables it.
        line_timeout: for line-framed handlers (chat in text and JSON-lines mode, echo): a
            line must be complete within this many seconds of its first byte, else the
            peer is told why and closed. Against dribbling, which the idle timeout cannot
            see (it restarts on every byte). A run of ``max_line`` bytes without a newline
            counts as a line (echo passes binary through; chat drops it). ``None``
            disables it.
        write_high_water: the transport pauses writing above this many unsent bytes.
        write_low_water: ... and resumes below this many.
        max_output: hard cap on a connection's unsent output (bytes); past it the peer is
            disconnected as a slow consumer. Must be >= ``write_high_water``.
        handshake_timeout: absolute deadline for a TLS handshake (seconds).
        shutdown_grace: how long a drain waits for peers to finish before aborting them
            (seconds).

    Raises:
        ValueError: on a negative value or inconsistent water marks.
    """

    max_line: int = 4096
    max_conns: int = 1024
    max_conns_per_source: int | None = 64
    conn_rate: float | None = None
    conn_burst: int = 40
    login_timeout: float | None = 10.0
    idle_timeout: float | None = 300.0
    line_timeout: float | None = 30.0
    write_high_water: int = 64 * 1024
    write_low_water: int = 16 * 1024
    max_output: int = 1024 * 1024
    shutdown_grace: float = 5.0
    handshake_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.max_line < 2:
            raise ValueError("max_line must be >= 2 bytes")
        if self.max_conns < 1:
            raise ValueError("max_conns must be >= 1")
        if self.max_conns_per_source is not None and self.max_conns_per_source < 1:
            raise ValueError("max_conns_per_source must be >= 1 (or None)")
        if (self.conn_rate is not None and self.conn_rate <= 0) or self.conn_burst < 1:
            raise ValueError("conn_rate must be > 0 per second and conn_burst >= 1")
        if self.login_timeout is not None and self.login_timeout <= 0:
            raise ValueError("login_timeout must be > 0 seconds (or None)")
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be > 0 seconds (or None)")
        if self.line_timeout is not None and self.line_timeout <= 0:
            raise ValueError("line_timeout must be > 0 seconds (or None)")
        if not 0 <= self.write_low_water <= self.write_high_water:
            raise ValueError("need 0 <= write_low_water <= write_high_water")
        if self.max_output < self.write_high_water:
            raise ValueError("max_output must be >= write_high_water")
        if self.handshake_timeout <= 0:
            raise ValueError("handshake_timeout must be > 0 seconds")
        if self.shutdown_grace < 0:
            raise ValueError("shutdown_grace must be >= 0 seconds")


class TokenBucket:
    """A token bucket: ``rate`` tokens per second, at most ``burst`` saved up.

    Pure arithmetic on a caller-supplied clock (``now`` in seconds, monotonic), so tests use
    a fake clock. Not thread-safe; one per event loop.
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("need rate > 0 per second and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float, n: float = 1.0) -> bool:
        """Spend ``n`` tokens if available; return whether they were."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def full_at(self, now: float) -> bool:
        """True when the bucket would be full at ``now`` (its state can be forgotten)."""
        return self.tokens + (now - self.stamp) * self.rate >= self.burst

    def empty_at(self, now: float) -> bool:
        """True when not even one token would be available at ``now`` (nothing is spent)."""
        return self.tokens + max(0.0, now - self.stamp) * self.rate < 1


class MinRate:
    """A minimum transfer rate: at least ``rate`` bytes per second, averaged over each
    ``window`` seconds (the first window is the grace period).

    The models are Apache ``mod_reqtimeout``'s ``MinRate`` and nginx's
    ``client_body_timeout``: a peer dribbling a body holds a connection (and an upload's
    quota reservation) for as long as it likes unless it must keep a minimum pace. Time in
    which *we* do not read (:meth:`pause`: our disk lags, the buffers are full) is not
    counted against the peer. Windows are consecutive: when :meth:`check` finds a window
    complete and met, the next starts.

    Pure arithmetic on a caller-supplied clock (``now`` in seconds, monotonic); not
    thread-safe (one owner: the loop, or one thread).

    Args:
        rate: bytes per second (> 0).
        window: seconds of counted time per window (> 0).
        now: the start time.
    """

    __slots__ = ("_bytes", "_counted", "_paused", "_start", "rate", "window")

    def __init__(self, rate: float, window: float, now: float) -> None:
        if not rate > 0 or not window > 0:
            raise ValueError("need rate > 0 bytes per second and window > 0 seconds")
        self.rate = rate
        self.window = window
        self._start = now  # when the running stretch of counted time began
        self._counted = 0.0  # counted seconds of this window before _start
        self._bytes = 0  # bytes received in this window
        self._paused = False

    def add(self, n: int) -> None:
        """Count ``n`` bytes received."""
        self._bytes += n

    def pause(self, now: float) -> None:
        """We stop reading: time from ``now`` on is not counted (idempotent)."""
        if not self._paused:
            self._counted += now - self._start
            self._paused = True

    def resume(self, now: float) -> None:
        """We read again from ``now`` on (idempotent)."""
        if self._paused:
            self._start = now
            self._paused = False

    def elapsed(self, now: float) -> float:
        """Counted seconds of the current window."""
        return self._counted + (0.0 if self._paused else max(0.0, now - self._start))

    def due(self, now: float) -> float:
        """Counted seconds left before the current window completes (>= 0)."""
        return max(0.0, self.window - self.elapsed(now))

    def check(self, now: float) -> bool:
        """False if the current window is complete with fewer than ``rate`` bytes per
        counted second; True otherwise (a complete, met window starts the next)."""
        elapsed = self.elapsed(now)
        if elapsed < self.window:
            return True
        if self._bytes < self.rate * elapsed:
            return False
        self._bytes, self._counted, self._start = 0, 0.0, now
        return True


class KeyedRateLimiter:
    """One :class:`TokenBucket` per key (e.g. a source IP), in a bounded table.

    When the table holds ``max_keys`` entries, buckets that have refilled are forgotten; if
    none has, the new key is refused (fail closed under a flood of distinct sources).
    """

    def __init__(self, rate: float, burst: float, *, max_keys: int = 65536) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str, now: float) -> bool:
        """Spend one token of ``key``'s bucket; return whether it had one."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets = {k: b for k, b in self._buckets.items() if not b.full_at(now)}
                if len(self._buckets) >= self.max_keys:
                    return False
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket.take(now)

    def exhausted(self, key: str, now: float) -> bool:
        """Whether ``key`` has no token left at ``now`` (without spending one)."""
        bucket = self._buckets.get(key)
        return bucket is not None and bucket.empty_at(now)

    def refund(self, key: str) -> None:
        """Give back one token spent by :meth:`allow` (never above the burst)."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(bucket.burst, bucket.tokens + 1)


class AccessList:
    """``--allow`` / ``--deny`` CIDR rules for IPv4 and IPv6 peers.

    A peer is refused if it matches any deny rule, or if allow rules exist and it matches
    none. IPv4-mapped IPv6 peers (``::ffff:a.b.c.d`` on a dual-stack socket) are checked as
    IPv4. Unix-socket peers (no address) are always allowed.

    Raises:
        ValueError: a rule is not a valid network (e.g. ``10.0.0.0/33``).
    """

    def __init__(self, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> None:
        self.allow = [self._net(r) for r in allow]
        self.deny = [self._net(r) for r in deny]

    @staticmethod
    def _net(rule: str) -> IPNetwork:
        try:
            return ipaddress.ip_network(rule.strip(), strict=False)
        except ValueError:
            raise ValueError(f"invalid network {rule!r}: expected CIDR like 10.0.0.0/8") from None

    def __bool__(self) -> bool:
        return bool(self.allow or self.deny)

    def permits(self, host: str | None) -> bool:
        """True if a peer at ``host`` (an IP string, or ``None`` for unix) may connect."""
        if host is None or not (self.deny or self.allow):
            return True
        try:
            addr: IPAddress = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if any(addr in net for net in self.deny if net.version == addr.version):
            return False
        if self.allow:
            return any(addr in net for net in self.allow if net.version == addr.version)
        return True


def read_rules(path: str) -> list[str]:
    """Read CIDR rules from a file: one per line, ``#`` comments and blank lines ignored.

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, encoding="utf-8") as fh:
        rules = [line.split("#", 1)[0].strip() for line in fh]
    return [r for r in rules if r]
