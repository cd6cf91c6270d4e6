"""The chat client: its sans-I/O protocol without sockets, and wirecat.ChatClient over real ones."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import wirecat
from _chat import Peer
from helpers import scaled
from test_chat_service import chat_server
from wirecat.errors import (
    ChatError,
    ChatRefused,
    LocalProtocolError,
    RemoteProtocolError,
)
from wirecat.protocols.chat import (
    ChatClientProtocol,
    ClientState,
    EndOfStream,
    ErrorEvent,
    Joined,
    Message,
    RoomJoined,
    Welcome,
)

T = scaled(5.0)

BANNER = b"*** Welcome to wirecat chat\r\n*** Programs: send JSON\r\n"
WELCOME = (
    b'{"type":"welcome","nick":"ann","server":"wirecat","default_room":"#lobby",'
    b'"motd":"","ref":1}\n'
)
JOINED = b'{"type":"joined","room":"#x","members":["ann"],"history":[],"ref":2}\n'
MESSAGE = (
    b'{"type":"message","id":7,"ts":"2026-01-02T03:04:05.000Z","room":"#x","nick":"bob",'
    b'"text":"hi","kind":"say"}\n'
)
STREAM = BANNER + WELCOME + JOINED + MESSAGE


def logged_in() -> ChatClientProtocol:
    proto = ChatClientProtocol()
    assert proto.hello("ann") == 1 and proto.join("#x") == 2  # pipelined: one write
    assert b"".join(proto.data_to_send()) == (
        b'{"type":"hello","nick":"ann","ref":1}\n{"type":"join","room":"#x","ref":2}\n'
    )
    return proto


def feed(proto: ChatClientProtocol, data: bytes, step: int) -> list[object]:
    out: list[object] = []
    for i in range(0, len(data), step):
        proto.receive_data(data[i : i + step])
        out += proto.events_received()
    return out


@pytest.mark.parametrize("step", [len(STREAM), 1, 7])
def test_client_protocol_parses_replies_and_events_at_any_split(step: int) -> None:
    proto = logged_in()
    events = feed(proto, STREAM + b'{"type":"pong"', step)  # trailing partial line kept
    assert [type(e) for e in events] == [Welcome, RoomJoined, Message]
    assert events[0] == proto.welcome and proto.state is ClientState.LOGGED_IN
    assert proto.greeting == ["*** Welcome to wirecat chat", "*** Programs: send JSON"]
    assert events[1] == RoomJoined("#x", ("ann",), (), 2)
    proto.receive_eof()
    with pytest.raises(RemoteProtocolError):  # '{"type":"pong"' is not JSON
        proto.events_received()


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=6))
def test_client_protocol_any_split_gives_the_same_events(cuts: list[int]) -> None:
    proto = logged_in()
    bounds = [0, *sorted(cuts), len(STREAM)]
    events: list[object] = []
    for a, b in itertools.pairwise(bounds):
        proto.receive_data(STREAM[a:b])
        events += proto.events_received()
    assert [type(e) for e in events] == [Welcome, RoomJoined, Message]


def test_client_protocol_states_are_data() -> None:
    proto = ChatClientProtocol()
    with pytest.raises(LocalProtocolError):
        proto.join("#x")  # nothing before hello
    proto.hello("ann")
    with pytest.raises(LocalProtocolError):
        proto.hello("bob")  # one hello at a time
    proto.receive_data(b'{"type":"error","code":"nick_taken","reason":"taken","ref":1}\n')
    assert proto.events_received() == [ErrorEvent("nick_taken", "taken", 1)]
    assert proto.state is ClientState.CONNECTED  # refused: may try another nick
    proto.hello("ann2")
    proto.quit()
    with pytest.raises(LocalProtocolError):
        proto.say("late")
    proto.receive_eof()
    assert proto.events_received() == [EndOfStream()]


def test_client_protocol_limits_server_lines() -> None:
    proto = ChatClientProtocol(max_line=64)
    proto.hello()
    proto.receive_data(b"{" + b"x" * 100 + b"\n")
    with pytest.raises(RemoteProtocolError, match="longer than 64 bytes"):
        proto.events_received()


def test_client_protocol_rejects_garbage_after_welcome() -> None:
    proto = logged_in()
    proto.receive_data(WELCOME + b"not json\n")
    with pytest.raises(RemoteProtocolError, match="invalid line"):
        proto.events_received()


# -- wirecat.ChatClient over real sockets -------------------------------------------------------
async def test_chat_client_logs_in_joins_says_dms_and_iterates() -> None:
    async with chat_server() as (_, ep, stack):
        ann = await stack.enter_async_context(wirecat.ChatClient.connect(ep, nick="ann"))
        bob = await stack.enter_async_context(wirecat.ChatClient.connect(str(ep), nick="bob"))
        assert ann.welcome is not None and ann.welcome.nick == "ann"
        joined = await ann.join("#x")
        assert joined.room == "#x" and joined.members == ("ann",)
        await bob.join("#x")
        sent = await bob.say("hello ann", room="#x")
        assert sent.message.id > 0
        dm = await ann.dm("bob", "psst")
        assert dm.message.id > sent.message.id
        got: list[object] = []
        async with asyncio.timeout(T):
            async for event in ann:
                got.append(event)
                if isinstance(event, Message):
                    break
        assert any(isinstance(e, Joined) and e.nick == "bob" for e in got)
        last = got[-1]
        assert isinstance(last, Message)
        assert last == Message(sent.message.id, last.ts, "#x", "bob", "hello ann")
        with pytest.raises(ChatError) as info:
            await ann.dm("nobody", "hi")
        assert info.value.code == "no_such_nick" and "nobody" in info.value.reason
        assert (await ann.who("#x")).members == ("ann", "bob")
        await bob.quit()
        async with asyncio.timeout(T):
            rest = [e async for e in bob]  # what bob did not read; ends when the server closes
        assert rest[:2] == [  # the hello lands in #lobby: its join event, then the reply
            Joined(rest[0].id, rest[0].ts, "#lobby", "bob"),  # type: ignore[union-attr]
            RoomJoined("#lobby", ("ann", "bob"), ()),
        ]
        assert [type(e).__name__ for e in rest if not isinstance(e, Joined | RoomJoined)] == [
            "Message",
            "Direct",
        ]


async def test_chat_client_refused_login_carries_code() -> None:
    async with chat_server() as (_, ep, stack):
        await stack.enter_async_context(wirecat.ChatClient.connect(ep, nick="ann"))
        with pytest.raises(ChatRefused) as info:
            await wirecat.ChatClient.connect(ep, nick="ann", timeout=T)
        assert info.value.code == "nick_taken" and not info.value.auth


async def test_chat_client_tells_a_non_chat_service_apart() -> None:
    async def greeter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"Thank you for connecting\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greeter, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(RemoteProtocolError, match="does not look like a wirecat chat") as info:
            await wirecat.ChatClient.connect(f"127.0.0.1:{port}", timeout=T)
        assert "Thank you for connecting" in str(info.value)


async def test_chat_client_against_a_hostile_server_keeps_text_inert() -> None:
    # The client hands peer text over as it is (typed); rendering escapes it (see the CLI test).
    async def evil(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(WELCOME.replace(b'"nick":"ann"', b'"nick":"\\u001b[2J"'))
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    server = await asyncio.start_server(evil, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    opening = wirecat.ChatClient.connect(f"127.0.0.1:{port}", nick="ann", timeout=T)
    async with server, opening as c:
        assert c.welcome is not None and c.welcome.nick == "\x1b[2J"


async def test_chat_client_speaks_to_a_json_peer() -> None:
    async with chat_server() as (_, ep, stack):
        peer = Peer(*(await asyncio.open_connection(ep.host, ep.port)))
        stack.push_async_callback(peer.aclose)
        await peer.send_json(type="hello", nick="bob")
        await peer.json_until("welcome")
        await peer.send_json(type="join", room="#lobby")
        await peer.json_until("joined")
        async with wirecat.ChatClient.connect(ep, nick="ann") as ann:
            await ann.join("#lobby")
            await ann.say("hi bob")
            obj = await peer.json_until("message")
            assert obj["nick"] == "ann" and obj["text"] == "hi bob"
            assert json.loads(json.dumps(obj))["room"] == "#lobby"
