"""``--proxy`` for ``wirecat send``, ``get``, ``ls`` and ``chat``, and WebSockets and the files
client through a proxy (library), over real sockets: wirecat's own SOCKS5 server and
Debian's microsocks (with RFC 1929 login)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import wirecat
from helpers import scaled
from test_chat_service import _run_cli, chat_server, text_user
from test_files_cli import FilesServer
from test_socks import microsocks, wirecat_socks
from wirecat.runtime.websocket import WebSocketConnection
from wirecat.services.relay import RelayStats
from wirecat.services.socks import socks_server

T = scaled(10)


def _wirecat(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wirecat.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=scaled(20),
    )


def _send_ls_get(tmp_path: Path, server: FilesServer, proxy: str, name: str) -> None:
    src = tmp_path / f"{name}.bin"
    src.write_bytes(os.urandom(200_000))
    sent = _wirecat("send", str(src), server.endpoint, "--json", "--proxy", proxy)
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["verified"]
    listing = _wirecat("ls", server.endpoint, "--json", "--proxy", proxy)
    assert listing.returncode == 0, listing.stderr
    assert f"{name}.bin" in {e["name"] for e in json.loads(listing.stdout)["entries"]}
    dest = tmp_path / f"{name}.got"
    got = _wirecat("get", f"{name}.bin", server.endpoint, "-o", str(dest), "-q", "--proxy", proxy)
    assert got.returncode == 0, got.stderr
    assert dest.read_bytes() == src.read_bytes()


@pytest.mark.interop
def test_send_ls_get_through_wirecat_socks(tmp_path: Path) -> None:
    server = FilesServer(tmp_path / "root")
    try:
        with wirecat_socks() as port:
            _send_ls_get(tmp_path, server, f"socks5://127.0.0.1:{port}", "via-wirecat")
    finally:
        server.stop()
    usage = _wirecat("ls", "unix:/tmp/x.sock", "--proxy", "socks5://127.0.0.1:1")
    assert usage.returncode == 64 and "tcp:// and tls://" in usage.stderr


@pytest.mark.interop
def test_send_ls_get_through_microsocks_with_a_login(tmp_path: Path) -> None:
    server = FilesServer(tmp_path / "root")
    try:
        with microsocks("-u", "ann", "-P", "s3cret") as port:
            _send_ls_get(tmp_path, server, f"socks5://ann:s3cret@127.0.0.1:{port}", "via-micro")
            bad = _wirecat("ls", server.endpoint, "--proxy", f"socks5://ann:nope@127.0.0.1:{port}")
            assert bad.returncode != 0
            assert "username or password" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        server.stop()


@pytest.mark.async_timeout(40)
async def test_chat_through_wirecat_socks_and_microsocks() -> None:
    tunnels: list[RelayStats] = []
    async with (
        chat_server() as (_, ep, stack),
        socks_server("tcp://127.0.0.1:0", on_end=tunnels.append) as proxy,
    ):
        ann = await text_user(ep, stack, "ann")
        via = f"socks5://127.0.0.1:{proxy.endpoint().port}"
        code, _, err = await _run_cli(str(ep), "-n", "bot", "--proxy", via, stdin=b"hi\n")
        assert code == 0, err
        await ann.until(b"#lobby <bot> hi\n")
        assert tunnels  # it went through the proxy
        with microsocks() as port:
            code, _, err = await _run_cli(
                str(ep), "-n", "bot2", "--proxy", f"socks5://127.0.0.1:{port}", stdin=b"yo\n"
            )
        assert code == 0, err
        await ann.until(b"#lobby <bot2> yo\n")


async def test_ws_and_wss_through_a_socks_proxy() -> None:
    from wirecat.runtime.tls import self_signed, server_context

    made = self_signed()
    tls = server_context(made.cert_pem, made.key_pem)
    tunnels: list[RelayStats] = []

    async def ws_echo(conn: wirecat.Connection) -> None:
        assert isinstance(conn, WebSocketConnection)
        await conn.send_text(str(await conn.recv_message(timeout=T)))

    async with (
        socks_server("tcp://127.0.0.1:0", on_end=tunnels.append) as proxy,
        wirecat.listen("ws://127.0.0.1:0/", ws_echo) as plain,
        wirecat.listen("wss://127.0.0.1:0/", ws_echo, tls=tls) as secure,
    ):
        via = f"socks5://127.0.0.1:{proxy.endpoint().port}"
        for ep, pin in ((plain.endpoint(), None), (secure.endpoint(), made.fingerprint)):
            async with wirecat.connect(ep, proxy=via, pin=pin, timeout=T) as ws:
                assert isinstance(ws, WebSocketConnection)
                await ws.send_text("through the tunnel")
                assert await ws.recv_message(timeout=T) == "through the tunnel"
    assert len(tunnels) == 2


async def test_an_unreachable_proxy_is_named_as_the_proxy() -> None:
    for proxy in ("socks5://127.0.0.1:1", "http://127.0.0.1:1"):
        with pytest.raises(wirecat.ConnectionRefused, match="cannot reach the proxy: "):
            await wirecat.connect("tcp://127.0.0.1:9", proxy=proxy, timeout=T)
    code = _wirecat("ls", "127.0.0.1:9", "--proxy", "http://127.0.0.1:1")
    assert code.returncode == 69 and code.stderr.startswith("wirecat: cannot reach the proxy: ")


@pytest.mark.parametrize(
    ("verb", "args", "words"),
    [
        ("connect", ["udp://127.0.0.1:9"], "tcp://, tls://, ws:// and wss:// endpoints, not udp"),
        ("connect", ["127.0.0.1:9", "--proxy", "ftp://127.0.0.1:1"], "use socks5://"),
        ("ls", ["unix:/tmp/x.sock"], "tcp:// and tls:// endpoints, not unix:"),
        ("ls", ["127.0.0.1:9", "--proxy", "socks5://127.0.0.1"], "needs a host and a port"),
    ],
)
def test_a_proxy_that_cannot_serve_is_a_usage_error(
    verb: str, args: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from wirecat.cli.main import main

    if "--proxy" not in args:
        args = [*args, "--proxy", "socks5://127.0.0.1:1"]
    assert main([verb, *args]) == 64
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


async def test_chat_over_the_web_chat_websocket_through_a_socks_proxy() -> None:
    from test_websocket_service import _server, _ws_url

    tunnels: list[RelayStats] = []
    async with (
        _server() as server,
        socks_server("tcp://127.0.0.1:0", on_end=tunnels.append) as proxy,
    ):
        via = f"socks5://127.0.0.1:{proxy.endpoint().port}"
        code, _, err = await _run_cli(_ws_url(server), "-n", "wsbot", "--proxy", via, stdin=b"hi\n")
        assert code == 0, err
    assert tunnels  # it went through the proxy
