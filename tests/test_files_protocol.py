"""The files protocol without sockets: whole, byte by byte, with trailing data, Hypothesis."""

from __future__ import annotations

import itertools
import json
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wirecat.errors import InvalidMessage, LimitExceeded, LocalProtocolError, RemoteProtocolError
from wirecat.protocols.files import (
    TRANSITIONS,
    BodyChunk,
    BodyEnd,
    EndOfStream,
    Entry,
    ErrorResponse,
    FilesClientProtocol,
    FilesServerProtocol,
    GetRequest,
    GetStart,
    ListRequest,
    ListResult,
    PutRequest,
    PutResult,
    Ready,
    State,
    StatRequest,
    StatResult,
    Trailer,
    check_name,
)

DIGEST = "ab" * 32


def feed(proto: FilesServerProtocol | FilesClientProtocol, data: bytes, mode: str) -> list[object]:
    """Feed ``data`` whole or one byte at a time; return events with body chunks merged."""
    events: list[object] = []
    if mode == "whole":
        proto.receive_data(data)
        events += proto.events_received()
    else:
        for i in range(len(data)):
            proto.receive_data(data[i : i + 1])
            events += proto.events_received()
    return merge(events)


def merge(events: list[object]) -> list[object]:
    out: list[object] = []
    for ev in events:
        if isinstance(ev, BodyChunk) and out and isinstance(out[-1], BodyChunk):
            out[-1] = BodyChunk(out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


def put_line(**kw: object) -> bytes:
    obj = {"op": "put", "name": "a.bin", "size": 5, "offset": 0, "digest": "blake3"}
    obj.update(kw)
    return json.dumps(obj).encode() + b"\n"


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_put_conversation_server_side(mode: str) -> None:
    srv = FilesServerProtocol()
    assert feed(srv, put_line(), mode) == [PutRequest("a.bin", 5, 0, "blake3", False)]
    assert srv.state is State.AWAIT_READY
    srv.send_ready()
    assert json.loads(srv.data_to_send()[0]) == {"ok": True, "ready": True, "offset": 0}
    body = b"hello" + json.dumps({"digest": DIGEST}).encode() + b"\n"
    assert feed(srv, body, mode) == [BodyChunk(b"hello"), BodyEnd(), Trailer(DIGEST)]
    assert State(srv.state) is State.AWAIT_RESULT  # State(): mypy keeps the narrowing above
    srv.send_put_result("a.bin", size=5, digest_name="blake3", digest=DIGEST)
    assert State(srv.state) is State.IDLE


def test_body_passes_through_without_copy() -> None:
    srv = FilesServerProtocol()
    srv.receive_data(put_line(size=10))
    srv.events_received()
    srv.send_ready()
    chunk = b"0123456789"
    srv.receive_data(chunk)
    events = srv.events_received()
    assert events[0].data is chunk  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_trailing_data_after_request_is_kept_for_later(mode: str) -> None:
    srv = FilesServerProtocol()
    data = b'{"op":"stat","name":"x"}\n{"op":"list"}\n'
    assert feed(srv, data, mode) == [StatRequest("x")]
    srv.send_stat("x", exists=False, size=None, mtime=None, partial=None)
    assert srv.events_received() == [ListRequest("")]


def test_client_server_pair_round_trip() -> None:
    cli, srv = FilesClientProtocol(), FilesServerProtocol()

    def c2s() -> list[object]:
        for chunk in cli.data_to_send():
            srv.receive_data(chunk)
        return list(srv.events_received())

    def s2c() -> list[object]:
        for chunk in srv.data_to_send():
            cli.receive_data(chunk)
        return merge(list(cli.events_received()))

    cli.send_put("d/f", size=3, offset=0)
    assert c2s() == [PutRequest("d/f", 3, 0, "blake3", False)]
    srv.send_ready()
    assert s2c() == [Ready(0)]
    cli.send_body(b"abc")
    cli.send_trailer(DIGEST)
    assert merge(c2s()) == [BodyChunk(b"abc"), BodyEnd(), Trailer(DIGEST)]
    srv.send_put_result("d/f", size=3, digest_name="blake3", digest=DIGEST)
    assert s2c() == [PutResult("d/f", 3, "blake3", DIGEST)]

    cli.send_get("d/f", offset=1)
    assert c2s() == [GetRequest("d/f", 1, "blake3")]
    srv.send_get("d/f", size=3, offset=1, digest="blake3")
    srv.send_body(b"bc")
    srv.send_trailer(DIGEST)
    assert s2c() == [
        GetStart("d/f", 3, 1, 2, "blake3"),
        BodyChunk(b"bc"),
        BodyEnd(),
        Trailer(DIGEST),
    ]

    cli.send_list("d")
    c2s()
    srv.send_list("d", [Entry("f", "file", 3, 1.5)])
    assert s2c() == [ListResult("d", (Entry("f", "file", 3, 1.5),))]

    cli.send_stat("d/f")
    c2s()
    srv.send_stat("d/f", exists=True, size=3, mtime=1.0, partial=None)
    assert s2c() == [StatResult("d/f", True, 3, 1.0, None)]

    cli.send_put("g", size=10, offset=0)
    c2s()
    srv.send_error("conflict", "offset 0 does not match", offset=4)
    assert s2c() == [ErrorResponse("conflict", "offset 0 does not match", 4)]
    assert cli.state is State.IDLE and srv.state is State.IDLE


def test_error_during_upload_closes() -> None:
    cli, srv = FilesClientProtocol(), FilesServerProtocol()
    cli.send_put("g", size=10)
    srv.receive_data(b"".join(cli.data_to_send()))
    srv.send_ready()
    cli.receive_data(b"".join(srv.data_to_send()))
    cli.send_body(b"12345")
    srv.receive_data(b"".join(cli.data_to_send()))
    srv.send_error("no_space", "disk full")
    assert srv.state is State.CLOSED
    srv.receive_data(b"more body is ignored")
    cli.receive_data(b"".join(srv.data_to_send()))
    assert ErrorResponse("no_space", "disk full") in cli.events_received()
    assert cli.state is State.CLOSED


@pytest.mark.parametrize(
    "line",
    [
        put_line(size=-1),
        put_line(size="5"),
        put_line(size=1.5),
        put_line(size=True),
        put_line(size=2**64),
        put_line(offset=6),
        put_line(digest="md5"),
        put_line(overwrite="yes"),
        b'{"op":"put","name":"a","size":' + b"9" * 5000 + b"}\n",
        b'{"op":"rm","name":"a"}\n',
        b"[1,2]\n",
        b"not json\n",
        b'{"op":"stat","name":"\xff"}\n',
        b'{"op":"put","name":"a","size":NaN}\n',
    ],
)
def test_bad_headers_are_fatal(line: bytes) -> None:
    srv = FilesServerProtocol()
    with pytest.raises(InvalidMessage):
        srv.receive_data(line)
    assert srv.state is State.ERROR
    srv.send_error("bad_request", "nope")  # one error response is still allowed
    assert State(srv.state) is State.CLOSED


def test_header_over_limit_is_refused_before_newline() -> None:
    srv = FilesServerProtocol(max_header=100)
    with pytest.raises(LimitExceeded):
        srv.receive_data(b'{"op":"stat","name":"' + b"a" * 200)


def test_out_of_turn_data_is_bounded() -> None:
    srv = FilesServerProtocol(max_header=100)
    srv.receive_data(put_line())
    srv.receive_data(b"x" * 100)  # body before ready: buffered up to max_header
    with pytest.raises(LimitExceeded):
        srv.receive_data(b"x")


def test_body_longer_than_declared_breaks_the_trailer() -> None:
    srv = FilesServerProtocol()
    srv.receive_data(put_line(size=3))
    srv.send_ready()
    srv.events_received()
    with pytest.raises(InvalidMessage):
        srv.receive_data(b"abcEXTRA\n")


def test_body_shorter_than_declared_is_an_unclean_end() -> None:
    srv = FilesServerProtocol()
    srv.receive_data(put_line(size=10))
    srv.send_ready()
    srv.receive_data(b"abc")
    srv.receive_eof()
    assert srv.events_received()[-1] == EndOfStream(clean=False)
    assert srv.body_left == 7


def test_illegal_local_steps_raise() -> None:
    srv = FilesServerProtocol()
    with pytest.raises(LocalProtocolError):
        srv.send_ready()
    with pytest.raises(LocalProtocolError):
        srv.send_put_result("a", size=1, digest_name="blake3", digest=DIGEST)
    cli = FilesClientProtocol()
    cli.send_stat("a")
    with pytest.raises(LocalProtocolError):
        cli.send_stat("b")  # one request at a time
    with pytest.raises(LocalProtocolError):
        cli.send_body(b"x")


def test_illegal_remote_step_raises() -> None:
    cli = FilesClientProtocol()
    cli.send_stat("a")
    cli.data_to_send()
    with pytest.raises(RemoteProtocolError):
        cli.receive_data(
            b'{"ok":true,"name":"a","size":1,"algo":"blake3","digest":"' + DIGEST.encode() + b'"}\n'
        )


def test_transition_table_is_closed_over_states() -> None:
    for (state, step), new in TRANSITIONS.items():
        assert isinstance(state, State) and isinstance(new, State) and isinstance(step, str)
    assert TRANSITIONS[(State.UPLOAD, "body_end")] is State.UPLOAD_TRAILER


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "/etc/passwd",
        "a/../../b",
        "a\x00b",
        "a\\b",
        "",
        ".",
        "a//b",
        "a/",
        ".wcpart-x",
        "a\nb",
        "x" * 256,
    ],
)
def test_check_name_refuses(name: str) -> None:
    with pytest.raises(ValueError):
        check_name(name)


