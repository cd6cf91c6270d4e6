"""Slow consumer at scale, over real sockets on loopback.

The issue's demand: a chat member with a tiny receive buffer that never reads is cut at its
output limit while 50 others receive 100% of the messages, in order.

Setup (one server, everything on 127.0.0.1, port 0):

- 50 healthy members in JSON-lines mode, each with a reader task that parses every line;
- one *stuck* member whose socket has ``SO_RCVBUF`` = 4096 (set before ``connect``, so the
  kernel cannot autotune it) and that never reads after its login; in JSON-lines mode or in
  text mode (what ``nc`` would be);
- one *sender* (also a JSON member of the room, reading its own replies) that sends
  :data:`MESSAGES` messages of ~1 KiB as fast as the server takes them; the chat rate limit
  is lifted for it with the service's ``max_rate``/``burst``/``kick_after`` options.

The server's ``max_output`` is small (:data:`LIMITS`), so the stuck member's unsent output
passes it long before the end of the burst. Then:

- the stuck member is cut as a slow consumer (``slow_consumers == 1``) and the room sees its
  part with reason ``"slow consumer"``; read only after the cut, its socket holds an ordered
  prefix of the stream (what its few KiB of kernel buffers took), then ends;
- every healthy member receives every message exactly once, with strictly increasing ids
  (the ids of the sender's ``sent`` replies), and the texts in the sender's order;
- the sender was never stalled: every send completes and every message is acknowledged.

Nothing is measured by time: synchronisation is by reads and ``wait_for`` on counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from helpers import scaled, serving, wait_for
from wirecat.endpoints import Endpoint
from wirecat.runtime.limits import Limits
from wirecat.runtime.server import Server
from wirecat.services.chat import ChatService

T = scaled(5.0)  # seconds: the bound on any single read or small condition
HEALTHY = 50
MESSAGES = 400
TEXT_BYTES = 1000  # per message text (MAX_TEXT is 1024): ~1.1 KiB per JSON line
ROOM = "#lobby"
SENDER = "sender"
STUCK = "stuck"
STUCK_RCVBUF = 4096

#: ``max_output`` is a fraction of one member's share of the burst (~440 KiB), so the stuck
#: member (kernel buffers of a few KiB) passes it early; healthy members keep their
#: autotuned loopback kernel buffers (MiBs), so their unsent output stays far below it.
LIMITS = Limits(write_high_water=4096, write_low_water=1024, max_output=64 * 1024)


def message_text(i: int) -> str:
    """The text of message ``i``: distinct, ordered, exactly :data:`TEXT_BYTES` bytes."""
    head = f"m{i:04d} "
    return head + "abcdefghijklmnopqrstuvwxyz0123456789"[i % 36] * (TEXT_BYTES - len(head))


TEXTS = [message_text(i) for i in range(MESSAGES)]


class JsonMember:
    """A JSON-lines chat member on plain asyncio streams that reads everything it is sent.

    After :meth:`open` (hello + join), :meth:`start` runs a reader task that parses every
    line into :attr:`events` and keeps counters the test waits on.
    """

    def __init__(self, nick: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.nick = nick
        self.reader = reader
        self.writer = writer
        self.events: list[dict[str, Any]] = []
        self.joined_nicks: set[str] = set()
        self.messages = 0  # "message" events
        self.last_text = ""  # of the last "message" event
        self.sent = 0  # "sent" replies
        self.parts = 0  # "part" events
        self.eof = False
        self.task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, ep: Endpoint, nick: str, stack: contextlib.AsyncExitStack) -> JsonMember:
        reader, writer = await asyncio.open_connection(ep.host, ep.port, limit=1 << 20)
        member = cls(nick, reader, writer)
        stack.push_async_callback(member.aclose)
        hello = {"type": "hello", "nick": nick}
        join = {"type": "join", "room": ROOM}
        writer.write(json.dumps(hello).encode() + b"\n" + json.dumps(join).encode() + b"\n")
        await writer.drain()
        while True:  # the text banner lines come first; then welcome, join event, joined
            line = await asyncio.wait_for(reader.readline(), T)
            assert line.endswith(b"\n"), f"{nick}: connection ended during login: {line!r}"
            if not line.startswith(b"{"):
                continue
            obj = json.loads(line)
            assert obj["type"] not in ("error", "part"), f"{nick}: {obj}"
            member._record(obj)
            if obj["type"] == "joined":
                assert obj["room"] == ROOM
                return member

    def start(self) -> None:
        self.task = asyncio.create_task(self._read(), name=f"reader-{self.nick}")

    def _record(self, obj: dict[str, Any]) -> None:
        self.events.append(obj)
        kind = obj["type"]
        if kind == "message":
            self.messages += 1
            self.last_text = obj["text"]
        elif kind == "sent":
            self.sent += 1
        elif kind == "part":
            self.parts += 1
        elif kind == "join":
            self.joined_nicks.add(obj["nick"])

    async def _read(self) -> None:
        reader = self.reader
        while True:
            line = await reader.readline()
            if not line:
                self.eof = True
                return
            assert line.endswith(b"\n"), f"{self.nick}: partial last line {line[-80:]!r}"
            obj = json.loads(line)
            assert isinstance(obj, dict), f"{self.nick}: not an object: {line[:80]!r}"
            self._record(obj)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
        if self.task is not None:
            if not self.task.done():
                self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task  # a reader's assertion error surfaces here


@contextlib.asynccontextmanager
async def chat_room() -> AsyncIterator[tuple[Server, Endpoint, contextlib.AsyncExitStack]]:
    """A chat server with :data:`LIMITS` and the per-member rate limit lifted."""
    service = ChatService(
        [Endpoint("tcp", "127.0.0.1", 0)],
        history=0,
        max_rate=1e6,
        burst=10 * MESSAGES,
        kick_after=0,
    )
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(serving(service, limits=LIMITS))
        yield server, server.endpoint("chat"), stack


async def open_stuck(
    server: Server, ep: Endpoint, mode: str, stack: contextlib.AsyncExitStack
) -> socket.socket:
    """Connect the member that never reads (tiny ``SO_RCVBUF`` before ``connect``), log in.

    The server's end of this connection gets a tiny ``SO_SNDBUF`` too: Linux autotunes an
    unlocked send buffer up to ``tcp_wmem[2]`` (4 MiB by default), which would swallow the
    whole burst in the kernel, below the reach of ``max_output`` (which counts only the
    bytes the kernel has not taken).
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stack.callback(sock.close)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STUCK_RCVBUF)
    sock.setblocking(False)
    await asyncio.wait_for(loop.sock_connect(sock, (ep.host, ep.port)), T)
    if mode == "json":
        login = (
            json.dumps({"type": "hello", "nick": STUCK}) + "\n"
            + json.dumps({"type": "join", "room": ROOM}) + "\n"
        )  # fmt: skip
    else:  # text mode, as with nc: the first line is the nick, then it is in #lobby
        login = STUCK + "\n"
    await asyncio.wait_for(loop.sock_sendall(sock, login.encode()), T)
    host, port = sock.getsockname()[:2]
    local = f"{host}:{port}"
    await wait_for(
        lambda: any(h.peer == local for h in server.ctx.connections), T, what="stuck accepted"
    )
    (handler,) = [h for h in server.ctx.connections if h.peer == local]
    server_sock = handler.transport.get_extra_info("socket")
    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STUCK_RCVBUF)
    return sock


