"""The Redis hub (#11) against a real ``redis-server`` (Debian's; missing: the tests fail).

Every test starts its own Redis on a Unix socket (persistence off, unless the test is about
surviving a restart) and two ``wirecat serve --hub`` processes on it, with short hub
timeouts (``--hub-timeout``, ``--hub-presence-ttl``) so that faults resolve in a second or two.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from _chat import Peer
from _peers import WIRECAT, peer, timeout
from helpers import read_ready, scaled, short_unix_dir, wait_for
from wirecat.auth import hash_token
from wirecat.chat.redis_hub import check_url, redact_url
from wirecat.endpoints import Endpoint, parse_endpoint
from wirecat.errors import ConfigError

pytestmark = [pytest.mark.loops("asyncio"), pytest.mark.async_timeout(30)]

TTL = 2.0  # --hub-presence-ttl: a killed server's members expire after this (seconds)
HUB_TIMEOUT = 1.0  # --hub-timeout (the machine may be busy: not shorter)


def _unix_connection(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.settimeout(timeout(2))
        s.connect(path)
    except BaseException:
        s.close()
        raise
    return s


def _wait_for_pong(
    proc: subprocess.Popen[bytes], connect: Callable[[], socket.socket], what: str
) -> None:
    """Until *what* (redis-server run as *proc*) answers PING on a connection from *connect*:
    fails when it exits or has not answered within 10 s (scaled)."""
    deadline = time.monotonic() + timeout(10)
    while True:
        try:
            with connect() as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        assert proc.poll() is None, f"{what} exited"
        assert time.monotonic() < deadline, f"{what} did not answer in time"
        time.sleep(0.01)


class RedisServer:
    """``redis-server`` on a Unix socket in ``root``; kill, pause and restart it."""

    def __init__(self, root: str, *, persist: bool = False) -> None:
        self.root = root
        self.sock = os.path.join(root, "redis.sock")
        self.persist = persist
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix:{self.sock}"

    def start(self) -> None:
        args = [peer("redis-server"), "--port", "0", "--unixsocket", self.sock]
        args += ["--dir", self.root, "--save", ""]
        if self.persist:  # every write on disk before the reply: nothing acknowledged is lost
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_pong(self.proc, lambda: _unix_connection(self.sock), "redis-server")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout(5))

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with short_unix_dir() as root:
        server = RedisServer(root)
        server.start()
        try:
            yield server
        finally:
            if server.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    server.proc.send_signal(signal.SIGCONT)
            server.kill()


class Serve:
    """One ``wirecat serve --hub`` process (chat and web on port 0)."""

    def __init__(self, hub: str, *extra: str, wait: bool = True) -> None:
        argv = [
            *WIRECAT, "serve", "--no-greeting", "--no-echo", "--json", "--loop", "asyncio",
            "--chat", "tcp://127.0.0.1:0", "--web", "tcp://127.0.0.1:0", "--chat-rate", "0",
            "--hub", hub, "--hub-timeout", str(HUB_TIMEOUT), "--hub-presence-ttl", str(TTL),
            *extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.endpoints: dict[str, list[str]] = {}
        self.stderr = ""
        if wait:
            self.wait_ready()

    def wait_ready(self) -> Serve:
        assert self.proc.stdout is not None
        self.endpoints = read_ready(self.proc.stdout, timeout(15))["endpoints"]
        return self

    def endpoint(self, name: str = "chat") -> Endpoint:
        return parse_endpoint(self.endpoints[name][0])

    def close(self) -> str:
        """Stop (SIGTERM, bounded), return stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout(10))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout(5))
        assert self.proc.stderr is not None
        if not self.proc.stderr.closed:
            self.stderr = self.proc.stderr.read()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        return self.stderr


@contextlib.asynccontextmanager
async def servers(hub: str, n: int = 2, *extra: str) -> AsyncIterator[list[Serve]]:
    started: list[Serve] = []
    try:
        for _ in range(n):  # started together: each takes a second or so to import
            started.append(Serve(hub, *extra, wait=False))
        for s in started:
            s.wait_ready()
        yield started
    except BaseException as exc:  # show what the servers said
        for i, s in enumerate(started):
            exc.add_note(f"--- server {i} stderr:\n{s.close()}")
        raise
    finally:
        for s in started:
            err = s.close()
            assert "Traceback" not in err, err


async def json_member(ep: Endpoint, nick: str, stack: contextlib.AsyncExitStack, **hello: Any):
    p = await Peer.open(ep)
    stack.push_async_callback(p.aclose)
    await p.send_json(type="hello", nick=nick, **hello)
    welcome = await p.json()
    assert welcome["type"] == "welcome", welcome
    joined = await p.json_until("joined")
    return p, joined


