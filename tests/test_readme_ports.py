"""The README-port check of test_readme.py (``helpers.ports_in_use``), in isolation: on
ephemeral ports, never the README's fixed ones (other worktrees may be using them)."""

from __future__ import annotations

import socket

from helpers import ports_in_use


def test_a_held_tcp_port_is_named_with_its_holder() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        busy = ports_in_use({"tcp": (port,)})
    assert len(busy) == 1
    assert busy[0].startswith(f"tcp port {port} is in use")
    assert "python" in busy[0]  # ss -ltnp names this process: users:(("python",pid=...))


def test_a_held_udp_port_is_named() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        busy = ports_in_use({"udp": (port,)})
    assert len(busy) == 1 and busy[0].startswith(f"udp port {port} is in use")


def test_free_ports_pass() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        udp_port = probe.getsockname()[1]
    assert ports_in_use({"tcp": (port,), "udp": (udp_port,)}) == []