async def drain_stuck(sock: socket.socket) -> bytes:
    """Read what the kernel still holds for the stuck member, until the server's close."""
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    for _ in range(100_000):  # bounded; each read returns at least one byte or ends
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 65536), T)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    else:
        raise AssertionError("the stuck member's stream did not end")
    return b"".join(chunks)


def stuck_messages(mode: str, received: bytes) -> list[str]:
    """The texts of the sender's messages in the stuck member's (partial) stream."""
    lines = received.split(b"\n")[:-1]  # the last piece may be a cut line
    texts = []
    if mode == "json":
        for line in lines:
            if line.startswith(b"{"):
                obj = json.loads(line)
                if obj["type"] == "message":
                    texts.append(obj["text"])
    else:
        prefix = f"{ROOM} <{SENDER}> ".encode()
        texts = [line[len(prefix) :].decode() for line in lines if line.startswith(prefix)]
    return texts


@pytest.mark.parametrize("stuck_mode", ["json", "text"])
async def test_stuck_member_is_cut_while_50_others_get_every_message(stuck_mode: str) -> None:
    async with chat_room() as (server, ep, stack):
        metrics = server.ctx.metrics
        healthy = [await JsonMember.open(ep, f"m{k:02d}", stack) for k in range(HEALTHY)]
        for member in healthy:
            member.start()

        stuck = await open_stuck(server, ep, stuck_mode, stack)
        sender = await JsonMember.open(ep, SENDER, stack)
        sender.start()
        await wait_for(
            lambda: all({STUCK, SENDER} <= m.joined_nicks for m in healthy),
            T,
            what="every healthy member saw the stuck member and the sender join",
        )
        assert len(server.ctx.connections) == HEALTHY + 2
        assert metrics["slow_consumers"] == 0

        # The burst: each send completes (drain returns) while the stuck member reads nothing.
        for i, text in enumerate(TEXTS):
            sender.writer.write(
                json.dumps({"type": "say", "room": ROOM, "text": text, "ref": i}).encode() + b"\n"
            )
            await asyncio.wait_for(sender.writer.drain(), T)
        sends_completed = len(TEXTS)

        await wait_for(lambda: sender.sent == MESSAGES, scaled(10), what="every send acked")
        # The last message (or as many messages as were sent) reached every healthy member;
        # the exact comparison below then tells what, if anything, went wrong.
        await wait_for(
            lambda: all(m.last_text == TEXTS[-1] or m.messages >= MESSAGES for m in healthy),
            scaled(10),
            what="every healthy member got the last message",
        )
        await wait_for(lambda: metrics["slow_consumers"] >= 1, T, what="the stuck one was cut")
        await wait_for(
            lambda: all(m.parts >= 1 for m in healthy), T, what="everyone saw the stuck one part"
        )
        await wait_for(
            lambda: len(server.ctx.connections) == HEALTHY + 1, T, what="the stuck one is gone"
        )

        # The stuck member: cut exactly once, as a slow consumer, and nobody else was.
        assert metrics["slow_consumers"] == 1
        received = await drain_stuck(stuck)
        got = stuck_messages(stuck_mode, received)
        assert got == TEXTS[: len(got)], "the stuck member's stream is not an ordered prefix"
        assert len(got) < MESSAGES // 2, f"stuck member got {len(got)} messages: not cut early"

        # The sender: every message accepted, acknowledged once, in order, never refused.
        assert sends_completed == MESSAGES
        assert not sender.of_type("error") and not sender.eof
        acks = sender.of_type("sent")
        assert [a["ref"] for a in acks] == list(range(MESSAGES))
        ids = [a["id"] for a in acks]
        assert all(a < b for a, b in itertools.pairwise(ids)), "ids not increasing"
        assert [m["text"] for m in sender.of_type("message")] == TEXTS

        # Every healthy member: every message exactly once, same ids, in the sender's order.
        for member in healthy:
            assert not member.eof, f"{member.nick} was disconnected"
            msgs = member.of_type("message")
            assert [m["id"] for m in msgs] == ids, f"{member.nick}: ids differ from the acks"
            assert [m["text"] for m in msgs] == TEXTS, f"{member.nick}: texts out of order"
            assert {(m["nick"], m["room"], m["kind"]) for m in msgs} == {(SENDER, ROOM, "say")}
            parts = [
                {k: p.get(k) for k in ("room", "nick", "reason")} for p in member.of_type("part")
            ]
            assert parts == [{"room": ROOM, "nick": STUCK, "reason": "slow consumer"}]
            assert not member.of_type("error")
