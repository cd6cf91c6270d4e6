"""Chat fan-out mode: ``conns`` members in one room, ``senders`` of them send.

Every message text starts with a token ``wcb<sender>.<seq>.`` (then ``x`` padding up to
``size`` bytes), so receipts are found with one regular-expression scan per chunk whatever
the framing around them: wirecat chat JSON lines, plain lines (``ncat --broker``) or Redis
RESP pub/sub. Latency is measured per delivery (send to receipt at one member, one clock:
all members live on this loop); a message counts as an operation once every member that
should get it has it.

Set-up is bounded by ``connect_timeout``: connect every member, register and join (wirecat:
``hello`` + ``join``; redis: ``SUBSCRIBE``), then repeat a barrier message (seq 0) until every
receiver has seen one, so that measuring starts with a complete room.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import ssl
from collections.abc import Callable
from time import perf_counter, perf_counter_ns
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import _Run

__all__ = ["TOKEN_RE", "encode_message", "make_token", "run_chat"]

#: ``wcb<sender, 4 digits>.<seq, 10 digits>.``: what receivers look for in any framing.
TOKEN_RE = re.compile(rb"wcb(\d{4})\.(\d{10})\.")
_TOKEN_LEN = 19
_MAX_PARTIAL = 1 << 20  # bytes of an unterminated line kept before giving up on it
_BARRIER_INTERVAL = 0.1  # seconds between barrier messages during set-up
_DEFAULT_WINDOW = 16  # messages per sender not yet delivered to everyone


def make_token(sender: int, seq: int, size: int) -> bytes:
    """Return the message text for ``seq`` of ``sender``, padded with ``x`` to ``size`` bytes."""
    token = b"wcb%04d.%010d." % (sender, seq)
    return token + b"x" * (size - _TOKEN_LEN) if size > _TOKEN_LEN else token


def encode_message(protocol: str, room: str, text: bytes) -> bytes:
    """Frame ``text`` (ASCII) as one message to ``room`` in ``protocol``."""
    if protocol == "wirecat":
        return b'{"type":"say","room":"%s","text":"%s"}\n' % (room.encode(), text)
    if protocol == "redis":
        chan = room.encode()
        return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
            len(chan), chan, len(text), text,
        )  # fmt: skip
    return text + b"\n"


def _handshake(protocol: str, room: str, nick: str, subscribe: bool) -> bytes:
    if protocol == "wirecat":
        return b'{"type":"hello","nick":"%s"}\n{"type":"join","room":"%s"}\n' % (
            nick.encode(), room.encode(),
        )  # fmt: skip
    if protocol == "redis" and subscribe:
        chan = room.encode()
        return b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(chan), chan)
    return b""


class _Sender:
    """Book-keeping of one sending member: send times and receipts still missing, by seq."""

    __slots__ = ("index", "inflight", "left", "member", "next_seq", "remaining", "t0")

    def __init__(self, index: int, member: _Member, remaining: int) -> None:
        self.index = index
        self.member = member
        self.t0: list[int] = [0]  # seq 0 is the barrier
        self.left: list[int] = [0]
        self.next_seq = 1
        self.inflight = 0
        self.remaining = remaining  # -1: no limit


class _Chat:
    def __init__(self, run: _Run) -> None:
        c = run.config
        self.run = run
        self.protocol = c.chat_protocol
        nonce = os.urandom(3).hex()
        if self.protocol == "wirecat":
            self.room = ("#" + c.room.lstrip("#"))[:25] + "-" + nonce
        else:
            self.room = c.room + "-" + nonce
        self.nick_prefix = "b" + nonce + "_"
        self.members: list[_Member] = []
        self.senders: list[_Sender] = []
        self.window = _DEFAULT_WINDOW
        self.expected = 0  # receipts each message should get
        self.barrier_seen = 0
        self.measuring = False
        self.barrier_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def encode(self, sender: int, seq: int) -> bytes:
        return encode_message(
            self.protocol, self.room, make_token(sender, seq, self.run.config.size)
        )

    def receipt(self, member: _Member, sender_index: int, seq: int, now: int) -> None:
        if sender_index == member.sender_index or sender_index >= len(self.senders):
            return  # our own message coming back, or a stranger's
        if seq == 0:
            if not member.barrier:
                member.barrier = True
                self.barrier_seen += 1
                if self.barrier_seen >= self.expected and not self.barrier_done.done():
                    self.barrier_done.set_result(None)
            return
        if not self.measuring:
            return
        s = self.senders[sender_index]
        if seq >= len(s.left) or s.left[seq] <= 0:
            return  # sent before this measurement, or a duplicate
        run = self.run
        run.hist.record(now - s.t0[seq])
        run.deliveries += 1
        left = s.left[seq] - 1
        s.left[seq] = left
        if left == 0:
            run.ops += 1
            s.inflight -= 1
            if run.config.rate is None:
                self.pump(s)
            else:
                self._maybe_done()

    def send_one(self, s: _Sender) -> None:
        seq = s.next_seq
        s.next_seq += 1
        data = self.encode(s.index, seq)
        s.t0.append(perf_counter_ns())
        s.left.append(self.expected)
        s.inflight += 1
        if s.remaining > 0:
            s.remaining -= 1
        self.run.bytes_sent += len(data)
        s.member.write(data)

    def pump(self, s: _Sender) -> None:
        run = self.run
        while s.inflight < self.window and s.remaining != 0 and not run.stop:
            self.send_one(s)
        self._maybe_done()

    def _maybe_done(self) -> None:
        run = self.run
        if run.stop or all(s.remaining == 0 for s in self.senders):
            run.remaining = 0
            run.inflight = sum(s.inflight for s in self.senders)
            run.check_done()


class _Member(asyncio.Protocol):
    """One room member: counts tokens in whatever it receives."""

    __slots__ = ("alive", "barrier", "chat", "partial", "sender_index", "transport")

    def __init__(self, chat: _Chat, sender_index: int) -> None:
        self.chat = chat
        self.sender_index = sender_index  # -1: receives only
        self.partial = b""
        self.barrier = False
        self.alive = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.alive = True

    def write(self, data: bytes) -> None:
        if self.alive:
            self.transport.write(data)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        chat = self.chat
        chat.run.bytes_received += len(data)
        if self.partial:
            data = self.partial + data
        end = data.rfind(b"\n") + 1
        if end == 0:
            self.partial = data if len(data) <= _MAX_PARTIAL else b""
            return
        self.partial = data[end:]
        now = perf_counter_ns()
        for m in TOKEN_RE.finditer(data, 0, end):
            chat.receipt(self, int(m[1]), int(m[2]), now)
        if chat.protocol == "wirecat" and b'"type":"error"' in data:
            for code in re.findall(rb'"code":"([a-z_]+)"', data, 0):
                chat.run.errors["chat_" + code.decode()] += 1

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.alive:
            self.alive = False
            self.chat.run.lost(exc)


async def run_chat(run: _Run, start: Callable[[], None] | None) -> float:
    """Run chat fan-out on the running loop; return the seconds measured.

    Counts go to ``run``: ``ops`` (messages delivered to every receiver), ``deliveries``,
    bytes, the per-delivery latency histogram and errors (``undelivered``: receipts still
    missing when a ``count`` run hit the duration cap; ``chat_<code>``: wirecat error
    replies such as ``chat_rate_limited``).
    """
    from .engine import classify_error, open_connection

    config = run.config
    chat = _Chat(run)
    n_senders = config.senders
    redis = chat.protocol == "redis"
    # Redis: senders are extra publisher connections; members are the subscribers.
    n_subscribers = config.conns - n_senders if redis else config.conns
    chat.expected = n_subscribers if redis else config.conns - 1
    if chat.expected < 1:
        raise ValueError("chat mode needs at least one member that receives (raise --conns)")

    sources = itertools.cycle(config.source_addresses or (None,))
    sem = asyncio.Semaphore(config.connect_concurrency)

    async def join(index: int, sender_index: int) -> None:
        async with sem:
            member = _Member(chat, sender_index)
            try:
                await open_connection(config, lambda: member, next(sources))
            except (OSError, ssl.SSLError) as exc:
                run.errors[classify_error(exc)] += 1
                return
            run.connects += 1
            run.live += 1
            chat.members.append(member)
            subscribe = not (redis and sender_index >= 0)
            member.write(
                _handshake(chat.protocol, chat.room, f"{chat.nick_prefix}{index}", subscribe)
            )
            if sender_index >= 0:
                share = -1
                if config.count is not None:
                    share = config.count // n_senders + (sender_index < config.count % n_senders)
                chat.senders.append(_Sender(sender_index, member, share))

    # Senders are members 0..senders-1; they connect first so their indexes are stable.
    await asyncio.gather(*(join(i, i) for i in range(n_senders)))
    chat.senders.sort(key=lambda s: s.index)
    if len(chat.senders) != n_senders:
        _close_all(chat)
        return 0.0
    ok = False
    try:
        async with asyncio.timeout(config.connect_timeout):
            await asyncio.gather(*(join(i, -1) for i in range(n_senders, config.conns)))
            if len(chat.members) == config.conns:
                first = chat.senders[0]
                while not chat.barrier_done.done():
                    first.member.write(chat.encode(first.index, 0))
                    await asyncio.wait([chat.barrier_done], timeout=_BARRIER_INTERVAL)
                ok = True
    except TimeoutError:
        run.errors["chat_setup_timeout"] += 1
    if not ok:
        _close_all(chat)
        return 0.0

    if start is not None:
        start()
    loop = asyncio.get_running_loop()
    ticker: asyncio.TimerHandle | None = None
    began = perf_counter()

    def tick() -> None:
        nonlocal ticker
        assert config.rate is not None
        due = int((perf_counter() - began) * config.rate) + 1
        for s in chat.senders:
            while s.next_seq <= due and s.remaining != 0 and not run.stop:
                chat.send_one(s)
        chat._maybe_done()
        if not run.stop and any(s.remaining != 0 for s in chat.senders):
            ticker = loop.call_later(1.0 / config.rate, tick)

    def kick() -> None:
        chat.measuring = True
        if config.rate is None:
            for s in chat.senders:
                chat.pump(s)
        else:
            tick()

    try:
        # _measure lives in engine; imported late to keep the modules' import order simple.
        from .engine import _measure

        elapsed = await _measure(run, kick)
    finally:
        if ticker is not None:
            ticker.cancel()
        if config.count is not None:
            missing = sum(sum(s.left) for s in chat.senders)
            if missing:
                run.errors["undelivered"] += missing
        _close_all(chat)
        await asyncio.sleep(0)
    return elapsed


def _close_all(chat: _Chat) -> None:
    chat.run.closing = True
    for m in chat.members:
        if m.transport is not None:
            m.transport.abort()
