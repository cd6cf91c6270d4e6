"""``wirecat scan`` (``nc -z``) and ``wirecat ping`` (``ping -c``): probes of this machine.

Both refuse targets outside loopback and this machine's own addresses unless given
``--allow-remote``: probing other people's hosts is not something to do by accident.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import socket
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import click

from ..protocols.icmp import build_echo, parse_echo_reply
from .common import LOOP_OPTION, die
from .exits import exit_code_for, message_for

__all__ = ["parse_ports", "ping_command", "scan_command"]

MAX_PORTS = 65536


def parse_ports(text: str) -> list[int]:
    """``22,80,7000-7100`` -> sorted unique ports.

    Raises:
        ValueError: a bad number or range.
    """
    ports: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"bad port {part!r}: expected e.g. 22,80,7000-7100") from None
        if not 1 <= a <= b <= 65535:
            raise ValueError(f"bad port range {part!r}: 1-65535")
        ports.update(range(a, b + 1))
    return sorted(ports)


def _resolve(host: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        die(f"cannot resolve {host}: {exc.strerror}", 68)
    return list(dict.fromkeys(str(i[4][0]) for i in infos))


def _is_local(address: str) -> bool:
    """Loopback, or an address of this machine (it can be bound here)."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    if ip.is_loopback:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((address, 0))
        except OSError:
            return False
    return True


def _target(host: str, allow_remote: bool) -> str:
    addresses = _resolve(host)
    if not allow_remote and not all(_is_local(a) for a in addresses):
        die(
            f"{host} ({', '.join(addresses)}) is not this machine: wirecat probes only loopback "
            "and local addresses unless given --allow-remote (probe only hosts you may probe)",
            77,
        )
    return addresses[0]


@dataclass(slots=True)
class PortResult:
    port: int
    state: str  # open, closed, filtered, open|filtered
    rtt_ms: float | None = None


async def _probe_tcp(host: str, port: int, timeout: float) -> PortResult:
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return PortResult(port, "filtered")
    except ConnectionRefusedError:
        return PortResult(port, "closed")
    except OSError:
        return PortResult(port, "filtered")
    rtt = (time.perf_counter() - t0) * 1000
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return PortResult(port, "open", round(rtt, 3))


class _UdpProbe(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.done.done():
            self.done.set_result("open")

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():  # ICMP port unreachable
            refused = isinstance(exc, ConnectionRefusedError)
            self.done.set_result("closed" if refused else "filtered")


async def _probe_udp(host: str, port: int, timeout: float) -> PortResult:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_UdpProbe, remote_addr=(host, port))
    try:
        transport.sendto(b"\n")
        try:
            async with asyncio.timeout(timeout):
                state = await proto.done
        except TimeoutError:
            state = "open|filtered"  # no answer and no ICMP error: cannot tell
        return PortResult(port, state)
    finally:
        transport.close()


@click.command("scan")
@click.argument("host")
@click.argument("ports")
@click.option("--udp", is_flag=True, help="UDP: one probe datagram; ICMP unreachable = closed.")
@click.option(
    "-t",
    "--timeout",
    type=click.FloatRange(min=0.001),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Per port.",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(1, 10000),
    default=100,
    show_default=True,
    help="Ports probed at once.",
)
@click.option("-a", "--all", "show_all", is_flag=True, help="Show closed ports too.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow a target that is not this machine (probe only hosts you may probe).",
)
@LOOP_OPTION
def scan_command(
    host: str,
    ports: str,
    udp: bool,
    timeout: float,
    concurrency: int,
    show_all: bool,
    as_json: bool,
    allow_remote: bool,
    loop_kind: str,
) -> None:
    """Probe PORTS of HOST (like `nc -z`): print the open ones.

    PORTS is a list like 22,80,7000-7100. TCP: a full connect, closed at once (open,
    closed = refused, filtered = no answer within --timeout). UDP (--udp): one datagram;
    an ICMP port-unreachable means closed, an answer open, silence open|filtered. At most
    --concurrency probes run at once. Exit 0 if any port is open, 1 if none.

    Only loopback and this machine's own addresses are probed unless --allow-remote is
    given.

    \b
    Examples:
      wirecat scan 127.0.0.1 7000-7100
      wirecat scan localhost 22,80,443 --json
      wirecat scan 127.0.0.1 7007 --udp
    """
    from ..runtime.loop import run

    try:
        port_list = parse_ports(ports)
    except ValueError as exc:
        die(str(exc), 64)
    address = _target(host, allow_remote)
    probe = _probe_udp if udp else _probe_tcp

    async def main() -> list[PortResult]:
        gate = asyncio.Semaphore(concurrency)

        async def one(port: int) -> PortResult:
            async with gate:
                return await probe(address, port, timeout)

        return list(await asyncio.gather(*(one(p) for p in port_list)))

    try:
        results = run(main(), loop=loop_kind)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        sys.exit(130)
    opened = [r for r in results if r.state.startswith("open")]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "host": host,
                    "address": address,
                    "protocol": "udp" if udp else "tcp",
                    "ports": [
                        {"port": r.port, "state": r.state, "rtt_ms": r.rtt_ms}
                        for r in results
                        if show_all or r.state.startswith("open")
                    ],
                }
            )
        )
    else:
        for r in results:
            if show_all or r.state.startswith("open"):
                rtt = f"  {r.rtt_ms:.2f} ms" if r.rtt_ms is not None else ""
                click.echo(f"{r.port}/{'udp' if udp else 'tcp'}  {r.state}{rtt}")
    sys.exit(0 if opened else 1)


