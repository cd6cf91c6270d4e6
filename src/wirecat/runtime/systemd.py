"""systemd integration: readiness notification and socket activation.

- :func:`notify` sends a state (``READY=1``, ``RELOADING=1``, ``STOPPING=1``) to the
  datagram socket named by ``$NOTIFY_SOCKET`` (``sd_notify(3)``): with ``Type=notify`` (or
  ``notify-reload``), systemd starts dependent units only once every listener is open.
- :func:`adopt_listen_fds` takes the sockets systemd passes (``$LISTEN_PID``,
  ``$LISTEN_FDS``, from fd 3 on; ``sd_listen_fds(3)``); a listener whose endpoint matches one
  of them uses it instead of binding (:func:`take_inherited`), so a port below 1024 or a
  socket opened before wirecat starts needs no privilege in wirecat.
- :func:`unclaimed` describes the passed sockets that no listener took (a unit's
  ``ListenStream=`` without a matching wirecat endpoint): the server logs a warning for
  each, since connections to it would wait unanswered.

The protocol is small and documented as stable by systemd; it is implemented here rather
than through the ``sdnotify`` package, unmaintained since 2017. Does nothing outside
systemd (no variables set). Example unit files: ``docs/systemd/``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

from ..endpoints import Endpoint

__all__ = [
    "LISTEN_FDS_START",
    "adopt_listen_fds",
    "describe",
    "inherited",
    "notify",
    "take_inherited",
    "unclaimed",
]

#: The first file descriptor systemd passes (``SD_LISTEN_FDS_START``).
LISTEN_FDS_START = 3

#: Sockets passed by systemd and not yet claimed by a listener.
inherited: list[socket.socket] = []

#: ``$LISTEN_FDNAMES`` (``FileDescriptorName=``) by file descriptor, for messages.
_names: dict[int, str] = {}


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to ``$NOTIFY_SOCKET``; return whether it was sent.

    ``RELOADING=1`` gets the ``MONOTONIC_USEC`` field that ``Type=notify-reload`` requires.
    Never raises: readiness is best effort.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if state.startswith("RELOADING=1"):
        state += f"\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), target)
    except OSError:
        return False
    return True


def adopt_listen_fds(*, unset: bool = True) -> list[socket.socket]:
    """Take the sockets systemd passed to this process into :data:`inherited`.

    Only when ``$LISTEN_PID`` is this process; the variables are then removed (``unset``)
    so that child processes do not take them too. Idempotent.

    Returns:
        The sockets adopted now (``[]`` outside socket activation).
    """
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        count = 0
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    if unset:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
    adopted = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + max(0, min(count, 1024))):
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            continue
        os.set_inheritable(fd, False)
        sock.setblocking(False)
        adopted.append(sock)
        index = fd - LISTEN_FDS_START
        if index < len(names) and names[index]:
            _names[fd] = names[index]
    inherited.extend(adopted)
    return adopted


def _addresses(endpoint: Endpoint, kind: socket.SocketKind) -> list[tuple[int, object]]:
    if endpoint.is_unix:
        path = endpoint.path or ""
        return [(socket.AF_UNIX, "\0" + path[1:] if path.startswith("@") else path)]
    try:
        infos = socket.getaddrinfo(
            endpoint.host, endpoint.port, type=kind, flags=socket.AI_PASSIVE | socket.AI_NUMERICHOST
        )
    except OSError:
        return []
    return [(family, addr[:2]) for family, _, _, _, addr in infos]


def take_inherited(endpoint: Endpoint, kind: socket.SocketKind) -> socket.socket | None:
    """Remove and return the inherited socket bound to ``endpoint`` (of ``kind``), if any."""
    if not inherited or (endpoint.is_inet and not endpoint.port):
        return None
    wanted = _addresses(endpoint, kind)
    for sock in inherited:
        with contextlib.suppress(OSError):
            if sock.type != kind:
                continue
            name = sock.getsockname()
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            key = name[:2] if isinstance(name, tuple) else name
            if any(sock.family == fam and key == addr for fam, addr in wanted):
                inherited.remove(sock)
                return sock
    return None


def describe(sock: socket.socket) -> str:
    """``sock`` as an endpoint a listener would need to claim it, with its descriptor and
    systemd name: ``tcp://127.0.0.1:7008 (fd 4, name "echo")``. Never raises."""
    fd = sock.fileno()
    extra = f"fd {fd}" + (f', name "{_names[fd]}"' if fd in _names else "")
    try:
        name = sock.getsockname()
        kind = sock.type
        if sock.family == socket.AF_UNIX:
            path = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
            path = "@" + path[1:] if path.startswith("\0") else path
            scheme = {socket.SOCK_DGRAM: "unix+dgram", socket.SOCK_SEQPACKET: "unix+seqpacket"}
            where = f"{scheme.get(kind, 'unix')}:{path or '(unnamed)'}"
        elif sock.family in (socket.AF_INET, socket.AF_INET6):
            host, port = name[0], name[1]
            host = f"[{host}]" if ":" in host else host
            where = f"{'udp' if kind == socket.SOCK_DGRAM else 'tcp'}://{host}:{port}"
        else:
            where = f"a socket of family {sock.family!r}"
    except OSError as exc:
        where = f"a socket ({exc.strerror or exc})"
    return f"{where} ({extra})"


def unclaimed() -> list[str]:
    """Describe (:func:`describe`) each socket passed by systemd that no listener took.

    Call once every listener is open. The sockets stay open (systemd holds them anyway).
    """
    return [describe(sock) for sock in inherited]
