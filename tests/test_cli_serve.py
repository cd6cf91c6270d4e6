"""`wirecat serve` end to end: a real subprocess, textbook blocking clients, real signals."""

from __future__ import annotations

import contextlib
import os
import re
import select
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from helpers import scaled

WIRECAT = [sys.executable, "-m", "wirecat.cli.main"]
ROW = re.compile(r"(greeting|echo|chat)\s+\S\s+(tcp|udp)://127\.0\.0\.1:(\d+)")


class Serve:
    def __init__(self, proc: subprocess.Popen[bytes], ports: dict[tuple[str, str], int]) -> None:
        self.proc = proc
        self.ports = ports


def _read_table(proc: subprocess.Popen[bytes], expected: int) -> dict[tuple[str, str], int]:
    """Read the table of listeners from stdout (bounded), return {(service, scheme): port}."""
    assert proc.stdout is not None
    ports: dict[tuple[str, str], int] = {}
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + scaled(15)
    buf = b""
    while len(ports) < expected:
        left = deadline - time.monotonic()
        assert left > 0, f"no table of listeners in time; got {buf!r}"
        if not sel.select(left):
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        assert chunk, f"wirecat serve exited early: {buf!r}"
        buf += chunk
        for m in ROW.finditer(buf.decode(errors="replace")):
            ports[(m.group(1), m.group(2))] = int(m.group(3))
    sel.close()
    return ports


@contextmanager
def serving(*extra: str) -> Iterator[Serve]:
    argv = [
        *WIRECAT,
        "serve",
        "--greeting",
        "tcp://127.0.0.1:0",
        "--echo",
        "tcp://127.0.0.1:0",
        "--echo",
        "udp://127.0.0.1:0",
        "--chat",
        "tcp://127.0.0.1:0",
        "--loop",
        "asyncio",
        *extra,
    ]
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        yield Serve(proc, _read_table(proc, 4))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=scaled(10))


def _client(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=scaled(5))
    s.settimeout(scaled(5))
    return s


def _recv_until(s: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_serve_answers_textbook_clients_then_drains_on_sigterm() -> None:
    with serving("--grace", "2") as srv:
        # greeting: connect, recv until closed
        with _client(srv.ports[("greeting", "tcp")]) as g:
            assert _recv_until(g, b"\n\n") == b"Thank you for connecting\n"
        # echo: sendall, shutdown(SHUT_WR), recv everything back
        with _client(srv.ports[("echo", "tcp")]) as e:
            e.sendall(b"hello\n" * 1000)
            e.shutdown(socket.SHUT_WR)
            assert _recv_until(e, b"\x00") == b"hello\n" * 1000
        # UDP echo: sendto, recvfrom
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(scaled(5))
            u.sendto(b"datagram", ("127.0.0.1", srv.ports[("echo", "udp")]))
            assert u.recvfrom(65535)[0] == b"datagram"
        # chat: a text-mode member, then SIGTERM: it is told, and the server exits 0
        with _client(srv.ports[("chat", "tcp")]) as c:
            c.sendall(b"ann\n")
            assert b"ann joined #lobby" in _recv_until(c, b"ann joined #lobby")
            srv.proc.send_signal(signal.SIGTERM)
            assert b"server shutting down" in _recv_until(c, b"server shutting down")
            assert srv.proc.wait(timeout=scaled(10)) == 0


def test_second_signal_forces_exit_past_a_peer_that_ignores_the_close() -> None:
    with serving("--grace", "30") as srv, _client(srv.ports[("echo", "tcp")]) as e:
        # A peer that never reads: its echo backs up, so the graceful close cannot finish.
        # Backed up = the server stopped reading us: our socket stays unwritable (a busy
        # server that merely lags behind would drain it, and then the close could finish).
        e.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        e.setblocking(False)
        deadline = time.monotonic() + scaled(20)
        while time.monotonic() < deadline:
            with contextlib.suppress(BlockingIOError):
                while True:
                    e.send(b"x" * 65536)
            if not select.select([], [e], [], scaled(0.5))[1]:
                break
        else:
            pytest.fail("the server kept reading a peer that never reads")
        srv.proc.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            srv.proc.wait(timeout=scaled(0.5))  # still draining: grace is 30 s
        srv.proc.send_signal(signal.SIGINT)
        assert srv.proc.wait(timeout=scaled(10)) == 0


def test_address_in_use_is_one_line_and_exit_71() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [*WIRECAT, "serve", "--no-chat", "--no-greeting", "--echo", f"127.0.0.1:{port}"],
            capture_output=True,
            timeout=scaled(20),
        )
    assert r.returncode == 71
    err = r.stderr.decode()
    assert err.count("\n") == 1 and "address already in use" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--no-greeting", "--no-echo", "--no-chat"], 64, "nothing to serve"),
        (["--echo", "tcp://[::1:7007"], 64, "unclosed '['"),
        (["--echo", "tls://127.0.0.1:0", "--no-chat", "--no-greeting"], 64, "--cert/--key"),
        (["--banner", "two\nlines", "--no-chat", "--no-echo"], 64, "one line"),
    ],
)
def test_bad_serve_options_exit_with_a_reason(args: list[str], code: int, words: str) -> None:
    r = subprocess.run([*WIRECAT, "serve", *args], capture_output=True, timeout=scaled(20))
    assert r.returncode == code, r.stderr
    assert words in r.stderr.decode()
    assert "Traceback" not in r.stderr.decode()


def test_handshake_timeout_help_names_only_what_the_verb_serves() -> None:
    """``--handshake-timeout`` is shared by serve and relay; relay's socks5:// and
    http-proxy:// servers belong to relay's help alone."""
    from click.testing import CliRunner

    from wirecat.cli.relay import relay_command
    from wirecat.cli.serve import serve_command

    def option_help(command: object) -> str:
        out = CliRunner().invoke(command, ["--help"], terminal_width=200).output  # type: ignore[arg-type]
        line = next(line for line in out.splitlines() if "--handshake-timeout" in line)
        return " ".join(line.split())

    serve_help = option_help(serve_command)
    assert "TLS handshake" in serve_help
    assert "socks5" not in serve_help and "http-proxy" not in serve_help
    relay_help = option_help(relay_command)
    assert "socks5://" in relay_help and "http-proxy://" in relay_help
