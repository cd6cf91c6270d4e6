"""The chat service over real sockets on loopback (127.0.0.1 and ::1, port 0).

Every bad-input test sends its input, then proves that the rest of the server still works:
two healthy members (ann and bob) keep chatting in #lobby.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from _chat import Peer
from helpers import scaled, serving, wait_for
from wirecat.endpoints import Endpoint, parse_endpoint
from wirecat.runtime.limits import Limits
from wirecat.runtime.server import Server
from wirecat.services.chat import ChatService

T = scaled(5.0)  # seconds: the bound on any single read


@contextlib.asynccontextmanager
async def chat_server(
    host: str = "127.0.0.1", limits: Limits | None = None, **options: Any
) -> AsyncIterator[tuple[Server, Endpoint, contextlib.AsyncExitStack]]:
    options.setdefault("max_rate", 1000.0)
    options.setdefault("burst", 1000)
    ep = Endpoint("tcp", host, 0)
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(
            serving(ChatService([ep], **options), limits=limits)
        )
        yield server, server.endpoint("chat"), stack


async def text_user(ep: Endpoint, stack: contextlib.AsyncExitStack, nick: str) -> Peer:
    peer = Peer(*(await _open(ep)))
    stack.push_async_callback(peer.aclose)
    await peer.until(b"*** Programs:")  # the last banner line
    await peer.send(nick.encode() + b"\n")
    await peer.until(b"*** in #lobby")
    return peer


async def json_user(ep: Endpoint, stack: contextlib.AsyncExitStack, nick: str) -> Peer:
    peer = Peer(*(await _open(ep)))
    stack.push_async_callback(peer.aclose)
    await peer.send_json(type="hello", nick=nick)
    assert (await peer.json()) == {
        "type": "welcome",
        "nick": nick,
        "server": "wirecat",
        "default_room": "#lobby",
        "motd": "",
    }
    await peer.json_until("joined")  # the hello lands in #lobby (its join event came first)
    return peer


async def _open(ep: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(ep.host, ep.port, limit=1 << 20)


async def healthy_pair(ep: Endpoint, stack: contextlib.AsyncExitStack) -> tuple[Peer, Peer]:
    ann = await text_user(ep, stack, "ann")
    bob = await text_user(ep, stack, "bob")
    await ann.until(b"*** bob joined #lobby")
    return ann, bob


async def prove_served(ann: Peer, bob: Peer, tag: str) -> None:
    """ann talks, bob hears it, and a brand-new member can still join and talk."""
    await ann.send(f"proof {tag}\n".encode())
    await bob.until(f"#lobby <ann> proof {tag}\n".encode())
    await bob.send(f"ack {tag}\n".encode())
    await ann.until(f"#lobby <bob> ack {tag}\n".encode())


# -- happy paths ----------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_two_text_users_chat_in_lobby(host: str) -> None:
    async with chat_server(host, motd="be excellent") as (_, ep, stack):
        ann = Peer(*(await _open(ep)))
        stack.push_async_callback(ann.aclose)
        assert await ann.line() == b"*** Welcome to wirecat chat.\n"
        await ann.until(b"*** Programs:")
        await ann.send(b"ann\r\n")  # telnet line endings
        assert await ann.line() == b"*** you are ann\n"
        assert await ann.line() == b"*** be excellent\n"
        assert await ann.line() == b"*** type /help for commands\n"
        assert await ann.line() == b"*** ann joined #lobby\n"
        assert await ann.line() == b"*** in #lobby (1): ann\n"

        bob = await text_user(ep, stack, "bob")
        assert await ann.line() == b"*** bob joined #lobby\n"
        await bob.send("hello ann, café\n".encode())
        assert await ann.line() == "#lobby <bob> hello ann, café\n".encode()
        assert await bob.line() == "#lobby <bob> hello ann, café\n".encode()
        await ann.send(b"/me waves\n")
        assert await bob.line() == b"#lobby * ann waves\n"
        await ann.send(b"/msg bob secret\n")
        assert await ann.until(b"->") == b"-> *bob* secret\n"
        assert await bob.line() == b"*ann* secret\n"
        await bob.send(b"/who\n")
        assert await bob.line() == b"*** in #lobby (2): ann bob\n"
        await bob.send(b"/nick robert\n")
        assert await ann.until(b"***") == b"*** bob is now known as robert\n"
        await bob.send(b"/join #side\n/rooms\n")
        assert await bob.until(b"*** rooms:") == b"*** rooms: #lobby (2), #side (1)\n"
        await bob.send(b"in side\n")  # the current room is now #side
        assert await bob.until(b"#side") == b"#side <robert> in side\n"
        await bob.send(b"/help\n/quit gone\n")
        assert await bob.until(b"*** bye") == b"*** bye\n"
        assert await bob.eof() == b""
        assert await ann.until(b"***") == b"*** robert left #lobby (quit: gone)\n"


async def test_guest_names_and_nick_retries() -> None:
    async with chat_server() as (_, ep, stack):
        await text_user(ep, stack, "ann")
        peer = Peer(*(await _open(ep)))
        stack.push_async_callback(peer.aclose)
        await peer.until(b"*** Programs:")
        await peer.send(b"ANN\n")
        assert (await peer.line()).startswith(b"!!! nick_taken: ")
        await peer.send(b"not a nick!\n/join #x\n")
        assert (await peer.line()).startswith(b"!!! invalid_nick: ")
        assert (await peer.line()).startswith(b"!!! not_registered: ")
        await peer.send(b"\n")
        assert await peer.line() == b"*** you are guest-1\n"
        await peer.until(b"*** in #lobby (2): ann guest-1")


async def test_json_mode() -> None:
    async with chat_server(history=10) as (_, ep, stack):
        bob = await text_user(ep, stack, "bob")
        jay = Peer(*(await _open(ep)))
        stack.push_async_callback(jay.aclose)
        await jay.send(b'{"type":"hello","nick":"jay","ref":1}\n')
        welcome = json.loads(await jay.line())  # JSON from the first byte: no text banner
        assert welcome["type"] == "welcome" and welcome["nick"] == "jay" and welcome["ref"] == 1

        join = await jay.json()  # a JSON hello lands in #lobby, as a text nick does
        assert join["type"] == "join" and join["nick"] == "jay" and join["room"] == "#lobby"
        assert isinstance(join["id"], int) and join["ts"].endswith("Z")
        joined = await jay.json()
        assert joined == {
            "type": "joined",
            "room": "#lobby",
            "members": ["bob", "jay"],
            "history": [],
        }
        assert await bob.line() == b"*** jay joined #lobby\n"
        await jay.send_json(type="join", room="#lobby", ref="j")  # already in: made current
        assert await jay.json() == {**joined, "ref": "j"}

        await jay.send_json(type="say", room="#lobby", text="hi from a program", ref=2)
        msg = await jay.json()
        assert msg["type"] == "message" and msg["nick"] == "jay" and msg["kind"] == "say"
        sent = await jay.json()
        assert sent["type"] == "sent" and sent["id"] == msg["id"] and sent["ref"] == 2
        assert msg["id"] > join["id"]
        assert await bob.line() == b"#lobby <jay> hi from a program\n"

        await bob.send(b"hi jay\n")
        assert await bob.line() == b"#lobby <bob> hi jay\n"
        got = await jay.json()
        assert {k: got[k] for k in ("type", "room", "nick", "text")} == {
            "type": "message",
            "room": "#lobby",
            "nick": "bob",
            "text": "hi jay",
        }
        assert got["id"] > msg["id"]

        await jay.send_json(type="dm", to="bob", text="psst")
        assert (await jay.json())["type"] == "sent"
        assert await bob.line() == b"*jay* psst\n"
        await bob.send(b"/msg jay back\n")
        dm = await jay.json()
        assert (dm["type"], dm["from"], dm["to"], dm["text"]) == ("dm", "bob", "jay", "back")

        await jay.send_json(type="who")
        assert await jay.json() == {"type": "who", "room": "#lobby", "members": ["bob", "jay"]}
        await jay.send_json(type="rooms")
        assert await jay.json() == {"type": "rooms", "rooms": [{"room": "#lobby", "members": 2}]}
        await jay.send_json(type="me", text="beeps")
        assert (await jay.json())["kind"] == "me"
        assert (await jay.json())["type"] == "sent"
        assert await bob.until(b"#lobby *") == b"#lobby * jay beeps\n"
        await jay.send_json(type="nick", nick="jay2")
        assert (await jay.json())["type"] == "nick"
        assert await jay.json() == {"type": "renamed", "nick": "jay2", "old": "jay"}
        assert await bob.line() == b"*** jay is now known as jay2\n"
        await jay.send_json(type="ping", ref=9)
        assert await jay.json() == {"type": "pong", "ref": 9}
        await jay.send_json(type="help")
        assert "say" in (await jay.json())["commands"]
        await jay.send_json(type="part")
        part = await jay.json()
        assert (part["type"], part["nick"], part["room"]) == ("part", "jay2", "#lobby")
        assert await jay.json() == {"type": "parted", "room": "#lobby"}
        assert await bob.line() == b"*** jay2 left #lobby\n"
        await jay.send_json(type="say", text="nobody hears")
        err = await jay.json()
        assert err == {
            "type": "error",
            "code": "not_in_room",
            "reason": "you are in no room: join one first",
        }
        await jay.send_json(type="quit", reason="done")
        assert await jay.json() == {"type": "bye", "reason": "done"}
        assert await jay.eof() == b""


async def test_history_replay_on_join() -> None:
    async with chat_server(history=2) as (_, ep, stack):
        ann = await text_user(ep, stack, "ann")
        for text in (b"one", b"two", b"three"):
            await ann.send(text + b"\n")
            await ann.until(b"#lobby <ann> " + text)
        bob = Peer(*(await _open(ep)))
        stack.push_async_callback(bob.aclose)
        await bob.send(b"bob\n")
        await bob.until(b"*** last 2 messages in #lobby:")
        assert await bob.line() == b"#lobby <ann> two\n"
        assert await bob.line() == b"#lobby <ann> three\n"
        assert await bob.line() == b"*** in #lobby (2): ann bob\n"
        jay = await json_user(ep, stack, "jay")
        await jay.send_json(type="join", room="#lobby")
        joined = await jay.json_until("joined")
        history = joined["history"]
        assert [m["text"] for m in history] == ["two", "three"]
        assert history[0]["id"] < history[1]["id"]


async def test_unix_socket_endpoint(unix_dir: str) -> None:
    ep = parse_endpoint(f"unix:{unix_dir}/chat.sock")
    async with serving(ChatService([ep])) as server:
        bound = server.endpoint("chat")
        peer = await Peer.open(bound)
        try:
            await peer.send(b"ann\n")
            await peer.until(b"*** in #lobby (1): ann")
        finally:
            await peer.aclose()


# -- bad input: each case, then proof that others are served ----------------------------------
TEXT_BAD: list[tuple[str, bytes, list[bytes]]] = [
    ("overlong", b"x" * 5000 + b"\n", [b"!!! line_too_long: "]),
    ("overlong-no-newline-then-more", b"y" * 9000 + b"\nok\n", [b"!!! line_too_long: "]),
    ("invalid-utf8", b"caf\xe9\n", [b"!!! bad_utf8: "]),
    ("nul", b"a\x00b\n", [b"!!! control_chars: "]),
    ("escape", b"\x1b[2J\x1b[31mred\n", [b"!!! control_chars: "]),
    ("binary", bytes(range(256)) * 4 + b"\n", [b"!!! control_chars: ", b"!!! bad_utf8: "]),
    ("unknown-command", b"/frobnicate now\n", [b"!!! unknown_command: "]),
    ("bad-arguments", b"/join\n", [b"!!! bad_arguments: "]),
    ("bad-room", b"/join #no!\n", [b"!!! invalid_room: "]),
    ("nick-taken", b"/nick BOB\n", [b"!!! nick_taken: "]),
    ("nick-invalid", b"/nick 1abc\n", [b"!!! invalid_nick: "]),
    ("dm-nobody", b"/msg nobody hi\n", [b"!!! no_such_nick: "]),
    ("too-long-text", b"z" * 2000 + b"\n", [b"!!! text_too_long: "]),
]


@pytest.mark.parametrize(
    ("payload", "errors"), [c[1:] for c in TEXT_BAD], ids=[c[0] for c in TEXT_BAD]
)
async def test_text_bad_input(payload: bytes, errors: list[bytes]) -> None:
    async with chat_server() as (_, ep, stack):
        ann, bob = await healthy_pair(ep, stack)
        mal = await text_user(ep, stack, "mal")
        await mal.send(payload)
        first = await mal.until(b"!!! ")
        assert any(first.startswith(e) for e in errors), first
        await prove_served(ann, bob, "1")
        await mal.send(b"/ping\nstill here\n")  # the offender keeps its connection too
        await mal.until(b"*** pong")
        await bob.until(b"#lobby <mal> still here\n")
        assert not any(line.startswith(b"#lobby <mal> x") for line in bob.seen)


JSON_BAD: list[tuple[str, bytes, str]] = [
    ("malformed", b'{"type":"say","text":\n', "bad_json"),
    ("nan", b'{"type":"say","text":NaN}\n', "bad_json"),
    ("deep", b"[" * 1500 + b"]" * 1500 + b"\n", "bad_json"),
    ("array", b"[1,2,3]\n", "bad_shape"),
    ("no-type", b'{"text":"hi"}\n', "bad_shape"),
    ("wrong-type", b'{"type":"say","text":5}\n', "bad_shape"),
    ("bad-ref", b'{"type":"ping","ref":{}}\n', "bad_shape"),
    ("unknown-type", b'{"type":"teleport"}\n', "unknown_command"),
    ("bad-room", b'{"type":"join","room":"lobby"}\n', "invalid_room"),
    ("nick-taken", b'{"type":"nick","nick":"Ann"}\n', "nick_taken"),
    ("nick-invalid", b'{"type":"nick","nick":"a b"}\n', "invalid_nick"),
    ("invalid-utf8", b'{"type":"say","text":"\xff"}\n', "bad_utf8"),
    ("surrogate", b'{"type":"say","text":"\\udc00"}\n', "bad_utf8"),
    ("control", b'{"type":"say","text":"\\u001b[2J"}\n', "control_chars"),
    ("overlong", b'{"type":"say","text":"' + b"x" * 5000 + b'"}\n', "line_too_long"),
    ("hello-twice", b'{"type":"hello","nick":"zed"}\n', "already_registered"),
]


@pytest.mark.parametrize(
    ("payload", "code"), [c[1:] for c in JSON_BAD], ids=[c[0] for c in JSON_BAD]
)
async def test_json_bad_input(payload: bytes, code: str) -> None:
    async with chat_server() as (_, ep, stack):
        ann, bob = await healthy_pair(ep, stack)
        jay = await json_user(ep, stack, "jay")
        await jay.send(payload)
        err = await jay.json()
        assert err["type"] == "error" and err["code"] == code and err["reason"], err
        await prove_served(ann, bob, "1")
        await jay.send_json(type="ping", ref="after")
        assert await jay.json_until("pong") == {"type": "pong", "ref": "after"}  # lobby talk before


async def test_bad_first_line_before_hello() -> None:
    async with chat_server() as (_, ep, stack):
        ann, bob = await healthy_pair(ep, stack)
        jay = Peer(*(await _open(ep)))
        stack.push_async_callback(jay.aclose)
        await jay.send(b'{"type":"hello",\n{"type":"join","room":"#lobby"}\n')
        assert (await jay.json())["code"] == "bad_json"
        assert (await jay.json())["code"] == "not_registered"
        await jay.send_json(type="hello", nick="jay")
        assert (await jay.json())["type"] == "welcome"
        await prove_served(ann, bob, "1")


async def test_flooding_is_rate_limited_then_disconnected() -> None:
    async with chat_server(max_rate=0.001, burst=3, kick_after=5) as (_, ep, stack):
        ann, bob = await healthy_pair(ep, stack)
        mal = await text_user(ep, stack, "mal")
        await mal.send(b"".join(b"flood %d\n" % i for i in range(20)))
        rest = await mal.eof()  # kicked: the server closed the connection
        lines = rest.splitlines()
        assert sum(line.startswith(b"!!! rate_limited: ") for line in lines) == 4
        assert lines[-1].startswith(b"!!! flooding: ")
        await bob.until(b"*** mal left #lobby (flooding)")
        flood_seen = [line for line in bob.seen if line.startswith(b"#lobby <mal>")]
        assert flood_seen == [b"#lobby <mal> flood %d\n" % i for i in range(3)]
        await prove_served(ann, bob, "1")


async def test_json_flooding_errors() -> None:
    async with chat_server(max_rate=0.001, burst=1, kick_after=0) as (_, ep, stack):
        ann, bob = await healthy_pair(ep, stack)
        jay = await json_user(ep, stack, "jay")
        await jay.send_json(type="join", room="#lobby")
        await jay.json_until("joined")
        for i in range(3):
            await jay.send_json(type="say", text=f"m{i}", ref=i)
        assert (await jay.json_until("sent"))["ref"] == 0
        for i in (1, 2):
            assert await jay.json() == {
                "type": "error",
                "code": "rate_limited",
                "reason": "more than 0.001 messages per second: message dropped",
                "ref": i,
            }
        await prove_served(ann, bob, "1")


async def test_client_reset_mid_line() -> None:
    async with chat_server() as (server, ep, stack):
        ann, bob = await healthy_pair(ep, stack)
        rst = await text_user(ep, stack, "rst")
        await bob.until(b"*** rst joined")
        await rst.send(b"half a li")
        sock = rst.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rst.writer.transport.abort()  # close with linger 0: the kernel sends RST
        await bob.until(b"*** rst left #lobby (connection lost)\n")
        assert not any(b"half a li" in line for line in bob.seen)
        await prove_served(ann, bob, "1")
        await wait_for(lambda: len(server.ctx.connections) == 2, T, what="rst is gone")


async def test_client_half_close_mid_line_is_not_lost() -> None:
    async with chat_server() as (_, ep, stack):
        ann, bob = await healthy_pair(ep, stack)
        fin = await text_user(ep, stack, "fin")
        await fin.send(b"last words without newline")
        fin.writer.write_eof()
        assert await fin.eof() == b"#lobby <fin> last words without newline\n"
        await bob.until(b"#lobby <fin> last words without newline\n")
        await bob.until(b"*** fin left #lobby (left)\n")
        await prove_served(ann, bob, "1")


async def test_slow_consumer_does_not_stall_the_room() -> None:
    limits = Limits(write_high_water=4096, write_low_water=1024, max_output=16384)
    async with chat_server(limits=limits) as (server, ep, stack):
        ann, bob = await healthy_pair(ep, stack)
        # A member that never reads, with small socket buffers on both ends (no autotuning)
        # so that its output backs up into the server after a few KiB.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (ep.host, ep.port))
        stuck = Peer(*(await asyncio.open_connection(sock=sock)))
        stack.push_async_callback(stuck.aclose)
        await stuck.send(b"stuck\n")
        await bob.until(b"*** stuck joined")
        host, port = sock.getsockname()[:2]
        local = f"{host}:{port}"
        (handler,) = [h for h in server.ctx.connections if h.peer == local]
        server_sock = handler.transport.get_extra_info("socket")
        server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        text = b"w" * 900
        for i in range(300):
            await ann.send(b"%d %s\n" % (i, text))
        for i in range(300):
            await bob.until(b"#lobby <ann> %d " % i)
        await wait_for(lambda: server.ctx.metrics["slow_consumers"] >= 1, T, what="stuck cut")
        left = b"*** stuck left #lobby (slow consumer)\n"
        if left not in bob.seen:  # the cut may come in the middle of the 300 messages
            await bob.until(left)
        await prove_served(ann, bob, "1")


async def test_silent_peer_is_dropped_after_login_timeout() -> None:
    limits = Limits(login_timeout=scaled(0.3))
    async with chat_server(limits=limits) as (server, ep, stack):
        ann, bob = await healthy_pair(ep, stack)  # they registered in time
        silent = Peer(*(await _open(ep)))
        stack.push_async_callback(silent.aclose)
        rest = await silent.eof()  # never sends a nick: closed by the runtime
        assert rest.startswith(b"*** Welcome")
        assert rest.endswith(b"!!! timeout: login not completed within %g s\n" % scaled(0.3))
        assert server.ctx.metrics["login_timeouts"] == 1
        await prove_served(ann, bob, "1")


async def test_a_json_peer_that_never_logs_in_gets_a_json_timeout_error() -> None:
    limits = Limits(login_timeout=scaled(0.3))
    async with chat_server(limits=limits) as (server, ep, stack):
        peer = Peer(*(await _open(ep)))
        stack.push_async_callback(peer.aclose)
        await peer.send(b'{"type":"who","room":"#lobby"}\n')  # JSON mode, but no hello
        last = json.loads((await peer.eof()).splitlines()[-1])
        assert last == {
            "type": "error",
            "code": "timeout",
            "reason": f"login not completed within {scaled(0.3):g} s",
        }
        assert server.ctx.metrics["login_timeouts"] == 1


# -- shutdown ---------------------------------------------------------------------------------
async def test_shutdown_notice() -> None:
    service = ChatService([Endpoint("tcp", "127.0.0.1", 0)])
    server = Server([service])
    await server.start()
    try:
        ep = server.endpoint("chat")
        async with contextlib.AsyncExitStack() as stack:
            ann = await text_user(ep, stack, "ann")
            jay = await json_user(ep, stack, "jay")
            await ann.until(b"*** jay joined #lobby")  # JSON members land in #lobby too
            fresh = Peer(*(await _open(ep)))  # no first line yet: text by default
            stack.push_async_callback(fresh.aclose)
            await fresh.until(b"*** Programs:")
            await server.shutdown(grace=scaled(2.0))
            assert await ann.eof() == b"*** server shutting down\n"
            assert await jay.eof() == b'{"type":"shutdown"}\n'
            assert await fresh.eof() == b"*** server shutting down\n"
    finally:
        await server.shutdown()


# -- the terminal client (wirecat chat), scripted through a pipe -------------------------------
async def _run_cli(*args: str, stdin: bytes) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wirecat.cli.main",
        "chat",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), scaled(15.0))
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out, err


@pytest.mark.async_timeout(40)
async def test_cli_client_scripted() -> None:
    async with chat_server() as (_, ep, stack):
        ann = await text_user(ep, stack, "ann")
        code, out, err = await _run_cli(
            f"127.0.0.1:{ep.port}",
            "--nick",
            "bot",
            stdin=b"hello from the cli\n/msg ann psst\n/bogus\n/who\n",
        )
        assert code == 0, err
        await ann.until(b"#lobby <bot> hello from the cli\n")
        await ann.until(b"*bot* psst\n")
        await ann.until(b"*** bot left #lobby (quit)\n")
        text = out.decode()
        assert "#lobby <bot> hello from the cli" in text
        assert "-> *ann* psst" in text
        assert "*** in #lobby (2): ann bot" in text
        assert "unknown command /bogus" in text

        code, out, err = await _run_cli(f"127.0.0.1:{ep.port}", "-n", "ANN", stdin=b"")
        assert code == 1
        assert err.decode().strip().startswith("wirecat: nick 'ANN' is already taken")
        assert err.count(b"\n") == 1  # one line, no traceback
        await prove_served(ann, await text_user(ep, stack, "bob"), "cli")


async def test_line_too_long_is_counted_and_logged_as_a_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="wirecat")
    async with chat_server(limits=Limits(max_line=256)) as (server, ep, stack):
        ann, bob = await healthy_pair(ep, stack)
        await ann.send(b"x" * 1000 + b"\n")
        assert (await ann.until(b"!!! ")).startswith(b"!!! line_too_long: ")
        assert server.ctx.metrics["chat_lines_too_long"] == 1
        hits = [r for r in caplog.records if getattr(r, "event", None) == "limit"]
        assert [getattr(r, "reason", None) for r in hits] == ["line_too_long"]
        await prove_served(ann, bob, "1")


async def test_json_mode_is_json_from_its_first_byte_and_text_keeps_its_banner() -> None:
    async with chat_server(banner_delay=scaled(0.5)) as (_, ep, stack):
        jay = Peer(*(await _open(ep)))
        stack.push_async_callback(jay.aclose)
        await jay.send(b'{"type":"hello","nick":"jay"}\n{"type":"say","text":"hi"}\n')
        assert (await jay.line()).startswith(b'{"type":"welcome"')
        ann = Peer(*(await _open(ep)))  # a person: the banner after the delay, as before
        stack.push_async_callback(ann.aclose)
        assert await ann.line() == b"*** Welcome to wirecat chat.\n"
        await ann.until(b"*** Programs:")
        await ann.send(b"ann\n")
        await ann.until(b"*** in #lobby")
        eager = Peer(*(await _open(ep)))  # a nick typed before the banner: banner first
        stack.push_async_callback(eager.aclose)
        await eager.send(b"eve\n")
        assert await eager.line() == b"*** Welcome to wirecat chat.\n"
        await eager.until(b"*** in #lobby")