async def text_member(ep: Endpoint, nick: str, stack: contextlib.AsyncExitStack) -> Peer:
    p = await Peer.open(ep)
    stack.push_async_callback(p.aclose)
    await p.send(nick.encode() + b"\n")
    await p.until(b"*** in #lobby")
    return p


async def joined_event(p: Peer, nick: str) -> dict[str, Any]:
    """Read until the ``join`` event of ``nick`` (it crossed the hub)."""
    while True:
        ev = await p.json_until("join")
        if ev["nick"] == nick:
            return ev


async def messages(p: Peer, n: int) -> list[dict[str, Any]]:
    return [await p.json_until("message") for _ in range(n)]


# -- sharing ---------------------------------------------------------------------------------
async def test_two_processes_share_one_room(redis_server: RedisServer) -> None:
    """An nc-style user on A and JSON clients on B: one order, one history, one nick
    registry, ``who`` across both, DMs both ways."""
    async with servers(redis_server.url) as (a, b), contextlib.AsyncExitStack() as stack:
        ann = await text_member(a.endpoint(), "ann", stack)
        bob, joined = await json_member(b.endpoint(), "bob", stack)
        assert joined["members"] == ["ann", "bob"]  # ann is on the other process
        await ann.until(b"*** bob joined #lobby")

        taken = await Peer.open(b.endpoint())
        stack.push_async_callback(taken.aclose)
        await taken.send_json(type="hello", nick="ANN")  # held on A: refused on B
        assert (await taken.json())["code"] == "nick_taken"

        # Both talk at once; both see the same order.
        for i in range(5):
            await ann.send(f"a{i}\n".encode())
            await bob.send_json(type="say", text=f"b{i}", ref=i)
        seen_b = [(m["nick"], m["text"]) for m in await messages(bob, 10)]
        seen_a = []
        while len(seen_a) < 10:
            line = (await ann.until(b"#lobby <")).decode()
            nick, text = line[len("#lobby <") :].rstrip("\n").split("> ", 1)
            seen_a.append((nick, text))
        assert seen_a == seen_b
        assert sorted(t for _, t in seen_b) == sorted(
            [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]
        )

        # One history: a newcomer on A gets the same ten, in that order; with since, the tail.
        carol, joined = await json_member(a.endpoint(), "carol", stack)
        hist = joined["history"]
        assert [(m["nick"], m["text"]) for m in hist] == seen_b
        ids = [m["id"] for m in hist]
        assert ids == sorted(ids) and len(set(ids)) == 10
        await carol.send_json(type="join", room="#lobby", since=ids[6])
        again = await carol.json_until("joined")
        assert [m["text"] for m in again["history"]] == [t for _, t in seen_b[7:]]
        assert "gap" not in again

        # who across processes; DMs both ways.
        await joined_event(bob, "carol")
        await bob.send_json(type="who", ref="w")
        who = await bob.json_until("who")
        assert who["members"] == ["ann", "bob", "carol"]
        await bob.send_json(type="dm", to="ANN", text="psst", ref="d")
        sent = await bob.json_until("sent")
        assert sent["ref"] == "d"
        assert await ann.until(b"*bob*") == b"*bob* psst\n"
        await ann.send(b"/msg carol hi carol\n")
        dm = await carol.json_until("dm")
        assert (dm["from"], dm["text"]) == ("ann", "hi carol")
        await bob.send_json(type="dm", to="nobody", text="x", ref="n")
        err = await bob.json_until("error")
        assert err["code"] == "no_such_nick"

        # who about a room nobody on B is in: asked of Redis.
        await ann.send(b"/join #side\n")
        await ann.until(b"*** in #side")
        await bob.send_json(type="who", room="#side", ref="s")
        assert (await bob.json_until("who"))["members"] == ["ann"]
        await bob.send_json(type="who", room="#empty", ref="e")
        assert (await bob.json_until("error"))["code"] == "no_such_room"

        guests = []
        for server in (a, b):  # an empty line: a guest name, unique across processes
            g = await Peer.open(server.endpoint())
            stack.push_async_callback(g.aclose)
            await g.send(b"\n")
            guests.append(await g.until(b"*** you are guest-"))
        assert guests[0] != guests[1]


