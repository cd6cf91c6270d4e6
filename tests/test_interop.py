"""Real peers (nc, ncat, socat, a textbook blocking client) against wirecat's own services.

The services run in-process on port 0 (a background thread with its own loop), so the
peers see exactly what a ``wirecat serve`` user's peers would.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
from collections.abc import Iterator

import pytest

from _peers import Running, Services, host_port, peer, recv_all, recv_until, timeout, wirecat
from wirecat.endpoints import parse_endpoint
from wirecat.services.echo import EchoService
from wirecat.services.greeting import DEFAULT_BANNER, GreetingService

pytestmark = pytest.mark.interop

BANNER = DEFAULT_BANNER.encode() + b"\n"


@pytest.fixture(scope="module")
def services() -> Iterator[Services]:
    greeting = GreetingService([parse_endpoint("tcp://127.0.0.1:0")])
    echo = EchoService([parse_endpoint("tcp://127.0.0.1:0"), parse_endpoint("udp://127.0.0.1:0")])
    with Services(greeting, echo) as running:
        yield running


def _run(argv: list[str], data: bytes | None = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        argv,
        input=data,
        stdin=subprocess.DEVNULL if data is None else None,
        capture_output=True,
        timeout=timeout(),
        check=False,
    )


# -- greeting: the peer connects, reads one line, the server closes ---------------------------


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(lambda h, p: [peer("nc"), h, p], id="nc"),
        pytest.param(lambda h, p: [peer("ncat"), "--recv-only", h, p], id="ncat"),
        pytest.param(lambda h, p: [peer("socat"), "-u", f"TCP:{h}:{p}", "-"], id="socat"),
    ],
)
def test_greeting_with_real_peers(services: Services, argv: object) -> None:
    host, port = host_port(services.endpoint("greeting"))
    proc = _run(argv(host, port), data=None)  # type: ignore[operator]
    assert proc.stdout == BANNER, proc.stderr
    assert proc.returncode == 0, proc.stderr


def test_greeting_with_textbook_client(services: Services) -> None:
    host, port = host_port(services.endpoint("greeting"))
    with socket.create_connection((host, int(port)), timeout=timeout()) as s:
        assert recv_all(s) == BANNER  # recv until the server closes


def test_greeting_with_wirecat_connect(services: Services) -> None:
    proc = wirecat(
        "connect", str(services.endpoint("greeting")), input=None, stdin=subprocess.DEVNULL
    )
    assert (proc.returncode, proc.stdout) == (0, BANNER), proc.stderr


# -- echo over TCP: round trip, half-close -----------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(lambda h, p: [peer("nc"), "-N", h, p], id="nc -N"),
        pytest.param(lambda h, p: [peer("ncat"), h, p], id="ncat"),
        pytest.param(
            lambda h, p: [peer("socat"), "-t", str(timeout(5)), "-", f"TCP:{h}:{p}"], id="socat -t"
        ),
    ],
)
def test_echo_tcp_with_real_peers(services: Services, argv: object) -> None:
    host, port = host_port(services.endpoint("echo", "tcp"))
    data = b"line one\nline two\n" * 1000
    proc = _run(argv(host, port), data)  # type: ignore[operator]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data


def test_echo_tcp_binary_with_socat(services: Services) -> None:
    host, port = host_port(services.endpoint("echo", "tcp"))
    data = os.urandom(1024 * 1024)
    proc = _run([peer("socat"), "-t", str(timeout(5)), "-", f"TCP:{host}:{port}"], data)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data


def test_echo_tcp_textbook_client(services: Services) -> None:
    host, port = host_port(services.endpoint("echo", "tcp"))
    with socket.create_connection((host, int(port)), timeout=timeout()) as s:
        s.sendall(b"hello\n")
        assert recv_until(s, b"\n") == b"hello\n"  # until newline
        s.sendall(b"bye\n")
        s.shutdown(socket.SHUT_WR)  # half-close: echo answers what it got, then closes
        assert recv_all(s) == b"bye\n"


def test_echo_tcp_wirecat_connect_binary(services: Services) -> None:
    data = os.urandom(1024 * 1024)
    proc = wirecat("connect", str(services.endpoint("echo", "tcp")), input=data)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data


# -- echo over UDP -----------------------------------------------------------------------------


def test_echo_udp_with_nc(services: Services) -> None:
    host, port = host_port(services.endpoint("echo", "udp"))
    proc = _run([peer("nc"), "-u", "-w1", host, port], b"ping\n")
    assert proc.stdout == b"ping\n", proc.stderr


def test_echo_udp_with_ncat(services: Services) -> None:
    # ncat -u may exit as soon as stdin ends, before the reply: keep stdin open instead.
    host, port = host_port(services.endpoint("echo", "udp"))
    with Running([peer("ncat"), "-u", host, port]) as ncat:
        ncat.write(b"ping\n")
        assert ncat.proc.stdout is not None
        ready, _, _ = select.select([ncat.proc.stdout], [], [], timeout())
        assert ready, "no reply from the echo service within the timeout"
        assert os.read(ncat.proc.stdout.fileno(), 100) == b"ping\n"


def test_echo_udp_with_socat(services: Services) -> None:
    host, port = host_port(services.endpoint("echo", "udp"))
    proc = _run([peer("socat"), "-t", "1", "-", f"UDP:{host}:{port}"], b"ping\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"ping\n"


def test_echo_udp_textbook_client(services: Services) -> None:
    host, port = host_port(services.endpoint("echo", "udp"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout())
        s.sendto(b"datagram", (host, int(port)))
        data, addr = s.recvfrom(65536)
    assert data == b"datagram"
    assert addr == (host, int(port))


def test_echo_udp_wirecat_connect(services: Services) -> None:
    proc = wirecat(
        "connect", "--wait", "1", str(services.endpoint("echo", "udp")), input=b"a\nbb\nccc\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"a\nbb\nccc\n"
