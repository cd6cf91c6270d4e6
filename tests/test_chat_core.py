"""The protocol-agnostic chat core, with in-memory sinks and fake clocks."""

from __future__ import annotations

import json

import pytest

from wirecat.chat.core import ChatCore, ChatError, LocalHub, Member, RateLimit, Room, TokenBucket
from wirecat.protocols.chat import (
    JSON_CODEC,
    TEXT_CODEC,
    Bye,
    Codec,
    Dm,
    ErrorEvent,
    Hello,
    Help,
    HelpText,
    Join,
    Message,
    Nick,
    NickSet,
    Part,
    Ping,
    Pong,
    Quit,
    RoomJoined,
    RoomList,
    RoomParted,
    Rooms,
    Say,
    Sent,
    Welcome,
    Who,
    WhoList,
)


class Sink:
    """Collects what the core sends to one member."""

    def __init__(self, codec: Codec = JSON_CODEC) -> None:
        self.codec = codec
        self.chunks: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.chunks.append(data)

    def take(self) -> list[bytes]:
        out, self.chunks = self.chunks, []
        return out

    def events(self) -> list[dict[str, object]]:
        return [json.loads(c) for c in self.take()]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def core(clock: Clock) -> ChatCore:
    return ChatCore(history_size=3, motd="be nice", clock=clock, monotonic=clock)


def register(core: ChatCore, nick: str | None, codec: Codec = JSON_CODEC) -> tuple[Member, Sink]:
    sink = Sink(codec)
    member = core.connect(sink)
    reply = core.handle(member, Hello(nick))
    assert isinstance(reply, Welcome)
    return member, sink


def test_hello_guest_and_taken(core: ChatCore) -> None:
    a = core.connect(Sink())
    assert core.handle(a, Hello("Ann")) == Welcome("Ann", "be nice", "#lobby", "wirecat")
    b = core.connect(Sink())
    err = core.handle(b, Hello("ann", ref=1))
    assert isinstance(err, ErrorEvent) and err.code == "nick_taken" and err.ref == 1
    g = core.handle(b, Hello(None))
    assert isinstance(g, Welcome) and g.nick == "guest-1"
    again = core.handle(b, Hello("zed"))
    assert isinstance(again, ErrorEvent) and again.code == "already_registered"
    bad = core.handle(core.connect(Sink()), Hello("no way"))
    assert isinstance(bad, ErrorEvent) and bad.code == "invalid_nick"


def test_guest_names_skip_taken(core: ChatCore) -> None:
    register(core, "guest-1")
    _, _ = register(core, None)
    assert core.member("guest-2") is not None


def test_commands_need_registration(core: ChatCore) -> None:
    m = core.connect(Sink())
    for cmd in (Join("#x"), Say("hi"), Who(), Rooms(), Nick("x"), Dm("a", "b"), Part()):
        err = core.handle(m, cmd)
        assert isinstance(err, ErrorEvent) and err.code == "not_registered"
    assert core.handle(m, Ping(5)) == Pong(5)
    assert core.handle(m, Help()) == HelpText()


def test_join_say_fanout_encodes_once_per_format(core: ChatCore) -> None:
    a, sa = register(core, "ann", JSON_CODEC)
    b, sb = register(core, "bob", TEXT_CODEC)
    c, sc = register(core, "cat", TEXT_CODEC)
    for m in (a, b, c):
        core.handle(m, Join("#lobby"))
    for s in (sa, sb, sc):
        s.take()
    reply = core.handle(a, Say("hello"))
    assert isinstance(reply, Sent) and isinstance(reply.message, Message)
    assert sb.chunks == [b"#lobby <ann> hello\n"]
    assert sb.chunks[0] is sc.chunks[0]  # the very same bytes object for every text member
    (ev,) = sa.events()
    assert ev["type"] == "message" and ev["text"] == "hello" and ev["id"] == reply.message.id


def test_ids_increase_and_history_is_bounded(core: ChatCore, clock: Clock) -> None:
    a, _ = register(core, "ann")
    core.handle(a, Join("#r"))
    ids = []
    for i in range(5):
        clock.now += 1
        sent = core.handle(a, Say(f"m{i}"))
        assert isinstance(sent, Sent)
        ids.append(sent.message.id)
        assert sent.message.ts == clock.now
    assert ids == sorted(ids) and len(set(ids)) == 5
    b, sb = register(core, "bob", TEXT_CODEC)
    joined = core.handle(b, Join("#r"))
    assert isinstance(joined, RoomJoined)
    assert [m.text for m in joined.history] == ["m2", "m3", "m4"]
    assert joined.members == ("ann", "bob")
    assert sb.take() == [b"*** bob joined #r\n"]


def test_history_survives_empty_room_and_is_lru_bounded() -> None:
    hub = LocalHub(history_size=2, max_rooms=2)
    core = ChatCore(hub=hub)
    a, _ = register(core, "ann")
    for room in ("#a", "#b", "#c"):
        core.handle(a, Join(room))
        core.handle(a, Say("x", room))
    assert hub.history("#a").messages == ()  # evicted, least recently used
    assert hub.history("#a", since=1).gap  # and a resume from before it is told so
    assert len(hub.history("#c").messages) == 1
    core.handle(a, Part("#c"))
    assert "#c" not in core.rooms
    assert len(hub.history("#c").messages) == 1
    with pytest.raises(ValueError):
        LocalHub(history_size=-1)


