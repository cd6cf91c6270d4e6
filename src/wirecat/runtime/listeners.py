"""Opening listeners for every endpoint kind: TCP (IPv4, IPv6, dual-stack), UDP, Unix.

``[::]`` listens dual-stack (``IPV6_V6ONLY=0``, RFC 3493 5.3) so one socket serves IPv4 and
IPv6 peers. Unix socket paths left behind by a dead server are detected (nobody accepts) and
replaced; a live one is ``AddressInUse``. Every ``OSError`` becomes a
:class:`~wirecat.errors.ListenError` subclass with a one-line reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Any, Protocol, cast

from ..endpoints import Endpoint
from ..errors import InvalidEndpoint, ListenError, ProtocolError, translate_os_error
from .logs import logger as _log
from .proxyheader import PassThrough, ProxyPolicy, read_header_from_socket
from .systemd import take_inherited

__all__ = [
    "AdmittingProtocol",
    "Listener",
    "bound_endpoint",
    "open_datagram_listener",
    "open_seqpacket_listener",
    "open_stream_listener",
    "open_tls_listener",
    "unix_address",
]


def unix_address(path: str) -> str:
    """Map ``@name`` (Linux abstract namespace) to ``"\\0name"``; other paths unchanged."""
    return "\0" + path[1:] if path.startswith("@") else path


@dataclass
class Listener:
    """An open listening socket (stream) or bound datagram socket.

    Attributes:
        endpoint: where it listens, with the real port when port 0 was asked for.
        server: the ``asyncio.Server`` (stream listeners) or ``None``.
        transport: the datagram transport (datagram listeners) or ``None``.
    """

    endpoint: Endpoint
    server: asyncio.Server | None = None
    transport: asyncio.DatagramTransport | None = None
    _unlink: str | None = field(default=None, repr=False)
    _accepting: asyncio.Task[None] | None = field(default=None, repr=False)
    _sock: socket.socket | None = field(default=None, repr=False)
    _handshakes: set[asyncio.Task[None]] = field(default_factory=set, repr=False)

    def close(self) -> None:
        """Stop accepting (stream) or receiving (datagram). Idempotent. Open connections stay;
        TLS handshakes still running are cancelled (those peers are not connected yet)."""
        if self.server is not None:
            self.server.close()
        if self.transport is not None:
            self.transport.close()
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
            for task in list(self._handshakes):
                task.cancel()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._unlink:
            with contextlib.suppress(OSError):
                os.unlink(self._unlink)
            self._unlink = None


def bound_endpoint(endpoint: Endpoint, sock: socket.socket) -> Endpoint:
    """Return ``endpoint`` with the port the socket is actually bound to."""
    if endpoint.is_inet:
        return endpoint.with_port(sock.getsockname()[1])
    return endpoint


def _inet_socket(endpoint: Endpoint, kind: socket.SocketKind, reuse_port: bool) -> socket.socket:
    passed = take_inherited(endpoint, kind)  # systemd socket activation
    if passed is not None:
        return passed
    host = endpoint.host or "127.0.0.1"
    port = endpoint.port or 0
    infos = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)
    family, _, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # [::] is dual-stack; a specific IPv6 address is IPv6 only.
            v6only = 0 if host == "::" else 1
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        sock.bind(addr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _unix_socket(endpoint: Endpoint, kind: socket.SocketKind) -> tuple[socket.socket, str | None]:
    assert endpoint.path is not None
    passed = take_inherited(endpoint, kind)  # systemd socket activation: systemd owns the file
    if passed is not None:
        return passed, None
    path = endpoint.path
    address = unix_address(path)
    unlink: str | None = None
    if not path.startswith("@"):
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(path)
            if not stat.S_ISSOCK(st.st_mode):
                raise ListenError(f"cannot listen on {endpoint}: {path} exists and is not a socket")
            if _unix_alive(path, kind):
                raise translate_os_error(
                    OSError(98, "Address already in use"), what=str(endpoint), phase="listen"
                )
            os.unlink(path)  # stale socket file from a server that died
        unlink = path
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        sock.bind(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, unlink


def _unix_alive(path: str, kind: socket.SocketKind) -> bool:
    if kind == socket.SOCK_DGRAM:
        return False  # cannot tell without sending; a dgram path is replaced
    probe = socket.socket(socket.AF_UNIX, kind)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


async def open_stream_listener(
    endpoint: Endpoint,
    factory: Callable[[], asyncio.Protocol],
    *,
    backlog: int = 1024,
    reuse_port: bool = False,
    ssl: SSLContext | None = None,
    handshake_timeout: float = 10.0,
) -> Listener:
    """Listen on a stream endpoint (``tcp``, ``tls``, ``unix``; ``unix+seqpacket`` through
    :func:`open_seqpacket_listener`); serve each peer with ``factory()``.

    Args:
        endpoint: where to listen. Port 0 picks a free port (read it from the result).
        factory: called once per accepted connection; returns its protocol.
        backlog: the listen(2) backlog.
        reuse_port: set ``SO_REUSEPORT`` so several processes can share the port.
        ssl: the server context for ``tls`` endpoints (required there, ignored elsewhere).
        handshake_timeout: absolute TLS handshake deadline in seconds.

    Returns:
        The open :class:`Listener`.

    Raises:
        AddressInUse, PermissionDenied, ListenError: the socket could not be bound.
        InvalidEndpoint: the endpoint kind cannot be listened on as a stream here.
    """
    loop = asyncio.get_running_loop()
    unlink: str | None = None
    try:
        if endpoint.scheme in ("tls", "wss") and ssl is None:
            raise ListenError(
                f"cannot listen on {endpoint}: TLS needs a certificate "
                "(--cert/--key, or --self-signed for development)"
            )
        if endpoint.scheme in ("tcp", "tls", "ws", "wss"):  # ws: a tcp listener, wss: tls
            sock = _inet_socket(endpoint, socket.SOCK_STREAM, reuse_port)
        elif endpoint.scheme == "unix":
            sock, unlink = _unix_socket(endpoint, socket.SOCK_STREAM)
        elif endpoint.scheme == "unix+seqpacket":
            return await open_seqpacket_listener(endpoint, factory, backlog=backlog)
        else:
            raise InvalidEndpoint(f"cannot listen on {endpoint} as a stream service here")
        tls = ssl if endpoint.scheme in ("tls", "wss") else None
        try:
            server = await loop.create_server(
                factory,
                sock=sock,
                backlog=backlog,
                ssl=tls,
                ssl_handshake_timeout=handshake_timeout if tls else None,
            )
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise translate_os_error(exc, what=str(endpoint), phase="listen") from exc
    return Listener(bound_endpoint(endpoint, sock), server=server, _unlink=unlink)


async def open_seqpacket_listener(
    endpoint: Endpoint, factory: Callable[[], asyncio.Protocol], *, backlog: int = 1024
) -> Listener:
    """Listen on a ``unix+seqpacket:`` endpoint; serve each peer with ``factory()`` over a
    :class:`~wirecat.runtime.seqpacket.SeqpacketTransport` (asyncio's servers take only
    ``SOCK_STREAM``). The accept loop survives running out of file descriptors.

    Raises:
        AddressInUse, PermissionDenied, ListenError, InvalidEndpoint.
    """
    from .seqpacket import SeqpacketTransport

    if endpoint.scheme != "unix+seqpacket":
        raise InvalidEndpoint(f"open_seqpacket_listener needs unix+seqpacket:, not {endpoint}")
    try:
        sock, unlink = _unix_socket(endpoint, socket.SOCK_SEQPACKET)
        try:
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise translate_os_error(exc, what=str(endpoint), phase="listen") from exc
    listener = Listener(endpoint, _sock=sock, _unlink=unlink)
    loop = asyncio.get_running_loop()

    def serve(conn: socket.socket, _addr: Any) -> None:
        try:
            SeqpacketTransport(loop, conn, factory())
        except Exception:
            _log.exception("cannot serve a peer of %s", endpoint)
            conn.close()

    listener._accepting = loop.create_task(_accept_loop(sock, endpoint, serve))
    return listener


async def _accept_loop(
    sock: socket.socket, endpoint: Endpoint, serve: Callable[[socket.socket, Any], None]
) -> None:
    """Accept on the listening ``sock`` until it is closed, passing each peer's non-blocking
    socket and address to ``serve``. Survives running out of file descriptors (EMFILE and
    friends: logged, retried after 0.1 s) and peers gone before their accept
    (ECONNABORTED...: skipped)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            conn, addr = await loop.sock_accept(sock)
        except OSError as exc:
            if exc.errno in _ACCEPT_RETRY:
                _log.warning("accept on %s failed (%s); retrying", endpoint, exc.strerror)
                await asyncio.sleep(0.1)  # back off while descriptors are exhausted
                continue
            if sock.fileno() < 0:
                return  # the listener was closed
            continue  # ECONNABORTED and friends: that peer is gone, serve the next
        conn.setblocking(False)
        serve(conn, addr)


