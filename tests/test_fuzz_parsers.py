"""Hypothesis fuzz targets, one per parser that reads peer or user input.

Each asserts that arbitrary bytes/text raise only the documented wirecat errors (or none),
and that internal buffers stay bounded by their ``max_*``. The atheris harnesses under
``fuzz/`` drive the same parsers with coverage guidance (see ``fuzz/README.md``).
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wirecat.endpoints import SCHEMES, Endpoint, parse_endpoint
from wirecat.errors import (
    InvalidEndpoint,
    InvalidMessage,
    LimitExceeded,
    ProtocolError,
    RemoteProtocolError,
)
from wirecat.protocols import chat
from wirecat.protocols.lines import EndOfStream, Line, LineFramer, LineOverflow

files = pytest.importorskip("wirecat.protocols.files")

#: Examples per target; raise it for a longer hunt (``WIRECAT_FUZZ_EXAMPLES=20000 pytest ...``).
FUZZ_EXAMPLES = int(os.environ.get("WIRECAT_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Every ``ErrorEvent.code`` documented in protocols/chat.py.
CHAT_ERROR_CODES = chat.ERROR_CODES

# Text that looks like endpoints often enough to get past the first checks.
_endpoint_alphabet = st.sampled_from(
    [*list("abcxyz019:/[]@%.-_+#?&=~ \t\x00\n"), "tcp://", "udp://", "unix:", "tls://", "::"]
)
endpoint_text = st.one_of(
    st.text(max_size=300),
    st.lists(_endpoint_alphabet, max_size=40).map("".join),
    st.builds(
        lambda scheme, host, port: f"{scheme}://{host}:{port}",
        st.sampled_from([*sorted(SCHEMES), "http", "", "TCP"]),
        st.one_of(st.from_regex(r"[a-z0-9.\-]{0,20}", fullmatch=True), st.ip_addresses().map(str)),
        st.one_of(st.integers(-5, 70000).map(str), st.text(max_size=6)),
    ),
)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split ``data`` at the given (unsorted, possibly repeated) offsets."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# -- endpoints -------------------------------------------------------------------------------
@FUZZ
@given(text=endpoint_text, default_host=st.sampled_from([None, "127.0.0.1", "::1"]))
def test_fuzz_parse_endpoint(text: str, default_host: str | None) -> None:
    try:
        ep = parse_endpoint(text, default_host=default_host)
    except InvalidEndpoint as exc:
        message = str(exc)
        assert message and "\n" not in message.replace(repr(text), "")
        return
    assert isinstance(ep, Endpoint)
    assert ep.scheme in SCHEMES
    if ep.port is not None:
        assert 0 <= ep.port <= 65535
    # What parses round-trips through str().
    assert parse_endpoint(str(ep)) == ep


@FUZZ
@given(data=st.binary(max_size=64))
def test_fuzz_parse_endpoint_rejects_non_strings(data: bytes) -> None:
    with pytest.raises(InvalidEndpoint):
        parse_endpoint(data)  # type: ignore[arg-type]


# -- line framing --------------------------------------------------------------------------------
line_bytes = st.one_of(
    st.binary(max_size=600),
    st.lists(st.sampled_from([b"\n", b"\r", b"\r\n", b"a", b"\x00", b"xyz" * 10]), max_size=80).map(
        b"".join
    ),
)


@FUZZ
@given(
    data=line_bytes,
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
    max_line=st.integers(2, 64),
    eof=st.booleans(),
)
def test_fuzz_line_framer(data: bytes, cuts: list[int], max_line: int, eof: bool) -> None:
    framer = LineFramer(max_line=max_line)
    events: list[Any] = []
    for chunk in chunks(data, cuts):
        framer.receive_data(chunk)  # never raises on peer bytes
        assert len(framer._buffer) < max_line  # bounded: an unfinished line, below the limit
        events += framer.events_received()
    if eof:
        framer.receive_eof()
        events += framer.events_received()
    for ev in events:
        assert isinstance(ev, Line | LineOverflow | EndOfStream)
        if isinstance(ev, Line):
            assert len(ev.data) < max_line and b"\n" not in ev.data
        if isinstance(ev, LineOverflow):
            assert ev.limit == max_line
    assert (events[-1:] == [EndOfStream()]) is eof
    # Any split gives the same events as the whole stream at once.
    whole = LineFramer(max_line=max_line)
    whole.receive_data(data)
    if eof:
        whole.receive_eof()
    expected = whole.events_received()
    norm = [LineOverflow(e.limit, 0) if isinstance(e, LineOverflow) else e for e in events]
    exp = [LineOverflow(e.limit, 0) if isinstance(e, LineOverflow) else e for e in expected]
    assert norm == exp


# -- chat -----------------------------------------------------------------------------------------
def _json_values() -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**60), 2**60),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=40),
        st.sampled_from(["#lobby", "ann", "", " ", "\x1b[31m", "\ud800", "a" * 2000]),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )


chat_commands = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    st.one_of(st.sampled_from(chat.COMMAND_TYPES), st.text(max_size=10), st.integers()),
    st.dictionaries(
        st.sampled_from(["nick", "room", "text", "to", "reason", "ref", "extra"]),
        _json_values(),
        max_size=5,
    ),
)


def _json_line(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _check_chat_result(result: Any) -> None:
    assert (
        result is None
        or isinstance(result, chat.ErrorEvent | chat.EndOfStream)
        or (
            type(result).__name__ in {t.__name__ for t in chat.Command.__args__}  # type: ignore[attr-defined]
        )
    )
    if isinstance(result, chat.ErrorEvent):
        assert result.code in CHAT_ERROR_CODES, result
        assert result.reason and "\n" not in result.reason
    # Whatever was accepted is encodable as a command (the client side of the protocol).
    if result is not None and not isinstance(result, chat.ErrorEvent | chat.EndOfStream):
        assert chat.encode_json_command(result).endswith(b"\n")


@FUZZ
@given(
    data=st.one_of(st.binary(max_size=300), chat_commands.map(_json_line)),
    registered=st.booleans(),
    max_text=st.integers(1, 64),
)
def test_fuzz_chat_parse_text_line(data: bytes, registered: bool, max_text: int) -> None:
    result = chat.parse_text_line(data, registered=registered, max_text=max_text)
    _check_chat_result(result)
    if isinstance(result, chat.Say | chat.Dm):
        assert 0 < len(result.text.encode("utf-8", "surrogatepass")) <= max_text


@FUZZ
@given(
    data=st.one_of(st.binary(max_size=300), chat_commands.map(_json_line)),
    max_text=st.integers(1, 64),
)
def test_fuzz_chat_parse_json_line(data: bytes, max_text: int) -> None:
    result = chat.parse_json_line(data, max_text=max_text)
    assert result is not None
    _check_chat_result(result)
    if isinstance(result, chat.Say | chat.Dm):
        assert 0 < len(result.text.encode()) <= max_text
    if isinstance(result, chat.Hello | chat.Nick) and result.nick is not None:
        assert chat.NICK_RE.fullmatch(result.nick)


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), _json_values().map(_json_line)))
def test_fuzz_chat_decode_json_event(data: bytes) -> None:
    try:
        event = chat.decode_json_event(data)
    except InvalidMessage as exc:
        assert str(exc)
        return
    assert event is not None


@FUZZ
@given(
    lines=st.lists(st.one_of(st.binary(max_size=80), chat_commands.map(_json_line)), max_size=8),
    noise=st.binary(max_size=200),
    cuts=st.lists(st.integers(0, 10_000), max_size=10),
    max_line=st.integers(8, 128),
    eof=st.booleans(),
)
def test_fuzz_chat_server_protocol(
    lines: list[bytes], noise: bytes, cuts: list[int], max_line: int, eof: bool
) -> None:
    proto = chat.ChatServerProtocol(max_line=max_line, max_text=32)
    stream = b"\n".join(lines) + noise
    for chunk in chunks(stream, cuts):
        proto.receive_data(chunk)
        assert len(proto._framer._buffer) < max_line
        while (ev := proto.next_event()) is not None:
            _check_chat_result(ev)
            if isinstance(ev, chat.Hello):
                proto.registered = True
            assert not isinstance(ev, chat.EndOfStream)
    if eof:
        proto.receive_eof()
        seen_end = False
        while (ev := proto.next_event()) is not None:
            _check_chat_result(ev)
            seen_end = seen_end or isinstance(ev, chat.EndOfStream)
        assert seen_end
    # Encoding what a peer can make us send never fails.
    assert proto.codec.encode(chat.ErrorEvent("bad_json", "x")).endswith(b"\n")


# -- file transfer headers ------------------------------------------------------------------------
def _header_values() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**64), 2**64),
        st.floats(allow_nan=False),
        st.text(max_size=30),
        st.sampled_from(["blake3", "sha256", "a.txt", "../etc/passwd", "0" * 64, "a" * 64]),
    )


file_headers = st.builds(
    lambda op, fields: {"op": op, **fields},
    st.one_of(st.sampled_from(["stat", "list", "get", "put"]), st.text(max_size=6)),
    st.dictionaries(
        st.sampled_from(
            ["name", "path", "size", "offset", "digest", "overwrite", "restart", "length"]
        ),
        _header_values(),
        max_size=6,
    ),
)


@FUZZ
@given(
    parts=st.lists(
        st.one_of(
            file_headers.map(lambda h: _json_line(h) + b"\n"),
            st.binary(max_size=200),
            st.just(b'{"digest":"' + b"0" * 64 + b'"}\n'),
        ),
        max_size=6,
    ),
    cuts=st.lists(st.integers(0, 10_000), max_size=10),
    max_header=st.integers(64, 512),
)
def test_fuzz_files_server_headers(parts: list[bytes], cuts: list[int], max_header: int) -> None:
    proto = files.FilesServerProtocol(max_header=max_header)
    try:
        for chunk in chunks(b"".join(parts), cuts):
            proto.receive_data(chunk)
            assert len(proto._buffer) <= max_header
            for ev in proto.events_received():
                # Only the documented peer errors may come out (from receive_*, never send_*).
                _answer(proto, ev)
    except (RemoteProtocolError, LimitExceeded) as exc:
        assert str(exc)
        assert proto.state in (files.State.ERROR, files.State.CLOSED)
    proto.receive_eof()
    assert isinstance(proto.events_received()[-1], files.EndOfStream)


def _answer(proto: Any, ev: Any) -> None:
    """Play a server that refuses every request, so the conversation goes on."""
    if isinstance(ev, files.StatRequest | files.ListRequest | files.GetRequest):
        proto.send_error("not_found", "no")
    elif isinstance(ev, files.PutRequest):
        proto.send_ready()
    elif isinstance(ev, files.Trailer):
        proto.send_error("digest_mismatch", "no")
    proto.data_to_send()


@pytest.mark.parametrize("bad", [b'{"op":""}\n', b"\x00\n", b'{"op":"stat"}\n'])
def test_files_send_methods_raise_only_local_errors_with_pipelined_bad_input(bad: bytes) -> None:
    proto = files.FilesServerProtocol()
    proto.receive_data(b'{"op":"stat","name":"a.txt"}\n' + bad)
    (request,) = proto.events_received()
    assert isinstance(request, files.StatRequest)
    try:
        proto.send_stat("a.txt", exists=False, size=None, mtime=None, partial=None)
    except ProtocolError as exc:  # documented: LocalProtocolError only
        assert not isinstance(exc, RemoteProtocolError | LimitExceeded), repr(exc)


@FUZZ
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_fuzz_files_client_responses(data: bytes, cuts: list[int]) -> None:
    proto = files.FilesClientProtocol(max_header=128)
    proto.send_stat("a.txt")
    for chunk in chunks(data, cuts):
        try:
            proto.receive_data(chunk)
        except (RemoteProtocolError, LimitExceeded) as exc:
            assert str(exc)
            return
        assert len(proto._buffer) <= proto.max_header
        proto.events_received()