def test_join_since_replays_only_what_was_missed_and_flags_a_gap() -> None:
    core = ChatCore(hub=LocalHub(history_size=3))
    a, _ = register(core, "ann")
    core.handle(a, Join("#r"))
    ids = []
    for i in range(5):
        sent = core.handle(a, Say(f"m{i}", "#r"))
        assert isinstance(sent, Sent)
        ids.append(sent.message.id)
    b, _ = register(core, "bob")
    # Saw up to m3: gets m4 only, no gap (m4 is held).
    joined = core.handle(b, Join("#r", since=ids[3]))
    assert isinstance(joined, RoomJoined)
    assert [m.text for m in joined.history] == ["m4"] and not joined.gap
    core.handle(b, Part("#r"))
    # Saw up to m0: m1 was trimmed (3 kept: m2-m4): the gap is said, nothing twice.
    joined = core.handle(b, Join("#r", since=ids[0]))
    assert isinstance(joined, RoomJoined)
    assert [m.text for m in joined.history] == ["m2", "m3", "m4"] and joined.gap
    core.handle(b, Part("#r"))
    # Saw everything: nothing replayed.
    joined = core.handle(b, Join("#r", since=ids[4]))
    assert isinstance(joined, RoomJoined)
    assert joined.history == () and not joined.gap


def test_current_room_part_and_who(core: ChatCore) -> None:
    a, sa = register(core, "ann", TEXT_CODEC)
    b, _ = register(core, "bob")
    core.handle(a, Join("#one"))
    core.handle(a, Join("#two"))
    core.handle(b, Join("#one"))
    assert core.handle(a, Who()) == WhoList("#two", ("ann",))
    assert core.handle(a, Who("#one")) == WhoList("#one", ("ann", "bob"))
    err = core.handle(a, Who("#nobody"))
    assert isinstance(err, ErrorEvent) and err.code == "no_such_room"
    core.handle(a, Join("#one"))  # re-join: only makes it current
    sa.take()
    sent = core.handle(a, Say("to one"))
    assert isinstance(sent, Sent) and isinstance(sent.message, Message)
    assert sent.message.room == "#one"
    assert core.handle(a, Rooms()) == RoomList((("#one", 2), ("#two", 1)))
    assert core.handle(a, Part()) == RoomParted("#one")
    assert sa.take()[-1] == b"*** ann left #one\n"  # the parter hears its own part
    assert core.handle(a, Part()) == RoomParted("#two")
    assert "#two" not in core.rooms
    for cmd in (Part(), Say("x"), Who(), Part("#one"), Say("x", "#one")):
        err = core.handle(a, cmd)
        assert isinstance(err, ErrorEvent) and err.code == "not_in_room"


def test_dm(core: ChatCore) -> None:
    a, sa = register(core, "ann")
    _, sb = register(core, "Bob", TEXT_CODEC)
    sent = core.handle(a, Dm("bob", "psst"))
    assert isinstance(sent, Sent)
    assert sb.take() == [b"*ann* psst\n"]
    assert sa.take() == []
    err = core.handle(a, Dm("nobody", "x", ref="q"))
    assert err == ErrorEvent("no_such_nick", "nobody is called 'nobody' here", "q")


def test_rename(core: ChatCore) -> None:
    a, sa = register(core, "ann", TEXT_CODEC)
    b, sb = register(core, "bob", TEXT_CODEC)
    assert core.handle(a, Nick("ann")) == NickSet("ann", "ann")
    assert core.handle(a, Nick("amy")) == NickSet("amy", "ann")
    for room in ("#x", "#y"):
        core.handle(a, Join(room))
        core.handle(b, Join(room))
    sa.take(), sb.take()
    assert core.handle(a, Nick("Amy")) == NickSet("Amy", "amy", True)
    assert sb.take() == [b"*** amy is now known as Amy\n"]  # once, though two rooms are shared
    assert sa.take() == [b"*** amy is now known as Amy\n"]
    err = core.handle(b, Nick("AMY"))
    assert isinstance(err, ErrorEvent) and err.code == "nick_taken"
    assert core.member("amy") is a and core.member("ann") is None


def test_quit_and_disconnect(core: ChatCore) -> None:
    a, _ = register(core, "ann")
    b, sb = register(core, "bob", TEXT_CODEC)
    core.handle(a, Join("#r"))
    core.handle(b, Join("#r"))
    sb.take()
    assert core.handle(a, Quit("off")) == Bye("off")
    assert a.must_close
    assert sb.take() == [b"*** ann left #r (quit: off)\n"]
    assert core.member("ann") is None
    core.disconnect(a)  # idempotent
    core.disconnect(b, "connection lost")
    assert core.rooms == {} and len(core) == 0
    register(core, "ann")  # the nick is free again