async def open_datagram_listener(
    endpoint: Endpoint,
    factory: Callable[[], asyncio.DatagramProtocol],
    *,
    reuse_port: bool = False,
) -> Listener:
    """Bind a datagram endpoint (``udp``, ``unix+dgram``) and serve it with ``factory()``.

    Raises:
        AddressInUse, PermissionDenied, ListenError: the socket could not be bound.
        InvalidEndpoint: the endpoint is not a datagram kind.
    """
    loop = asyncio.get_running_loop()
    unlink: str | None = None
    try:
        if endpoint.scheme == "udp":
            sock = _inet_socket(endpoint, socket.SOCK_DGRAM, reuse_port)
        elif endpoint.scheme == "unix+dgram":
            sock, unlink = _unix_socket(endpoint, socket.SOCK_DGRAM)
        else:
            raise InvalidEndpoint(f"cannot bind {endpoint} as a datagram service")
        try:
            transport, _ = await loop.create_datagram_endpoint(factory, sock=sock)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise translate_os_error(exc, what=str(endpoint), phase="listen") from exc
    return Listener(bound_endpoint(endpoint, sock), transport=transport, _unlink=unlink)


class AdmittingProtocol(Protocol):
    """What :func:`open_tls_listener` needs of a protocol: admission before the handshake."""

    def admit(self, peername: Any) -> str | None: ...

    def handshake_failed(self, exc: BaseException) -> None: ...