async def test_kick_and_close_cross_processes(redis_server: RedisServer, tmp_path: Path) -> None:
    users = tmp_path / "users.toml"
    users.write_text(f'[users.root]\ntoken = "{hash_token("root-token", log_n=10)}"\n'
                     'roles = ["admin"]\n')  # fmt: skip
    users.chmod(0o600)
    extra = ("--users", str(users), "--guests")
    async with servers(redis_server.url, 2, *extra) as (a, b), contextlib.AsyncExitStack() as st:
        root, _ = await json_member(a.endpoint(), "root", st, token="root-token")
        bob, _ = await json_member(b.endpoint(), "bob", st)
        await joined_event(root, "bob")  # bob's join reached A
        await root.send_json(type="kick", nick="BOB", reason="spam", ref="k")
        assert (await root.json_until("done"))["ref"] == "k"
        kick = await bob.json_until("kick")
        assert (kick["nick"], kick["by"], kick["reason"]) == ("bob", "root", "spam")
        await bob.send_json(type="say", room="#lobby", text="still here?", ref="s")
        assert (await bob.json_until("error"))["code"] == "not_in_room"
        # Closing a room empties it everywhere and refuses joins on every process.
        await bob.send_json(type="join", room="#lobby", ref="j")
        await bob.json_until("joined")
        await root.send_json(type="close", room="#lobby", ref="c")
        await root.json_until("done")
        assert (await bob.json_until("close"))["by"] == "root"
        await bob.send_json(type="join", room="#lobby", ref="j2")
        assert (await bob.json_until("error"))["code"] == "room_closed"


# -- faults ----------------------------------------------------------------------------------
async def test_a_killed_server_s_members_and_nicks_expire(redis_server: RedisServer) -> None:
    async with servers(redis_server.url) as (a, b), contextlib.AsyncExitStack() as stack:
        await json_member(a.endpoint(), "ann", stack)
        bob, joined = await json_member(b.endpoint(), "bob", stack)
        assert joined["members"] == ["ann", "bob"]
        os.killpg(a.proc.pid, signal.SIGKILL)  # no goodbye: ann's presence and nick linger
        t0 = time.monotonic()
        part = await bob.json_until("part")
        waited = time.monotonic() - t0
        assert (part["nick"], part["reason"]) == ("ann", "timed out")
        assert waited < TTL + scaled(2)
        await bob.send_json(type="who", ref="w")
        assert (await bob.json_until("who"))["members"] == ["bob"]
        await json_member(b.endpoint(), "ann", stack)  # the nick is free again


async def test_redis_paused_gives_hub_unavailable_then_recovers(
    redis_server: RedisServer,
) -> None:
    async with servers(redis_server.url, 1) as (a,), contextlib.AsyncExitStack() as stack:
        bob, _ = await json_member(a.endpoint(), "bob", stack)
        redis_server.signal(signal.SIGSTOP)
        t0 = time.monotonic()
        await bob.send_json(type="say", text="lost?", ref=1)
        err = await bob.json_until("error")
        assert err["code"] == "hub_unavailable" and err["ref"] == 1
        assert time.monotonic() - t0 < HUB_TIMEOUT + scaled(1)
        await bob.send_json(type="say", text="again", ref=2)  # down now: refused at once
        assert (await bob.json_until("error"))["code"] == "hub_unavailable"
        # echo-like commands that need no hub still work
        await bob.send_json(type="ping", ref="p")
        assert (await bob.json_until("pong"))["ref"] == "p"
        redis_server.signal(signal.SIGCONT)
        deadline = time.monotonic() + scaled(10)
        ref = 3
        texts: list[str] = []
        while True:  # the hub reconnects with backoff: retry until a message is taken
            await bob.send_json(type="say", text=f"back {ref}", ref=ref)
            reply = await bob.json()
            while reply["type"] not in ("sent", "error"):
                if reply["type"] == "message":
                    texts.append(reply["text"])
                reply = await bob.json()
            if reply["type"] == "sent":
                break
            assert reply["code"] == "hub_unavailable"
            assert time.monotonic() < deadline, "the hub did not come back"
            await asyncio.sleep(0.1)
            ref += 1
        while f"back {ref}" not in texts:
            texts.append((await bob.json_until("message"))["text"])
        # A refused message may still have reached Redis (it ran the script once resumed):
        # never acknowledged, it shows at most once.
        assert all(texts.count(t) == 1 for t in texts), texts


async def test_redis_killed_mid_burst_loses_nothing_acknowledged() -> None:
    """Redis (AOF, fsync always) SIGKILLed mid-burst and restarted: every message
    acknowledged (``sent``) reaches the member on the other process once, in order."""
    with short_unix_dir() as root:
        redis = RedisServer(root, persist=True)
        redis.start()
        try:
            await _burst_through_a_restart(redis)
        finally:
            redis.kill()


