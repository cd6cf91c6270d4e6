"""What wirecat's proxy servers share: the server around a negotiation, and the tunnel after it.

A proxy service (HTTP CONNECT in :mod:`wirecat.services.httpproxy`, SOCKS5 in
:mod:`wirecat.services.socks`) supplies only its negotiation: read the client's request
from the connection, check the login and the destination policy, connect, and return a
:class:`Tunnel` (the destination connection and the "tunnel is up" reply).
:func:`proxy_server` does the rest, the same way for every proxy:

- the negotiation runs within ``limits.handshake_timeout`` seconds (the listener's idle
  timeout is off: the tunnel has its own, ``idle_timeout``);
- :class:`ProxyRefusal` sends its reply (if any), logs a warning and counts
  ``<name>_refused``; a :class:`~wirecat.errors.ProtocolError` (bad or oversized request)
  sends ``bad_request(exc)`` (if not ``None``) and counts ``<name>_bad_requests``; a client
  that leaves (even before the reply) or is too slow counts ``<name>_incomplete``. No
  traceback reaches the log for any of these;
- once up, the reply is sent, bytes the client sent right after its request are forwarded
  first, and :func:`wirecat.services.relay.bridge` relays both ways (half-close,
  backpressure, idle timeout); ``<name>_tunnels`` counts finished tunnels and ``on_end``
  gets their :class:`~wirecat.services.relay.RelayStats`.

``<name>`` is the service name with ``-`` as ``_`` (``http-proxy`` -> ``http_proxy_refused``).
A proxy that serves some peers by another path (SOCKS5's callback and splice path) subclasses
:class:`ProxyService` and counts and logs through its methods, the same on every path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..endpoints import Endpoint, parse_endpoint
from ..errors import ConnectionClosed, ProtocolError
from ..runtime.connection import Connection
from ..runtime.handler import ServerContext
from ..runtime.limits import AccessList, Limits
from ..runtime.server import HandlerService, Server
from .relay import RelayStats, bridge

if TYPE_CHECKING:
    from ..auth import AuthFailures, Users
    from .socks import SocksPolicy

__all__ = ["ProxyRefusal", "ProxyService", "ProxySettings", "Tunnel", "proxy_server"]


class ProxyRefusal(Exception):
    """The negotiation refused the client: ``reply`` is sent (``None``: nothing), then the
    connection ends. ``str(refusal)`` is the reason logged (never sent).

    Attributes:
        reply: the bytes that tell the client (``None``: nothing is sent).
        code: when the destination was refused, why, as a SOCKS5 reply code (RFC 1928 6):
            ``0x02`` not allowed by the policy, ``0x04`` unreachable or unresolvable,
            ``0x05`` it refused the connection, ``0x07`` command not supported, ``0x01``
            another failure; ``None`` for a refusal before that (login, method).
        timed_out: the destination did not answer within the connect timeout (``code``
            is then ``0x04``).
    """

    def __init__(
        self, why: str, reply: bytes | None, *, code: int | None = None, timed_out: bool = False
    ) -> None:
        super().__init__(why)
        self.reply = reply
        self.code = code
        self.timed_out = timed_out


@dataclass(frozen=True, slots=True)
class Tunnel:
    """A negotiated tunnel: ``out`` is the connected destination (closed by the server when
    the tunnel ends), ``reply`` the bytes that tell the client it is up, ``target`` the
    client's requested ``host:port`` (for :class:`RelayStats`)."""

    out: Connection
    reply: bytes
    target: str


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """What a negotiation needs, built once per server by :func:`proxy_server`.

    ``ctx`` is the server's context (log, metrics, limits); ``users`` ``None`` means no
    login; ``auth_failures`` is then set (the shared limiter or a new one);
    ``connect_timeout`` is in seconds.
    """

    ctx: ServerContext
    policy: SocksPolicy
    users: Users | None
    auth_failures: AuthFailures | None
    connect_timeout: float


Negotiate = Callable[[Connection, bytearray, ProxySettings], Awaitable[Tunnel]]


class ProxyService(HandlerService):
    """The listening side of :func:`proxy_server`: each peer runs ``handler`` (the
    coroutine path: negotiation, then :func:`~wirecat.services.relay.bridge`).

    A proxy may subclass it to serve some peers another way (SOCKS5 without login: the
    callback and splice path); :meth:`refused`, :meth:`bad_request` and :meth:`ended` keep
    the counters and logs the same on every path.

    Attributes:
        settings: what the negotiation needs (context, policy, users, connect timeout).
        idle_timeout: seconds a tunnel may carry no byte either way (``None``: no limit).
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        handler: Callable[[Connection], Awaitable[None]],
        *,
        name: str,
        settings: ProxySettings,
        bad_request: Callable[[ProtocolError], bytes | None],
        idle_timeout: float | None,
        on_end: Callable[[RelayStats], None] | None,
    ) -> None:
        super().__init__(endpoints, handler, name=name)
        self.settings = settings
        self.idle_timeout = idle_timeout
        self._bad_reply = bad_request
        self._on_end = on_end
        metric = name.replace("-", "_")
        self._refused = f"{metric}_refused"
        self._bad = f"{metric}_bad_requests"
        self._tunnels = f"{metric}_tunnels"
        self.incomplete = f"{metric}_incomplete"

    def refused(self, peer: str, refusal: ProxyRefusal) -> bytes | None:
        """Count and log ``refusal`` of ``peer``; returns the reply to send (if any)."""
        ctx = self.settings.ctx
        ctx.metrics[self._refused] += 1
        ctx.log.warning(
            "%s: refused %s: %s",
            self.name,
            peer,
            refusal,
            extra={"event": "refused", "reason": self.name},
        )
        return refusal.reply

    def bad_request(self, peer: str, exc: ProtocolError) -> bytes | None:
        """Count and log ``peer``'s bad request; returns the reply to send (if any)."""
        ctx = self.settings.ctx
        ctx.metrics[self._bad] += 1
        ctx.log.info("%s: bad request from %s: %s", self.name, peer, exc)
        return self._bad_reply(exc)

    def ended(self, stats: RelayStats) -> None:
        """Count a finished tunnel and pass its ``stats`` to ``on_end``."""
        self.settings.ctx.metrics[self._tunnels] += 1
        if self._on_end is not None:
            self._on_end(stats)