def _icmp_socket(v6: bool) -> tuple[socket.socket, bool]:
    """A datagram ICMP socket where allowed (no privilege), else raw (root): (sock, raw)."""
    family = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    try:
        return socket.socket(family, socket.SOCK_DGRAM, proto), False
    except PermissionError:
        pass
    try:
        return socket.socket(family, socket.SOCK_RAW, proto), True
    except PermissionError:
        die(
            "ICMP needs privileges here: run as root, or allow datagram ICMP sockets with "
            "sysctl net.ipv4.ping_group_range='0 2147483647'",
            77,
        )


@click.command("ping")
@click.argument("host")
@click.option("-c", "--count", type=click.IntRange(1, 100000), default=4, show_default=True)
@click.option(
    "-i", "--interval", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
    metavar="SECONDS", help="Between requests.",
)  # fmt: skip
@click.option(
    "-W", "--timeout", type=click.FloatRange(min=0.01), default=2.0, show_default=True,
    metavar="SECONDS", help="How long to wait for the last reply.",
)  # fmt: skip
@click.option("-s", "--size", type=click.IntRange(8, 65000), default=56, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@click.option("--allow-remote", is_flag=True, help="Allow a target that is not this machine.")
@LOOP_OPTION
def ping_command(
    host: str,
    count: int,
    interval: float,
    timeout: float,
    size: int,
    as_json: bool,
    allow_remote: bool,
    loop_kind: str,
) -> None:
    """Send ICMP echo requests to HOST (IPv4 or IPv6) and report round trips, like ping -c.

    Uses a datagram ICMP socket (no privilege where net.ipv4.ping_group_range allows it),
    else a raw socket (root). Exit 0 if any reply came back, 1 if none. Only loopback and
    this machine's own addresses unless --allow-remote.

    \b
    Examples:
      wirecat ping 127.0.0.1
      wirecat ping ::1 -c 10 -i 0.2 --json
    """
    from ..runtime.loop import run

    address = _target(host, allow_remote)
    v6 = ":" in address
    sock, raw = _icmp_socket(v6)
    sock.setblocking(False)
    ident = os.getpid() & 0xFFFF

    async def main() -> tuple[int, list[float]]:
        loop = asyncio.get_running_loop()
        sent: dict[int, float] = {}
        rtts: list[float] = []
        got = asyncio.Event()

        def on_readable() -> None:
            while True:
                try:
                    data = sock.recv(65535)
                except (BlockingIOError, InterruptedError):
                    return
                reply = parse_echo_reply(data, v6=v6, ip_header=raw and not v6)
                # Datagram sockets rewrite the identifier to the socket's port: match on seq.
                if reply is None or (raw and reply.ident != ident) or reply.seq not in sent:
                    continue
                rtt = (time.perf_counter() - sent.pop(reply.seq)) * 1000
                rtts.append(rtt)
                if not as_json:
                    click.echo(
                        f"{len(data)} bytes from {address}: icmp_seq={reply.seq} time={rtt:.3f} ms"
                    )
                got.set()

        loop.add_reader(sock.fileno(), on_readable)
        try:
            payload = bytes(range(256)) * (size // 256 + 1)
            for seq in range(1, count + 1):
                sent[seq] = time.perf_counter()
                packet = build_echo(ident, seq & 0xFFFF, payload[:size], v6=v6)
                with contextlib.suppress(BlockingIOError):  # a full buffer: counted as lost
                    sock.sendto(packet, (address, 0))
                if seq < count:
                    await asyncio.sleep(interval)  # the pacing of a ping, not a sync
            deadline = loop.time() + timeout
            while sent and loop.time() < deadline:
                got.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(deadline - loop.time()):
                        await got.wait()
        finally:
            loop.remove_reader(sock.fileno())
            sock.close()
        return count, rtts

    try:
        sent_n, rtts = run(main(), loop=loop_kind)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:
        from ..errors import translate_os_error

        err = translate_os_error(exc, what=address, phase="io")
        die(message_for(err), exit_code_for(err))
    loss = 100.0 * (sent_n - len(rtts)) / sent_n
    summary = {
        "host": host,
        "address": address,
        "sent": sent_n,
        "received": len(rtts),
        "loss_percent": round(loss, 1),
        "rtt_ms": {
            "min": round(min(rtts), 3),
            "avg": round(statistics.fmean(rtts), 3),
            "max": round(max(rtts), 3),
            "mdev": round(statistics.pstdev(rtts), 3),
        }
        if rtts
        else None,
        "socket": "raw" if raw else "datagram",
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"--- {host} ping statistics ---")
        click.echo(f"{sent_n} packets transmitted, {len(rtts)} received, {loss:.0f}% packet loss")
        if rtts:
            r = summary["rtt_ms"]
            assert isinstance(r, dict)
            click.echo(f"rtt min/avg/max/mdev = {r['min']}/{r['avg']}/{r['max']}/{r['mdev']} ms")
    sys.exit(0 if rtts else 1)
