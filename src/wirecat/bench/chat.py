"""Chat fan-out mode: ``conns`` members in one room, ``senders`` of them send.

Every message text starts with a token ``wcb<sender>.<seq>.`` (then ``x`` padding up to
``size`` bytes), so receipts are found whatever the framing around them: wirecat chat JSON
lines, plain lines (``ncat --broker``) or Redis RESP pub/sub. The client must cost less per
delivery than the servers it measures, so nothing is done per message received: per chunk,
a receiver counts each sender's tokens (``bytes.count``) and checks that the first and the
last are the next seqs it expects (every message, in order, once; anything else is parsed
token by token and reported). A message counts as an operation once every member that
should get it has it. Latency (send to receipt at one member, one clock: all members live
on this loop) is recorded for every delivery of one message in ``_LATENCY_EVERY``. A sender
writes the messages its window allows in one ``write``.

Set-up is bounded by ``connect_timeout``: connect every member, register and join (wirecat:
``hello`` + ``join``; redis: ``SUBSCRIBE``), then repeat a barrier message (seq 0) until every
receiver has seen one, so that measuring starts with a complete room.

Over ``ws://`` and ``wss://`` (``wirecat`` and ``lines`` protocols) each member opens a
WebSocket first (the HTTP upgrade, then the 101), and every message or command is one
masked text frame (a fixed mask key: the load generator is not a browser). Receivers count
whole frames instead of whole lines: per chunk they walk the frame headers to the end of
the last complete frame (and answer pings); the tokens are counted inside as above.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import re
import ssl
from collections.abc import Callable
from time import perf_counter, perf_counter_ns

from websockets.frames import Frame, Opcode

from ..protocols.chat import Hello, Join, encode_json_command
from ._run import Run, classify_error, measure, open_connection

__all__ = ["TOKEN_RE", "encode_message", "make_token", "run_chat"]

#: ``wcb<sender, 4 digits>.<seq, 10 digits>.``: what receivers look for in any framing.
TOKEN_RE = re.compile(rb"wcb(\d{4})\.(\d{10})\.")
_TOKEN_LEN = 19
_MAX_PARTIAL = 1 << 20  # bytes of an unterminated line kept before giving up on it
_BARRIER_INTERVAL = 0.1  # seconds between barrier messages during set-up
_DEFAULT_WINDOW = 16  # messages per sender not yet delivered to everyone
_PREFIX_LEN = 8  # len(b"wcb0000.")
_SEQ0 = b"0" * 10
_LATENCY_EVERY = 8  # latency is sampled on every delivery of one message in this many
_FAST_SENDERS = 4  # members watching more senders than this parse every token
_PARSE_EVERY = 32  # a member parses every token of one chunk in this many, whatever


def make_token(sender: int, seq: int, size: int) -> bytes:
    """Return the message text for ``seq`` of ``sender``, padded with ``x`` to ``size`` bytes."""
    token = b"wcb%04d.%010d." % (sender, seq)
    return token + b"x" * (size - _TOKEN_LEN) if size > _TOKEN_LEN else token


def encode_message(protocol: str, room: str, text: bytes) -> bytes:
    """Frame ``text`` (ASCII) as one message to ``room`` in ``protocol``."""
    if protocol == "wirecat":  # encode_json_command(Say(...)) without a dict per message
        return b'{"type":"say","room":"%s","text":"%s"}\n' % (room.encode(), text)
    if protocol == "redis":
        chan = room.encode()
        return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
            len(chan), chan, len(text), text,
        )  # fmt: skip
    return text + b"\n"


_WS_MASK = bytes((0x5A, 0x17, 0xC3, 0x81))


def ws_client_frame(payload: bytes) -> bytes:
    """Return ``payload`` as one final, masked text frame (a client's frame, RFC 6455 5.3),
    with a fixed mask key."""
    size = len(payload)
    if size < 126:
        head = bytes((0x81, 0x80 | size))
    elif size < 65536:
        head = bytes((0x81, 0xFE)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0xFF)) + size.to_bytes(8, "big")
    n = int.from_bytes(payload, "big") ^ int.from_bytes((_WS_MASK * (size // 4 + 1))[:size], "big")
    return head + _WS_MASK + n.to_bytes(size, "big")


def _upgrade_request(host: str, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _handshake(protocol: str, room: str, nick: str, subscribe: bool) -> bytes:
    if protocol == "wirecat":
        return encode_json_command(Hello(nick, room=room))  # lands in ``room`` directly
    if protocol == "redis" and subscribe:
        chan = room.encode()
        return b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(chan), chan)
    return b""


class _Sender:
    """Book-keeping of one sending member, per seq: send times, and receivers still waiting.

    Receipts are not counted per message: each receiver only keeps the next seq it expects
    from each sender (messages arrive in order, or the receiver is marked broken), and
    ``at[q]`` counts the receivers whose next expected seq is ``q``. Message ``q`` is then
    delivered to everyone once no receiver expects ``q`` or less: ``lo`` (the lowest seq not
    yet delivered to everyone) moves past every ``q`` with ``at[q] == 0``, O(1) amortised per
    chunk received, whatever the number of messages in it.
    """

    __slots__ = (
        "at",
        "index",
        "inflight",
        "lo",
        "member",
        "next_seq",
        "prefix",
        "remaining",
        "t0",
    )

    def __init__(self, index: int, member: _Member, remaining: int, receivers: int) -> None:
        self.index = index
        self.member = member
        self.prefix = b"wcb%04d." % index  # what this sender's tokens start with
        self.t0: list[int] = [0]  # send time per seq; seq 0 is the barrier
        self.at: list[int] = [0, receivers]  # len(at) == next_seq + 1
        self.lo = 1
        self.next_seq = 1
        self.inflight = 0
        self.remaining = remaining  # -1: no limit

    def missing(self) -> int:
        """Receipts still missing: messages sent but not yet received, over all receivers."""
        end = self.next_seq
        return sum(n * (end - q) for q, n in enumerate(self.at[:end]) if n)


class _Chat:
    def __init__(self, run: Run) -> None:
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
        self.ws = c.endpoint.scheme in ("ws", "wss")

    def encode(self, sender: int, seq: int) -> bytes:
        data = encode_message(
            self.protocol, self.room, make_token(sender, seq, self.run.config.size)
        )
        return ws_client_frame(data[:-1]) if self.ws else data

    def barrier(self, member: _Member) -> None:
        if not member.barrier:
            member.barrier = True
            self.barrier_seen += 1
            if self.barrier_seen >= self.expected and not self.barrier_done.done():
                self.barrier_done.set_result(None)

    def received(self, s: _Sender, old: int, new: int) -> None:
        """A receiver got seqs ``old`` .. ``new - 1`` of ``s``, in order, just now."""
        run = self.run
        run.deliveries += new - old
        at = s.at
        at[old] -= 1
        at[new] += 1
        # Latency: every delivery of one message in _LATENCY_EVERY (seq 1, 1 + N, ...), so
        # the sample is spread evenly over messages and members.
        first = old + (1 - old) % _LATENCY_EVERY
        if first < new:
            now = perf_counter_ns()
            hist, t0 = run.hist, s.t0
            for q in range(first, new, _LATENCY_EVERY):
                hist.record(now - t0[q])
        lo = s.lo
        if old != lo or at[lo]:
            return
        end = s.next_seq
        while lo < end and not at[lo]:
            lo += 1
        done = lo - s.lo
        s.lo = lo
        run.ops += done
        s.inflight -= done
        if run.config.rate is None:
            self.pump(s)
        else:
            self._maybe_done()

    def send(self, s: _Sender, n: int) -> None:
        """Send ``n`` messages of ``s`` in one write (their send time is one timestamp)."""
        seq = s.next_seq
        data = b"".join([self.encode(s.index, q) for q in range(seq, seq + n)])
        s.next_seq = seq + n
        s.t0.extend([perf_counter_ns()] * n)
        s.at.extend([0] * n)
        s.inflight += n
        if s.remaining > 0:
            s.remaining -= n
        self.run.bytes_sent += len(data)
        s.member.write(data)

    def send_one(self, s: _Sender) -> None:
        self.send(s, 1)

    def pump(self, s: _Sender) -> None:
        run = self.run
        n = self.window - s.inflight
        if s.remaining >= 0:
            n = min(n, s.remaining)
        if n > 0 and not run.stop:
            self.send(s, n)
        self._maybe_done()

    def _maybe_done(self) -> None:
        run = self.run
        if run.stop or all(s.remaining == 0 for s in self.senders):
            run.remaining = 0
            run.inflight = sum(s.inflight for s in self.senders)
            run.check_done()


class _Member(asyncio.Protocol):
    """One room member: counts the tokens of each sender in whatever it receives.

    Per chunk (complete lines only; a partial line waits for the rest), for each sender it
    watches: ``bytes.count`` of the sender's token prefix, and the seqs of the first and
    last token. If they are exactly the next ones expected (first is the next seq, last is
    first + count - 1), the chunk holds that run of messages and nothing else of that
    sender. With one sender, a chunk whose length is a whole number of messages of the
    length learned from the last counted chunk is not even counted (first and last seq
    only). Any other chunk, and one chunk in ``_PARSE_EVERY`` whatever it holds, is parsed
    token by token: a gap or a message out of order marks this member broken (its receipts
    stop counting: the run then reports ``undelivered``) and counts ``chat_out_of_order``;
    a message twice counts ``chat_duplicate``. So a missing, repeated or late message is
    always reported, except a swap of two messages inside one chunk that is not sampled.
    """

    __slots__ = (
        "alive",
        "barrier",
        "broken",
        "chat",
        "chunks",
        "next",
        "partial",
        "scan",
        "sender_index",
        "size",
        "transport",
        "watch",
    )

    def __init__(self, chat: _Chat, sender_index: int) -> None:
        self.chat = chat
        self.sender_index = sender_index  # -1: receives only
        self.partial = b""
        self.barrier = False
        self.broken = False
        self.alive = False
        self.watch: list[_Sender] = []  # the senders whose messages this member must get
        self.next: list[int] = []  # by sender index: the next seq expected from it
        self.size = 0  # bytes per message of the one watched sender, once known (0: not)
        self.chunks = 0  # chunks counted while measuring
        self.scan = chat.protocol == "wirecat"  # look for error replies (see kick())
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.alive = True

    def write(self, data: bytes) -> None:
        if self.alive:
            self.transport.write(data)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.chat.run.bytes_received += len(data)
        if self.partial:
            data = self.partial + data
        end = data.rfind(b"\n") + 1
        if end == 0:
            self.partial = data if len(data) <= _MAX_PARTIAL else b""
            return
        self.partial = data[end:]
        self._chunk(data, end)

    def _chunk(self, data: bytes, end: int) -> None:
        """``data[:end]`` holds whole messages (lines or frames): count the tokens."""
        chat = self.chat
        if chat.measuring:
            if not self.broken:
                self._count(data, end)
        elif self.sender_index != 0:  # set-up: look for the barrier (seq 0 of sender 0)
            for m in TOKEN_RE.finditer(data, 0, end):
                if m[1] == b"0000" and m[2] == _SEQ0:
                    chat.barrier(self)
                    break
        # Error replies answer commands: a sender's messages, or anyone's set-up (scanning
        # every receiver's chunks for them would cost as much as counting the tokens).
        if self.scan and b'"type":"error"' in data:
            for code in re.findall(rb'"code":"([a-z_]+)"', data, 0):
                chat.run.errors["chat_" + code.decode()] += 1

    def _count(self, data: bytes, end: int) -> None:
        watch, nxt = self.watch, self.next
        self.chunks = chunks = self.chunks + 1
        if not chunks % _PARSE_EVERY:
            pass  # a sample: the order inside the chunk is checked too
        elif len(watch) == 1:  # the usual case: one sender
            s = watch[0]
            prefix = s.prefix
            old = nxt[s.index]
            i = data.find(prefix, 0, end) + _PREFIX_LEN
            if i < _PREFIX_LEN:  # none of its messages
                return
            if int(data[i : i + 10]) == old:
                # Messages of one sender have one length (same framing, fixed-width token),
                # learned from the last chunk that was counted: a chunk of exactly n such
                # messages whose last token is first + n - 1 needs no count (a scan of the
                # whole chunk); any other chunk is counted.
                size = self.size
                if size and not end % size:
                    n = end // size
                    j = data.rfind(prefix, 0, end) + _PREFIX_LEN
                    if int(data[j : j + 10]) == old + n - 1:
                        nxt[s.index] = old + n
                        self.chat.received(s, old, old + n)
                        return
                n = data.count(prefix, 0, end)
                j = data.rfind(prefix, 0, end) + _PREFIX_LEN
                if int(data[j : j + 10]) == old + n - 1:
                    self.size = 0 if end % n else end // n
                    nxt[s.index] = old + n
                    self.chat.received(s, old, old + n)
                    return
        elif len(watch) <= _FAST_SENDERS:
            runs: list[tuple[_Sender, int, int]] = []
            for s in watch:
                prefix = s.prefix
                n = data.count(prefix, 0, end)
                if not n:
                    continue
                old = nxt[s.index]
                i = data.find(prefix, 0, end) + _PREFIX_LEN
                j = data.rfind(prefix, 0, end) + _PREFIX_LEN
                if int(data[i : i + 10]) != old or int(data[j : j + 10]) != old + n - 1:
                    break
                runs.append((s, old, old + n))
            else:
                for s, old, new in runs:
                    nxt[s.index] = new
                    self.chat.received(s, old, new)
                return
        self._parse(data, end)

    def _parse(self, data: bytes, end: int) -> None:
        """Every token of the chunk, one by one (many senders, or not the next seqs)."""
        chat, nxt = self.chat, self.next
        first = {s.index: nxt[s.index] for s in self.watch}
        for m in TOKEN_RE.finditer(data, 0, end):
            index = int(m[1])
            expect = first.get(index)
            if expect is None:
                continue  # our own message coming back, or a stranger's
            seq = int(m[2])
            want = nxt[index]
            if seq == want:
                nxt[index] = want + 1
            elif seq == 0:
                continue  # a late barrier from set-up
            elif seq < want:
                chat.run.errors["chat_duplicate"] += 1
            else:
                chat.run.errors["chat_out_of_order"] += 1
                self.broken = True
                self.scan = chat.protocol == "wirecat"
                break
        for index, old in first.items():
            if nxt[index] != old:
                chat.received(chat.senders[index], old, nxt[index])

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.alive:
            self.alive = False
            self.chat.run.lost(exc)


class _WsMember(_Member):
    """A member over a WebSocket: the upgrade first, then whole frames instead of lines."""

    __slots__ = ("head", "opened")

    def __init__(self, chat: _Chat, sender_index: int) -> None:
        super().__init__(chat, sender_index)
        self.head: bytes | None = b""  # the 101 response read so far; None once open
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        ep = self.chat.run.config.endpoint
        host = f"[{ep.host}]" if ":" in str(ep.host) else str(ep.host)
        transport.write(_upgrade_request(f"{host}:{ep.port}", ep.path or "/"))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        head = self.head
        if head is not None:  # the handshake response
            buf = head + data
            cut = buf.find(b"\r\n\r\n")
            if cut < 0:
                self.head = buf if len(buf) <= 16384 else b""
                return
            self.head = None
            if not buf.startswith(b"HTTP/1.1 101"):
                if not self.opened.done():
                    self.opened.set_exception(ConnectionError("handshake refused"))
                return
            if not self.opened.done():
                self.opened.set_result(None)
            data = buf[cut + 4 :]
            if not data:
                return
        self.chat.run.bytes_received += len(data)
        if self.partial:
            data = self.partial + data
        end = self._frames_end(data)
        if end == 0:
            self.partial = data if len(data) <= _MAX_PARTIAL else b""
            return
        self.partial = data[end:]
        self._chunk(data, end)

    def _frames_end(self, data: bytes) -> int:
        """Return the end of the last whole frame in ``data``; answer pings on the way."""
        n = len(data)
        i = 0
        while n - i >= 2:
            size = data[i + 1] & 0x7F
            if size < 126:
                start = i + 2
            elif size == 126:
                if n - i < 4:
                    break
                size = (data[i + 2] << 8) | data[i + 3]
                start = i + 4
            else:
                if n - i < 10:
                    break
                size = int.from_bytes(data[i + 2 : i + 10], "big")
                start = i + 10
            end = start + size
            if end > n:
                break
            if data[i] == 0x89:  # a ping: pong with its payload
                self.write(Frame(Opcode.PONG, data[start:end]).serialize(mask=True))
            i = end
        return i

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the handshake"))
            self.opened.exception()  # retrieved: no "never retrieved" warning
        super().connection_lost(exc)


async def run_chat(run: Run, start: Callable[[], None] | None) -> float:
    """Run chat fan-out on the running loop; return the seconds measured.

    Counts go to ``run``: ``ops`` (messages delivered to every receiver), ``deliveries``,
    bytes, the per-delivery latency histogram and errors (``undelivered``: receipts still
    missing when a ``count`` run hit the duration cap; ``chat_<code>``: wirecat error
    replies such as ``chat_rate_limited``).
    """

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
            member = _WsMember(chat, sender_index) if chat.ws else _Member(chat, sender_index)
            try:
                await open_connection(config, lambda: member, next(sources))
            except (OSError, ssl.SSLError) as exc:
                run.errors[classify_error(exc)] += 1
                return
            if isinstance(member, _WsMember):
                try:
                    async with asyncio.timeout(config.connect_timeout):
                        await member.opened
                except (ConnectionError, TimeoutError):
                    run.errors["refused_handshake"] += 1
                    if member.transport is not None:
                        member.transport.abort()
                    return
            run.connects += 1
            run.live += 1
            chat.members.append(member)
            subscribe = not (redis and sender_index >= 0)
            hello = _handshake(chat.protocol, chat.room, f"{chat.nick_prefix}{index}", subscribe)
            if hello and chat.ws:
                hello = ws_client_frame(hello.rstrip(b"\n"))
                if chat.protocol == "wirecat":  # the web chat joins no room on hello
                    hello += ws_client_frame(encode_json_command(Join(chat.room)).rstrip(b"\n"))
            member.write(hello)
            if sender_index >= 0:
                share = -1
                if config.count is not None:
                    share = config.count // n_senders + (sender_index < config.count % n_senders)
                chat.senders.append(_Sender(sender_index, member, share, chat.expected))

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
        for m in chat.members:
            if m.sender_index < 0 or not redis:  # redis publishers do not subscribe
                m.watch = [s for s in chat.senders if s.index != m.sender_index]
            m.next = [1] * n_senders
            m.scan = chat.protocol == "wirecat" and m.sender_index >= 0
        chat.measuring = True
        if config.rate is None:
            for s in chat.senders:
                chat.pump(s)
        else:
            tick()

    try:
        elapsed = await measure(run, kick)
    finally:
        if ticker is not None:
            ticker.cancel()
        if config.count is not None:
            missing = sum(s.missing() for s in chat.senders)
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
