"""StreamBuffer, without sockets: bounded line, delimiter and exact reads at every split."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wirecat.errors import LimitExceeded, LineTooLong
from wirecat.protocols.buffer import StreamBuffer


def buffer_with(*chunks: bytes) -> StreamBuffer:
    buf = StreamBuffer()
    for chunk in chunks:
        buf.feed(chunk)
    return buf


def splits(data: bytes) -> list[list[bytes]]:
    """The stream whole, one byte at a time, and cut in two at every point."""
    out = [[data], [data[i : i + 1] for i in range(len(data))]]
    out += [[data[:i], data[i:]] for i in range(1, len(data))]
    return out


def read_lines_as_fed(chunks: list[bytes], max_line: int) -> list[bytes]:
    buf = StreamBuffer()
    got: list[bytes] = []
    for chunk in chunks:
        buf.feed(chunk)
        while (line := buf.read_line(max_line)) is not None:
            got.append(line)
    return got


# -- read_line ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "max_line", "expected", "rest"),
    [
        (b"", 8, [], b""),
        (b"a\n", 8, [b"a\n"], b""),
        (b"a\nb\n", 8, [b"a\n", b"b\n"], b""),
        (b"a\r\n", 8, [b"a\r\n"], b""),  # the buffer keeps terminators; framers strip them
        (b"a\nbc", 8, [b"a\n"], b"bc"),
        (b"1234567\n", 8, [b"1234567\n"], b""),  # exactly max_line with the newline
        (b"1234567\nxy", 8, [b"1234567\n"], b"xy"),  # with trailing data
        (b"\n\n", 2, [b"\n", b"\n"], b""),
    ],
)
def test_read_line_every_split(
    data: bytes, max_line: int, expected: list[bytes], rest: bytes
) -> None:
    for chunks in splits(data):
        buf = StreamBuffer()
        got: list[bytes] = []
        for chunk in chunks:
            buf.feed(chunk)
            while (line := buf.read_line(max_line)) is not None:
                got.append(line)
        assert got == expected, chunks
        assert buf.read_some() == rest


@pytest.mark.parametrize("data", [b"12345678\n", b"12345678", b"123456789\nok\n"])
def test_read_line_too_long_every_split(data: bytes) -> None:
    # max_line bytes with no newline among them: LineTooLong, whatever the split.
    for chunks in splits(data):
        buf = StreamBuffer()
        with pytest.raises(LineTooLong) as info:
            for chunk in chunks:
                buf.feed(chunk)
                while buf.read_line(8) is not None:
                    pass
        assert info.value.limit == 8
        assert "8 bytes" in str(info.value)


def test_read_line_too_long_leaves_data_buffered() -> None:
    buf = buffer_with(b"123456789\nok\n")
    with pytest.raises(LineTooLong):
        buf.read_line(8)
    assert len(buf) == 13
    assert buf.read_line(16) == b"123456789\n"  # a larger limit reads it
    assert buf.read_line(8) == b"ok\n"


def test_read_line_none_until_complete() -> None:
    buf = buffer_with(b"abc")
    assert buf.read_line(8) is None
    assert len(buf) == 3
    buf.feed(b"\n")
    assert buf.read_line(8) == b"abc\n"
    assert len(buf) == 0


# -- skip_line ------------------------------------------------------------------------------


def test_skip_line() -> None:
    buf = buffer_with(b"garbage\nkeep\n")
    assert buf.skip_line() == (8, True)
    assert buf.read_line(8) == b"keep\n"


def test_skip_line_without_newline_drops_everything() -> None:
    buf = buffer_with(b"abc")
    assert buf.skip_line() == (3, False)
    assert len(buf) == 0
    buf.feed(b"de\nf\n")
    assert buf.skip_line() == (3, True)
    assert buf.read_line(8) == b"f\n"


def test_skip_line_after_partial_read() -> None:
    buf = buffer_with(b"ab\ncdef")
    assert buf.read_line(8) == b"ab\n"
    assert buf.read_line(8) is None  # scanned "cdef"
    buf.feed(b"g\nh\n")
    assert buf.skip_line() == (6, True)
    assert buf.read_line(8) == b"h\n"


# -- read_until -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "sep", "max_size", "expected", "rest"),
    [
        (b"GET / HTTP/1.1\r\n\r\nbody", b"\r\n\r\n", 64, b"GET / HTTP/1.1\r\n\r\n", b"body"),
        (b"a;b;", b";", 8, b"a;", b"b;"),
        (b"abc", b";", 8, None, b"abc"),
        (b"1234567;", b";", 8, b"1234567;", b""),  # exactly max_size, separator included
        (b"\r\n\r\n", b"\r\n\r\n", 4, b"\r\n\r\n", b""),
        (b"xx--yy--", b"--", 8, b"xx--", b"yy--"),
    ],
)
def test_read_until_every_split(
    data: bytes, sep: bytes, max_size: int, expected: bytes | None, rest: bytes
) -> None:
    for chunks in splits(data):
        buf = StreamBuffer()
        got = None
        for chunk in chunks:
            buf.feed(chunk)
            if got is None:
                got = buf.read_until(sep, max_size)
        assert got == expected, chunks
        assert buf.read_some() == rest


@pytest.mark.parametrize(("data", "max_size"), [(b"12345678;", 8), (b"123456789", 8)])
def test_read_until_limit_every_split(data: bytes, max_size: int) -> None:
    for chunks in splits(data):
        buf = StreamBuffer()
        with pytest.raises(LimitExceeded) as info:
            for chunk in chunks:
                buf.feed(chunk)
                assert buf.read_until(b";", max_size) is None
        assert info.value.limit == max_size
        assert not isinstance(info.value, LineTooLong)


def test_read_until_separator_split_across_feeds() -> None:
    buf = buffer_with(b"head\r\n")
    assert buf.read_until(b"\r\n\r\n", 64) is None
    buf.feed(b"\r")
    assert buf.read_until(b"\r\n\r\n", 64) is None
    buf.feed(b"\ntail")
    assert buf.read_until(b"\r\n\r\n", 64) == b"head\r\n\r\n"
    assert buf.read_some() == b"tail"


def test_read_until_after_read_line_scanned_the_data() -> None:
    buf = buffer_with(b"a;b")
    assert buf.read_line(64) is None
    assert buf.read_until(b";", 64) == b"a;"


def test_read_line_after_read_until_scanned_the_data() -> None:
    buf = buffer_with(b"a\nb")
    assert buf.read_until(b";", 64) is None
    assert buf.read_line(64) == b"a\n"


def test_read_until_with_another_separator() -> None:
    buf = buffer_with(b"x,y")
    assert buf.read_until(b";", 64) is None
    assert buf.read_until(b",", 64) == b"x,"


# -- read_exact / read_some -------------------------------------------------------------------


def test_read_exact() -> None:
    buf = buffer_with(b"abc")
    assert buf.read_exact(4) is None
    assert buf.read_exact(0) == b""
    assert buf.read_exact(2) == b"ab"
    buf.feed(b"def")
    assert buf.read_exact(4) == b"cdef"
    assert buf.read_exact(1) is None
    with pytest.raises(ValueError, match="n must be >= 0"):
        buf.read_exact(-1)


def test_read_exact_every_split() -> None:
    data = bytes(range(10))
    for chunks in splits(data):
        buf = StreamBuffer()
        got: list[bytes] = []
        for chunk in chunks:
            buf.feed(chunk)
            while (part := buf.read_exact(3)) is not None:
                got.append(part)
        assert got == [data[0:3], data[3:6], data[6:9]]
        assert buf.read_some() == data[9:]


def test_read_some() -> None:
    buf = StreamBuffer()
    assert buf.read_some() == b""
    buf.feed(b"abcdef")
    assert buf.read_some(2) == b"ab"
    assert buf.read_some(0) == b""
    assert buf.read_some(100) == b"cdef"
    assert len(buf) == 0


def test_mixed_reads_keep_order() -> None:
    buf = buffer_with(b"line\n", b"\x00\x01\x02", b"k=v;rest")
    assert buf.read_line(16) == b"line\n"
    assert buf.read_exact(3) == b"\x00\x01\x02"
    assert buf.read_until(b";", 16) == b"k=v;"
    assert buf.read_some() == b"rest"


# -- eof and compaction ---------------------------------------------------------------------


def test_eof() -> None:
    buf = buffer_with(b"tail")
    assert not buf.at_eof
    buf.feed_eof()
    assert buf.at_eof
    assert buf.read_line(16) is None  # no newline: the caller decides what a tail means
    assert buf.read_some() == b"tail"
    with pytest.raises(RuntimeError, match="after feed_eof"):
        buf.feed(b"x")


def test_many_small_lines_compact_and_stay_correct() -> None:
    # Enough consumed bytes to trigger the internal compaction several times.
    lines = [b"%06d\n" % i for i in range(60_000)]
    buf = StreamBuffer()
    got: list[bytes] = []
    data = b"".join(lines)
    for start in range(0, len(data), 997):  # chunks that cut lines anywhere
        buf.feed(data[start : start + 997])
        while (line := buf.read_line(16)) is not None:
            got.append(line)
    assert got == lines
    assert len(buf) == 0


class _CountingBytearray(bytearray):
    """Counts how many bytes ``find`` may scan: a deterministic stand-in for timing."""

    scanned = 0

    def find(self, sub, start=0, *args):  # type: ignore[no-untyped-def, override]
        _CountingBytearray.scanned += max(0, len(self) - start)
        return super().find(sub, start, *args)


def test_scanning_is_linear_when_fed_bytewise() -> None:
    # 64 KiB one byte at a time, read_line() after every byte: O(n) bytes scanned in total,
    # not O(n^2) (which would be about 2 * 10^9 here).
    size = 64 * 1024
    buf = StreamBuffer()
    buf._buf = _CountingBytearray()  # type: ignore[assignment]
    _CountingBytearray.scanned = 0
    for _ in range(size - 1):
        buf.feed(b"x")
        assert buf.read_line(size) is None
    buf.feed(b"\n")
    assert buf.read_line(size) == b"x" * (size - 1) + b"\n"
    assert _CountingBytearray.scanned <= 4 * size


def test_delimiter_scanning_is_linear_when_fed_bytewise() -> None:
    size = 64 * 1024
    buf = StreamBuffer()
    buf._buf = _CountingBytearray()  # type: ignore[assignment]
    _CountingBytearray.scanned = 0
    for _ in range(size):
        buf.feed(b"x")
        assert buf.read_until(b"\r\n\r\n", 2 * size) is None
    buf.feed(b"\r\n\r\n")
    assert buf.read_until(b"\r\n\r\n", 2 * size) == b"x" * size + b"\r\n\r\n"
    assert _CountingBytearray.scanned <= 8 * size


# -- Hypothesis -----------------------------------------------------------------------------


@given(
    st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")), max_size=15),
    st.lists(st.integers(0, 400), max_size=12),
)
def test_any_split_gives_same_lines(bodies: list[bytes], cuts: list[int]) -> None:
    data = b"".join(b + b"\n" for b in bodies)
    points = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    assert read_lines_as_fed(chunks, 21) == [b + b"\n" for b in bodies]


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=12), st.integers(1, 9))
def test_any_split_gives_same_exact_reads(data: bytes, cuts: list[int], n: int) -> None:
    points = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    buf = StreamBuffer()
    got: list[bytes] = []
    for a, b in itertools.pairwise(points):
        buf.feed(data[a:b])
        while (part := buf.read_exact(n)) is not None:
            got.append(part)
    whole = len(data) - len(data) % n
    assert b"".join(got) == data[:whole]
    assert all(len(p) == n for p in got)
    assert buf.read_some() == data[whole:]
