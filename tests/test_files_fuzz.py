"""Hypothesis properties of the files protocol (issue 13 item 7), both sides.

1. Round trip at any split: a conversation of valid requests and answers (made by the
   other role's ``send_*``) fed in arbitrary pieces gives exactly the events it encodes, on
   the server (request parser) and on the client (response parser).
2. Hostile input: arbitrary bytes, or JSON shaped like the messages (wrong types, huge or
   negative numbers, nesting thousands deep, bodies that lie about their length), in every
   state a conversation reaches, make either parser raise only the documented peer errors
   (``RemoteProtocolError`` and its ``InvalidMessage``, ``LimitExceeded``), never anything
   else, and keep its buffer within ``max_header``.

The atheris twin is ``fuzz/fuzz_files.py``.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wirecat.errors import LimitExceeded, RemoteProtocolError
from wirecat.protocols import files
from wirecat.protocols.files import (
    AuthRequest,
    AuthResult,
    BodyChunk,
    BodyEnd,
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
    StatRequest,
    StatResult,
    Trailer,
)

EXAMPLES = int(os.environ.get("WIRECAT_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PEER_ERRORS = (RemoteProtocolError, LimitExceeded)
HEX = "0123456789abcdef"


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def merged(events: list[Any]) -> list[Any]:
    """Events with consecutive body chunks joined (their split is the feeder's choice)."""
    out: list[Any] = []
    for ev in events:
        if isinstance(ev, BodyChunk) and out and isinstance(out[-1], BodyChunk):
            out[-1] = BodyChunk(out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


def feed(proto: Any, data: bytes, cuts: list[int]) -> list[Any]:
    events: list[Any] = []
    for piece in pieces(data, cuts):
        proto.receive_data(piece)
        events += proto.events_received()
    return merged(events)


def send(proto: Any) -> bytes:
    return b"".join(proto.data_to_send())


# -- strategies ------------------------------------------------------------------------------
def _valid_name(name: str) -> bool:
    try:
        files.check_name(name)
    except ValueError:
        return False
    return True


component = st.one_of(
    st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=12),
    st.sampled_from(["é" * 127 + "x", "n" * 255, "a.txt", "日本"]),
)
names = st.lists(component, min_size=1, max_size=3).map("/".join).filter(_valid_name)
sizes = st.integers(0, 3000)
digests = st.text(HEX, min_size=64, max_size=64)
entries = st.builds(
    Entry,
    component.filter(_valid_name),
    st.sampled_from(["file", "dir"]),
    st.integers(0, 2**40),
    st.floats(0, 2e9, allow_nan=False),
)


@st.composite
def exchanges(draw: Any) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(kind, request args, answer) for one request of a conversation."""
    kind = draw(st.sampled_from(["auth", "stat", "list", "get", "put"]))
    if draw(st.integers(0, 5)) == 0:  # a refusal
        code = draw(st.sampled_from(sorted(files.ERROR_CODES)))
        answer = {"error": code, "message": draw(st.text(max_size=40))}
        if kind in ("auth", "stat", "list", "get"):
            return kind, _request(draw, kind), answer
        return kind, _request(draw, kind), {**answer, "at": "request"}
    req = _request(draw, kind)
    if kind == "auth":
        answer = {"user": req["user"], "roles": draw(st.lists(st.text(max_size=8), max_size=3))}
    elif kind == "stat":
        answer = {
            "exists": draw(st.booleans()),
            "size": draw(st.one_of(st.none(), sizes)),
            "mtime": draw(st.one_of(st.none(), st.floats(0, 2e9, allow_nan=False))),
            "partial": draw(st.one_of(st.none(), sizes)),
        }
    elif kind == "list":
        answer = {"entries": draw(st.lists(entries, max_size=5))}
    elif kind == "get":
        size = draw(st.integers(req["offset"], req["offset"] + 3000))
        answer = {"size": size, "body": os.urandom(size - req["offset"]), "digest": draw(digests)}
    else:
        answer = {"body": os.urandom(req["size"] - req["offset"]), "digest": draw(digests)}
    return kind, req, answer


def _request(draw: Any, kind: str) -> dict[str, Any]:
    if kind == "auth":
        return {"user": draw(st.text(min_size=1, max_size=20)), "token": "t0k3n"}
    if kind == "list":
        return {"path": draw(st.one_of(st.just(""), names))}
    name = draw(names)
    if kind == "stat":
        return {"name": name}
    digest = draw(st.sampled_from(files.DIGESTS))
    if kind == "get":
        return {"name": name, "offset": draw(st.integers(0, 50)), "digest": digest}
    size = draw(sizes)
    return {
        "name": name,
        "size": size,
        "offset": draw(st.integers(0, size)),
        "digest": digest,
        "overwrite": draw(st.booleans()),
    }


# -- 1. round trip at any split ----------------------------------------------------------------
@FUZZ
@given(
    convo=st.lists(exchanges(), min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_round_trip_at_any_split(
    convo: list[tuple[str, dict[str, Any], dict[str, Any]]], cuts: list[int]
) -> None:
    client, server = FilesClientProtocol(), FilesServerProtocol()
    for kind, req, answer in convo:
        # request: client -> server
        if kind == "auth":
            client.send_auth(req["user"], req["token"])
            expect: Any = AuthRequest(req["user"], req["token"])
        elif kind == "stat":
            client.send_stat(req["name"])
            expect = StatRequest(req["name"])
        elif kind == "list":
            client.send_list(req["path"])
            expect = ListRequest(req["path"])
        elif kind == "get":
            client.send_get(req["name"], offset=req["offset"], digest=req["digest"])
            expect = GetRequest(req["name"], req["offset"], req["digest"])
        else:
            client.send_put(
                req["name"],
                size=req["size"],
                offset=req["offset"],
                digest=req["digest"],
                overwrite=req["overwrite"],
            )
            expect = PutRequest(
                req["name"], req["size"], req["offset"], req["digest"], req["overwrite"]
            )
        assert feed(server, send(client), cuts) == [expect]
        # answer: server -> client (and the upload body, client -> server)
        if "error" in answer:
            server.send_error(answer["error"], answer["message"])
            got = feed(client, send(server), cuts)
            assert got == [ErrorResponse(answer["error"], answer["message"][:1024])]
            continue
        if kind == "auth":
            server.send_auth_result(answer["user"], answer["roles"])
            want: list[Any] = [AuthResult(answer["user"], tuple(sorted(answer["roles"])))]
        elif kind == "stat":
            server.send_stat(req["name"], **answer)
            want = [StatResult(req["name"], **answer)]
        elif kind == "list":
            server.send_list(req["path"], answer["entries"])
            want = [ListResult(req["path"], tuple(answer["entries"]))]
        elif kind == "get":
            server.send_get(
                req["name"], size=answer["size"], offset=req["offset"], digest=req["digest"]
            )
            server.send_body(answer["body"])
            server.send_trailer(answer["digest"])
            length = answer["size"] - req["offset"]
            want = [
                GetStart(req["name"], answer["size"], req["offset"], length, req["digest"]),
                *([BodyChunk(answer["body"])] if length else []),
                BodyEnd(),
                Trailer(answer["digest"]),
            ]
        else:
            server.send_ready()
            assert feed(client, send(server), cuts) == [Ready(req["offset"])]
            client.send_body(answer["body"])
            client.send_trailer(answer["digest"])
            got = feed(server, send(client), cuts)
            assert got == [
                *([BodyChunk(answer["body"])] if answer["body"] else []),
                BodyEnd(),  # (for an empty body, emitted by send_ready itself)
                Trailer(answer["digest"]),
            ]
            server.send_put_result(
                req["name"], size=req["size"], digest_name=req["digest"], digest=answer["digest"]
            )
            want = [PutResult(req["name"], req["size"], req["digest"], answer["digest"])]
        assert feed(client, send(server), cuts) == want
    assert client.state is server.state is files.State.IDLE


# -- 2. hostile input ----------------------------------------------------------------------------
def _values() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False),
        st.text(max_size=20),
        st.sampled_from(
            ["blake3", "sha256", "a.txt", "../x", "0" * 64, "file", "dir", ".wcpart-a"]
        ),
        st.lists(st.text(max_size=4), max_size=3),
    )


KEYS = [
    "ok", "error", "message", "op", "name", "path", "size", "offset", "length", "digest",
    "algo", "ready", "exists", "mtime", "partial", "count", "user", "token", "roles", "type",
]  # fmt: skip
messages = st.dictionaries(st.sampled_from(KEYS), _values(), max_size=7)


def _line(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n"


hostile_lines = st.one_of(
    messages.map(_line),
    messages.map(lambda m: _line({"ok": True, **m})),
    st.binary(max_size=120),
    st.integers(1, 9000).map(lambda n: b"[" * n + b"\n"),
    st.integers(1, 9000).map(lambda n: b'{"a":' * n + b"\n"),
    st.just(b'{"ok":true,"size":1e400}\n'),
    st.just(b'{"ok":true,"offset":' + b"9" * 5000 + b"}\n"),
    st.just(b'{"digest":"' + b"0" * 64 + b'"}\n'),
    st.just(b"\xff\xfe\n"),
)


@FUZZ
@given(
    kind=st.sampled_from(["auth", "stat", "list", "get", "put"]),
    stream=st.lists(hostile_lines, max_size=6).map(b"".join),
    cuts=st.lists(st.integers(0, 20_000), max_size=10),
    max_header=st.integers(128, 600),
)
def test_client_takes_hostile_responses_with_documented_errors_only(
    kind: str, stream: bytes, cuts: list[int], max_header: int
) -> None:
    """Before: a response nested 8000 deep raised RecursionError (a traceback in ls)."""
    proto = FilesClientProtocol(max_header=max_header, max_list_body=2000)
    {
        "auth": lambda: proto.send_auth("ann", "t"),
        "stat": lambda: proto.send_stat("a"),
        "list": lambda: proto.send_list(""),
        "get": lambda: proto.send_get("a", offset=2),
        "put": lambda: proto.send_put("a", size=10, offset=3),
    }[kind]()
    proto.data_to_send()
    try:
        for piece in pieces(stream, cuts):
            proto.receive_data(piece)
            assert len(proto._buffer) <= max_header
            for ev in proto.events_received():
                if isinstance(ev, Ready):  # play the uploader on
                    proto.send_body(b"x" * proto.body_left)
                    proto.send_trailer("0" * 64)
                    if (err := proto.take_error()) is not None:
                        raise err
                if isinstance(ev, ListResult):
                    assert all(isinstance(e, Entry) for e in ev.entries)
    except PEER_ERRORS as exc:
        assert str(exc)
        assert proto.state in (files.State.ERROR, files.State.CLOSED)
    proto.receive_eof()


@FUZZ
@given(
    prefix=st.lists(exchanges(), max_size=2),
    stream=st.lists(hostile_lines, max_size=6).map(b"".join),
    cuts=st.lists(st.integers(0, 20_000), max_size=10),
    max_header=st.integers(64, 600),
)
def test_server_takes_hostile_requests_with_documented_errors_only(
    prefix: list[tuple[str, dict[str, Any], dict[str, Any]]],
    stream: bytes,
    cuts: list[int],
    max_header: int,
) -> None:
    """Hostile bytes after a valid start (so every state is reached), answered as a server
    that accepts uploads and refuses the rest."""
    proto = FilesServerProtocol(max_header=max_header)
    head = b""
    for kind, req, _answer in prefix:
        if kind == "put":
            head += _line({"op": "put", **req})
            break  # hostile bytes land in the upload body / trailer
        head += _line({"op": kind, **req})
    try:
        for piece in pieces(head + stream, cuts):
            proto.receive_data(piece)
            assert len(proto._buffer) <= max_header
            for ev in proto.events_received():
                if isinstance(ev, PutRequest):
                    proto.send_ready()
                elif isinstance(ev, Trailer):
                    proto.send_error("digest_mismatch", "no")
                elif isinstance(ev, AuthRequest | StatRequest | ListRequest | GetRequest):
                    proto.send_error("not_found", "no")
                proto.data_to_send()
                if (err := proto.take_error()) is not None:
                    raise err
    except PEER_ERRORS as exc:
        assert str(exc)
        assert proto.state in (files.State.ERROR, files.State.CLOSED)
        proto.send_fatal("bad_request", str(exc))
        assert proto.state is files.State.CLOSED
    proto.receive_eof()


def test_send_fatal_ends_any_state() -> None:
    for setup in (b"", b'{"op":"put","name":"a","size":5}\n', b'{"op":"st'):
        proto = FilesServerProtocol()
        proto.receive_data(setup)
        for ev in proto.events_received():
            if isinstance(ev, PutRequest):
                proto.send_ready()
        proto.data_to_send()
        assert proto.line_pending is (setup == b'{"op":"st')
        proto.send_fatal("timeout", "too slow")
        (line,) = proto.data_to_send()
        assert json.loads(line)["error"] == "timeout"
        assert proto.state is files.State.CLOSED
        proto.send_fatal("timeout", "again")  # idempotent once closed
        assert proto.data_to_send() == []