async def _burst_through_a_restart(redis: RedisServer) -> None:
    async with servers(redis.url) as (a, b), contextlib.AsyncExitStack() as stack:
        ann, _ = await json_member(a.endpoint(), "ann", stack)
        bob, _ = await json_member(b.endpoint(), "bob", stack)
        await joined_event(ann, "bob")  # bob's join reached A
        acked: list[int] = []
        refused = 0
        i = 0
        restarted_at = None
        deadline = time.monotonic() + scaled(20)
        while len(acked) < 120:
            assert time.monotonic() < deadline, f"only {len(acked)} acknowledged in time"
            if i == 40:
                redis.kill()
            if i == 50:
                redis.start()
                restarted_at = i
            if (sent := await _say_numbered(ann, i)) is not None:
                acked.append(sent)
            else:
                refused += 1
                await asyncio.sleep(0.05)
            i += 1
        assert restarted_at is not None and refused > 0
        got = await _messages_until(bob, acked)
        _assert_once_in_order(got)


async def _say_numbered(member: Peer, i: int) -> int | None:
    """Say ``m<i>`` with ref *i*: the message's id once the hub holds it, or None when it
    was refused with ``hub_unavailable`` (any other reply fails the test)."""
    await member.send_json(type="say", text=f"m{i}", ref=i)
    reply = await member.json()
    while reply.get("ref") != i:
        reply = await member.json()
    if reply["type"] == "sent":
        return int(reply["id"])
    assert reply["code"] == "hub_unavailable", reply
    return None


async def _messages_until(member: Peer, ids: list[int]) -> list[dict[str, Any]]:
    """The ``message`` events *member* gets until every id in *ids* came, in order of arrival."""
    got: list[dict[str, Any]] = []
    seen: set[int] = set()
    while not seen.issuperset(ids):
        msg = await member.json_until("message")
        got.append(msg)
        seen.add(msg["id"])
    return got


def _assert_once_in_order(messages: list[dict[str, Any]]) -> None:
    """Ids ascending, none twice, and the ``m<i>`` texts said in the same order."""
    ids = [m["id"] for m in messages]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "order kept, nothing twice"
    numbers = [int(m["text"][1:]) for m in messages]
    assert numbers == sorted(numbers)


