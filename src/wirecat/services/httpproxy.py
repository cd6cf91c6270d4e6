"""An HTTP ``CONNECT`` proxy server (RFC 9110 9.3.6): ``wirecat relay http-proxy://127.0.0.1:3128``.

The twin of the SOCKS5 server (:mod:`wirecat.services.socks`) for clients that speak only
HTTP proxies (``curl --proxy http://...``, ``https_proxy=...``, browsers): the same
destination policy (:class:`~wirecat.services.socks.SocksPolicy`, ``--socks-allow``; by
default loopback only, never an open proxy), the same login (``Proxy-Authorization:
Basic`` with a user's token, checked by the constant-time, rate-limited login of chat and
files), the same limits, and the same relay once the tunnel is up (half-close,
backpressure, idle timeout; bytes the client sent right after its request are forwarded
first).

Only ``CONNECT`` is served: other methods (a plain ``GET http://...``) get ``405`` with
``Allow: CONNECT``. Refusals carry the matching status and are logged: ``403`` denied by
the policy, ``407`` login needed or refused, ``502`` the destination refused or is
unreachable, ``504`` it did not answer in time, ``400`` a malformed request. The request
head must arrive within ``limits.handshake_timeout`` seconds, in at most 8 KiB.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..endpoints import Endpoint, parse_endpoint
from ..errors import ConnectionClosed, ProtocolError
from ..protocols import socks
from ..runtime.connection import Connection
from ..runtime.handler import ServerContext
from ..runtime.limits import AccessList, Limits
from ..runtime.server import HandlerService, Server
from .relay import RelayStats, bridge
from .socks import SocksPolicy, _Refused, proxy_login, reach

if TYPE_CHECKING:
    from ..auth import AuthFailures, Users

__all__ = ["http_proxy_server"]

#: HTTP status for each SOCKS5 reply code that ``reach`` refuses with.
_STATUS = {
    0x02: (403, "Forbidden"),
    0x04: (502, "Bad Gateway"),
    0x05: (502, "Bad Gateway"),
}


class _HttpRefusal(Exception):
    def __init__(
        self, status: int, reason: str, why: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(why)
        self.status = status
        self.reason = reason
        self.headers = headers


def _basic(value: str | None) -> tuple[str, str] | None:
    """``Basic base64(user:password)`` -> ``(user, password)``; ``None`` if absent or bad."""
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic" or len(token) > 1024:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def http_proxy_server(
    endpoints: str | Endpoint | Sequence[str | Endpoint],
    *,
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
) -> Server:
    """An HTTP CONNECT proxy on ``endpoints`` (not started: use ``async with``).

    Args:
        endpoints: where to listen (stream endpoints; keep them private).
        policy: allowed destinations (default: loopback only).
        users: require ``Proxy-Authorization: Basic`` (user name and token) from this
            users file.
        auth_failures: the failed-login limiter (shared with other services).
        limits: limits of the listening side; ``handshake_timeout`` bounds the request.
        access: allow/deny rules for clients.
        tls: a server ``SSLContext`` for ``tls://`` endpoints (an HTTPS proxy).
        idle_timeout: end a tunnel after this many seconds with no byte either way.
        connect_timeout: seconds allowed to reach a destination.
        on_end: called with each tunnel's :class:`RelayStats`.
        reuse_port: bind with ``SO_REUSEPORT`` (several processes share the port).
    """
    raw = [endpoints] if isinstance(endpoints, str | Endpoint) else list(endpoints)
    eps = [parse_endpoint(e) if isinstance(e, str) else e for e in raw]
    policy = policy or SocksPolicy()
    base = limits or Limits()
    lim = dataclasses.replace(base, idle_timeout=None)
    ctx = ServerContext(lim, access=access)
    if users is not None and auth_failures is None:
        from ..auth import AuthFailures

        auth_failures = AuthFailures()

    async def read_request(conn: Connection, buf: bytearray) -> socks.ConnectRequest:
        while (parsed := socks.parse_http_connect_request(buf)) is None:
            data = await conn.recv(socks.MAX_HTTP_REQUEST)
            if not data:
                raise ConnectionClosed("client left before its request was complete")
            buf.extend(data)
        request, used = parsed
        del buf[:used]
        return request

    async def open_tunnel(conn: Connection, request: socks.ConnectRequest) -> Connection:
        if request.method != "CONNECT":
            raise _HttpRefusal(
                405,
                "Method Not Allowed",
                f"method {request.method} (only CONNECT)",
                (("Allow", "CONNECT"),),
            )
        if users is not None:
            login = _basic(request.authorization)
            user = None
            if login is not None:
                user = await proxy_login(conn, users, auth_failures, ctx, *login, how="http-proxy")
            if user is None:
                raise _HttpRefusal(
                    407,
                    "Proxy Authentication Required",
                    "login missing or refused",
                    (("Proxy-Authenticate", 'Basic realm="wirecat"'),),
                )
        try:
            return await reach(
                request.host, request.port, policy=policy, connect_timeout=connect_timeout
            )
        except _Refused as refusal:
            status, reason = _STATUS.get(refusal.code, (502, "Bad Gateway"))
            if "in time" in str(refusal):
                status, reason = 504, "Gateway Timeout"
            raise _HttpRefusal(status, reason, str(refusal)) from None

    async def handler(conn: Connection) -> None:
        buf = bytearray()
        stats = RelayStats(peer=conn.peer_address)
        try:
            async with asyncio.timeout(lim.handshake_timeout):
                request = await read_request(conn, buf)
                out = await open_tunnel(conn, request)
        except _HttpRefusal as refusal:
            ctx.metrics["http_proxy_refused"] += 1
            ctx.log.warning(
                "http-proxy: refused %s: %d %s",
                conn.peer_address,
                refusal.status,
                refusal,
                extra={"event": "refused", "reason": "http-proxy"},
            )
            await conn.send(
                socks.build_http_connect_reply(
                    refusal.status, refusal.reason, headers=refusal.headers
                )
            )
            return
        except ProtocolError as exc:
            ctx.metrics["http_proxy_bad_requests"] += 1
            ctx.log.info("http-proxy: bad request from %s: %s", conn.peer_address, exc)
            await conn.send(socks.build_http_connect_reply(400, "Bad Request"))
            return
        except (TimeoutError, ConnectionClosed):
            ctx.metrics["http_proxy_incomplete"] += 1
            return
        async with out:
            await conn.send(socks.build_http_connect_reply(200, "Connection Established"))
            if buf:  # sent right after the request: forwarded first
                await out.send(bytes(buf))
                stats.up += len(buf)
            stats.target = f"{request.host}:{request.port}"
            await bridge(conn, out, idle_timeout=idle_timeout, stats=stats)
        ctx.metrics["http_proxy_tunnels"] += 1
        if on_end is not None:
            on_end(stats)

    service = HandlerService(eps, handler, name="http-proxy")
    return Server([service], ctx=ctx, tls=tls, reuse_port=reuse_port)
