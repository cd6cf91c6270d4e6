"""wirecat scan, wirecat ping, wirecat listen udp:// (the netcat gaps), and ICMP sans-I/O."""

from __future__ import annotations

import json
import select
import socket
import struct
import subprocess
import sys

import pytest

from helpers import scaled
from wirecat.cli.probe import parse_ports
from wirecat.protocols.icmp import build_echo, checksum, parse_echo_reply

T = scaled(15)


def wirecat(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wirecat", *args],
        input=None if stdin is None else stdin.decode(),
        capture_output=True,
        text=True,
        timeout=T,
    )


# -- ICMP, sans-I/O ---------------------------------------------------------------------------
def test_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3: the sum of 0001 f203 f4f5 f6f7 is ddf2 (+ carry): checksum 220d.
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert checksum(b"\x01") == checksum(b"\x01\x00")  # odd length padded


def test_echo_request_checksums_to_zero_and_replies_parse() -> None:
    packet = build_echo(0x1234, 7, b"payload")
    assert checksum(packet) == 0
    reply = bytes([0, 0]) + packet[2:]  # the same message as a reply (type 0)
    assert parse_echo_reply(reply) is not None and parse_echo_reply(reply).seq == 7  # type: ignore[union-attr]
    ip = bytes([0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0]) + socket.inet_aton("127.0.0.1") * 2
    parsed = parse_echo_reply(ip + reply, ip_header=True)
    assert parsed is not None and (parsed.ident, parsed.ttl, parsed.payload) == (
        0x1234,
        64,
        b"payload",
    )
    v6 = build_echo(1, 2, b"x", v6=True)
    assert v6[0] == 128 and parse_echo_reply(bytes([129]) + v6[1:], v6=True) is not None
    assert parse_echo_reply(packet) is None  # a request is not a reply
    assert parse_echo_reply(b"\x00\x00") is None  # truncated
    with pytest.raises(ValueError):
        build_echo(70000, 1, b"")


def test_parse_ports() -> None:
    assert parse_ports("22,80,7000-7002,80") == [22, 80, 7000, 7001, 7002]
    for bad in ("0", "1-70000", "a", "5-3"):
        with pytest.raises(ValueError):
            parse_ports(bad)


# -- scan -------------------------------------------------------------------------------------
def test_scan_finds_open_ports_and_reports_closed_ones() -> None:
    with socket.create_server(("127.0.0.1", 0)) as a, socket.create_server(("127.0.0.1", 0)) as b:
        pa, pb = a.getsockname()[1], b.getsockname()[1]
        with socket.socket() as c:
            c.bind(("127.0.0.1", 0))  # bound, not listening: refused
            pc = c.getsockname()[1]
            out = wirecat("scan", "127.0.0.1", f"{pa},{pb},{pc}", "--json", "-a")
    assert out.returncode == 0, out.stderr
    states = {p["port"]: p["state"] for p in json.loads(out.stdout)["ports"]}
    assert states == {pa: "open", pb: "open", pc: "closed"}


def test_scan_exits_1_when_nothing_is_open() -> None:
    with socket.socket() as c:
        c.bind(("127.0.0.1", 0))
        out = wirecat("scan", "127.0.0.1", str(c.getsockname()[1]))
    assert out.returncode == 1 and out.stdout == ""


def test_udp_scan() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as answering,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent,
    ):
        answering.bind(("127.0.0.1", 0))
        silent.bind(("127.0.0.1", 0))
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        pc = closed.getsockname()[1]
        closed.close()  # nothing there now: ICMP port unreachable
        pa, ps = answering.getsockname()[1], silent.getsockname()[1]
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wirecat",
                "scan",
                "127.0.0.1",
                f"{pa},{ps},{pc}",
                "--udp",
                "--json",
                "-a",
                "-t",
                "0.5",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        ready, _, _ = select.select([answering], [], [], T)
        assert ready
        _data, addr = answering.recvfrom(100)
        answering.sendto(b"yes", addr)
        out, _ = proc.communicate(timeout=T)
    states = {p["port"]: p["state"] for p in json.loads(out)["ports"]}
    assert states == {pa: "open", ps: "open|filtered", pc: "closed"}


def test_probes_refuse_other_hosts() -> None:
    for args in (["scan", "192.0.2.1", "80"], ["ping", "192.0.2.1", "-c", "1"]):
        out = wirecat(*args)
        assert out.returncode == 77 and "--allow-remote" in out.stderr


def test_scan_bad_ports() -> None:
    out = wirecat("scan", "127.0.0.1", "80-70000")
    assert out.returncode == 64 and "1-65535" in out.stderr


# -- ping -------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_ping_loopback(host: str) -> None:
    out = wirecat("ping", host, "-c", "3", "-i", "0.05", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (result["sent"], result["received"], result["loss_percent"]) == (3, 3, 0.0)
    assert result["rtt_ms"]["min"] <= result["rtt_ms"]["max"]


# -- listen udp://, as nc -u -l ---------------------------------------------------------------
def test_listen_udp_answers_its_first_peer() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "wirecat", "listen", "udp://127.0.0.1:0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None and proc.stdin is not None
        line = proc.stderr.readline().decode()
        port = int(line.rsplit(":", 1)[1])
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other,
        ):
            peer.settimeout(T)
            peer.sendto(b"hello listener\n", ("127.0.0.1", port))
            assert proc.stdout.readline() == b"hello listener\n"
            other.sendto(b"not heard\n", ("127.0.0.1", port))  # one-peer mode
            proc.stdin.write(b"reply one\n")
            proc.stdin.flush()
            assert peer.recvfrom(100)[0] == b"reply one\n"
            peer.sendto(b"second\n", ("127.0.0.1", port))
            assert proc.stdout.readline() == b"second\n"  # "not heard" never printed
    finally:
        proc.kill()
        proc.communicate(timeout=T)


def test_struct_is_big_endian() -> None:
    assert struct.pack("!H", 1) == b"\x00\x01"
