"""Authentication over real sockets on loopback: chat (text and JSON modes), files, and the
``wirecat`` commands (``users``, ``serve --users``, ``chat``/``send``/``ls`` with a token).

127.0.0.2 and 127.0.0.3 act as separate sources for the failed-login limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from _chat import Peer
from helpers import scaled, serving, wait_for
from wirecat.auth import User, Users, hash_token
from wirecat.endpoints import Endpoint
from wirecat.files.client import FilesClient, TransferError
from wirecat.runtime.connection import Connection, connect
from wirecat.runtime.server import Server
from wirecat.runtime.tls import client_context, server_context
from wirecat.services.chat import ChatService
from wirecat.services.files import FilesService

T = scaled(5.0)
TOKENS = {"ann": "ann-Secret-1", "bob": "bob-Secret-2"}
WIRECAT = [sys.executable, "-m", "wirecat.cli.main"]


def users_toml() -> str:
    return (
        f'[users.ann]\ntoken = "{hash_token(TOKENS["ann"], log_n=10)}"\nroles = ["admin"]\n'
        f'[users.bob]\ntoken = "{hash_token(TOKENS["bob"], log_n=10)}"\n'
        '[rooms."#ops"]\nmembers = ["bob"]\n'
    )


USERS = users_toml()


def assert_no_token_logged(caplog: pytest.LogCaptureFixture) -> None:
    assert caplog.records, "nothing was logged at all"
    for rec in caplog.records:
        text = rec.getMessage() + repr(rec.__dict__)
        for token in (*TOKENS.values(), "WRONG-token"):
            assert token not in text, f"a token reached the log: {text}"


@contextlib.asynccontextmanager
async def chat(
    guests: bool = True, **kw: Any
) -> AsyncIterator[tuple[Server, Endpoint, contextlib.AsyncExitStack]]:
    svc = ChatService(
        [Endpoint("tcp", "127.0.0.1", 0)], users=Users.parse(USERS), guests=guests, **kw
    )
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(serving(svc))
        yield server, server.endpoint("chat"), stack


async def peer(ep: Endpoint, stack: contextlib.AsyncExitStack, source: str = "127.0.0.1") -> Peer:
    p = await Peer.open(ep, local_addr=(source, 0))
    stack.push_async_callback(p.aclose)
    await p.until(b"*** Programs:")
    return p


# -- chat ----------------------------------------------------------------------------------
async def test_text_mode_prompts_for_the_token_and_admins_kick(
    wirecat_logs: pytest.LogCaptureFixture,
) -> None:
    async with chat() as (server, ep, stack):
        carol = await peer(ep, stack)
        await carol.send(b"carol\n")
        await carol.until(b"*** in #lobby")
        ann = await peer(ep, stack)
        await ann.send(b"ann\n")
        assert await ann.line() == b"*** token for ann:\n"
        await ann.send(TOKENS["ann"].encode() + b"\n")
        assert await ann.line() == b"*** you are ann (authenticated; roles: admin)\n"
        await ann.until(b"*** in #lobby (2)")
        await ann.send(b"/kick carol flooding\n")
        kicked = b"*** carol was kicked from #lobby by ann (flooding)\n"
        assert await carol.until(b"*** carol was kicked") == kicked
        assert await ann.until(b"*** carol was kicked") == kicked
        await ann.until(b"*** kicked carol from #lobby")
        await carol.send(b"anyone?\n")
        assert (await carol.until(b"!!!")).startswith(b"!!! not_in_room")
        await carol.send(b"/kick ann\n")
        assert (await carol.until(b"!!!")).startswith(b"!!! forbidden")
        assert server.ctx.metrics["auth_ok"] == 1
    assert_no_token_logged(wirecat_logs)


async def test_a_wrong_token_is_refused_counted_logged_and_closed(
    wirecat_logs: pytest.LogCaptureFixture,
) -> None:
    async with chat() as (server, ep, stack):
        p = await peer(ep, stack)
        await p.send(b"ann\nWRONG-token\n")
        rest = await p.eof()
        assert rest.endswith(b"!!! auth_failed: wrong user name or token\n")
        assert b"you are" not in rest
        assert server.ctx.metrics["auth_failures"] == 1
        j = await peer(ep, stack)
        await j.send(b'{"type":"hello","nick":"bob","token":"WRONG-token","ref":1}\n')
        assert json.loads(await j.eof()) == {
            "type": "error", "code": "auth_failed", "reason": "wrong user name or token", "ref": 1
        }  # fmt: skip
        await wait_for(lambda: server.ctx.metrics["auth_failures"] == 2, what="2nd failure")
        await wait_for(lambda: not server.ctx.connections, what="both closed")
    failed = [r for r in wirecat_logs.records if getattr(r, "event", None) == "auth_failed"]
    assert [getattr(r, "user", None) for r in failed] == ["ann", "bob"]
    assert_no_token_logged(wirecat_logs)


async def test_json_hello_with_token_then_pipelined_commands_run_in_order() -> None:
    async with chat() as (_, ep, stack):
        p = await peer(ep, stack)
        hello = {"type": "hello", "nick": "bob", "token": TOKENS["bob"], "ref": 1}
        lines = [hello, {"type": "join", "room": "#ops", "ref": 2}, {"type": "say", "text": "x"}]
        await p.send(b"".join(json.dumps(o).encode() + b"\n" for o in lines))
        welcome = await p.json_until("welcome")
        assert (welcome["nick"], welcome["user"], welcome["roles"]) == ("bob", "bob", [])
        while (joined := await p.json_until("joined")).get("ref") != 2:
            assert joined["room"] == "#lobby"  # the hello lands there first
        assert joined["room"] == "#ops"  # restricted, bob is listed
        assert (await p.json_until("message"))["text"] == "x"
        # a guest may not join the restricted room, nor take a user's name
        g = await peer(ep, stack)
        await g.send(b'{"type":"hello","nick":"ann"}\n{"type":"hello","nick":"zed"}\n')
        assert (await g.json_until("error"))["code"] == "auth_required"
        await g.json_until("welcome")
        await g.send(b'{"type":"join","room":"#ops"}\n{"type":"nick","nick":"bob"}\n')
        assert (await g.json_until("error"))["code"] == "forbidden"
        assert (await g.json_until("error"))["code"] == "nick_reserved"


async def test_lines_after_the_token_survive_a_half_close() -> None:
    async with chat() as (_, ep, stack):
        p = await peer(ep, stack)
        await p.send(f"bob\n{TOKENS['bob']}\nlast words\n".encode())
        p.writer.write_eof()
        rest = await p.eof()
        assert b"*** you are bob (authenticated)\n" in rest
        assert b"#lobby <bob> last words\n" in rest


async def test_without_guests_everyone_needs_a_token() -> None:
    async with chat(guests=False) as (_, ep, stack):
        p = await peer(ep, stack)
        await p.send(b"\n")  # asks for a guest name
        assert await p.line() == b"*** this server admits registered users only: name?\n"
        await p.send(b"carol\n")  # any name: the token is asked, and no name is given away
        assert await p.line() == b"*** token for carol:\n"
        await p.send(b"guess\n")
        assert (await p.eof()).endswith(b"!!! auth_failed: wrong user name or token\n")
        j = await peer(ep, stack)
        await j.send(b'{"type":"hello","nick":"carol"}\n')
        assert (await j.json_until("error"))["code"] == "auth_required"


async def test_failed_logins_are_limited_per_source(monkeypatch: pytest.MonkeyPatch) -> None:
    checks: list[str] = []
    real = Users.verify

    def counting(self: Users, name: str, token: str) -> Any:
        checks.append(name)
        return real(self, name, token)

    monkeypatch.setattr(Users, "verify", counting)
    async with chat() as (server, ep, stack):
        for i in range(5):
            p = await peer(ep, stack, "127.0.0.2")
            await p.send(f"ann\nguess-{i}\n".encode())
            assert (await p.eof()).endswith(b"wrong user name or token\n")
        assert len(checks) == 5
        p = await peer(ep, stack, "127.0.0.2")  # even the right token: no more checks
        await p.send(f"ann\n{TOKENS['ann']}\n".encode())
        assert (await p.eof()).endswith(b"too many failed logins from your address: try later\n")
        assert len(checks) == 5
        q = await peer(ep, stack, "127.0.0.3")  # another source is not affected
        await q.send(f"ann\n{TOKENS['ann']}\n".encode())
        assert await q.until(b"*** you are") == b"*** you are ann (authenticated; roles: admin)\n"
        assert server.ctx.metrics["auth_failures"] == 6 and len(checks) == 6


# -- files ---------------------------------------------------------------------------------
async def test_files_need_auth_first(
    tmp_path: Path, wirecat_logs: pytest.LogCaptureFixture
) -> None:
    svc = FilesService([Endpoint("tcp", "127.0.0.1", 0)], tmp_path, users=Users.parse(USERS))
    async with serving(svc) as server:
        ep = server.endpoint("files")
        async with await FilesClient.connect(ep, timeout=T) as client:
            with pytest.raises(TransferError) as info:
                await client.list()
            assert info.value.code == "auth_required"
            assert (await client.auth("ann", TOKENS["ann"])).roles == ("admin",)
            assert (await client.list()).entries == ()
        with pytest.raises(TransferError) as info:
            await FilesClient.connect(ep, timeout=T, user="ann", token="WRONG-token")
        assert info.value.code == "auth_failed"
        async with await FilesClient.connect(
            ep, timeout=T, user="bob", token=TOKENS["bob"]
        ) as client:
            assert (await client.stat("x")).exists is False
        assert server.ctx.metrics["auth_failures"] == 1 and server.ctx.metrics["auth_ok"] == 2
    assert_no_token_logged(wirecat_logs)


# -- the commands --------------------------------------------------------------------------
def run(*args: str, env: dict[str, str] | None = None, stdin: str = "") -> Any:
    return subprocess.run(
        [*WIRECAT, *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=scaled(30),
        env={**os.environ, **(env or {})},
    )


def test_users_add_and_check(tmp_path: Path) -> None:
    path = str(tmp_path / "users.toml")
    made = run("users", "add", path, "ann", "--role", "admin")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert len(token) >= 43 and token not in Path(path).read_text()
    given = run("users", "add", path, "bob", "--token-stdin", stdin="bob-token\n")
    assert given.returncode == 0 and given.stdout == ""
    users = Users.load(path)
    assert users.verify("ann", token) is not None and users.verify("bob", "bob-token")
    check = run("users", "check", path)
    assert check.returncode == 0 and check.stdout == "user ann (admin)\nuser bob\n"
    again = run("users", "add", path, "ann")
    assert again.returncode == 78 and "exists" in again.stderr
    reset = run("users", "reset", path, "ann")
    assert reset.returncode == 0, reset.stderr
    users = Users.load(path)
    assert users.verify("ann", token) is None  # the old token no longer works ...
    assert users.verify("ann", reset.stdout.strip()) == User("ann", frozenset({"admin"}))
    removed = run("users", "remove", path, "bob")
    assert removed.returncode == 0 and "bob" not in Users.load(path)
    assert run("users", "remove", path, "bob").returncode == 78
    Path(path).write_text("[users.x]\n")
    bad = run("users", "check", path)
    assert bad.returncode == 78 and "token" in bad.stderr and "Traceback" not in bad.stderr


def test_serve_refuses_a_bad_users_file_and_guests_without_users(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[users.ann]\ntoken = 'plain'\n")
    bad.chmod(0o600)
    r = run("serve", "--users", str(bad), "--chat", "tcp://127.0.0.1:0")
    assert r.returncode == 78 and "bad.toml" in r.stderr and "Traceback" not in r.stderr
    r = run("serve", "--guests", "--chat", "tcp://127.0.0.1:0")
    assert r.returncode == 64 and "--guests needs --users" in r.stderr


_ROW = re.compile(r"(chat|files)\s+\S\s+tcp://127\.0\.0\.1:(\d+)")


@contextlib.contextmanager
def serve_with_users(tmp_path: Path, *extra: str) -> Iterator[dict[str, str]]:
    users = tmp_path / "users.toml"
    users.write_text(USERS)
    users.chmod(0o600)  # others may not read it (serve refuses that)
    argv = [*WIRECAT, "serve", "--no-greeting", "--no-echo", "--chat", "tcp://127.0.0.1:0",
            "--files", str(tmp_path / "root"), "--files-create",
            "--files-endpoint", "tcp://127.0.0.1:0",
            "--users", str(users), *extra]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        found: dict[str, str] = {}
        buf, deadline = b"", time.monotonic() + scaled(15)
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while len(found) < 2:
                assert time.monotonic() < deadline, f"no table of listeners: {buf!r}"
                if sel.select(deadline - time.monotonic()):
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    assert chunk, f"serve exited: {buf!r}"
                    buf += chunk
                    found = {m[1]: f"127.0.0.1:{m[2]}" for m in _ROW.finditer(buf.decode())}
        yield found
    finally:
        proc.kill()
        proc.communicate(timeout=scaled(10))


def test_clients_authenticate_with_a_token_from_the_environment_or_a_file(
    tmp_path: Path,
) -> None:
    src = tmp_path / "a.txt"
    src.write_text("hello\n")
    token_file = tmp_path / "token"
    token_file.write_text(TOKENS["bob"] + "\n")
    with serve_with_users(tmp_path) as eps:
        anon = run("send", str(src), eps["files"], "--json")
        assert anon.returncode == 77 and json.loads(anon.stdout)["error"] == "auth_required"
        sent = run("send", str(src), eps["files"], "--user", "ann", "--json",
                   env={"WIRECAT_TOKEN": TOKENS["ann"]})  # fmt: skip
        assert sent.returncode == 0 and json.loads(sent.stdout)["verified"], sent.stderr
        listed = run("ls", eps["files"], "--user", "bob", "--token-file", str(token_file))
        assert listed.returncode == 0 and "a.txt" in listed.stdout, listed.stderr
        wrong = run("ls", eps["files"], "--user", "bob", env={"WIRECAT_TOKEN": "WRONG-token"})
        assert wrong.returncode == 77 and "wrong user name or token" in wrong.stderr
        no_token = run("ls", eps["files"], "--user", "bob", env={"WIRECAT_TOKEN": ""})
        assert no_token.returncode == 64
        chatted = run("chat", eps["chat"], "-n", "ann", "--json", stdin="hi there\n",
                      env={"WIRECAT_TOKEN": TOKENS["ann"]})  # fmt: skip
        assert chatted.returncode == 0, chatted.stderr
        events = [json.loads(line) for line in chatted.stdout.splitlines()]
        welcome = next(e for e in events if e["type"] == "welcome")
        assert welcome["user"] == "ann" and welcome["roles"] == ["admin"]
        assert any(e["type"] == "message" and e["text"] == "hi there" for e in events)
        refused = run("chat", eps["chat"], "-n", "ann", env={"WIRECAT_TOKEN": "WRONG-token"})
        assert refused.returncode == 77 and "wrong user name or token" in refused.stderr
        assert "Traceback" not in refused.stderr + wrong.stderr


# -- mTLS: a verified client certificate names the user ----------------------------------------
@pytest.fixture
def mtls(tmp_path: Path) -> dict[str, Any]:
    ca, clients = trustme.CA(), trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    clients.cert_pem.write_to_path(str(tmp_path / "clients.pem"))
    for cn in ("bob", "zed"):
        cert = clients.issue_cert(f"{cn}.example", common_name=cn)
        cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / f"{cn}.pem"))
    server = server_context(
        b"".join(b.bytes() for b in leaf.cert_chain_pems),
        leaf.private_key_pem.bytes(),
        client_ca=str(tmp_path / "clients.pem"),
    )
    return {
        "server": server,
        **{cn: client_context(cafile=str(tmp_path / "ca.pem"), cert=str(tmp_path / f"{cn}.pem"))
           for cn in ("bob", "zed")},
    }  # fmt: skip


async def test_a_client_certificate_naming_a_user_logs_in_without_a_token(
    mtls: dict[str, Any], tmp_path: Path
) -> None:
    users = Users.parse(USERS)
    chat_svc = ChatService([Endpoint("tls", "127.0.0.1", 0)], users=users, guests=True)
    files_svc = FilesService([Endpoint("tls", "127.0.0.1", 0)], tmp_path / "root", users=users)
    server = Server([chat_svc, files_svc], tls=mtls["server"])
    await server.start()
    try:
        url = str(server.endpoint("chat"))
        bob = await connect(url, ssl=mtls["bob"], timeout=T)
        assert isinstance(bob, Connection)
        async with bob:
            await bob.send(b'{"type":"hello"}\n')
            while not (line := await bob.recv_line(timeout=T)).startswith(b"{"):
                pass
            welcome = json.loads(line)
            assert (welcome["type"], welcome["nick"], welcome["user"]) == ("welcome", "bob", "bob")
        zed = await connect(url, ssl=mtls["zed"], timeout=T)  # not a user: a guest
        assert isinstance(zed, Connection)
        async with zed:
            await zed.send(b'{"type":"hello","nick":"bob"}\n{"type":"hello","nick":"zed"}\n')
            objs: list[dict[str, Any]] = []  # (JSON from the first byte: no banner lines)
            while not objs or objs[-1]["type"] != "welcome":
                line = await zed.recv_line(timeout=T)
                if line.startswith(b"{"):
                    objs.append(json.loads(line))
            assert objs[0]["code"] == "auth_required" and "user" not in objs[1]
        async with await FilesClient.connect(
            server.endpoint("files"), timeout=T, ssl=mtls["bob"]
        ) as files:
            assert (await files.list()).entries == ()
        async with await FilesClient.connect(
            server.endpoint("files"), timeout=T, ssl=mtls["zed"]
        ) as files:
            with pytest.raises(TransferError) as info:
                await files.list()
            assert info.value.code == "auth_required"
    finally:
        await server.shutdown(grace=scaled(2))


def test_serve_auth_failure_limit_is_a_flag(tmp_path: Path) -> None:
    with serve_with_users(tmp_path, "--auth-failures", "1") as eps:
        env = {"WIRECAT_TOKEN": "WRONG-token"}
        first = run("ls", eps["files"], "--user", "bob", env=env)
        assert first.returncode == 77 and "wrong user name or token" in first.stderr
        right = run("ls", eps["files"], "--user", "bob", env={"WIRECAT_TOKEN": TOKENS["bob"]})
        assert right.returncode == 77 and "too many failed logins" in right.stderr


async def _files_guess(ep: Endpoint, source: str, user: str, token: str) -> bytes:
    reader, writer = await asyncio.open_connection(ep.host, ep.port, local_addr=(source, 0))
    writer.write(json.dumps({"op": "auth", "user": user, "token": token}).encode() + b"\n")
    line = await asyncio.wait_for(reader.readline(), T)
    writer.close()
    return line


async def test_parallel_guesses_are_counted_before_they_are_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    running = 0
    most = 0
    checks = 0
    lock = threading.Lock()
    real = Users.verify

    def counting(self: Users, name: str, token: str) -> Any:
        nonlocal running, most, checks
        with lock:
            running += 1
            checks += 1
            most = max(most, running)
        try:
            return real(self, name, token)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(Users, "verify", counting)
    svc = FilesService([Endpoint("tcp", "127.0.0.1", 0)], tmp_path, users=Users.parse(USERS))
    async with serving(svc) as server:
        ep = server.endpoint("files")
        # 40 guesses at once from one address: before, all 40 were checked in parallel.
        answers = await asyncio.gather(
            *(_files_guess(ep, "127.0.0.2", "ann", f"guess-{i}") for i in range(40))
        )
        assert checks <= 5 and most == 1, (checks, most)  # 5 per address, one at a time
        assert all(b"auth_failed" in a for a in answers)
        # 50 addresses, 2 guesses each, one account: the account's own limit (20) holds.
        before = checks
        await asyncio.gather(
            *(
                _files_guess(ep, f"127.0.1.{n}", "bob", f"guess-{n}-{k}")
                for n in range(1, 51)
                for k in range(2)
            )
        )
        assert checks - before <= 20 + 5, checks - before  # a few refills while it runs
        # the real user still gets in from a fresh address once the burst refills
        line = await _files_guess(ep, "127.0.2.1", "ann", TOKENS["ann"])
        assert b'"ok": true' in line or b'"ok":true' in line