@pytest.mark.parametrize("name", ["a", "a/b.c", ".hidden", "dir/sub/ü.txt", "x..y"])
def test_check_name_accepts(name: str) -> None:
    assert check_name(name) == name


def test_no_io_imports() -> None:
    src = pathlib.Path(__file__).parents[1] / "src/wirecat/protocols/files.py"
    text = src.read_text()
    for mod in ("asyncio", "socket", "ssl"):
        assert f"import {mod}" not in text


@settings(max_examples=150, deadline=None)
@given(
    body=st.binary(max_size=300),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=8),
)
def test_any_split_gives_the_same_events(body: bytes, cuts: list[int]) -> None:
    """Property: the events of a put conversation do not depend on how TCP splits it."""
    stream = body + json.dumps({"digest": DIGEST}).encode() + b"\n" + b'{"op":"stat","name":"z"}\n'
    expected = (
        [BodyChunk(body), BodyEnd(), Trailer(DIGEST)] if body else [BodyEnd(), Trailer(DIGEST)]
    )
    srv = FilesServerProtocol()
    srv.receive_data(put_line(size=len(body)))
    srv.events_received()
    srv.send_ready()
    events: list[object] = list(srv.events_received())
    points = sorted({c for c in cuts if c < len(stream)} | {0, len(stream)})
    for a, b in itertools.pairwise(points):
        srv.receive_data(stream[a:b])
        events += srv.events_received()
    assert merge(events) == expected
    srv.send_put_result("a.bin", size=len(body), digest_name="blake3", digest=DIGEST)
    assert srv.events_received() == [StatRequest("z")]


@settings(max_examples=100, deadline=None)
@given(name=st.text(max_size=40))
def test_check_name_never_escapes(name: str) -> None:
    """Property: an accepted name never is absolute, has no '..' part, no NUL/backslash."""
    try:
        out = check_name(name)
    except ValueError:
        return
    assert not out.startswith("/") and "\x00" not in out and "\\" not in out
    assert ".." not in out.split("/")
