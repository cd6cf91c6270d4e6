"""LineFramer and encode_line, without sockets: every case fed whole, byte by byte, and with
trailing data, plus Hypothesis properties over arbitrary splits."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wirecat.errors import LocalProtocolError, ProtocolError
from wirecat.protocols.lines import (
    EndOfStream,
    Line,
    LineEvent,
    LineFramer,
    LineOverflow,
    encode_line,
)

Feed = Callable[[LineFramer, bytes], list[LineEvent]]


def feed_whole(framer: LineFramer, data: bytes) -> list[LineEvent]:
    framer.receive_data(data)
    return framer.events_received()


def feed_bytewise(framer: LineFramer, data: bytes) -> list[LineEvent]:
    events: list[LineEvent] = []
    for i in range(len(data)):
        framer.receive_data(data[i : i + 1])
        events += framer.events_received()
    return events


def feed_in_two(framer: LineFramer, data: bytes) -> list[LineEvent]:
    half = len(data) // 2
    framer.receive_data(data[:half])
    framer.receive_data(b"")  # empty chunks are harmless
    framer.receive_data(data[half:])
    return framer.events_received()


FEEDS = [feed_whole, feed_bytewise, feed_in_two]
FEED_IDS = ["whole", "bytewise", "halves"]


def run(feed: Feed, data: bytes, *, max_line: int = 16, eof: bool = False) -> list[LineEvent]:
    framer = LineFramer(max_line=max_line)
    events = feed(framer, data)
    if eof:
        framer.receive_eof()
        events += framer.events_received()
    return events


def lines(*items: bytes) -> list[LineEvent]:
    return [Line(x) for x in items]


def normalise(events: Iterable[LineEvent]) -> list[LineEvent]:
    """LineOverflow.discarded counts bytes dropped *so far*, which depends on the split."""
    return [LineOverflow(e.limit, 0) if isinstance(e, LineOverflow) else e for e in events]


# (stream, max_line, events without EOF) -- also fed with trailing data below.
CASES: list[tuple[str, bytes, int, list[LineEvent]]] = [
    ("empty", b"", 16, []),
    ("one", b"hello\n", 16, lines(b"hello")),
    ("two", b"a\nb\n", 16, lines(b"a", b"b")),
    ("empty-lines", b"\n\n", 16, lines(b"", b"")),
    ("crlf", b"hello\r\nworld\r\n", 16, lines(b"hello", b"world")),
    ("lone-cr-kept", b"a\rb\n", 16, lines(b"a\rb")),
    ("cr-cr-lf", b"a\r\r\n", 16, lines(b"a\r")),
    ("partial", b"abc", 16, []),
    ("line-then-partial", b"abc\nde", 16, lines(b"abc")),
    ("binary", b"\x00\xff\x80\n", 16, lines(b"\x00\xff\x80")),
    ("utf8", "h\u00e9\u2603\n".encode(), 16, lines("h\u00e9\u2603".encode())),
    # boundaries: max_line counts the terminator
    ("max-minus-1-content", b"x" * 15 + b"\n", 16, lines(b"x" * 15)),
    ("max-crlf", b"x" * 14 + b"\r\n", 16, lines(b"x" * 14)),
    ("max-content-no-room", b"x" * 16 + b"\n" + b"ok\n", 16, [LineOverflow(16, 0), Line(b"ok")]),
    ("crlf-one-over", b"x" * 15 + b"\r\n" + b"ok\n", 16, [LineOverflow(16, 0), Line(b"ok")]),
    ("min-max-line", b"\n\nx\n", 2, [Line(b""), Line(b""), Line(b"x")]),
    ("min-max-line-over", b"xy\nz\n", 2, [LineOverflow(2, 0), Line(b"z")]),
    # overflow then recovery: the next line is intact
    ("overflow-recover", b"y" * 40 + b"\nnext\n", 16, [LineOverflow(16, 0), Line(b"next")]),
    (
        "two-overflows",
        b"y" * 40 + b"\n" + b"z" * 17 + b"\nend\n",
        16,
        [LineOverflow(16, 0), LineOverflow(16, 0), Line(b"end")],
    ),
    ("overflow-unterminated", b"y" * 40, 16, [LineOverflow(16, 0)]),
    (
        "ok-overflow-ok",
        b"a\n" + b"y" * 16 + b"\nb\n",
        16,
        [*lines(b"a"), LineOverflow(16, 0), Line(b"b")],
    ),
]


@pytest.mark.parametrize("feed", FEEDS, ids=FEED_IDS)
@pytest.mark.parametrize(("name", "data", "max_line", "expected"), CASES, ids=[c[0] for c in CASES])
def test_cases(
    feed: Feed, name: str, data: bytes, max_line: int, expected: list[LineEvent]
) -> None:
    assert normalise(run(feed, data, max_line=max_line)) == expected


# Cases that end on a line boundary: whatever follows them must come out intact.
LINE_END_CASES = [c for c in CASES if not c[1] or c[1].endswith(b"\n")]


@pytest.mark.parametrize("feed", FEEDS, ids=FEED_IDS)
@pytest.mark.parametrize(
    ("name", "data", "max_line", "expected"), LINE_END_CASES, ids=[c[0] for c in LINE_END_CASES]
)
def test_cases_with_trailing_data(
    feed: Feed, name: str, data: bytes, max_line: int, expected: list[LineEvent]
) -> None:
    events = normalise(run(feed, data + b"t\n", max_line=max_line))
    assert events == [*expected, Line(b"t")]


def test_overflow_event_counts_discarded_bytes_when_fed_whole() -> None:
    events = run(feed_whole, b"y" * 40 + b"\nnext\n")
    assert events == [LineOverflow(16, 41), Line(b"next")]


def test_overflow_is_reported_once_per_long_line() -> None:
    # Fed one byte at a time, a 10 KiB line is still a single overflow event.
    events = run(feed_bytewise, b"y" * 10_000 + b"\nnext\n")
    assert len([e for e in events if isinstance(e, LineOverflow)]) == 1
    assert events[-1] == Line(b"next")


# -- end of stream ------------------------------------------------------------------------


@pytest.mark.parametrize("feed", FEEDS, ids=FEED_IDS)
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", [EndOfStream()]),
        (b"a\n", [Line(b"a"), EndOfStream()]),
        (b"a\nrest", [Line(b"a"), Line(b"rest", terminated=False), EndOfStream()]),
        (b"rest", [Line(b"rest", terminated=False), EndOfStream()]),
        (b"x" * 15, [Line(b"x" * 15, terminated=False), EndOfStream()]),
        # A lone CR at EOF is treated as the start of a CRLF and dropped.
        (b"rest\r", [Line(b"rest", terminated=False), EndOfStream()]),
        # EOF while discarding an overlong line: no partial line is delivered.
        (b"y" * 40, [LineOverflow(16, 0), EndOfStream()]),
        (b"a\n" + b"y" * 40, [Line(b"a"), LineOverflow(16, 0), EndOfStream()]),
    ],
)
def test_eof(feed: Feed, data: bytes, expected: list[LineEvent]) -> None:
    assert normalise(run(feed, data, eof=True)) == expected


def test_eof_is_idempotent_and_final() -> None:
    framer = LineFramer(max_line=16)
    framer.receive_data(b"abc")
    framer.receive_eof()
    framer.receive_eof()
    assert framer.events_received() == [Line(b"abc", terminated=False), EndOfStream()]
    assert framer.events_received() == []
    with pytest.raises(LocalProtocolError, match="after receive_eof"):
        framer.receive_data(b"more")


def test_events_received_clears() -> None:
    framer = LineFramer()
    framer.receive_data(b"a\nb\n")
    assert framer.events_received() == lines(b"a", b"b")
    assert framer.events_received() == []


def test_max_line_validated() -> None:
    with pytest.raises(ValueError, match="max_line"):
        LineFramer(max_line=1)
    assert LineFramer().max_line == 4096


def test_long_line_fed_bytewise_is_linear() -> None:
    # O(n): 64 KiB one byte at a time under max_line=64 KiB. Quadratic rescanning would make
    # this take minutes; pytest-timeout bounds it (no timed assertion here).
    size = 64 * 1024
    framer = LineFramer(max_line=size)
    chunk = b"x"
    for _ in range(size - 1):
        framer.receive_data(chunk)
    assert framer.events_received() == []
    framer.receive_data(b"\n")
    assert framer.events_received() == [Line(b"x" * (size - 1))]


def test_discarding_bytewise_is_linear() -> None:
    framer = LineFramer(max_line=64)
    for _ in range(256 * 1024):
        framer.receive_data(b"y")
    framer.receive_data(b"\nok\n")
    assert normalise(framer.events_received()) == [LineOverflow(64, 0), Line(b"ok")]


# -- output ---------------------------------------------------------------------------------


def test_send_line_and_eof() -> None:
    framer = LineFramer(max_line=8)
    framer.send_line(b"hello")
    framer.send_line(b"")
    framer.send_eof()
    assert framer.data_to_send() == [b"hello\n", b"\n", b""]
    assert framer.data_to_send() == []


def test_send_line_errors() -> None:
    framer = LineFramer(max_line=8)
    with pytest.raises(LocalProtocolError, match="newline"):
        framer.send_line(b"a\nb")
    with pytest.raises(LocalProtocolError, match="exceeds max_line=8"):
        framer.send_line(b"x" * 8)
    framer.send_line(b"x" * 7)  # exactly max_line with the terminator
    assert framer.data_to_send() == [b"x" * 7 + b"\n"]


@pytest.mark.parametrize(
    ("data", "max_line", "expected"),
    [
        (b"", None, b"\n"),
        (b"abc", None, b"abc\n"),
        (b"abc", 4, b"abc\n"),
        (b"a\rb", None, b"a\rb\n"),
        (b"x" * 100_000, None, b"x" * 100_000 + b"\n"),
    ],
)
def test_encode_line(data: bytes, max_line: int | None, expected: bytes) -> None:
    assert encode_line(data, max_line) == expected


@pytest.mark.parametrize(
    ("data", "max_line", "fragment"),
    [
        (b"a\nb", None, "newline"),
        (b"\n", 16, "newline"),
        (b"abcd", 4, "line of 5 bytes exceeds max_line=4"),
        (b"", 0, "exceeds max_line=0"),
    ],
)
def test_encode_line_errors(data: bytes, max_line: int | None, fragment: str) -> None:
    with pytest.raises(LocalProtocolError, match=fragment) as info:
        encode_line(data, max_line)
    assert isinstance(info.value, ProtocolError)


# -- Hypothesis -----------------------------------------------------------------------------

line_bodies = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))


@st.composite
def stream_and_splits(draw: st.DrawFn) -> tuple[bytes, list[int], int, list[bytes]]:
    max_line = draw(st.integers(2, 48))
    bodies = draw(st.lists(line_bodies, max_size=12))
    crlf = draw(st.lists(st.booleans(), min_size=len(bodies), max_size=len(bodies)))
    data = b"".join(b + (b"\r\n" if c else b"\n") for b, c in zip(bodies, crlf, strict=True))
    tail = draw(line_bodies)
    data += tail
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=10)))
    return data, cuts, max_line, bodies


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def feed_chunks(chunks: list[bytes], max_line: int) -> list[LineEvent]:
    framer = LineFramer(max_line=max_line)
    events: list[LineEvent] = []
    for chunk in chunks:
        framer.receive_data(chunk)
        events += framer.events_received()
    framer.receive_eof()
    return events + framer.events_received()


@given(stream_and_splits())
def test_any_split_gives_same_events(case: tuple[bytes, list[int], int, list[bytes]]) -> None:
    data, cuts, max_line, _ = case
    whole = feed_chunks([data], max_line)
    assert normalise(feed_chunks(split_at(data, cuts), max_line)) == normalise(whole)
    assert normalise(feed_chunks([data[i : i + 1] for i in range(len(data))], max_line)) == (
        normalise(whole)
    )


@given(st.lists(line_bodies, max_size=20), st.lists(st.integers(0, 2000), max_size=10))
def test_encode_then_frame_round_trips(bodies: list[bytes], cuts: list[int]) -> None:
    max_line = 64
    data = b"".join(encode_line(b, max_line) for b in bodies)
    events = feed_chunks(split_at(data, sorted(c for c in cuts if c <= len(data))), max_line)
    assert events == [*lines(*bodies), EndOfStream()]


@given(stream_and_splits())
def test_lines_within_limit_are_delivered_and_others_overflow(
    case: tuple[bytes, list[int], int, list[bytes]],
) -> None:
    data, cuts, max_line, _ = case
    events = feed_chunks(split_at(data, cuts), max_line)
    assert events[-1] == EndOfStream()
    for event in events[:-1]:
        if isinstance(event, Line):
            assert b"\n" not in event.data
            assert len(event.data) + 1 <= max_line
        else:
            assert isinstance(event, LineOverflow)
            assert event.limit == max_line