@pytest.mark.parametrize("url", ["http://x", "redis://:s3cret@127.0.0.1:99999/0"])
def test_serve_hub_flags_are_checked(url: str) -> None:
    proc = subprocess.run(
        [*WIRECAT, "serve", "--hub", url, "--no-greeting", "--no-echo"],
        capture_output=True,
        timeout=timeout(15),
        check=False,
    )
    assert proc.returncode == 64
    assert b"hub" in proc.stderr and b"Traceback" not in proc.stderr
    assert b"s3cret" not in proc.stderr


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://x", "use redis://"),
        ("redis://h:99999/0", "port"),
        ("redis://:pw@h:port/0", "port"),
        ("redis://h:6379/zero", "database"),
        ("unix:", "path"),
    ],
)
def test_check_url_refuses_what_redis_py_could_not_use(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as caught:
        check_url(url)
    assert caught.value.field == "hub" and "pw" not in str(caught.value)


def test_check_url_and_redact_url_keep_good_urls() -> None:
    for url in ("redis://", "redis://127.0.0.1:6379/0", "rediss://h/1?ssl_ca_certs=/ca.pem",
                "redis://[::1]:6379", "unix:/run/redis.sock"):  # fmt: skip
        assert check_url(url) == url == redact_url(url)
    assert redact_url("redis://u:pw@[::1]:70000/0") == "redis://u:***@[::1]:70000/0"
    assert redact_url("redis://h/0?db=1&password=pw") == "redis://h/0?db=1&password=***"


async def test_healthz_shows_the_hub(redis_server: RedisServer) -> None:
    async with servers(redis_server.url, 1) as (a,):
        ep = a.endpoint("web")
        p = await Peer.open(ep)
        await p.send(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        body = (await p.eof()).split(b"\r\n\r\n", 1)[1]
        await p.aclose()
        health = json.loads(body)
        assert health["hub"]["state"] == "up"


# -- in one process: recovery and gaps, deterministically --------------------------------------
class _Sink:
    """A chat sink that keeps the JSON events it is sent."""

    def __init__(self) -> None:
        from wirecat.protocols.chat import JSON_CODEC

        self.codec = JSON_CODEC
        self.events: list[dict[str, Any]] = []

    def send(self, data: bytes) -> None:
        self.events.extend(json.loads(line) for line in data.splitlines())

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


async def _run(core: Any, member: Any, cmd: Any) -> Any:
    reply = core.handle(member, cmd)
    return await reply if isinstance(reply, asyncio.Future) else reply


async def _hello_and_join(*members: tuple[Any, Any, str], room: str = "#r") -> None:
    """Each ``(core, member, nick)`` says hello as nick, then each joins ``room``, in order."""
    from wirecat.protocols.chat import Hello, Join

    for core, member, nick in members:
        await _run(core, member, Hello(nick))
    for core, member, _ in members:
        await _run(core, member, Join(room))


async def _two_cores(url: str, **kw: Any) -> tuple[Any, Any]:
    from wirecat.chat.core import ChatCore
    from wirecat.chat.redis_hub import RedisHub

    cores = []
    for _ in range(2):
        hub = RedisHub(url, timeout=HUB_TIMEOUT, presence_ttl=30, **kw)
        await hub.start()
        assert hub.state == "up"
        cores.append(ChatCore(hub=hub, rate=_no_limit()))
    return cores[0], cores[1]


def _no_limit() -> Any:
    from wirecat.chat.core import RateLimit

    return RateLimit(rate=1e9, burst=10**9, kick_after=0)


async def test_a_subscriber_that_misses_events_recovers_them_in_order(
    redis_server: RedisServer,
) -> None:
    """Pub/sub messages dropped on the way to one process (a slow or cut subscriber): the
    next event shows the hole, the stream fills it: each message once, in order."""
    from wirecat.protocols.chat import Say

    c1, c2 = await _two_cores(redis_server.url)
    try:
        s1, s2 = _Sink(), _Sink()
        ann, bob = c1.connect(s1), c2.connect(s2)
        await _hello_and_join((c1, ann, "ann"), (c2, bob, "bob"))
        hub2 = c2.hub
        real = hub2._on_message
        dropped = 0

        def lossy(data: bytes) -> None:  # drop m1..m3 on their way to process 2
            nonlocal dropped
            if b'"m1"' in data or b'"m2"' in data or b'"m3"' in data:
                dropped += 1
                return
            real(data)

        hub2._on_message = lossy
        for i in range(6):
            await _run(c1, ann, Say(f"m{i}", "#r"))
        await wait_for(lambda: len(s2.of("message")) >= 6)
        assert dropped == 3
        assert [m["text"] for m in s2.of("message")] == [f"m{i}" for i in range(6)]
        assert hub2.counters["recovered"] >= 3 and hub2.counters["gaps"] == 0
        assert [m["text"] for m in s1.of("message")] == [m["text"] for m in s2.of("message")]
    finally:
        await c1.hub.aclose()
        await c2.hub.aclose()


async def test_events_gone_from_the_stream_are_a_gap(redis_server: RedisServer) -> None:
    """Missed events the stream no longer holds: the room is told (a notice), and a join
    with ``since`` before them answers ``gap``."""
    import redis.asyncio as aioredis

    from wirecat.protocols.chat import Join, Part, RoomJoined, Say

    c1, c2 = await _two_cores(redis_server.url, history_size=3)
    direct = aioredis.from_url(f"unix://{redis_server.sock}")
    try:
        s1, s2 = _Sink(), _Sink()
        ann, bob = c1.connect(s1), c2.connect(s2)
        await _hello_and_join((c1, ann, "ann"), (c2, bob, "bob"))
        first = await _run(c1, ann, Say("m0", "#r"))
        await wait_for(lambda: len(s2.of("message")) == 1)
        hub2 = c2.hub
        real = hub2._on_message
        dropped: list[bytes] = []
        hub2._on_message = dropped.append  # process 2 hears nothing for a while
        for i in range(1, 4):
            await _run(c1, ann, Say(f"m{i}", "#r"))
        await wait_for(lambda: len(dropped) == 3)
        await direct.xtrim("wirecat:#r:log", maxlen=1, approximate=False)  # m3 is left
        hub2._on_message = real
        await _run(c1, ann, Say("m4", "#r"))
        await wait_for(lambda: len(s2.of("message")) >= 3)
        assert [m["text"] for m in s2.of("message")] == ["m0", "m3", "m4"]
        notices = [n["text"] for n in s2.of("notice")]
        assert len(notices) == 1 and "lost" in notices[0], notices
        assert hub2.counters["gaps"] == 1
        for key in ("wirecat:#r:log", "wirecat:#r:meta", "wirecat:#r:who"):  # forgotten later
            assert 0 < await direct.pttl(key) <= 7 * 24 * 3600 * 1000
        # A member resuming from m0 (its process reloads the room from the stream, which
        # holds m3 and m4 only) is told that what came between is gone.
        await _run(c1, ann, Part("#r"))
        joined = await _run(c1, ann, Join("#r", since=first.message.id))
        assert isinstance(joined, RoomJoined)
        assert [m.text for m in joined.history] == ["m3", "m4"] and joined.gap
        joined = await _run(c2, bob, Join("#r", since=first.message.id))  # already in
        assert [m.text for m in joined.history] == ["m3", "m4"] and joined.gap
    finally:
        await direct.aclose()
        await c1.hub.aclose()
        await c2.hub.aclose()


async def test_a_closed_room_stays_closed_for_a_process_started_later(
    redis_server: RedisServer,
) -> None:
    from wirecat.auth import User
    from wirecat.chat.core import ChatCore
    from wirecat.chat.redis_hub import RedisHub
    from wirecat.protocols.chat import CloseRoom, Done, ErrorEvent, Hello, Join, RoomJoined

    c1, c2 = await _two_cores(redis_server.url)
    late = None
    try:
        root, bob = c1.connect(_Sink()), c2.connect(_Sink())
        root.user = User("root", frozenset({"admin"}))
        await _hello_and_join((c1, root, "root"), (c2, bob, "bob"))
        assert isinstance(await _run(c1, root, CloseRoom("#r")), Done)
        hub = RedisHub(redis_server.url, timeout=HUB_TIMEOUT)  # knew nothing of #r
        await hub.start()
        late = ChatCore(hub=hub)
        cid = late.connect(_Sink())
        await _run(late, cid, Hello("cid"))
        refused = await _run(late, cid, Join("#r"))
        assert isinstance(refused, ErrorEvent) and refused.code == "room_closed"
        assert isinstance(await _run(c1, root, Join("#r")), RoomJoined)  # an admin reopens it
        await wait_for(lambda: "#r" not in c2.closed_rooms)
        assert isinstance(await _run(c2, bob, Join("#r")), RoomJoined)
    finally:
        for core in (c1, c2, late):
            if core is not None:
                await core.hub.aclose()


# -- configuration -----------------------------------------------------------------------------
async def test_password_from_the_environment_never_logged() -> None:
    with short_unix_dir() as root:
        redis = RedisServer(root)
        redis.start()
        try:
            secret = "s3cret-hub-pass"
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(redis.sock)
                s.sendall(f"CONFIG SET requirepass {secret}\r\n".encode())
                assert s.recv(64).startswith(b"+OK")
            os.environ["WIRECAT_REDIS_PASSWORD"] = secret
            try:
                good = Serve(redis.url, "-v", wait=False)
            finally:
                del os.environ["WIRECAT_REDIS_PASSWORD"]
            bad = Serve(f"unix://:wrong-{secret}@{redis.sock}", "-v", wait=False)
            try:
                good.wait_ready()
                bad.wait_ready()
                async with contextlib.AsyncExitStack() as stack:
                    await json_member(good.endpoint(), "bob", stack)
                    p = await Peer.open(bad.endpoint())
                    stack.push_async_callback(p.aclose)
                    await p.send_json(type="hello", nick="ann")  # the nick needs the hub
                    assert (await p.json())["code"] == "hub_unavailable"
            finally:
                errs = good.close() + bad.close()
            assert secret not in errs, errs
            assert "***" in errs  # the URL is shown, its password masked
        finally:
            redis.kill()


async def test_workers_all_serve_chat_with_a_hub(redis_server: RedisServer) -> None:
    """``--workers 2 --hub``: chat runs in both workers (they share the port), and members
    however the kernel spread them are in one room."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))  # never listens: reserves the port for the workers
    port = holder.getsockname()[1]
    argv = [
        *WIRECAT, "serve", "--no-greeting", "--no-echo", "--no-web", "--json", "--loop",
        "asyncio", "--chat", f"tcp://127.0.0.1:{port}", "--chat-rate", "0", "--workers", "2",
        "--hub", redis_server.url, "--hub-timeout", str(HUB_TIMEOUT),
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert read_ready(proc.stdout, timeout(15))["workers"] == 2
        deadline = time.monotonic() + timeout(15)
        while True:  # ready is worker 0's: wait until both workers listen on the chat port
            listening = subprocess.run(
                [peer("ss"), "-Htlnp", f"sport = :{port}"], capture_output=True, text=True,
                check=False,
            ).stdout  # fmt: skip
            if listening.count("pid=") >= 2:
                break
            assert time.monotonic() < deadline, f"one worker serves chat: {listening}"
            await asyncio.sleep(0.05)
        ep = parse_endpoint(f"tcp://127.0.0.1:{port}")
        async with contextlib.AsyncExitStack() as stack:
            members = []
            for i in range(8):  # enough for both workers to take some (SO_REUSEPORT hash)
                p, _ = await json_member(ep, f"m{i}", stack)
                members.append(p)
            await members[0].send_json(type="say", text="to all", ref=1)
            for p in members:
                msg = await p.json_until("message")
                assert (msg["nick"], msg["text"]) == ("m0", "to all")
            await members[-1].send_json(type="who", ref="w")
            who = await members[-1].json_until("who")
            assert who["members"] == [f"m{i}" for i in range(8)]
    finally:
        holder.close()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout(10))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout(5))
        err = proc.stderr.read() if proc.stderr else ""
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
        assert "Traceback" not in err, err


# -- a real interface: Redis in its own network namespace ---------------------------------------
class RedisNetns:
    """``redis-server`` in a network namespace made for the test, reached over a veth pair
    (host side ``10.213.N.1``, Redis ``10.213.N.2``); :meth:`cut` and :meth:`mend` the link."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000}{int(time.monotonic() * 1000) % 100}"
        self.ns = f"wch{tag}"
        self.host_if, self.ns_if = f"wch{tag}a", f"wch{tag}b"
        n = 1 + (os.getpid() * 7 + int(time.monotonic() * 1000)) % 250
        self.host_ip, self.redis_ip = f"10.213.{n}.1", f"10.213.{n}.2"
        self.proc: subprocess.Popen[bytes] | None = None

    def _ip(self, *args: str, ns: bool = False) -> None:
        cmd = [peer("ip"), *(("netns", "exec", self.ns, "ip") if ns else ()), *args]
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout(10))

    def __enter__(self) -> RedisNetns:
        self._ip("netns", "add", self.ns)
        try:
            self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            self._ip("link", "set", self.ns_if, "netns", self.ns)
            self._ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            self._ip("link", "set", self.host_if, "up")
            self._ip("addr", "add", f"{self.redis_ip}/30", "dev", self.ns_if, ns=True)
            self._ip("link", "set", self.ns_if, "up", ns=True)
            self._ip("link", "set", "lo", "up", ns=True)
            self.proc = subprocess.Popen(
                [peer("ip"), "netns", "exec", self.ns, peer("redis-server"), "--bind",
                 self.redis_ip, "--port", "6379", "--save", "", "--appendonly", "no",
                 "--protected-mode", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            _wait_for_pong(
                self.proc,
                lambda: socket.create_connection((self.redis_ip, 6379), timeout(1)),
                "redis-server in the netns",
            )
        except BaseException:
            self.__exit__()
            raise
        return self

    @property
    def url(self) -> str:
        return f"redis://{self.redis_ip}:6379/0"

    def cut(self) -> None:
        self._ip("link", "set", self.host_if, "down")

    def mend(self) -> None:
        self._ip("link", "set", self.host_if, "up")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout(5))
        subprocess.run([peer("ip"), "netns", "del", self.ns], capture_output=True, check=False)
        subprocess.run([peer("ip"), "link", "del", self.host_if], capture_output=True, check=False)


@pytest.mark.async_timeout(60)
async def test_link_to_redis_cut_mid_burst_then_mended() -> None:
    """Redis behind a real interface whose link goes down mid-burst (no RST: the packets
    vanish): the hub times out, says ``hub_unavailable``, reconnects once the link is back,
    and the member on the other process gets every acknowledged message, once, in id order."""
    with RedisNetns() as net:
        async with servers(net.url) as (a, b), contextlib.AsyncExitStack() as stack:
            ann, _ = await json_member(a.endpoint(), "ann", stack)
            bob, _ = await json_member(b.endpoint(), "bob", stack)
            await joined_event(ann, "bob")
            acked: list[int] = []
            refused = 0
            i = 0
            cut_at = mended_at = None
            deadline = time.monotonic() + scaled(40)
            while len(acked) < 80:
                assert time.monotonic() < deadline, f"{len(acked)} acknowledged in time"
                if i == 30:
                    net.cut()
                    cut_at = time.monotonic()
                if cut_at is not None and mended_at is None and refused >= 3:
                    net.mend()
                    mended_at = time.monotonic()
                if (sent := await _say_numbered(ann, i)) is not None:
                    acked.append(sent)
                else:
                    refused += 1
                    await asyncio.sleep(0.1)
                i += 1
            assert mended_at is not None
            _assert_once_in_order(await _messages_until(bob, acked))


async def test_a_member_s_messages_are_pipelined_replies_in_order(
    redis_server: RedisServer,
) -> None:
    """200 says at once (plus a bad line, a who and a last say): the hub takes them without
    a round trip each, and the replies come back one per line, in the order of the lines."""
    async with servers(redis_server.url, 1) as (a,), contextlib.AsyncExitStack() as stack:
        ann, _ = await json_member(a.endpoint(), "ann", stack)
        burst = b"".join(
            json.dumps({"type": "say", "text": f"m{i}", "ref": i}).encode() + b"\n"
            for i in range(200)
        )
        burst += b'{"type":"say","text":""}\n{"type":"who","ref":"w"}\n'
        burst += b'{"type":"say","text":"last","ref":"L"}\n'
        await ann.send(burst)
        refs: list[object] = []
        texts: list[str] = []
        while "L" not in refs or len(texts) < 201:
            obj = await ann.json()
            if obj["type"] in ("sent", "error", "who"):
                refs.append(obj.get("ref"))
            elif obj["type"] == "message":
                texts.append(obj["text"])
        assert refs == [*range(200), None, "w", "L"]
        assert texts == [f"m{i}" for i in range(200)] + ["last"]


async def test_failed_login_limits_are_shared_by_the_processes(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Five wrong tokens from one address, alternating between two processes (each sees
    three at most, under its own limit of five): the sixth is refused unchecked."""
    users = tmp_path / "users.toml"
    users.write_text(f'[users.root]\ntoken = "{hash_token("root-token", log_n=10)}"\n')
    users.chmod(0o600)
    async with servers(redis_server.url, 2, "--users", str(users), "--guests") as (a, b):
        reasons = []
        for i in range(6):
            p = await Peer.open((a if i % 2 == 0 else b).endpoint())
            try:
                await p.send_json(type="hello", nick="root", token=f"wrong-{i}")
                err = await p.json_until("error")
                assert err["code"] == "auth_failed"
                reasons.append(err["reason"])
            finally:
                await p.aclose()
        assert reasons[:5] == ["wrong user name or token"] * 5
        assert "too many failed logins" in reasons[5], reasons


async def test_an_nc_user_and_a_json_client_on_two_processes_chat(
    redis_server: RedisServer,
) -> None:
    """The issue's "done when": real ``nc`` on process A, a JSON-lines client on B."""
    async with servers(redis_server.url) as (a, b), contextlib.AsyncExitStack() as stack:
        ep = a.endpoint()
        nc = await asyncio.create_subprocess_exec(
            peer("nc"), ep.host or "127.0.0.1", str(ep.port),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert nc.stdin is not None and nc.stdout is not None

        async def nc_line(prefix: bytes) -> bytes:
            while True:
                line = await asyncio.wait_for(nc.stdout.readline(), scaled(5))  # type: ignore[union-attr]
                assert line, "nc ended"
                if line.startswith(prefix):
                    return line

        try:
            nc.stdin.write(b"ann\n")
            await nc_line(b"*** in #lobby")
            bob, joined = await json_member(b.endpoint(), "bob", stack)
            assert joined["members"] == ["ann", "bob"]
            await nc_line(b"*** bob joined #lobby")
            nc.stdin.write(b"hello from nc\n")
            msg = await bob.json_until("message")
            assert (msg["nick"], msg["text"]) == ("ann", "hello from nc")
            await bob.send_json(type="say", text="hi nc user", ref=1)
            assert await nc_line(b"#lobby <bob>") == b"#lobby <bob> hi nc user\n"
        finally:
            if nc.returncode is None:
                nc.kill()
            await nc.wait()


async def test_rediss_with_a_ca_file(tmp_path: Path) -> None:
    """``--hub rediss://...?ssl_ca_certs=CA``: the hub talks TLS and verifies Redis's
    certificate; a Redis whose certificate the CA did not sign is not used."""
    import trustme

    ca, other = trustme.CA(), trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    for name, blob in (
        ("ca.pem", ca.cert_pem),
        ("other.pem", other.cert_pem),
        ("key.pem", cert.private_key_pem),
        ("cert.pem", cert.cert_chain_pems[0]),
    ):
        blob.write_to_path(str(tmp_path / name))  # fmt: skip
    redis = None
    for _ in range(3):  # Redis cannot listen for TLS on port 0: pick one, retry if taken
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        redis = subprocess.Popen(
            [peer("redis-server"), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
             "--tls-cert-file", str(tmp_path / "cert.pem"), "--tls-key-file",
             str(tmp_path / "key.pem"), "--tls-auth-clients", "no", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert redis.stdout is not None
        deadline = time.monotonic() + timeout(10)
        line = b""
        while b"Ready to accept" not in line and redis.poll() is None:
            assert time.monotonic() < deadline, "redis-server (TLS) did not start"
            line = redis.stdout.readline()
        if redis.poll() is None:
            break
    assert redis is not None and redis.poll() is None, "redis-server could not listen"
    try:
        good = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'ca.pem'}"
        bad = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'other.pem'}"
        async with servers(good, 1) as (a,), contextlib.AsyncExitStack() as stack:
            ann, _ = await json_member(a.endpoint(), "ann", stack)
            await ann.send_json(type="say", text="over TLS", ref=1)
            assert (await ann.json_until("sent"))["ref"] == 1
        async with servers(bad, 1) as (b,), contextlib.AsyncExitStack() as stack:
            p = await Peer.open(b.endpoint())
            stack.push_async_callback(p.aclose)
            await p.send_json(type="hello", nick="eve")
            assert (await p.json())["code"] == "hub_unavailable"
    finally:
        redis.kill()
        redis.wait(timeout(5))
        if redis.stdout is not None:
            redis.stdout.close()
