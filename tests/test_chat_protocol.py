"""The chat wire formats without sockets: parsers, encoders, mode choice, splits."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import wirecat.protocols.chat as chat_mod
from wirecat.errors import InvalidMessage, LocalProtocolError
from wirecat.protocols.chat import (
    JSON_CODEC,
    TEXT_CODEC,
    Bye,
    ChatServerProtocol,
    Command,
    Direct,
    Dm,
    EndOfStream,
    ErrorEvent,
    Hello,
    Help,
    HelpText,
    Join,
    Joined,
    Message,
    Mode,
    Nick,
    NickChanged,
    NickSet,
    Notice,
    Part,
    Parted,
    Ping,
    Pong,
    Quit,
    RoomJoined,
    RoomList,
    RoomParted,
    Rooms,
    Say,
    Sent,
    ServerEvent,
    Shutdown,
    Welcome,
    Who,
    WhoList,
    decode_json_event,
    encode_json_command,
    format_ts,
    parse_json_line,
    parse_text_line,
)

Result = Command | ErrorEvent | EndOfStream


def feed(stream: bytes, *, registered: bool = True, chunks: int | None = None) -> list[Result]:
    """Run ``stream`` through a protocol; ``chunks=1`` feeds one byte at a time."""
    proto = ChatServerProtocol(max_line=16384, max_text=64)
    out: list[Result] = []
    pieces = [stream] if chunks is None else [stream[i : i + chunks] for i in range(len(stream))]
    for piece in pieces:
        proto.receive_data(piece)
        while (ev := proto.next_event()) is not None:
            out.append(ev)
            if isinstance(ev, Hello) and not isinstance(ev, ErrorEvent):
                proto.registered = True
    return out


def feed_all_ways(stream: bytes, **kw: bool) -> list[Result]:
    """Feed whole, byte by byte and with trailing data; all three must agree."""
    whole = feed(stream, **kw)
    assert feed(stream, chunks=1, **kw) == whole
    trailing = feed(stream + b"/quit trailing", **kw)
    assert trailing[: len(whole)] == whole
    return whole


# -- text mode ----------------------------------------------------------------------------
TEXT_CASES: list[tuple[bytes, Result | None]] = [
    (b"hello there", Say("hello there")),
    (b"  indented  ", Say("  indented")),
    (b"caf\xc3\xa9 \xe2\x9c\x93", Say("café ✓")),
    (b"//slash", Say("/slash")),
    (b"/me waves", Say("waves", action=True)),
    (b"/join #rust", Join("#rust")),
    (b"/join rust", Join("#rust")),
    (b"/JOIN #Rust", Join("#Rust")),
    (b"/part", Part()),
    (b"/part #rust", Part("#rust")),
    (b"/msg bob psst there", Dm("bob", "psst there")),
    (b"/who", Who()),
    (b"/who #x", Who("#x")),
    (b"/rooms", Rooms()),
    (b"/nick ann2", Nick("ann2")),
    (b"/quit", Quit()),
    (b"/quit gone fishing", Quit("gone fishing")),
    (b"/help", Help()),
    (b"/ping", Ping()),
    (b"", None),
    (b"   ", None),
    (b"\xff\xfe", ErrorEvent("bad_utf8", "")),
    (b"a\x00b", ErrorEvent("control_chars", "")),
    (b"\x1b[31mred", ErrorEvent("control_chars", "")),
    (b"/frobnicate", ErrorEvent("unknown_command", "")),
    (b"/join", ErrorEvent("bad_arguments", "")),
    (b"/join #bad room", ErrorEvent("bad_arguments", "")),
    (b"/join #" + b"x" * 33, ErrorEvent("invalid_room", "")),
    (b"/join #b@d", ErrorEvent("invalid_room", "")),
    (b"/nick 9lives", ErrorEvent("invalid_nick", "")),
    (b"/msg bob", ErrorEvent("bad_arguments", "")),
    (b"/me", ErrorEvent("bad_arguments", "")),
    (b"x" * 65, ErrorEvent("text_too_long", "")),
]


def _same(got: Result | None, want: Result | None) -> bool:
    if isinstance(want, ErrorEvent):
        return isinstance(got, ErrorEvent) and got.code == want.code and bool(got.reason)
    return got == want


@pytest.mark.parametrize(("line", "want"), TEXT_CASES)
def test_text_line(line: bytes, want: Result | None) -> None:
    assert _same(parse_text_line(line, max_text=64), want)
    events = feed_all_ways(b"ann\n" + line + b"\n")
    assert events[0] == Hello("ann")
    rest = events[1:]
    if want is None:
        assert rest == []
    else:
        assert len(rest) == 1 and _same(rest[0], want)


@pytest.mark.parametrize(
    ("line", "want"),
    [
        (b"ann", Hello("ann")),
        (b"", Hello(None)),
        (b"  ", Hello(None)),
        (b"/nick ann", Hello("ann")),
        (b"/quit", Quit()),
        (b"/help", Help()),
        (b"two words", ErrorEvent("invalid_nick", "")),
        (b"-dash", ErrorEvent("invalid_nick", "")),
        (b"x" * 25, ErrorEvent("invalid_nick", "")),
        (b"/join #x", ErrorEvent("not_registered", "")),
        (b"\xc3", ErrorEvent("bad_utf8", "")),
    ],
)
def test_text_nick_prompt(line: bytes, want: Result) -> None:
    assert _same(parse_text_line(line, registered=False), want)


def test_text_crlf_and_bare_eof() -> None:
    assert feed(b"ann\r\nhi\r\n") == [Hello("ann"), Say("hi")]
    proto = ChatServerProtocol()
    proto.receive_data(b"ann\nunterminated")
    assert proto.next_event() == Hello("ann")
    proto.registered = True
    assert proto.next_event() is None
    proto.receive_eof()
    assert proto.next_event() == Say("unterminated")
    assert proto.next_event() == EndOfStream()
    assert proto.next_event() is None


def test_overlong_line_is_reported_once_and_framing_goes_on() -> None:
    events = feed_all_ways(b"ann\n" + b"z" * 20000 + b"\nafter\n")
    assert events[0] == Hello("ann")
    assert isinstance(events[1], ErrorEvent) and events[1].code == "line_too_long"
    assert events[2:] == [Say("after")]


def test_binary_garbage_gives_errors_not_exceptions() -> None:
    garbage = bytes(range(256)) * 3 + b"\n\x00\x00\n\xff\n"
    events = feed(b"ann\n" + garbage)
    assert events[0] == Hello("ann")
    assert events[1:] and all(isinstance(e, ErrorEvent) for e in events[1:])


# -- mode choice ----------------------------------------------------------------------------
def test_mode_is_chosen_by_the_first_line() -> None:
    p = ChatServerProtocol()
    assert p.mode is None and p.codec is TEXT_CODEC
    p.receive_data(b'  {"type":"hello","nick":"ann"}\n')
    assert p.next_event() == Hello("ann")
    assert p.mode is Mode.JSON and p.codec is JSON_CODEC
    t = ChatServerProtocol()
    t.receive_data(b"{not json but who cares\n")  # still JSON mode: a bad JSON line
    ev = t.next_event()
    assert isinstance(ev, ErrorEvent) and ev.code == "bad_json" and t.mode is Mode.JSON
    u = ChatServerProtocol()
    u.receive_data(b"ann\n")
    assert u.next_event() == Hello("ann") and u.mode is Mode.TEXT


def test_overflow_before_mode_keeps_mode_open() -> None:
    p = ChatServerProtocol(max_line=16)
    p.receive_data(b"x" * 40 + b"\n" + b'{"type":"ping"}\n')
    first = p.next_event()
    assert isinstance(first, ErrorEvent) and first.code == "line_too_long"
    assert p.mode is None
    assert p.next_event() == Ping() and p.mode is Mode.JSON


# -- JSON mode ----------------------------------------------------------------------------
JSON_CASES: list[tuple[str, Result]] = [
    ('{"type":"hello","nick":"ann"}', Hello("ann")),
    ('{"type":"hello"}', Hello(None)),
    ('{"type":"hello","nick":null,"ref":7}', Hello(None, 7)),
    ('{"type":"join","room":"#r","ref":"j1"}', Join("#r", "j1")),
    ('{"type":"part"}', Part()),
    ('{"type":"part","room":"#r"}', Part("#r")),
    ('{"type":"say","room":"#r","text":"hi \\u00e9"}', Say("hi é", "#r")),
    ('{"type":"say","text":"hi"}', Say("hi")),
    ('{"type":"me","room":"#r","text":"waves"}', Say("waves", "#r", True)),
    ('{"type":"dm","to":"bob","text":"psst"}', Dm("bob", "psst")),
    ('{"type":"who","room":"#r"}', Who("#r")),
    ('{"type":"rooms","extra":[1,2,3]}', Rooms()),
    ('{"type":"nick","nick":"ann2"}', Nick("ann2")),
    ('{"type":"quit","reason":"bye"}', Quit("bye")),
    ('{"type":"ping","ref":-3}', Ping(-3)),
    ('{"type":"help"}', Help()),
    ('{"type":"say","room":"#r"', ErrorEvent("bad_json", "")),
    ("{}{}", ErrorEvent("bad_json", "")),
    ('{"type":"ping","ref":NaN}', ErrorEvent("bad_json", "")),
    ('{"a":' * 2000 + "1" + "}" * 2000, ErrorEvent("bad_json", "")),
    ('{"type":"ping","n":' + "9" * 5000 + "}", ErrorEvent("bad_json", "")),
    ("[1,2]", ErrorEvent("bad_shape", "")),
    ('"str"', ErrorEvent("bad_shape", "")),
    ('{"nick":"x"}', ErrorEvent("bad_shape", "")),
    ('{"type":5}', ErrorEvent("bad_shape", "")),
    ('{"type":"ping","ref":true}', ErrorEvent("bad_shape", "")),
    ('{"type":"ping","ref":1.5}', ErrorEvent("bad_shape", "")),
    ('{"type":"ping","ref":"' + "r" * 65 + '"}', ErrorEvent("bad_shape", "")),
    ('{"type":"join"}', ErrorEvent("bad_shape", "")),
    ('{"type":"join","room":["#r"]}', ErrorEvent("bad_shape", "")),
    ('{"type":"join","room":"lobby"}', ErrorEvent("invalid_room", "")),
    ('{"type":"hello","nick":"a b"}', ErrorEvent("invalid_nick", "")),
    ('{"type":"hello","nick":""}', ErrorEvent("invalid_nick", "")),
    ('{"type":"say","text":""}', ErrorEvent("empty_text", "")),
    ('{"type":"say","text":"' + "x" * 65 + '"}', ErrorEvent("text_too_long", "")),
    ('{"type":"say","text":"' + "é" * 33 + '"}', ErrorEvent("text_too_long", "")),
    ('{"type":"say","text":"a\\u0000b"}', ErrorEvent("control_chars", "")),
    ('{"type":"say","text":"a\\nb"}', ErrorEvent("control_chars", "")),
    ('{"type":"say","text":"\\ud800"}', ErrorEvent("bad_utf8", "")),
    ('{"type":"say","text":42}', ErrorEvent("bad_shape", "")),
    ('{"type":"dm","to":"bob"}', ErrorEvent("bad_shape", "")),
    ('{"type":"teleport"}', ErrorEvent("unknown_command", "")),
]


@pytest.mark.parametrize(("line", "want"), JSON_CASES)
def test_json_line(line: str, want: Result) -> None:
    data = line.encode()
    assert _same(parse_json_line(data, max_text=64), want)
    events = feed_all_ways(b'{"type":"hello","nick":"ann"}\n' + data + b"\n")
    assert events[0] == Hello("ann")
    assert len(events) == 2 and _same(events[1], want)


def test_json_errors_carry_a_valid_ref() -> None:
    ev = parse_json_line(b'{"type":"join","room":"nope","ref":"r9"}')
    assert isinstance(ev, ErrorEvent) and ev.ref == "r9"
    ev = parse_json_line(b'{"type":"teleport","ref":4}')
    assert isinstance(ev, ErrorEvent) and ev.ref == 4


def test_json_invalid_utf8_and_blank_lines() -> None:
    events = feed(b'{"type":"hello"}\n\n  \n{"type":"say","text":"\xff"}\n')
    assert events[0] == Hello(None)
    assert len(events) == 2
    assert isinstance(events[1], ErrorEvent) and events[1].code == "bad_utf8"


# -- encoders -------------------------------------------------------------------------------
TS = 1_700_000_000.25
MSG = Message(7, TS, "#lobby", "ann", "hi é")


def test_text_encoding() -> None:
    enc = TEXT_CODEC.encode
    assert enc(MSG) == "#lobby <ann> hi é\n".encode()
    assert enc(Message(8, TS, "#lobby", "ann", "waves", True)) == b"#lobby * ann waves\n"
    assert enc(Direct(9, TS, "ann", "bob", "psst")) == b"*ann* psst\n"
    assert enc(Sent(Direct(9, TS, "ann", "bob", "psst"))) == b"-> *bob* psst\n"
    assert enc(Sent(MSG)) == b""
    assert enc(Joined(1, TS, "#lobby", "bob")) == b"*** bob joined #lobby\n"
    assert enc(Parted(1, TS, "#lobby", "bob", "quit")) == b"*** bob left #lobby (quit)\n"
    assert enc(NickChanged(1, TS, "a", "b")) == b"*** a is now known as b\n"
    assert enc(Shutdown()) == b"*** server shutting down\n"
    assert enc(ErrorEvent("nick_taken", "taken")) == b"!!! nick_taken: taken\n"
    assert enc(Welcome("ann", "line1\nline2")) == (
        b"*** you are ann\n*** line1\n*** line2\n*** type /help for commands\n"
    )
    joined = enc(RoomJoined("#lobby", ("ann", "bob"), (MSG,)))
    assert joined == (
        "*** last 1 message in #lobby:\n#lobby <ann> hi é\n*** in #lobby (2): ann bob\n".encode()
    )
    assert enc(WhoList("#r", ("a", "b"))) == b"*** in #r (2): a b\n"
    assert enc(RoomList((("#a", 1), ("#b", 2)))) == b"*** rooms: #a (1), #b (2)\n"
    assert enc(RoomList(())) == b"*** no rooms\n"
    assert enc(NickSet("b", "a", announced=True)) == b""
    assert enc(NickSet("b", "a")) == b"*** you are now b\n"
    assert enc(RoomParted("#r")) == b""
    assert enc(Bye()) == b"*** bye\n"
    assert enc(Pong()) == b"*** pong\n"
    assert enc(Notice("hi")) == b"*** hi\n"
    assert enc(HelpText()).count(b"\n") > 5
    with pytest.raises(LocalProtocolError):
        TEXT_CODEC.encode(Hello("x"))  # type: ignore[arg-type]


def test_json_encoding() -> None:
    line = JSON_CODEC.encode(MSG)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "type": "message",
        "id": 7,
        "ts": "2023-11-14T22:13:20.250Z",
        "room": "#lobby",
        "nick": "ann",
        "text": "hi é",
        "kind": "say",
    }
    assert "é".encode() in line  # not \\u-escaped: UTF-8 on the wire
    assert json.loads(JSON_CODEC.encode(ErrorEvent("bad_json", "why", "r1"))) == {
        "type": "error",
        "code": "bad_json",
        "reason": "why",
        "ref": "r1",
    }
    assert json.loads(JSON_CODEC.encode(Shutdown())) == {"type": "shutdown"}
    assert json.loads(JSON_CODEC.encode(Sent(MSG, 3))) == {
        "type": "sent",
        "id": 7,
        "ts": "2023-11-14T22:13:20.250Z",
        "ref": 3,
    }
    with pytest.raises(LocalProtocolError):
        JSON_CODEC.encode(Ping())  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        encode_json_command(MSG)  # type: ignore[arg-type]


def test_format_ts() -> None:
    assert format_ts(0.0) == "1970-01-01T00:00:00.000Z"


@pytest.mark.parametrize(
    "line",
    [b"not json", b"[1]", b'{"type":"warp"}', b'{"type":"message","id":"x"}', b"\xff",
     b'{"type":"message","id":1,"ts":"yesterday","room":"#r","nick":"a","text":"t"}',
     b'{"type":"pong","ref":[1]}', b'{"type":"joined","room":"#r","members":[1]}',
     b'{"type":"joined","room":"#r","members":[],"history":{}}',
     b'{"type":"rooms","rooms":[3]}', b'{"type":"bye","reason":5}'],
)  # fmt: skip
def test_decode_json_event_rejects(line: bytes) -> None:
    with pytest.raises(InvalidMessage):
        decode_json_event(line)


# -- properties -----------------------------------------------------------------------------
nicks = st.from_regex(chat_mod.NICK_RE, fullmatch=True)
rooms = st.from_regex(chat_mod.ROOM_RE, fullmatch=True)
texts = st.text(
    alphabet=st.characters(blacklist_categories=["Cc", "Cs"]), min_size=1, max_size=60
).filter(lambda t: not t.isspace() and len(t.encode()) <= 64)
refs = (
    st.none()
    | st.integers(-(2**53), 2**53)
    | st.text(alphabet=st.characters(blacklist_categories=["Cc", "Cs"]), max_size=64)
)
commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(Hello, st.none() | nicks, refs),
    st.builds(Join, rooms, refs),
    st.builds(Part, st.none() | rooms, refs),
    st.builds(Say, texts, st.none() | rooms, st.booleans(), refs),
    st.builds(Dm, nicks, texts, refs),
    st.builds(Who, st.none() | rooms, refs),
    st.builds(Rooms, refs),
    st.builds(Nick, nicks, refs),
    st.builds(Quit, st.none() | texts, refs),
    st.builds(Help, refs),
    st.builds(Ping, refs),
)


@given(commands)
def test_json_command_round_trip(cmd: Command) -> None:
    assert parse_json_line(encode_json_command(cmd).rstrip(b"\n"), max_text=64) == cmd


@settings(max_examples=60)
@given(st.lists(commands, min_size=1, max_size=8), st.data())
def test_any_split_gives_the_same_commands(cmds: list[Command], data: st.DataObject) -> None:
    stream = b"".join(encode_json_command(c) for c in [Hello("ann"), *cmds])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    proto = ChatServerProtocol(max_line=4096, max_text=64)
    got: list[Result] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        proto.receive_data(stream[prev:cut])
        prev = cut
        while (ev := proto.next_event()) is not None:
            got.append(ev)
    assert got == [Hello("ann"), *cmds]


text_lines = st.lists(
    texts.filter(lambda t: t.strip(" \t") == t and not t.startswith("/") and "\x85" not in t),
    min_size=1,
    max_size=6,
)


@settings(max_examples=60)
@given(text_lines, st.data())
def test_any_split_of_a_text_stream(lines: list[str], data: st.DataObject) -> None:
    stream = ("ann\r\n" + "".join(t + "\n" for t in lines)).encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    proto = ChatServerProtocol(max_text=64)
    got: list[Result] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        proto.receive_data(stream[prev:cut])
        prev = cut
        while (ev := proto.next_event()) is not None:
            got.append(ev)
            proto.registered = True
    assert got == [Hello("ann"), *(Say(t) for t in lines)]


timestamps = st.floats(0, 4_000_000_000, allow_nan=False)
messages = st.builds(Message, st.integers(1, 2**40), timestamps, rooms, nicks, texts, st.booleans())
events: st.SearchStrategy[ServerEvent] = st.one_of(
    messages,
    st.builds(Direct, st.integers(1, 2**40), timestamps, nicks, nicks, texts),
    st.builds(Joined, st.integers(1), timestamps, rooms, nicks),
    st.builds(Parted, st.integers(1), timestamps, rooms, nicks, st.none() | texts),
    st.builds(NickChanged, st.integers(1), timestamps, nicks, nicks),
    st.just(Shutdown()),
    st.builds(Notice, texts),
    st.builds(Welcome, nicks, texts, rooms, texts, refs),
    st.builds(
        RoomJoined,
        rooms,
        st.lists(nicks, max_size=5).map(tuple),
        st.lists(messages, max_size=3).map(tuple),
        refs,
    ),
    st.builds(RoomParted, rooms, refs),
    st.builds(Sent, messages, refs),
    st.builds(WhoList, rooms, st.lists(nicks, max_size=5).map(tuple), refs),
    st.builds(RoomList, st.lists(st.tuples(rooms, st.integers(0, 99))).map(tuple), refs),
    st.builds(NickSet, nicks, nicks, st.just(False), refs),
    st.builds(Bye, st.none() | texts, refs),
    st.builds(Pong, refs),
    st.builds(HelpText, refs),
    st.builds(ErrorEvent, st.sampled_from(["bad_json", "nick_taken"]), texts, refs),
)


@given(events)
def test_json_event_round_trip(event: ServerEvent) -> None:
    line = JSON_CODEC.encode(event)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    decoded = decode_json_event(line)
    assert type(decoded) is type(event)
    assert JSON_CODEC.encode(decoded) == line


@given(events)
def test_text_encoding_is_whole_lines(event: ServerEvent) -> None:
    data = TEXT_CODEC.encode(event)
    assert data == b"" or data.endswith(b"\n")
    data.decode("utf-8")


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_parsers_never_raise_on_garbage(data: bytes) -> None:
    for registered in (False, True):
        for line in data.split(b"\n"):
            parse_text_line(line, registered=registered)
        feed(data, registered=registered)
    parse_json_line(data)
    feed(b"{}\n" + data)


# -- layering -------------------------------------------------------------------------------
def test_protocols_import_no_io_modules() -> None:
    imported: set[str] = set()
    nodes = [
        node
        for path in Path(chat_mod.__file__).parent.glob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
    ]
    for node in nodes:
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "ssl", "selectors", "uvloop"}


@settings(max_examples=500, deadline=None)
@given(
    st.floats(min_value=0, max_value=4e9, allow_nan=False)
    | st.integers(0, 4_000_000_000).map(lambda s: s + 0.9995)
    | st.integers(0, 4_000_000_000).map(lambda s: s + 0.001)
)
def test_format_ts_cache_matches_datetime(ts: float) -> None:
    from datetime import UTC, datetime

    expected = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
    assert chat_mod.format_ts(ts) == expected
    assert chat_mod.format_ts(ts) == expected  # from the cached second


def test_server_states_are_data() -> None:
    from wirecat.errors import LocalProtocolError
    from wirecat.protocols.chat import TRANSITIONS, State

    proto = ChatServerProtocol()
    assert proto.state is State.GREETING and not proto.registered
    with pytest.raises(LocalProtocolError):
        proto.registered = True  # no line yet: no mode, no login
    proto.receive_data(b'{"type":"hello","nick":"ann"}\n')
    assert proto.next_event() == Hello("ann") and proto.state is State.MODE_CHOSEN
    proto.registered = True
    assert proto.state is State.LOGGED_IN and proto.registered
    with pytest.raises(LocalProtocolError):
        proto.expect_token("ann")  # a token is asked for before login only
    proto.receive_eof()
    assert proto.next_event() == EndOfStream() and proto.state is State.CLOSED
    assert all(isinstance(k[0], State) and isinstance(v, State) for k, v in TRANSITIONS.items())


@pytest.mark.parametrize(
    "char", ["\u2028", "\u2029", "\u202e", "\u2066", "\u200b", "\u200f", "\ufeff", "\U000e0041"]
)
def test_text_that_could_fake_a_server_line_is_refused_in_both_modes(char: str) -> None:
    from wirecat.protocols.chat import parse_json_line, parse_text_line

    text = f"hi{char}*** server: admin is now root"
    as_text = parse_text_line(text.encode(), registered=True)
    as_json = parse_json_line(json.dumps({"type": "say", "text": text}).encode())
    for err in (as_text, as_json):
        assert isinstance(err, ErrorEvent) and err.code == "control_chars", err
        assert f"U+{ord(char):04X}" in err.reason
    assert parse_text_line("family 👨\u200d👩\u200d👧".encode(), registered=True) == Say(
        "family 👨\u200d👩\u200d👧"
    )  # ZWJ sequences stay allowed


def test_international_nicks_follow_precis() -> None:
    from wirecat.protocols.chat import check_nick, parse_json_line, parse_text_line

    for nick in ["Élodie", "李小龍", "Dvořák", "ann"]:
        assert check_nick(nick) is None, nick
        assert parse_text_line(nick.encode(), registered=False) == Hello(nick)
        assert parse_json_line(json.dumps({"type": "hello", "nick": nick}).encode()) == Hello(nick)
    for bad in ["a\u202eb", "\uff41nn", "1abc", "ann bob", "x" * 25, "E\u0301lodie", "#room"]:
        err = check_nick(bad)
        assert err is not None and err.code == "invalid_nick", bad


def test_json_join_since_and_joined_gap() -> None:
    from wirecat.protocols.chat import JSON_CODEC, Join, RoomJoined, decode_json_event

    assert parse_json_line(b'{"type":"join","room":"#r","since":41}') == Join("#r", None, 41)
    assert parse_json_line(b'{"type":"join","room":"#r"}') == Join("#r")
    bad = parse_json_line(b'{"type":"join","room":"#r","since":-1}')
    assert isinstance(bad, ErrorEvent) and bad.code == "bad_shape"
    bad = parse_json_line(b'{"type":"join","room":"#r","since":"41"}')
    assert isinstance(bad, ErrorEvent) and bad.code == "bad_shape"
    line = JSON_CODEC.encode(RoomJoined("#r", ("ann",), (), None, True))
    assert b'"gap":true' in line
    assert decode_json_event(line) == RoomJoined("#r", ("ann",), (), None, True)
    assert b"gap" not in JSON_CODEC.encode(RoomJoined("#r", ("ann",)))
    assert encode_json_command(Join("#r", None, 7)) == b'{"type":"join","room":"#r","since":7}\n'
