"""A line-oriented chat test client on plain asyncio streams (independent of wirecat's
client), shared by the chat test modules."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from helpers import scaled
from wirecat.endpoints import Endpoint

T = scaled(5.0)  # seconds: the bound on any single read


class Peer:
    """A line-oriented test client on plain asyncio streams (independent of wirecat's client)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.seen: list[bytes] = []

    @classmethod
    async def open(cls, ep: Endpoint, **kw: Any) -> Peer:
        if ep.is_unix:
            reader, writer = await asyncio.open_unix_connection(ep.path, limit=1 << 20)
        else:
            reader, writer = await asyncio.open_connection(ep.host, ep.port, limit=1 << 20, **kw)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_json(self, **obj: Any) -> None:
        await self.send(json.dumps(obj).encode() + b"\n")

    async def line(self) -> bytes:
        data = await asyncio.wait_for(self.reader.readline(), T)
        assert data.endswith(b"\n"), f"connection ended: {data!r} after {self.seen[-5:]!r}"
        self.seen.append(data)
        return data

    async def until(self, match: bytes | Callable[[bytes], bool]) -> bytes:
        """Read lines until one starts with ``match`` (or satisfies it); return that line."""
        pred = match if callable(match) else (lambda line: line.startswith(match))
        while True:
            line = await self.line()
            if pred(line):
                return line

    async def json(self) -> dict[str, Any]:
        while True:
            line = await self.line()
            if line.startswith(b"{"):
                obj = json.loads(line)
                assert isinstance(obj, dict)
                return obj

    async def json_until(self, kind: str) -> dict[str, Any]:
        while True:
            obj = await self.json()
            if obj["type"] == kind:
                return obj

    async def eof(self) -> bytes:
        """Read everything until the server closes; return it."""
        return await asyncio.wait_for(self.reader.read(), T)

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
