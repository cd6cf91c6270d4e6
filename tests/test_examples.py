"""The programs in examples/ (shown in the docs) run against real sockets."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from helpers import scaled

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
T = scaled(15)


@contextmanager
def running(script: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        proc.communicate(timeout=T)


def _addr(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.split("://", 1)[1].rsplit(":", 1)
    return host.strip("[]"), int(port)


def test_echo_server_example() -> None:
    with running("echo_server.py", "tcp://127.0.0.1:0") as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("echo on tcp://127.0.0.1:"), line
        with socket.create_connection(_addr(line.split()[-1]), timeout=T) as sock:
            sock.sendall(b"hello\nworld\n")
            reader = sock.makefile("rb")
            assert reader.readline() == b"hello\n" and reader.readline() == b"world\n"


def test_serve_from_python_example() -> None:
    with running("serve_from_python.py") as proc:
        assert proc.stdout is not None
        lines = dict(proc.stdout.readline().split(" ", 1) for _ in range(3))
        assert set(lines) == {"greeting", "echo", "chat"}
        greeting = lines["greeting"].split()[0]
        with socket.create_connection(_addr(greeting), timeout=T) as sock:
            assert sock.makefile("rb").readline() == b"Thank you for connecting\n"


def test_example_config_file_loads() -> None:
    import wirecat

    config = wirecat.ServeConfig.from_toml(EXAMPLES / "wirecat.toml")
    assert config.tls.self_signed and config.limits.max_conns == 2048
    assert [str(e) for e in config.chat] == ["tcp://127.0.0.1:7070", "tls://127.0.0.1:7443"]


def test_chat_bot_example_answers_in_the_lobby() -> None:
    from helpers import read_ready

    argv = [sys.executable, "-m", "wirecat", "serve", "--json", "--no-greeting", "--no-echo"]
    argv += ["--chat", "tcp://127.0.0.1:0"]
    serve = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        chat = read_ready(serve.stdout, T)["endpoints"]["chat"][0]
        with running("chat_bot.py", chat) as bot:
            assert bot.stdout is not None
            assert bot.stdout.readline().startswith("timebot in #lobby"), bot.stderr
            with socket.create_connection(_addr(chat), timeout=T) as sock:
                reader = sock.makefile("rb")
                sock.sendall(b'{"type":"hello","nick":"ann"}\n{"type":"join","room":"#lobby"}\n')
                sock.sendall(b'{"type":"say","text":"!time","ref":"q"}\n')
                for _ in range(100):  # bounded: the welcome, joined, sent, then the answer
                    line = reader.readline()
                    assert line, "the server closed the connection"
                    if b'"nick":"timebot"' in line and b'"type":"message"' in line:
                        assert b"UTC" in line
                        break
                else:
                    raise AssertionError("no answer from the bot")
    finally:
        serve.terminate()
        serve.communicate(timeout=T)
