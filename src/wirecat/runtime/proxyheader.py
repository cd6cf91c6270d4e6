"""Accepting the PROXY protocol (v1, v2) on listeners that sit behind a load balancer.

A listener with a :class:`ProxyPolicy` wraps each connection's protocol in
:class:`ProxyHeaderAdapter`: the peer must be one of the trusted balancers
(``trusted`` networks; anyone else is reset before a byte is read), and must send a valid
header within ``timeout`` seconds; only then is the real handler started, seeing the
client's address as its peer (``transport.get_extra_info("peername")``), so per-source
caps, rates, access lists, logs and chat ``who`` count real clients. Bytes that followed the
header are handed on, never lost. A ``LOCAL`` header (health checks) keeps the balancer's
address. The adapter costs nothing on listeners without a policy.

Model: HAProxy's ``accept-proxy`` bind option.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from ..errors import ProtocolError
from ..protocols.proxy import ProxyHeaderParser
from .limits import AccessList
from .logs import logger as _log

__all__ = [
    "PassThrough",
    "ProxiedTransport",
    "ProxyHeaderAdapter",
    "ProxyPolicy",
    "read_header_from_socket",
]


@dataclass(frozen=True, slots=True)
class ProxyPolicy:
    """Who may send a PROXY header, and how long it may take.

    Attributes:
        trusted: CIDR networks of the balancers (e.g. ``["127.0.0.1/32"]``); a connection
            from anywhere else is refused. Empty: nobody is trusted (every one refused).
        timeout: seconds allowed for the whole header (an absolute deadline).
        max_header: largest v2 header accepted, in bytes.
    """

    trusted: Sequence[str] = ()
    timeout: float = 5.0
    max_header: int = 4096
    _rules: AccessList = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_rules", AccessList(allow=list(self.trusted)))

    def trusts(self, host: str | None) -> bool:
        """True if a connection from ``host`` may carry a header (unix peers: always)."""
        if host is None:
            return True
        if not self.trusted:
            return False
        try:
            ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        return self._rules.permits(host)


class ProxiedTransport(asyncio.Transport):
    """The real transport, with ``peername`` (and ``proxy_header``) from the header."""

    def __init__(self, inner: asyncio.Transport, peername: Any, header: Any) -> None:
        super().__init__()
        self._inner = inner
        self._peername = peername
        self._header = header

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peername
        if name == "proxy_header":
            return self._header
        return self._inner.get_extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._inner.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._inner.writelines(list_of_data)

    def write_eof(self) -> None:
        self._inner.write_eof()

    def can_write_eof(self) -> bool:
        return self._inner.can_write_eof()

    def close(self) -> None:
        self._inner.close()

    def abort(self) -> None:
        self._inner.abort()

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._inner.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner.get_protocol()


class ProxyHeaderAdapter(asyncio.Protocol):
    """Reads the PROXY header, then becomes a pass-through to ``factory()``'s protocol.

    Refusals (untrusted source, malformed, oversized or late header) are counted in
    ``metrics["refused_proxy"]`` and logged; the connection is reset without a reply.
    """

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        policy: ProxyPolicy,
        metrics: Any = None,
    ) -> None:
        self.factory = factory
        self.policy = policy
        self.metrics = metrics
        self.parser: ProxyHeaderParser | None = ProxyHeaderParser(max_header=policy.max_header)
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def _refuse(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics["refused_proxy"] += 1
        peer = self.transport.get_extra_info("peername") if self.transport else None
        _log.warning(
            "refused: %s", reason, extra={"event": "refused", "reason": "proxy", "peer": peer}
        )
        self.parser = None
        if self._deadline is not None:
            self._deadline.cancel()
        if self.transport is not None:
            self.transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) else None
        if not self.policy.trusts(host):
            self._refuse(f"PROXY header from an untrusted source {host}")
            return
        self._deadline = asyncio.get_running_loop().call_later(
            self.policy.timeout, self._refuse, "no complete PROXY header in time"
        )

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)
            return
        parser = self.parser
        if parser is None:
            return
        try:
            header = parser.receive_data(data)
        except ProtocolError as exc:
            self._refuse(str(exc))
            return
        if header is None:
            return
        if self._deadline is not None:
            self._deadline.cancel()
        assert self.transport is not None
        real = self.transport.get_extra_info("peername")
        peer = real if header.local or header.source is None else header.source
        self.parser = None
        inner = self.inner = self.factory()
        proxied = ProxiedTransport(self.transport, peer, header)
        inner.connection_made(proxied)
        if parser.rest and not proxied.is_closing():
            inner.data_received(parser.rest)

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            return self.inner.eof_received()
        self._refuse("end of stream before a complete PROXY header")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class PassThrough(asyncio.Protocol):
    """Hands a transport to ``inner`` as a :class:`ProxiedTransport` (a header already read,
    e.g. before a TLS handshake); every later call is forwarded."""

    def __init__(self, inner: asyncio.Protocol, peername: Any, header: Any) -> None:
        self.inner = inner
        self.peername = peername
        self.header = header

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        proxied = ProxiedTransport(cast(asyncio.Transport, transport), self.peername, self.header)
        self.inner.connection_made(proxied)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


async def read_header_from_socket(sock: Any, policy: ProxyPolicy) -> tuple[Any, Any]:
    """Read exactly one PROXY header from a connected non-blocking socket (nothing after it:
    a TLS ClientHello that follows stays in the socket), within ``policy.timeout`` seconds.

    Returns:
        ``(peername, header)``: the client's address (the socket's own for ``LOCAL``).

    Raises:
        ProtocolError: untrusted source, malformed or oversized header.
        TimeoutError: the header did not arrive in time.
        OSError: the socket failed.
    """
    from ..errors import RemoteProtocolError
    from ..protocols.proxy import V2_SIGNATURE

    loop = asyncio.get_running_loop()
    real = sock.getpeername()
    host = real[0] if isinstance(real, tuple) else None
    if not policy.trusts(host):
        raise RemoteProtocolError(f"PROXY header from an untrusted source {host}")
    parser = ProxyHeaderParser(max_header=policy.max_header)

    async def exactly(n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = await loop.sock_recv(sock, n - len(out))
            if not chunk:
                raise RemoteProtocolError("end of stream before a complete PROXY header")
            out += chunk
        return out

    async with asyncio.timeout(policy.timeout):
        head = await exactly(16 if (await _peek_kind(loop, sock)) == 2 else 6)
        header = parser.receive_data(head)
        if head[:12] == V2_SIGNATURE:
            length = int.from_bytes(head[14:16], "big")
            if 16 + length > policy.max_header:
                parser.receive_data(b"")  # raises LimitExceeded via the parser's check
            header = parser.receive_data(await exactly(length)) if length else header
        else:
            while header is None:  # v1: one byte at a time, never past the CRLF
                header = parser.receive_data(await exactly(1))
    assert header is not None and not parser.rest
    peer = real if header.local or header.source is None else header.source
    return peer, header


async def _peek_kind(loop: asyncio.AbstractEventLoop, sock: Any) -> int:
    """2 if the first byte announces a v2 header (``\\r``), else 1; waits for a byte."""
    import socket as _socket

    fut: asyncio.Future[None] = loop.create_future()
    while True:
        try:
            first = sock.recv(1, _socket.MSG_PEEK)
        except BlockingIOError:
            fut = loop.create_future()
            loop.add_reader(sock.fileno(), fut.set_result, None)
            try:
                await fut
            finally:
                loop.remove_reader(sock.fileno())
            continue
        if not first:
            from ..errors import RemoteProtocolError

            raise RemoteProtocolError("end of stream before a PROXY header")
        return 2 if first == b"\r" else 1