_ACCEPT_RETRY = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


async def open_tls_listener(
    endpoint: Endpoint,
    factory: Callable[[], AdmittingProtocol],
    *,
    ssl: SSLContext,
    handshake_timeout: float = 10.0,
    backlog: int = 1024,
    reuse_port: bool = False,
    proxy: ProxyPolicy | None = None,
) -> Listener:
    """Listen on a ``tls`` endpoint, admitting each peer *before* its TLS handshake.

    asyncio's own TLS servers call ``connection_made`` only after the handshake, so access
    lists and connection caps would run after a denied peer already got the certificate.
    Here an accept loop asks ``factory().admit(peername)`` first: a refused peer is reset
    (``SO_LINGER`` 0) without a byte sent; an admitted one counts against the limits during
    its handshake (``loop.connect_accepted_socket``, bounded by ``handshake_timeout``
    seconds), and ``handshake_failed(exc)`` releases it if the handshake fails. The loop
    survives running out of file descriptors (EMFILE) by pausing briefly. With ``proxy``,
    the PROXY header is read from the trusted balancer first (nothing past it), and the
    client's address is the one admitted and seen by the handler.

    Raises:
        AddressInUse, PermissionDenied, ListenError, InvalidEndpoint.
    """
    if endpoint.scheme not in ("tls", "wss"):
        raise InvalidEndpoint(
            f"open_tls_listener needs a tls:// or wss:// endpoint, not {endpoint}"
        )
    try:
        sock = _inet_socket(endpoint, socket.SOCK_STREAM, reuse_port)
        sock.listen(backlog)
    except OSError as exc:
        raise translate_os_error(exc, what=str(endpoint), phase="listen") from exc
    listener = Listener(bound_endpoint(endpoint, sock), _sock=sock)
    loop = asyncio.get_running_loop()

    async def handshake(
        conn: socket.socket, proto: AdmittingProtocol, app: asyncio.Protocol | None = None
    ) -> None:
        try:
            await loop.connect_accepted_socket(
                lambda: app or cast(asyncio.Protocol, proto),
                conn,
                ssl=ssl,
                ssl_handshake_timeout=handshake_timeout,
            )
        except BaseException as exc:
            proto.handshake_failed(exc)
            conn.close()
            if isinstance(exc, asyncio.CancelledError):
                raise

    def serve(conn: socket.socket, addr: Any) -> None:
        if proxy is not None:
            task = loop.create_task(proxied(conn))
        else:
            proto = factory()
            if proto.admit(addr) is not None:
                reset(conn)
                return
            task = loop.create_task(handshake(conn, proto))
        listener._handshakes.add(task)
        task.add_done_callback(listener._handshakes.discard)

    def reset(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # reset: the refused peer gets no byte, not even a ServerHello

    async def proxied(conn: socket.socket) -> None:
        assert proxy is not None
        try:
            addr, header = await read_header_from_socket(conn, proxy)
        except (ProtocolError, TimeoutError, OSError) as exc:
            _log.warning("refused: %s", exc, extra={"event": "refused", "reason": "proxy"})
            reset(conn)
            return
        proto = factory()
        if proto.admit(addr) is not None:
            reset(conn)
            return
        await handshake(conn, proto, PassThrough(cast(asyncio.Protocol, proto), addr, header))

    listener._accepting = loop.create_task(_accept_loop(sock, listener.endpoint, serve))
    return listener
