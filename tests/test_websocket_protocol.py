"""The WebSocket glue without sockets: a client and a server object wired together, frames
fed whole, byte by byte and with trailing data; fragments, control frames in the middle,
closes both ways, size and UTF-8 limits, and a deflate bomb."""

from __future__ import annotations

import os
import tracemalloc
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from wirecat.protocols.websocket import (
    FAST_FRAME_MAX,
    BinaryMessage,
    Closed,
    HandshakeFailed,
    HandshakeRequest,
    Opened,
    PongReceived,
    TextMessage,
    WebSocket,
    server_frame,
)
from wirecat.runtime.websocket import WebSocketSettings, origin_allowed


def _pair(*, max_message: int = 65536, compression: bool = False) -> tuple[WebSocket, WebSocket]:
    """An open client/server pair."""
    client = WebSocket.client(
        "ws://127.0.0.1:7080/chat", max_message=max_message, compression=compression
    )
    server = WebSocket.server(max_message=max_message, compression=compression)
    server.receive_data(b"".join(client.data_to_send()))
    [req] = server.events_received()
    assert isinstance(req, HandshakeRequest) and req.request.path == "/chat"
    response = server.accept(req.request)
    assert response.status_code == 101
    assert server.events_received() == [Opened(server.extensions)]
    client.receive_data(b"".join(server.data_to_send()))
    assert client.events_received() == [Opened(client.extensions)]
    return client, server


