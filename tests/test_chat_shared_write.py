"""Room fan-out through shared writes keeps every member's output in the core's order.

Two identical cores run the same random script of chat commands. In one, every member is a
plain sink that records each ``send`` at once (the reference order). In the other, every
member is a coalescing :class:`StreamHandler` on a fake transport, so rooms queue one
:class:`SharedWrite` per loop iteration on it and append later events to it, while the
member's own replies, direct messages and other rooms' events interleave. After each loop
iteration's flush, each member's transport must hold exactly the reference bytes: same
events, same order, nothing twice; and one ``transport.write`` per member per iteration.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from wirecat.chat.core import ChatCore, Member, RateLimit, Room
from wirecat.protocols.chat import (
    JSON_CODEC,
    TEXT_CODEC,
    Codec,
    Dm,
    Hello,
    Join,
    Nick,
    Part,
    Ping,
    Say,
    Who,
)
from wirecat.runtime.handler import ServerContext, SharedWrite, StreamHandler
from wirecat.runtime.limits import Limits

ROOMS = ("#a", "#b", "#c")


class RecordingSink:
    """Reference: records every send immediately."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.out = bytearray()

    def send(self, data: bytes) -> None:
        self.out += data


class FakeTransport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.out += data
        self.writes += 1

    def get_write_buffer_size(self) -> int:
        return 0

    def is_reading(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class HandlerSink(StreamHandler):
    """A coalescing handler used as a chat sink, as ChatHandler does."""

    coalesce_writes = True

    def __init__(self, ctx: ServerContext, codec: Codec) -> None:
        super().__init__(ctx)
        self.codec = codec
        self.transport = FakeTransport()  # type: ignore[assignment]

    def send(self, data: bytes) -> None:
        if data:
            self.write(data)

    send_shared = StreamHandler.write_shared


def _core() -> ChatCore:
    return ChatCore(
        clock=lambda: 1_700_000_000.0,
        monotonic=lambda: 0.0,
        rate=RateLimit(rate=1e9, burst=10**9, kick_after=0),
    )


@pytest.mark.parametrize("seed", range(6))
async def test_shared_writes_keep_each_members_order(seed: int) -> None:
    rnd = random.Random(seed)
    ctx = ServerContext(Limits())
    ref_core, core = _core(), _core()
    ref: list[RecordingSink] = []
    live: list[HandlerSink] = []
    ref_members: list[Member] = []
    members: list[Member] = []
    for i in range(12):
        codec = TEXT_CODEC if i % 4 == 3 else JSON_CODEC
        r, h = RecordingSink(codec), HandlerSink(ctx, codec)
        ref.append(r)
        live.append(h)
        ref_members.append(ref_core.connect(r))
        members.append(core.connect(h))

    def both(i: int, cmd: Any) -> None:
        # replies go out like ChatHandler._pump sends them: right after the command ran
        ref[i].send(ref[i].codec.encode(ref_core.handle(ref_members[i], cmd)))
        live[i].send(live[i].codec.encode(core.handle(members[i], cmd)))

    for i in range(len(members)):
        both(i, Hello(f"u{i}"))
        both(i, Join(ROOMS[i % 2]))
    await asyncio.sleep(0)

    for _iteration in range(40):
        writes = [h.transport.writes for h in live]  # type: ignore[attr-defined]
        for _ in range(rnd.randrange(1, 25)):
            i = rnd.randrange(len(members))
            roll = rnd.random()
            room = rnd.choice(ROOMS)
            if roll < 0.6:
                both(i, Say(f"m{rnd.random():.6f}", room if rnd.random() < 0.5 else None))
            elif roll < 0.7:
                both(i, Dm(f"u{rnd.randrange(len(members))}", "psst"))
            elif roll < 0.8:
                both(i, Join(room))
            elif roll < 0.88:
                both(i, Part(room))
            elif roll < 0.92:
                both(i, Nick(f"n{i}" if rnd.random() < 0.5 else f"u{i}"))
            elif roll < 0.96:
                both(i, Who(room))
            else:
                both(i, Ping())
        await asyncio.sleep(0)  # the flush of this loop iteration
        for i, (r, h) in enumerate(zip(ref, live, strict=True)):
            assert bytes(h.transport.out) == bytes(r.out), f"member {i} diverged"  # type: ignore[attr-defined]
            assert h.transport.writes - writes[i] <= 1  # type: ignore[attr-defined]
    assert sum(len(r.out) for r in ref) > 10_000


async def test_shared_write_detach_and_close() -> None:
    ctx = ServerContext(Limits())
    a, b = HandlerSink(ctx, JSON_CODEC), HandlerSink(ctx, JSON_CODEC)
    s = SharedWrite(b"1")
    assert a.write_shared(s) and b.write_shared(s)
    s.append(b"2")
    a.write(b"x")  # a detaches: it keeps "12", then gets later appends after its "x"
    s.append(b"3")
    assert a.output_size == 4 and b.output_size == 3
    await asyncio.sleep(0)
    assert bytes(a.transport.out) == b"12x3"  # type: ignore[attr-defined]
    assert bytes(b.transport.out) == b"123"  # type: ignore[attr-defined]
    assert not s.is_open and s.join() == b"123"
    a.abort("test")
    assert not a.write_shared(SharedWrite(b"z"))


async def test_room_reopens_its_shared_write_when_members_change() -> None:
    ctx = ServerContext(Limits())
    core = _core()
    hs = [HandlerSink(ctx, JSON_CODEC) for _ in range(3)]
    ms = [core.connect(h) for h in hs]
    for i, m in enumerate(ms):
        core.handle(m, Hello(f"u{i}"))
    room = Room("#r")
    room.add(ms[0])
    room.add(ms[1])
    from wirecat.protocols.chat import Notice

    room.broadcast(Notice("one"))
    room.add(ms[2])  # joins mid-iteration: gets "two" only
    room.broadcast(Notice("two"))
    room.remove(ms[0])  # leaves mid-iteration: keeps "one", "two"; not "three"
    room.broadcast(Notice("three"))
    await asyncio.sleep(0)
    out = [bytes(h.transport.out) for h in hs]  # type: ignore[attr-defined]
    enc = [JSON_CODEC.encode(Notice(t)) for t in ("one", "two", "three")]
    assert out[0] == enc[0] + enc[1]
    assert out[1] == enc[0] + enc[1] + enc[2]
    assert out[2] == enc[1] + enc[2]
