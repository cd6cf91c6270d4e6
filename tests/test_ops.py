"""Operations: Prometheus metrics, reload on SIGHUP, systemd readiness and socket activation."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import wirecat
from helpers import read_ready, scaled, wait_for
from wirecat import ServeConfig
from wirecat.auth import add_user
from wirecat.runtime.limits import Limits
from wirecat.runtime.tls import fingerprint, self_signed

T = scaled(10)


# -- metrics ----------------------------------------------------------------------------------
async def _http(ep: wirecat.Endpoint, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(ep.host, ep.port)
    writer.write(request)
    data = await asyncio.wait_for(reader.read(), T)
    writer.close()
    await writer.wait_closed()
    return data


async def test_metrics_scrape_parses_and_counts() -> None:
    config = ServeConfig(
        greeting=[], chat=[], echo=["tcp://127.0.0.1:0"], metrics=["tcp://127.0.0.1:0"]
    )
    async with wirecat.Server(config) as server, wirecat.connect(server.endpoint("echo")) as c:
        await c.send(b"x\n")
        assert await c.recv_line(timeout=T) == b"x\n"
        raw = await _http(server.endpoint("metrics"), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"text/plain; version=0.0.4" in head
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        opened = {
            s.labels["service"]: s.value for s in families["wirecat_connections_open"].samples
        }
        assert opened["echo"] == 1 and opened["metrics"] == 1
        accepted = families["wirecat_accepted"].samples[0]
        assert accepted.name == "wirecat_accepted_total" and accepted.value >= 2
        assert families["wirecat_up"].samples[0].value == 1


async def test_metrics_per_service_connections_and_bytes() -> None:
    config = ServeConfig(
        greeting=["tcp://127.0.0.1:0"],
        chat=[],
        echo=["tcp://127.0.0.1:0"],
        metrics=["tcp://127.0.0.1:0"],
        limits=Limits(max_conns_per_source=2, conn_rate=None),
    )
    async with wirecat.Server(config) as server:
        echo = server.endpoint("echo")
        async with wirecat.connect(echo) as a, wirecat.connect(echo) as b:
            await a.send(b"hello\n")
            assert await a.recv_line(timeout=T) == b"hello\n"
            await b.send(b"hi\n")
            assert await b.recv_line(timeout=T) == b"hi\n"
            async with wirecat.connect(echo) as third:  # refused: per source
                assert b"too many connections" in await third.recv_line(timeout=T)
        await wait_for(lambda: not server.ctx.connections, what="the echo peers closed")
        raw = await _http(server.endpoint("metrics"), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    body = raw.partition(b"\r\n\r\n")[2].decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({**labels, "worker": "0"}.items())))]

    assert value("wirecat_bytes_received_total", service="echo") == 9  # hello\n + hi\n
    assert value("wirecat_bytes_sent_total", service="echo") == 9
    assert value("wirecat_connections_accepted_total", service="echo") == 2
    assert value("wirecat_connections_refused_total", service="echo", reason="per_source") == 1
    assert ("wirecat_bytes_received_total", (("service", "greeting"), ("worker", "0"))) not in (
        samples  # no connection, no sample
    )
    assert not any("peer" in dict(labels) for _, labels in samples)  # never per peer


def test_metrics_worker_endpoints() -> None:
    from wirecat.errors import ConfigError
    from wirecat.services.metrics import worker_endpoint

    ep = wirecat.parse_endpoint("tcp://127.0.0.1:9107")
    assert worker_endpoint(ep, 0) == ep
    assert worker_endpoint(ep, 3).port == 9110
    assert worker_endpoint(wirecat.parse_endpoint("tcp://127.0.0.1:0"), 2).port == 0
    assert worker_endpoint(wirecat.parse_endpoint("unix:/run/m.sock"), 1).path == "/run/m.sock.1"
    with pytest.raises(ConfigError, match="65535"):
        worker_endpoint(wirecat.parse_endpoint("tcp://127.0.0.1:65535"), 1)
    # Refused with the config, before any worker starts (not by worker 1 alone).
    with pytest.raises(ConfigError, match="65535") as caught:
        wirecat.ServeConfig(metrics=("tcp://127.0.0.1:65534",), workers=3)
    assert caught.value.field == "metrics"
    wirecat.ServeConfig(metrics=("tcp://127.0.0.1:65533",), workers=3)


def test_each_worker_serves_its_own_metrics() -> None:
    with serve("--echo", "tcp://127.0.0.1:0", "--no-chat", "--workers", "2",
               "--metrics", "tcp://127.0.0.1:0") as proc:  # fmt: skip
        assert proc.stdout is not None
        first = read_ready(proc.stdout, T)["endpoints"]["metrics"][0]
        line = _wait_stderr(proc, "worker 1: metrics on ")
        second = line.split("worker 1: metrics on ", 1)[1].split()[0]
        for endpoint, worker in ((first, "0"), (second, "1")):
            host, port = _addr(endpoint)
            with socket.create_connection((host, port), timeout=T) as sock:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                raw = b""
                while chunk := sock.recv(65536):
                    raw += chunk
            body = raw.partition(b"\r\n\r\n")[2].decode()
            up = {f.name: f for f in text_string_to_metric_families(body)}["wirecat_up"]
            assert up.samples[0].labels["worker"] == worker


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
        (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", b"405"),
        (b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"200"),
        (b"\x16\x03\x01garbage\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", b"400"),
    ],
)
async def test_metrics_refuses_what_it_does_not_serve(request_: bytes, status: bytes) -> None:
    config = ServeConfig(
        greeting=[], chat=[], echo=["tcp://127.0.0.1:0"], metrics=["tcp://127.0.0.1:0"]
    )
    async with wirecat.Server(config) as server:
        raw = await _http(server.endpoint("metrics"), request_)
        assert raw.split(b" ", 2)[1] == status, raw[:200]
        if request_.startswith(b"HEAD"):
            assert raw.endswith(b"\r\n\r\n")  # headers only


# -- subprocess helpers -----------------------------------------------------------------------
@contextmanager
def serve(*args: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    argv = [sys.executable, "-m", "wirecat", "serve", "--json", "--no-greeting", *args]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.communicate(timeout=T)


def _addr(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.split("://", 1)[1].rsplit(":", 1)
    return host.strip("[]"), int(port)


def _wait_stderr(proc: subprocess.Popen[str], words: str) -> str:
    assert proc.stderr is not None
    import select

    seen = ""
    while words not in seen:
        ready, _, _ = select.select([proc.stderr], [], [], T)
        assert ready, f"no {words!r} in the log: {seen!r}"
        line = proc.stderr.readline()
        assert line, f"serve exited: {seen!r}"
        seen += line
    return seen


def _chat_login(addr: tuple[str, int], nick: str, token: str) -> tuple[socket.socket, str]:
    sock = socket.create_connection(addr, timeout=T)
    sock.sendall(json.dumps({"type": "hello", "nick": nick, "token": token}).encode() + b"\n")
    reader = sock.makefile("rb")
    while True:
        line = reader.readline()
        assert line, "closed before an answer"
        if line.startswith(b"{"):
            msg = json.loads(line)
            if msg.get("type") in ("welcome", "error"):
                return sock, msg["type"] + ":" + str(msg.get("code", ""))


# -- reload -----------------------------------------------------------------------------------
def test_sighup_reloads_the_users_file_and_keeps_connections(tmp_path: Path) -> None:
    users = tmp_path / "users.toml"
    ann = add_user(users, "ann", log_n=10)
    with serve("--no-echo", "--chat", "tcp://127.0.0.1:0", "--users", str(users)) as proc:
        assert proc.stdout is not None
        addr = _addr(read_ready(proc.stdout, T)["endpoints"]["chat"][0])
        first, answer = _chat_login(addr, "ann", ann)
        assert answer == "welcome:"
        bob = add_user(users, "bob", log_n=10)
        second, answer = _chat_login(addr, "bob", bob)
        assert answer.startswith("error:")  # not yet: the file is read at start
        second.close()
        proc.send_signal(signal.SIGHUP)
        _wait_stderr(proc, "reload: users file")
        third, answer = _chat_login(addr, "bob", bob)
        assert answer == "welcome:"
        users.write_text("[users.broken\n")  # a bad file is refused, the old one kept
        proc.send_signal(signal.SIGHUP)
        _wait_stderr(proc, "keeping the old users file")
        third.close()  # bob logs in again with the token of the file kept in force
        answer = "error:nick_taken"
        for _ in range(50):  # until the server saw the close (each try is a round trip)
            fourth, answer = _chat_login(addr, "bob", bob)
            if answer != "error:nick_taken":
                break
            fourth.close()
        assert answer == "welcome:"
        first.sendall(b'{"type":"who"}\n')  # the connection from before every reload is up
        assert first.recv(1)
        for s in (first, fourth):
            s.close()


def _served_fingerprint(addr: tuple[str, int]) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(addr, timeout=T) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return fingerprint(der)


def test_sighup_reloads_the_certificate(tmp_path: Path) -> None:
    old, new = self_signed(), self_signed()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(old.cert_pem)
    key.write_bytes(old.key_pem)
    with serve(
        "--no-chat", "--echo", "tls://127.0.0.1:0", "--cert", str(cert), "--key", str(key)
    ) as proc:
        assert proc.stdout is not None
        addr = _addr(read_ready(proc.stdout, T)["endpoints"]["echo"][0])
        assert _served_fingerprint(addr) == old.fingerprint
        cert.write_bytes(new.cert_pem)
        key.write_bytes(new.key_pem)
        proc.send_signal(signal.SIGHUP)
        _wait_stderr(proc, "TLS certificate")
        assert _served_fingerprint(addr) == new.fingerprint
        key.write_bytes(b"not a key")
        proc.send_signal(signal.SIGHUP)
        _wait_stderr(proc, "keeping the old TLS certificate")
        assert _served_fingerprint(addr) == new.fingerprint


# -- systemd ----------------------------------------------------------------------------------
def test_socket_activation_and_readiness(tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(T)
    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    # Pass the socket as fd 3 with LISTEN_PID = the pid wirecat will run as (exec keeps it).
    launcher = (
        "import os, sys\n"
        "os.dup2(int(sys.argv[1]), 3)\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'wirecat', *sys.argv[2:]])\n"
    )
    argv = [sys.executable, "-c", launcher, str(listening.fileno()), "serve", "--json"]
    argv += ["--no-greeting", "--no-chat", "--echo", f"tcp://127.0.0.1:{port}"]
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, text=True, env=env, pass_fds=(listening.fileno(),)
    )
    try:
        assert proc.stdout is not None
        ready = read_ready(proc.stdout, T)  # bound, although the port is taken: adopted
        assert ready["endpoints"]["echo"] == [f"tcp://127.0.0.1:{port}"]
        assert notify.recv(4096) == b"READY=1"
        listening.close()  # ours; wirecat holds its own copy
        with socket.create_connection(("127.0.0.1", port), timeout=T) as sock:
            sock.sendall(b"activated\n")
            assert sock.makefile("rb").readline() == b"activated\n"
        proc.send_signal(signal.SIGHUP)
        assert notify.recv(4096).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        assert notify.recv(4096) == b"READY=1"
        proc.terminate()
        assert notify.recv(4096) == b"STOPPING=1"
        assert proc.wait(T) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(T)
        proc.stdout.close()  # type: ignore[union-attr]
        notify.close()
        listening.close()


def test_socket_activation_warns_about_a_socket_no_listener_claims(tmp_path: Path) -> None:
    claimed = socket.create_server(("127.0.0.1", 0))
    stray = socket.create_server(("127.0.0.1", 0))
    port, stray_port = claimed.getsockname()[1], stray.getsockname()[1]
    launcher = (
        "import os, sys\n"
        "os.dup2(int(sys.argv[1]), 3)\n"
        "os.dup2(int(sys.argv[2]), 4)\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='2',"
        " LISTEN_FDNAMES='echo:stray')\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'wirecat', *sys.argv[3:]])\n"
    )
    argv = [sys.executable, "-c", launcher, str(claimed.fileno()), str(stray.fileno())]
    argv += ["serve", "--json", "--no-greeting", "--no-chat", "--echo", f"tcp://127.0.0.1:{port}"]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        pass_fds=(claimed.fileno(), stray.fileno()),
    )
    try:
        assert proc.stdout is not None
        ready = read_ready(proc.stdout, T)
        assert ready["endpoints"]["echo"] == [f"tcp://127.0.0.1:{port}"]
        seen = _wait_stderr(proc, "no listener is configured for it")
        assert f'tcp://127.0.0.1:{stray_port} (fd 4, name "stray")' in seen
        assert f":{port} " not in seen  # the claimed one is not named
    finally:
        proc.terminate()
        proc.communicate(timeout=T)
        claimed.close()
        stray.close()


def test_describe_names_unix_and_datagram_sockets(tmp_path: Path) -> None:
    from wirecat.runtime.systemd import describe

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        unix.bind(str(tmp_path / "s"))
        assert describe(unix).startswith(f"unix:{tmp_path / 's'} (fd ")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        assert describe(udp).startswith(f"udp://127.0.0.1:{udp.getsockname()[1]} (fd ")