def _masked(opcode: Opcode, data: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """A client frame (masked), as a browser sends it."""
    return Frame(opcode, data, fin, rsv1).serialize(mask=True, extensions=[])


def _feed(ws: WebSocket, data: bytes, how: str) -> list[object]:
    if how == "whole":
        ws.receive_data(data)
    else:
        for i in range(len(data)):
            ws.receive_data(data[i : i + 1])
    return list(ws.events_received())


HOW = ["whole", "bytewise"]
FUZZ_WS = settings(
    max_examples=int(os.environ.get("WIRECAT_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("how", HOW)
def test_text_and_binary_messages(how: str) -> None:
    client, server = _pair()
    client.send_text("héllo 👋")
    client.send_bytes(b"\x00\xff")
    assert _feed(server, b"".join(client.data_to_send()), how) == [
        TextMessage("héllo 👋"),
        BinaryMessage(b"\x00\xff"),
    ]
    server.send_text("back")
    assert _feed(client, b"".join(server.data_to_send()), how) == [TextMessage("back")]


@pytest.mark.parametrize("how", HOW)
def test_handshake_fed_byte_by_byte_with_a_frame_behind_it(how: str) -> None:
    client = WebSocket.client("ws://[::1]:9/x")
    server = WebSocket.server()
    request = b"".join(client.data_to_send())
    events = _feed(server, request + _masked(Opcode.TEXT, b"early"), how)
    assert isinstance(events[0], HandshakeRequest)
    server.accept(events[0].request)
    # The frame that came with the request is delivered once the socket is open.
    assert server.events_received()[0] == Opened(())


@pytest.mark.parametrize("how", HOW)
def test_fragmented_message_split_inside_a_utf8_character(how: str) -> None:
    _, server = _pair()
    text = "añb€c".encode()
    data = (
        _masked(Opcode.TEXT, text[:2], fin=False)  # ends inside "ñ"
        + _masked(Opcode.CONT, text[2:6], fin=False)  # ends inside "€"
        + _masked(Opcode.CONT, text[6:], fin=True)
    )
    assert _feed(server, data, how) == [TextMessage("añb€c")]


@pytest.mark.parametrize("how", HOW)
def test_ping_in_the_middle_of_a_fragmented_message(how: str) -> None:
    _, server = _pair()
    data = (
        _masked(Opcode.BINARY, b"one ", fin=False)
        + _masked(Opcode.PING, b"are you there")
        + _masked(Opcode.CONT, b"two", fin=True)
    )
    assert _feed(server, data, how) == [BinaryMessage(b"one two")]
    pong = b"".join(server.data_to_send())
    assert pong == server_frame(b"are you there", text=False)[:0] + b"\x8a\x0dare you there"


def test_pong_is_reported() -> None:
    client, server = _pair()
    payload = server.send_ping()
    client.receive_data(b"".join(server.data_to_send()))
    assert client.events_received() == []  # websockets answers the ping by itself
    server.receive_data(b"".join(client.data_to_send()))
    assert server.events_received() == [PongReceived(payload)]


def test_close_started_by_the_client() -> None:
    client, server = _pair()
    client.close(1000, "bye")
    server.receive_data(b"".join(client.data_to_send()))
    assert server.events_received() == [Closed(1000, "bye", True)]
    out = server.data_to_send()
    assert out[-1] == b""  # the server closes the TCP connection first (RFC 6455 7.1.1)
    client.receive_data(b"".join(out[:-1]))
    assert client.events_received() == [Closed(1000, "bye", False)]
    client.receive_eof()
    assert client.state.name == "CLOSED"


def test_close_started_by_the_server() -> None:
    client, server = _pair()
    server.close(1001, "going away")
    server.close(1000)  # idempotent
    client.receive_data(b"".join(server.data_to_send()))
    assert client.events_received() == [Closed(1001, "going away", True)]
    server.receive_data(b"".join(client.data_to_send()))
    assert server.events_received() == [Closed(1001, "going away", False)]
    assert server.data_to_send() == [b""]


def test_eof_without_close_frame_is_1006() -> None:
    _, server = _pair()
    server.receive_eof()
    assert server.events_received() == [Closed(1006, "no close frame", True)]


@pytest.mark.parametrize("how", HOW)
def test_oversized_message_closes_1009_before_reading_its_payload(how: str) -> None:
    _, server = _pair(max_message=1000)
    # Only the header of a 1 GiB frame: refused from the length field alone.
    header = bytes((0x82, 0x80 | 127)) + (1 << 30).to_bytes(8, "big") + b"mask"
    events = _feed(server, header, how)
    assert len(events) == 1 and isinstance(events[0], Closed) and events[0].code == 1009
    frame = b"".join(server.data_to_send())
    assert frame.startswith(b"\x88") and frame[2:4] == (1009).to_bytes(2, "big")


def test_oversized_fragmented_message_closes_1009() -> None:
    _, server = _pair(max_message=1000)
    data = _masked(Opcode.TEXT, b"a" * 600, fin=False) + _masked(Opcode.CONT, b"b" * 600)
    events = _feed(server, data, "whole")
    assert [type(e) for e in events] == [Closed] and events[0].code == 1009  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "frames",
    [
        [(Opcode.TEXT, b"ok \xff", True)],
        [(Opcode.TEXT, b"ok", False), (Opcode.CONT, b"\xc3\x28", True)],  # bad continuation
        [(Opcode.TEXT, b"\xe2\x82", True)],  # truncated at the end of the message
    ],
)
def test_bad_utf8_in_text_closes_1007(frames: list[tuple[Opcode, bytes, bool]]) -> None:
    _, server = _pair()
    data = b"".join(_masked(op, payload, fin=fin) for op, payload, fin in frames)
    events = _feed(server, data, "whole")
    assert len(events) == 1 and isinstance(events[0], Closed) and events[0].code == 1007
    out = b"".join(server.data_to_send())
    assert out[2:4] == (1007).to_bytes(2, "big")


def test_protocol_error_closes_1002() -> None:
    _, server = _pair()
    events = _feed(server, _masked(Opcode.CONT, b"no start"), "whole")
    assert len(events) == 1 and isinstance(events[0], Closed) and events[0].code == 1002


def test_unmasked_client_frame_is_refused() -> None:
    _, server = _pair()
    events = _feed(server, server_frame(b"unmasked"), "whole")
    assert isinstance(events[0], Closed) and events[0].code == 1002


def _deflate_frame(inflated: int) -> bytes:
    """A masked, compressed (RSV1) binary frame whose payload inflates to ``inflated`` zero
    bytes: deflate's best ratio, ~1030:1."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [comp.compress(bytes(min(1 << 20, inflated - i))) for i in range(0, inflated, 1 << 20)]
    payload = b"".join(parts) + comp.flush(zlib.Z_SYNC_FLUSH)
    payload = payload[:-4]  # RFC 7692 7.2.1: the 00 00 ff ff tail is not sent
    n = len(payload)
    size = bytes((0x80 | n,)) if n < 126 else bytes((0x80 | 126,)) + n.to_bytes(2, "big")
    return bytes((0x80 | 0x40 | 0x2,)) + size + b"\0\0\0\0" + payload  # all-zero mask key


@pytest.mark.parametrize("inflated", [1 << 20, 60 << 20])
def test_deflate_bomb_is_refused_without_inflating_it(inflated: int) -> None:
    """A compressed frame under the limit that would inflate far beyond it (1 KiB -> 1 MiB,
    60 KiB -> 60 MiB): closed 1009 after at most max_message bytes of output, with no
    large allocation."""
    _, server = _pair(max_message=65536, compression=True)
    assert server.extensions == ("permessage-deflate",)
    frame = _deflate_frame(inflated)
    assert len(frame) < 65536
    tracemalloc.start()
    try:
        server.receive_data(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    events = server.events_received()
    assert len(events) == 1 and isinstance(events[0], Closed) and events[0].code == 1009
    assert peak < 1024 * 1024, f"peak {peak} bytes while refusing {inflated} inflated bytes"


def test_compressed_messages_round_trip() -> None:
    client, server = _pair(compression=True)
    client.send_text("x" * 5000)
    wire = b"".join(client.data_to_send())
    assert len(wire) < 200  # compressed
    server.receive_data(wire)
    assert server.events_received() == [TextMessage("x" * 5000)]


def test_server_refuses_a_non_websocket_request() -> None:
    server = WebSocket.server()
    server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    [req] = server.events_received()
    assert isinstance(req, HandshakeRequest)
    response = server.accept(req.request)
    assert response.status_code == 426
    assert server.data_to_send()[-1] == b""


def test_client_reports_a_refused_handshake() -> None:
    client = WebSocket.client("ws://127.0.0.1:1/")
    server = WebSocket.server()
    server.receive_data(b"".join(client.data_to_send()))
    [req] = server.events_received()
    assert isinstance(req, HandshakeRequest)
    server.reject(403, "no\n")
    client.receive_data(b"".join(d for d in server.data_to_send() if d))
    client.receive_eof()
    events = client.events_received()
    assert any(isinstance(e, HandshakeFailed) and e.status == 403 for e in events)


@given(st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=5), st.data())
def test_any_split_gives_the_same_messages(messages: list[bytes], data: st.DataObject) -> None:
    client, server = _pair()
    for m in messages:
        client.send_bytes(m)
    wire = b"".join(client.data_to_send())
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    got: list[object] = []
    for piece in pieces:
        server.receive_data(piece)
        got.extend(server.events_received())
    assert got == [BinaryMessage(m) for m in messages]


def test_server_frame_lengths() -> None:
    assert server_frame(b"a") == b"\x81\x01a"
    assert server_frame(b"a" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert server_frame(b"a" * 65536, text=False)[:10] == b"\x82\x7f" + (65536).to_bytes(8, "big")


@pytest.mark.parametrize(
    ("origin", "host", "allow", "ok"),
    [
        (None, "127.0.0.1:7080", (), True),  # a program: no Origin header
        ("http://127.0.0.1:7080", "127.0.0.1:7080", (), True),  # the page itself
        ("https://Chat.Example:443", "chat.example:443", (), True),
        ("http://evil.example", "127.0.0.1:7080", (), False),
        ("http://127.0.0.1:7081", "127.0.0.1:7080", (), False),  # another port is another site
        ("null", "127.0.0.1:7080", (), False),  # sandboxed frames, file:// pages
        ("https://app.example", "127.0.0.1:7080", ("https://app.example",), True),
        ("https://other.example", "127.0.0.1:7080", ("*",), True),
    ],
)
def test_origin_check(origin: str | None, host: str, allow: tuple[str, ...], ok: bool) -> None:
    assert origin_allowed(origin, host, allow) is ok


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        WebSocketSettings(max_message=0)
    with pytest.raises(ValueError):
        WebSocketSettings(allow_origin=("evil.example",))
    assert WebSocketSettings(allow_origin="https://a.example").allow_origin == (
        "https://a.example",
    )


# -- the server's fast path (small, complete, unfragmented, masked frames) ------------------


def _split_feed(ws: WebSocket, data: bytes, how: str) -> list[object]:
    """Feed ``data`` whole, byte by byte, or in 3-byte pieces; return the events."""
    step = {"whole": len(data) or 1, "bytewise": 1, "threes": 3}[how]
    got: list[object] = []
    for i in range(0, len(data), step):
        ws.receive_data(data[i : i + step])
        got.extend(ws.events_received())
    return got


HOW3 = ["whole", "bytewise", "threes"]


@pytest.mark.parametrize("how", HOW3)
def test_fast_path_messages_of_every_header_size(how: str) -> None:
    _, server = _pair()
    sizes = [0, 1, 125, 126, 127, 1000, FAST_FRAME_MAX, FAST_FRAME_MAX + 1, 65535, 65536]
    messages = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    data = b"".join(
        _masked(Opcode.BINARY if i % 2 else Opcode.TEXT, m) for i, m in enumerate(messages)
    )
    got = _split_feed(server, data, how)
    want = [BinaryMessage(m) if i % 2 else TextMessage(m.decode()) for i, m in enumerate(messages)]
    assert got == want
    assert server.is_open and server.data_to_send() == []
    assert server._fast  # the small frames did not go through websockets' parser


@pytest.mark.parametrize("how", HOW3)
def test_fast_path_keeps_a_partial_frame_for_the_next_bytes(how: str) -> None:
    _, server = _pair()
    one, two = _masked(Opcode.TEXT, b"one"), _masked(Opcode.TEXT, "twö".encode())
    assert _split_feed(server, one + two[:5], how) == [TextMessage("one")]  # trailing data
    assert _split_feed(server, two[5:], how) == [TextMessage("twö")]


@pytest.mark.parametrize("how", HOW3)
def test_fast_path_hands_fragments_and_control_frames_to_websockets(how: str) -> None:
    _, server = _pair()
    data = (
        _masked(Opcode.TEXT, b"before")
        + _masked(Opcode.TEXT, b"frag", fin=False)
        + _masked(Opcode.PING, b"p1")  # inside the fragmented message
        + _masked(Opcode.CONT, "mént".encode(), fin=True)
        + _masked(Opcode.BINARY, b"\x00after")
        + _masked(Opcode.PONG, b"p2")
        + _masked(Opcode.TEXT, b"last")
    )
    assert _split_feed(server, data, how) == [
        TextMessage("before"),
        TextMessage("fragmént"),
        BinaryMessage(b"\x00after"),
        PongReceived(b"p2"),
        TextMessage("last"),
    ]
    assert b"".join(server.data_to_send()) == b"\x8a\x02p1"  # the pong, once


@pytest.mark.parametrize("how", HOW3)
def test_fast_path_frame_while_a_fragmented_message_is_open_closes_1002(how: str) -> None:
    _, server = _pair()
    data = _masked(Opcode.TEXT, b"start", fin=False) + _masked(Opcode.TEXT, b"whole")
    events = _split_feed(server, data, how)
    assert [type(e) for e in events] == [Closed] and events[0].code == 1002  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", HOW3)
def test_fast_path_bad_utf8_closes_1007_and_ignores_what_follows(how: str) -> None:
    _, server = _pair()
    data = (
        _masked(Opcode.TEXT, b"fine")
        + _masked(Opcode.TEXT, b"bad \xc3\x28")
        + _masked(Opcode.TEXT, b"after")
    )
    events = _split_feed(server, data, how)
    assert events[0] == TextMessage("fine")
    assert [type(e) for e in events[1:]] == [Closed] and events[1].code == 1007  # type: ignore[attr-defined]
    out = server.data_to_send()
    assert out[0][:4] == b"\x88" + bytes((len(out[0]) - 2,)) + (1007).to_bytes(2, "big")
    assert out[-1] == b""  # the server then closes the TCP connection


@pytest.mark.parametrize("how", HOW3)
@pytest.mark.parametrize("size", [101, 126, 70000, 1 << 40])
def test_fast_path_oversize_closes_1009_from_the_header(how: str, size: int) -> None:
    _, server = _pair(max_message=100)
    if size < 126:
        head = bytes((0x81, 0x80 | size))
    elif size < 65536:
        head = bytes((0x81, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + size.to_bytes(8, "big")
    tracemalloc.start()
    try:
        events = _split_feed(server, _masked(Opcode.TEXT, b"ok") + head + b"mask", how)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert events[0] == TextMessage("ok")
    assert [type(e) for e in events[1:]] == [Closed] and events[1].code == 1009  # type: ignore[attr-defined]
    assert peak < 64 * 1024  # refused from the length field: no payload buffer
    assert server.data_to_send()[0][2:4] == (1009).to_bytes(2, "big")


@pytest.mark.parametrize(
    ("first", "second", "code"),
    [
        (0xC1, 0x80, 1002),  # RSV1 without an extension
        (0xA2, 0x80, 1002),  # RSV2
        (0x91, 0x80, 1002),  # RSV3
        (0x83, 0x80, 1002),  # reserved opcode 3
        (0x8B, 0x80, 1002),  # reserved control opcode 11
        (0x81, 0x00, 1002),  # unmasked text from a client
        (0x89, 0xFE, 1002),  # a ping longer than 125 bytes
    ],
)
def test_fast_path_keeps_the_rfc_checks(first: int, second: int, code: int) -> None:
    _, server = _pair()
    size = 200 if second & 0x7F == 0x7E else 3
    length = (size.to_bytes(2, "big") if size > 125 else b"") if second & 0x7F == 0x7E else b""
    head = bytes((first, second | (0 if second & 0x7F else 3))) + length
    frame = head + (b"\x00\x00\x00\x00" if second & 0x80 else b"") + b"x" * size
    events = _split_feed(server, _masked(Opcode.TEXT, b"ok") + frame, "whole")
    assert events[0] == TextMessage("ok")
    assert [type(e) for e in events[1:]] == [Closed] and events[1].code == code  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", HOW3)
def test_close_after_fast_frames_in_the_same_bytes(how: str) -> None:
    _, server = _pair()
    data = (
        _masked(Opcode.TEXT, b"a")
        + _masked(Opcode.TEXT, b"b")
        + _masked(Opcode.CLOSE, (1000).to_bytes(2, "big") + b"bye")
        + _masked(Opcode.TEXT, b"ignored: after the close")
    )
    events = _split_feed(server, data, how)
    assert events == [TextMessage("a"), TextMessage("b"), Closed(1000, "bye", True)]
    assert server.data_to_send() == [b"\x88\x05\x03\xe8bye", b""]


@pytest.mark.parametrize("how", HOW3)
def test_message_handler_gets_messages_in_order_without_events(how: str) -> None:
    _, server = _pair()
    got: list[str | bytes] = []
    server.message_handler = got.append
    data = (
        _masked(Opcode.TEXT, b"1")
        + _masked(Opcode.BINARY, b"2", fin=False)
        + _masked(Opcode.CONT, b"3", fin=True)
        + _masked(Opcode.PONG, b"")
        + _masked(Opcode.TEXT, b"4" * 300)
        + _masked(Opcode.BINARY, b"5" * (FAST_FRAME_MAX + 10))
    )
    events = _split_feed(server, data, how)
    assert got == ["1", b"23", "4" * 300, b"5" * (FAST_FRAME_MAX + 10)]
    assert events == [PongReceived(b"")]


@pytest.mark.parametrize("how", HOW3)
def test_frames_behind_the_request_are_parsed_once_open(how: str) -> None:
    client = WebSocket.client("ws://127.0.0.1:9/x")
    server = WebSocket.server()
    early = _masked(Opcode.TEXT, b"early") + _masked(Opcode.BINARY, b"too")
    events = _split_feed(server, b"".join(client.data_to_send()) + early, how)
    assert [type(e) for e in events] == [HandshakeRequest]
    server.accept(events[0].request)  # type: ignore[attr-defined]
    assert server.events_received() == [Opened(()), TextMessage("early"), BinaryMessage(b"too")]


def test_eof_inside_a_fast_frame_is_1006() -> None:
    _, server = _pair()
    server.receive_data(_masked(Opcode.TEXT, b"cut short")[:7])
    server.receive_eof()
    events = server.events_received()
    assert [type(e) for e in events] == [Closed] and events[0].code == 1006  # type: ignore[attr-defined]


_FRAMES = st.one_of(
    st.tuples(st.just(Opcode.TEXT), st.text(max_size=200).map(str.encode), st.just(True)),
    st.tuples(st.just(Opcode.BINARY), st.binary(max_size=300), st.just(True)),
    st.tuples(st.just(Opcode.PING), st.binary(max_size=20), st.just(True)),
    st.tuples(st.just(Opcode.BINARY), st.sampled_from([b"z" * 20000, b"y" * 65536]), st.just(True)),
    st.lists(st.binary(max_size=40), min_size=2, max_size=4).map(
        lambda parts: ("fragments", parts)
    ),
)


@given(st.lists(_FRAMES, min_size=1, max_size=6), st.data())
def test_fast_path_agrees_with_websockets_parser_at_any_split(
    frames: list[Any], data: st.DataObject
) -> None:
    wire = b""
    for f in frames:
        if f[0] == "fragments":
            parts = f[1]
            wire += _masked(Opcode.BINARY, parts[0], fin=False)
            wire += b"".join(_masked(Opcode.CONT, p, fin=False) for p in parts[1:-1])
            wire += _masked(Opcode.CONT, parts[-1], fin=True)
        else:
            wire += _masked(f[0], f[1], fin=f[2])
    reference = _pair()[1]
    reference._fast = False  # websockets' parser only
    reference.receive_data(wire)
    want = reference.events_received()
    _, server = _pair()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    got: list[object] = []
    for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        server.receive_data(wire[a:b])
        got.extend(server.events_received())
    assert got == want
    assert server.data_to_send() == reference.data_to_send()


def _raw_frame(first: int, payload: bytes, key: bytes) -> bytes:
    """A masked frame with any first byte (FIN, RSV bits, opcode): also invalid ones."""
    size = len(payload)
    if size < 126:
        head = bytes((first, 0x80 | size))
    else:
        head = bytes((first, 0xFE)) + size.to_bytes(2, "big")
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


_PIECES = st.one_of(
    st.binary(max_size=40),  # garbage
    st.builds(
        _raw_frame,
        st.sampled_from([0x81, 0x82, 0x80, 0x01, 0x02, 0x00, 0x88, 0x89, 0x8A, 0xC1, 0x83]),
        st.one_of(st.binary(max_size=140), st.text(max_size=60).map(str.encode)),
        st.binary(min_size=4, max_size=4),
    ),
    st.sampled_from([b"\x81\xfe\xff\xff", b"\x82\xff" + b"\x7f" * 8, b"\x81\x05", b"\x81\x85"]),
)


@FUZZ_WS
@given(st.lists(_PIECES, max_size=8), st.data(), st.booleans())
def test_fast_path_agrees_with_websockets_on_hostile_bytes(
    pieces: list[bytes], data: st.DataObject, eof: bool
) -> None:
    """Any bytes at any split: the same events and the same bytes out as websockets' own
    parser, no exception, and the fast path's buffer stays bounded.

    The reference is fed byte by byte: each frame is then handled as soon as it is whole,
    so the first fault in the stream decides the close code (fed at once, websockets may
    parse past a text frame with bad UTF-8 and fail on a later frame first)."""
    wire = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    got, want = _fast_and_reference(1, wire, cuts, eof)
    assert _norm(got) == _norm(want)


def _fast_and_reference(
    side: int, wire: bytes, cuts: list[int], eof: bool
) -> tuple[tuple[list[object], list[bytes]], tuple[list[object], list[bytes]]]:
    """(events, bytes out) of side *side* of ``_pair`` (0 client, 1 server) fed *wire* cut at
    *cuts* (its fast path's buffer checked bounded after each piece), then of the same side
    with the fast path off fed byte by byte (websockets' own parser, the reference)."""
    reference = _pair(max_message=1000)[side]
    reference._fast = False
    for i in range(len(wire)):
        reference.receive_data(wire[i : i + 1])
    if eof:
        reference.receive_eof()
    want = (reference.events_received(), reference.data_to_send())
    proto = _pair(max_message=1000)[side]
    events: list[object] = []
    for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        proto.receive_data(wire[a:b])
        assert len(proto._pending) <= FAST_FRAME_MAX + 14
        events += proto.events_received()
    if eof:
        proto.receive_eof()
        events += proto.events_received()
    return (events, proto.data_to_send()), want


def _norm(result: tuple[list[object], list[bytes]]) -> tuple[list[object], bytes]:
    # websockets writes the same bytes whether it got them in one piece or several
    return result[0], b"".join(result[1])


# -- receiving: unfinished input, for the runtime's deadline (#13 Hardening II) -------------
def _client_frames(client: WebSocket, text: str) -> bytes:
    client.send_text(text)
    return b"".join(client.data_to_send())


@pytest.mark.parametrize("compression", [False, True])
def test_receiving_marks_an_unfinished_frame_or_fragmented_message(compression: bool) -> None:
    client, server = _pair(compression=compression)
    assert server.receiving is None
    small = _client_frames(client, "hi")
    big = _client_frames(client, "y" * (FAST_FRAME_MAX + 10))  # websockets' parser reads it
    fragmented = (
        _masked(Opcode.TEXT, b"ab", fin=False)
        + _masked(Opcode.PING, b"p")  # a control frame inside the message: still unfinished
        + _masked(Opcode.CONT, b"cd")
    )
    for unit in (small, big, fragmented):
        marks = []
        for i in range(len(unit)):  # byte by byte
            server.receive_data(unit[i : i + 1])
            marks.append(server.receiving)
        assert marks[-1] is None
        assert None not in marks[:-1] and len(set(marks[:-1])) == 1  # one unit, one mark
        server.receive_data(unit)  # whole
        assert server.receiving is None
    # Trailing data: a chunk that ends one unit and begins another gives another mark,
    # though the input was unfinished before and after it.
    server.receive_data(small + big[:1])
    first = server.receiving
    server.receive_data(big[1:] + small[:3])
    second = server.receiving
    assert first is not None and second is not None and first != second
    server.receive_data(small[3:])
    assert server.receiving is None
    texts = [e.text for e in server.events_received() if isinstance(e, TextMessage)]
    big_text = "y" * (FAST_FRAME_MAX + 10)
    assert texts == ["hi", "hi", big_text, big_text, "abcd", "abcd", "hi", big_text, "hi"]


# -- the client side's fast path (#13 Hardening II: one parser for both sides) ---------------
def _unmasked(opcode: Opcode, data: bytes, *, fin: bool = True) -> bytes:
    """A server frame (unmasked)."""
    return Frame(opcode, data, fin).serialize(mask=False, extensions=[])


def _refused_client() -> WebSocket:
    client = WebSocket.client("ws://127.0.0.1:1/")
    client.data_to_send()
    return client


@pytest.mark.parametrize("how", HOW3)
def test_client_fast_path_messages_of_every_header_size(how: str) -> None:
    client, _ = _pair()
    sizes = [0, 1, 125, 126, 127, 1000, FAST_FRAME_MAX, FAST_FRAME_MAX + 1, 65535, 65536]
    messages = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    data = b"".join(
        _unmasked(Opcode.BINARY if i % 2 else Opcode.TEXT, m) for i, m in enumerate(messages)
    )
    data += _unmasked(Opcode.TEXT, b"ab", fin=False) + _unmasked(Opcode.CONT, b"cd")
    data += _unmasked(Opcode.TEXT, b"tail")[:3]  # trailing data: the start of a frame
    got = _split_feed(client, data, how)
    want = [BinaryMessage(m) if i % 2 else TextMessage(m.decode()) for i, m in enumerate(messages)]
    assert got == [*want, TextMessage("abcd")]
    assert client._fast and client.receiving is not None  # "tail" is unfinished
    assert _split_feed(client, _unmasked(Opcode.TEXT, b"tail")[3:], how) == [TextMessage("tail")]
    assert client.receiving is None and client.is_open and client.data_to_send() == []


@pytest.mark.parametrize("how", HOW3)
def test_client_parses_frames_that_came_with_the_101(how: str) -> None:
    client = WebSocket.client("ws://127.0.0.1:7080/chat")
    server = WebSocket.server()
    server.receive_data(b"".join(client.data_to_send()))
    [req] = server.events_received()
    server.accept(req.request)
    server.send_text("first")
    server.send_bytes(b"second")
    wire = b"".join(server.data_to_send())
    got = _split_feed(client, wire, how)
    assert got == [Opened(()), TextMessage("first"), BinaryMessage(b"second")]
    assert client._fast


@pytest.mark.parametrize("how", HOW3)
def test_client_refused_with_a_body_fed_any_way(how: str) -> None:
    client = _refused_client()
    server = WebSocket.server()
    server.receive_data(WebSocket.client("ws://127.0.0.1:1/").data_to_send()[0])
    assert len(server.events_received()) == 1  # the request
    server.reject(403, "go away\n")
    got = _split_feed(client, b"".join(d for d in server.data_to_send() if d), how)
    client.receive_eof()
    got += client.events_received()
    assert [e for e in got if isinstance(e, HandshakeFailed)] == [
        HandshakeFailed(403, "HTTP 403 Forbidden: go away")
    ]
    assert not client._fast


def test_client_refuses_a_masked_server_frame_with_1002() -> None:
    client, _ = _pair()
    client.receive_data(_masked(Opcode.TEXT, b"masked"))  # RFC 6455 5.1: not from a server
    [closed] = client.events_received()
    assert isinstance(closed, Closed) and closed.code == 1002


def _raw_server_frame(first: int, payload: bytes, masked: bool) -> bytes:
    """A server frame with any first byte; unmasked unless ``masked`` (a client refuses it)."""
    if masked:
        return _raw_frame(first, payload, b"\x01\x02\x03\x04")
    size = len(payload)
    head = bytes((first, size)) if size < 126 else bytes((first, 126)) + size.to_bytes(2, "big")
    return head + payload


_SERVER_PIECES = st.one_of(
    st.binary(max_size=40),  # garbage
    st.builds(
        _raw_server_frame,
        st.sampled_from([0x81, 0x82, 0x80, 0x01, 0x02, 0x00, 0x88, 0x89, 0x8A, 0xC1, 0x83]),
        st.one_of(st.binary(max_size=140), st.text(max_size=60).map(str.encode)),
        st.booleans(),
    ),
    st.sampled_from([b"\x81\x7e\xff\xff", b"\x82\x7f" + b"\x7f" * 8, b"\x81\x05", b"\x81\x85"]),
)


@FUZZ_WS
@given(st.lists(_SERVER_PIECES, max_size=8), st.data(), st.booleans())
def test_client_fast_path_agrees_with_websockets_on_any_bytes(
    pieces: list[bytes], data: st.DataObject, eof: bool
) -> None:
    """The client side of test_fast_path_agrees_with_websockets_on_hostile_bytes: server
    frames (unmasked; some masked, which a client must refuse), garbage, any split."""
    wire = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    got, want = _fast_and_reference(0, wire, cuts, eof)
    assert _unmask(_norm(got)) == _unmask(_norm(want))


def _unmask(result: tuple[list[object], bytes]) -> tuple[list[object], list[tuple[int, bytes]]]:
    """A client's frames (close, pong: payloads < 126 bytes) with their random masks undone."""
    frames, data, i = [], result[1], 0
    while i < len(data):
        size = data[i + 1] & 0x7F
        key = data[i + 2 : i + 6]
        payload = bytes(b ^ key[k % 4] for k, b in enumerate(data[i + 6 : i + 6 + size]))
        frames.append((data[i], payload))
        i += 6 + size
    return result[0], frames
