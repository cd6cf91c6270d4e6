"""The library is the product: ServeConfig -> Server(config), connect/connect_datagram, listen.

Real sockets on 127.0.0.1 with port 0 throughout; every async test runs on both loops.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import wirecat
from helpers import scaled, wait_for
from wirecat import ConcurrencyError, ConfigError, InvalidEndpoint, ServeConfig, TLSConfig
from wirecat.files.client import FilesClient
from wirecat.runtime.limits import Limits

T = scaled(10)


# -- ServeConfig ------------------------------------------------------------------------------
def test_defaults_are_those_of_wirecat_serve() -> None:
    config = ServeConfig()
    assert [str(e) for e in config.greeting] == ["tcp://127.0.0.1:7000"]
    assert [str(e) for e in config.echo] == ["tcp://127.0.0.1:7007", "udp://127.0.0.1:7007"]
    assert [str(e) for e in config.chat] == ["tcp://127.0.0.1:7070"]
    assert "files" not in config.services()  # no root, no files service
    assert config.limits.conn_rate == 20.0 and config.limits.max_conns_per_source == 64


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"greeting": [], "echo": [], "chat": []}, None),
        ({"workers": 0}, "workers"),
        ({"history": 10001}, "history"),
        ({"banner": "two\nlines"}, "banner"),
        ({"guests": True}, "guests"),
        ({"echo": ["tls://127.0.0.1:0"]}, "tls"),
        ({"tls": TLSConfig(self_signed=True)}, "tls"),
        ({"allow": ["10.0.0.0/33"]}, "allow"),
        ({"deny": ["nonsense"]}, "deny"),
        ({"chat": ["udp://127.0.0.1:0"]}, "chat"),
        ({"echo": ["tcp://[::1:7"]}, "echo"),
        ({"chat_rate": -1.0}, "chat_rate"),
        ({"log_format": "xml"}, "log_format"),
    ],
)
def test_each_bad_field_is_named(kwargs: dict[str, object], field: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        ServeConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert "--" not in str(info.value)  # the library never names a CLI flag


def test_tls_settings_contradicting_each_other() -> None:
    with pytest.raises(ConfigError, match="exclude"):
        TLSConfig(cert="a.pem", self_signed=True)
    with pytest.raises(ConfigError, match="profile"):
        TLSConfig(profile="legacy")  # type: ignore[arg-type]


def test_replace_validates_again() -> None:
    config = ServeConfig(greeting=[], chat=[])
    assert config.replace(workers=2).workers == 2
    with pytest.raises(ConfigError):
        config.replace(echo=[])
    with pytest.raises(ConfigError):
        config.replace(no_such_field=1)


def test_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "wirecat.toml"
    path.write_text(
        'echo = ["tcp://[::1]:0", "udp://127.0.0.1:0"]\n'
        'greeting = []\nchat-rate = 0\nhistory = 7\nallow = ["127.0.0.0/8"]\n'
        '[tls]\nprofile = "modern"\n'
        "[limits]\nmax_conns = 10\nidle_timeout = 2.5\nmax-conns-per-source = 3\n"
    )
    config = ServeConfig.from_toml(path)
    assert [str(e) for e in config.echo] == ["tcp://[::1]:0", "udp://127.0.0.1:0"]
    assert config.greeting == () and config.history == 7 and config.chat_rate is None
    assert config.allow == ("127.0.0.0/8",) and config.tls.profile == "modern"
    assert config.limits == Limits(
        max_conns=10, idle_timeout=2.5, max_conns_per_source=3, conn_rate=20.0
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("bogus = 1\n", "unknown setting 'bogus'"),
        ("history = 'many'\n", "history: expected int"),
        ("workers = true\n", "workers: expected int"),
        ("[limits]\nmax_lines = 3\n", "unknown setting limits.max_lines"),
        ("[limits]\nmax_conns = 0\n", "max_conns must be >= 1"),
        ("[tls\n", "not valid TOML"),
        ("echo = 7\n", "expected a list of endpoints"),
    ],
)
def test_bad_toml_names_the_file_and_the_setting(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        ServeConfig.from_toml(path)
    assert words in str(info.value) and str(path) in str(info.value)


def test_oversized_config_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    path.write_bytes(b"#" * (1024 * 1024 + 1))
    with pytest.raises(ConfigError, match="larger than"):
        ServeConfig.from_toml(path)


# -- Server(config) ---------------------------------------------------------------------------
async def test_server_from_config_exposes_real_ports() -> None:
    config = ServeConfig(
        greeting=["tcp://127.0.0.1:0"],
        echo=["tcp://127.0.0.1:0", "udp://127.0.0.1:0"],
        chat=[],
        banner="hi there",
    )
    async with wirecat.Server(config) as server:
        assert set(server.endpoints) == {"greeting", "echo"}
        greeting = server.endpoint("greeting")
        assert greeting.port != 0
        async with wirecat.connect(greeting, timeout=T) as conn:
            assert await conn.recv_line(timeout=T) == b"hi there\n"
        async with wirecat.connect_datagram(server.endpoint("echo", "udp"), timeout=T) as dg:
            await dg.send(b"ping")
            assert await dg.recv(timeout=T) == b"ping"


async def test_server_from_config_serves_files_over_tls_with_a_pin(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    src = tmp_path / "hello.txt"
    src.write_bytes(b"hello files\n" * 1000)
    config = ServeConfig(
        greeting=[],
        echo=[],
        chat=[],
        files_root=str(root),
        files=["tls://127.0.0.1:0"],
        tls=TLSConfig(self_signed=True),
        limits=Limits(idle_timeout=None),
    )
    async with wirecat.Server(config) as server:
        assert server.fingerprint is not None and server.fingerprint.startswith("sha256:")
        client = await FilesClient.connect(
            server.endpoint("files"), pin=server.fingerprint, timeout=T
        )
        try:
            await client.upload(str(src), "hello.txt")
        finally:
            await client.aclose()
    assert (root / "hello.txt").read_bytes() == src.read_bytes()


async def test_serve_refuses_workers_inside_a_loop() -> None:
    with pytest.raises(ConfigError, match=r"run\(\)") as info:
        await wirecat.serve(ServeConfig(workers=2), handle_signals=False)
    assert info.value.field == "workers"


async def test_serve_runs_until_cancelled_then_drains() -> None:
    config = ServeConfig(greeting=["tcp://127.0.0.1:0"], echo=[], chat=[])
    task = asyncio.ensure_future(wirecat.serve(config, handle_signals=False))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- connect / connect_datagram ---------------------------------------------------------------
async def _echo(conn: wirecat.Connection) -> None:
    async for line in conn:
        await conn.send(line)


async def test_connect_is_awaitable_and_an_async_context_manager() -> None:
    async with wirecat.listen("tcp://127.0.0.1:0", _echo) as server:
        ep = server.endpoint()
        conn = await wirecat.connect(ep, timeout=T)
        await conn.send(b"awaited\n")
        assert await conn.recv_line(timeout=T) == b"awaited\n"
        await conn.aclose()
        async with wirecat.connect(str(ep), timeout=T) as conn2:
            await conn2.send(b"with\n")
            assert await conn2.recv_line(timeout=T) == b"with\n"
        assert conn2.transport.is_closing()


async def test_connect_kinds_are_checked() -> None:
    with pytest.raises(InvalidEndpoint, match="connect_datagram"):
        await wirecat.connect("udp://127.0.0.1:9", timeout=T)
    with pytest.raises(InvalidEndpoint, match=r"connect\(\)"):
        await wirecat.connect_datagram("tcp://127.0.0.1:9", timeout=T)


async def test_async_for_reads_lines_then_the_rest() -> None:
    async def handler(conn: wirecat.Connection) -> None:
        await conn.send(b"one\ntwo\nrest")
        await conn.send_eof()
        await conn.recv(timeout=T)

    async with (
        wirecat.listen("tcp://127.0.0.1:0", handler) as server,
        wirecat.connect(server.endpoint(), timeout=T) as conn,
    ):
        assert [line async for line in conn] == [b"one\n", b"two\n", b"rest"]


async def test_two_concurrent_reads_raise_concurrency_error() -> None:
    gate = asyncio.Event()

    async def handler(conn: wirecat.Connection) -> None:
        await gate.wait()
        await conn.send(b"late\n")

    async with (
        wirecat.listen("tcp://127.0.0.1:0", handler) as server,
        wirecat.connect(server.endpoint(), timeout=T) as conn,
    ):
        first = asyncio.ensure_future(conn.recv_line(timeout=T))
        await asyncio.sleep(0)
        with pytest.raises(ConcurrencyError, match="recv_line"):
            await conn.recv(timeout=T)
        gate.set()
        assert await first == b"late\n"  # the first reader is untouched
        await conn.send(b"x")  # and the connection goes on


async def test_concurrent_sends_under_backpressure_all_complete() -> None:
    # Each send waits for the transport to drain; two writers must share that wait (a
    # second waiter used to replace the first, which then never woke up).
    gate = asyncio.Event()
    received = bytearray()

    async def slow_reader(conn: wirecat.Connection) -> None:
        await gate.wait()
        while data := await conn.recv(timeout=T):
            received.extend(data)

    size = 8 * 1024 * 1024
    async with (
        wirecat.listen("tcp://127.0.0.1:0", slow_reader) as server,
        wirecat.connect(server.endpoint(), timeout=T) as conn,
    ):
        a = asyncio.ensure_future(conn.send(b"a" * size))
        b = asyncio.ensure_future(conn.send(b"b" * size))
        await asyncio.sleep(0)
        assert not (a.done() and b.done())  # both wait: the reader is not reading
        gate.set()
        await asyncio.wait_for(asyncio.gather(a, b), T)
        await conn.send_eof()
        await wait_for(lambda: len(received) == 2 * size, T, what="all bytes received")
    assert bytes(received) == b"a" * size + b"b" * size  # each write whole, in call order


# -- listen -----------------------------------------------------------------------------------
async def test_listen_applies_the_server_limits() -> None:
    limits = Limits(max_conns_per_source=1)
    async with wirecat.listen("tcp://127.0.0.1:0", _echo, limits=limits) as server:
        async with wirecat.connect(server.endpoint(), timeout=T) as first:
            await first.send(b"in\n")
            assert await first.recv_line(timeout=T) == b"in\n"
            async with wirecat.connect(server.endpoint(), timeout=T) as second:
                line = await second.recv_line(timeout=T)
                assert b"too many connections from your address" in line
        assert server.ctx.metrics["refused_per_source"] == 1


async def test_listen_handler_errors_are_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(conn: wirecat.Connection) -> None:
        raise RuntimeError("boom")

    async with wirecat.listen("tcp://127.0.0.1:0", broken) as server:
        async with wirecat.connect(server.endpoint(), timeout=T) as conn:
            assert await conn.recv(timeout=T) == b""  # closed by the server
        await wait_for(lambda: server.ctx.metrics["handler_errors"] == 1, T)
    assert "connection handler failed" in caplog.text


async def test_listen_drains_handlers_on_shutdown() -> None:
    started = asyncio.Event()

    async def waits(conn: wirecat.Connection) -> None:
        started.set()
        await conn.recv(timeout=T)  # returns b"" when the server closes us

    server = wirecat.listen("tcp://127.0.0.1:0", waits, limits=Limits(shutdown_grace=T))
    await server.start()
    conn = await wirecat.connect(server.endpoint(), timeout=T)
    await asyncio.wait_for(started.wait(), T)
    await asyncio.wait_for(server.shutdown(), T)
    assert await conn.recv(timeout=T) == b""
    await conn.aclose()


async def test_listen_over_tls_with_a_pin() -> None:
    from wirecat.runtime.tls import self_signed, server_context

    made = self_signed()
    tls = server_context(made.cert_pem, made.key_pem)
    async with wirecat.listen("tls://127.0.0.1:0", _echo, tls=tls) as server:
        ep = server.endpoint()
        assert ep.scheme == "tls"
        async with wirecat.connect(ep, pin=made.fingerprint, timeout=T) as conn:
            await conn.send(b"secret\n")
            assert await conn.recv_line(timeout=T) == b"secret\n"


def test_listen_refuses_datagram_endpoints() -> None:
    with pytest.raises(InvalidEndpoint, match="stream"):
        wirecat.listen("udp://127.0.0.1:0", _echo)


# -- the package ------------------------------------------------------------------------------
def test_importing_protocols_loads_no_io_module() -> None:
    code = (
        "import sys, wirecat.protocols, wirecat.protocols.lines, wirecat.endpoints;"
        "print([m for m in ('asyncio', 'ssl', 'socket', 'selectors') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names_resolve() -> None:
    for name in wirecat.__all__:
        assert getattr(wirecat, name) is not None, name
    with pytest.raises(AttributeError):
        wirecat.no_such_name  # noqa: B018


def test_python_dash_m_wirecat() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "wirecat", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "wirecat" in out.stdout


def test_serve_config_file_and_flags_override_it(tmp_path: Path) -> None:
    path = tmp_path / "wirecat.toml"
    path.write_text('greeting = ["tcp://127.0.0.1:0"]\nchat = []\nbanner = "from file"\n')
    argv = [sys.executable, "-m", "wirecat", "serve", "--config", str(path), "--json"]
    argv += ["--no-echo", "--banner", "from flags"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=os.environ) as proc:
        try:
            assert proc.stdout is not None
            ready = json.loads(proc.stdout.readline())
            assert list(ready["endpoints"]) == ["greeting"]
            host, port = ready["endpoints"]["greeting"][0].removeprefix("tcp://").rsplit(":", 1)
            import socket

            with socket.create_connection((host, int(port)), timeout=T) as sock:
                assert sock.makefile("rb").readline() == b"from flags\n"
        finally:
            proc.terminate()
            proc.wait(T)


def test_self_signed_without_cryptography_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['cryptography'] = None\n"
        "from wirecat.runtime.tls import self_signed\n"
        "from wirecat.errors import TLSError\n"
        "try:\n    self_signed()\nexcept TLSError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'wirecat[tls-tools]'" in out.stdout
