"""Limits that bound every connection. Every size is in bytes, every time in seconds."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Protective limits shared by all services of a server.

    Attributes:
        max_line: longest line a text protocol accepts, terminator included (bytes).
        max_conns: stream connections open at once across the server; the next peer gets a
            one-line reason and is closed.
        idle_timeout: close a connection that received nothing for this long (seconds);
            ``None`` disables it.
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
    idle_timeout: float | None = 300.0
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
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be > 0 seconds (or None)")
        if not 0 <= self.write_low_water <= self.write_high_water:
            raise ValueError("need 0 <= write_low_water <= write_high_water")
        if self.max_output < self.write_high_water:
            raise ValueError("max_output must be >= write_high_water")
        if self.handshake_timeout <= 0:
            raise ValueError("handshake_timeout must be > 0 seconds")
        if self.shutdown_grace < 0:
            raise ValueError("shutdown_grace must be >= 0 seconds")