def test_rate_limit_and_flood_kick(clock: Clock) -> None:
    core = ChatCore(rate=RateLimit(rate=2.0, burst=3, kick_after=4), clock=clock, monotonic=clock)
    a, _ = register(core, "ann")
    b, sb = register(core, "bob", TEXT_CODEC)
    core.handle(a, Join("#r"))
    core.handle(b, Join("#r"))
    sb.take()
    codes = [getattr(core.handle(a, Say(f"m{i}")), "code", "ok") for i in range(5)]
    assert codes == ["ok", "ok", "ok", "rate_limited", "rate_limited"]
    assert len(sb.take()) == 3  # the excess was dropped, not delivered
    clock.now += 0.5  # one token back
    assert isinstance(core.handle(a, Say("again")), Sent)
    codes = [getattr(core.handle(a, Dm("bob", "x")), "code", "ok") for _ in range(4)]
    assert codes == ["rate_limited", "rate_limited", "rate_limited", "flooding"]
    assert a.must_close
    assert core.counters["kicked_flooding"] == 1
    assert not b.must_close


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=10.0, burst=2, now=0.0)
    assert bucket.take(0.0) and bucket.take(0.0) and not bucket.take(0.0)
    assert bucket.take(0.1) and not bucket.take(0.1)
    assert bucket.take(100.0) and bucket.take(100.0) and not bucket.take(100.0)  # capped
    with pytest.raises(ValueError):
        RateLimit(rate=0)
    with pytest.raises(ValueError):
        RateLimit(burst=0)


def test_limits_on_rooms(clock: Clock) -> None:
    core = ChatCore(max_rooms=2, max_rooms_per_member=2, clock=clock, monotonic=clock)
    a, _ = register(core, "ann")
    b, _ = register(core, "bob")
    core.handle(a, Join("#1"))
    core.handle(a, Join("#2"))
    err = core.handle(a, Join("#3"))
    assert isinstance(err, ErrorEvent) and err.code == "too_many_rooms"
    err = core.handle(b, Join("#3"))
    assert isinstance(err, ErrorEvent) and err.code == "too_many_rooms"
    assert isinstance(core.handle(b, Join("#1")), RoomJoined)
    err = core.handle(b, Join("bad"))
    assert isinstance(err, ErrorEvent) and err.code == "invalid_room"
    with pytest.raises(ValueError):
        ChatCore(default_room="lobby")


def test_room_groups_and_removal() -> None:
    core = ChatCore()
    a, _ = register(core, "ann", TEXT_CODEC)
    b, _ = register(core, "bob", JSON_CODEC)
    room = Room("#r")
    room.add(a)
    room.add(a)
    room.add(b)
    assert len(room) == 2 and room.nicks() == ("ann", "bob")
    room.remove(a)
    room.remove(a)
    assert len(room._groups) == 1


def test_chat_error_is_a_wirecat_error() -> None:
    from wirecat.errors import WirecatError

    exc = ChatError("nick_taken", "taken")
    assert isinstance(exc, WirecatError) and exc.code == "nick_taken" and exc.reason == "taken"


def test_rooms_created_per_source_are_capped_and_freed_when_empty(clock: Clock) -> None:
    core = ChatCore(max_rooms=100, max_rooms_per_source=2, clock=clock, monotonic=clock)
    sinks = []
    members = []
    for i, source in enumerate(["10.0.0.1", "10.0.0.1", "10.0.0.2"]):
        sink = Sink()
        sink.source = source  # type: ignore[attr-defined]
        member = core.connect(sink)
        core.hello(member, f"m{i}")
        sinks.append(sink)
        members.append(member)
    a, b, c = members
    core.join(a, "#a1")
    core.join(b, "#b1")  # the same address: its second room
    with pytest.raises(ChatError) as info:
        core.join(a, "#a2")
    assert info.value.code == "too_many_rooms" and "address" in info.value.reason
    core.join(a, "#b1")  # joining an existing room is always fine
    core.join(c, "#c1")  # another address has its own allowance
    core.part(a, "#a1")  # the last member left: #a1 is forgotten, its slot freed
    core.join(b, "#a2")
    assert "#a1" not in core.rooms and core.rooms["#a2"].source == "10.0.0.1"
    core.disconnect(b)
    core.disconnect(a)
    assert not any(r.source == "10.0.0.1" for r in core.rooms.values())
    core.join(c, "#c2")
    with pytest.raises(ChatError):
        core.join(c, "#c3")


def test_a_nick_confusable_with_one_in_use_is_refused(core: ChatCore) -> None:
    ann = core.connect(Sink())
    core.hello(ann, "ann")
    for lookalike in ["\u0430nn", "ANN", "\u0430\u0578\u0578"]:  # Cyrillic a, Armenian n
        other = core.connect(Sink())
        with pytest.raises(ChatError) as info:
            core.hello(other, lookalike)
        assert info.value.code == "nick_taken", lookalike
    bill = core.connect(Sink())
    core.hello(bill, "bill")
    with pytest.raises(ChatError):
        core.rename(ann, "bi11")  # digits one for ells
    core.rename(bill, "bi1l")  # its own look-alike: allowed
    core.disconnect(bill)
    core.rename(ann, "bill")  # the nick and its look-alikes are free again