def proxy_server(
    endpoints: str | Endpoint | Sequence[str | Endpoint],
    *,
    name: str,
    negotiate: Negotiate,
    bad_request: Callable[[ProtocolError], bytes | None],
    policy: SocksPolicy | None = None,
    users: Users | None = None,
    auth_failures: AuthFailures | None = None,
    limits: Limits | None = None,
    access: AccessList | None = None,
    tls: Any = None,
    idle_timeout: float | None = 300.0,
    connect_timeout: float = 10.0,
    on_end: Callable[[RelayStats], None] | None = None,
    reuse_port: bool = False,
    service: type[ProxyService] = ProxyService,
) -> Server:
    """A proxy server named ``name`` on ``endpoints`` (not started: use ``async with``).

    Args:
        endpoints: where to listen (stream endpoints; keep them private).
        name: the service name, in logs and as the metrics prefix.
        negotiate: ``await negotiate(conn, buf, settings)`` reads the request (``buf``
            keeps bytes read past it), logs in, connects and returns the :class:`Tunnel`;
            raises :class:`ProxyRefusal`, :class:`~wirecat.errors.ProtocolError` or
            :class:`~wirecat.errors.ConnectionClosed`.
        bad_request: the reply to a request that broke the protocol (``None``: nothing).
        policy: allowed destinations (default: loopback only).
        users: require a login (the password is the user's token) from this users file.
        auth_failures: the failed-login limiter (shared with other services).
        limits: limits of the listening side; ``handshake_timeout`` bounds the negotiation.
        access: allow/deny rules for clients.
        tls: a server ``SSLContext`` for ``tls://`` endpoints.
        idle_timeout: end a tunnel after this many seconds with no byte either way
            (``None``: never).
        connect_timeout: seconds allowed to reach a destination.
        on_end: called with each tunnel's :class:`RelayStats`.
        reuse_port: bind with ``SO_REUSEPORT`` (several processes share the port).
        service: the :class:`ProxyService` class to listen with (a subclass may serve
            some peers by another path).

    Raises:
        InvalidEndpoint: an endpoint does not parse.
    """
    from .socks import SocksPolicy

    raw = [endpoints] if isinstance(endpoints, str | Endpoint) else list(endpoints)
    eps = [parse_endpoint(e) if isinstance(e, str) else e for e in raw]
    lim = dataclasses.replace(limits or Limits(), idle_timeout=None)
    ctx = ServerContext(lim, access=access)
    if users is not None and auth_failures is None:
        from ..auth import AuthFailures

        auth_failures = AuthFailures()
    settings = ProxySettings(ctx, policy or SocksPolicy(), users, auth_failures, connect_timeout)

    async def handler(conn: Connection) -> None:
        buf = bytearray()
        stats = RelayStats(peer=conn.peer_address)
        try:
            async with asyncio.timeout(lim.handshake_timeout):
                tunnel = await negotiate(conn, buf, settings)
        except ProxyRefusal as refusal:
            await _send_last(conn, proxy.refused(conn.peer_address, refusal))
            return
        except ProtocolError as exc:
            await _send_last(conn, proxy.bad_request(conn.peer_address, exc))
            return
        except (TimeoutError, ConnectionClosed):
            ctx.metrics[proxy.incomplete] += 1
            return
        async with tunnel.out as out:
            try:
                await conn.send(tunnel.reply)
                if buf:  # sent right after the request: forwarded first
                    await out.send(bytes(buf))
                    stats.up += len(buf)
            except ConnectionClosed:  # the client (or the destination) left meanwhile
                ctx.metrics[proxy.incomplete] += 1
                return
            stats.target = tunnel.target
            await bridge(conn, out, idle_timeout=idle_timeout, stats=stats)
        proxy.ended(stats)

    proxy = service(
        eps,
        handler,
        name=name,
        settings=settings,
        bad_request=bad_request,
        idle_timeout=idle_timeout,
        on_end=on_end,
    )
    return Server([proxy], ctx=ctx, tls=tls, reuse_port=reuse_port)


async def _send_last(conn: Connection, reply: bytes | None) -> None:
    """Send a refusal's ``reply`` (if any); the client may have left already."""
    if reply is not None:
        with contextlib.suppress(ConnectionClosed):
            await conn.send(reply)
