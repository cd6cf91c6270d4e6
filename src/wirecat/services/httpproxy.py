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
unreachable, ``504`` it did not answer in time, ``400`` a malformed request, ``431``
a request head over 8 KiB or 64 header lines (RFC 6585 5). The request
head must arrive within ``limits.handshake_timeout`` seconds, in at most 8 KiB.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..endpoints import Endpoint
from ..errors import ConnectionClosed, LimitExceeded, ProtocolError
from ..protocols import socks
from ..runtime.connection import Connection
from ..runtime.limits import AccessList, Limits
from ..runtime.server import Server
from ._proxyserver import ProxyRefusal, ProxySettings, Tunnel, proxy_server
from .relay import RelayStats
from .socks import SocksPolicy, proxy_login, reach

if TYPE_CHECKING:
    from ..auth import AuthFailures, Users

__all__ = ["http_proxy_server"]

#: HTTP status for each SOCKS5 reply code that ``reach`` refuses with.
_STATUS = {
    0x02: (403, "Forbidden"),
    0x04: (502, "Bad Gateway"),
    0x05: (502, "Bad Gateway"),
}


def _refusal(
    status: int, reason: str, why: str, headers: tuple[tuple[str, str], ...] = ()
) -> ProxyRefusal:
    reply = socks.build_http_connect_reply(status, reason, headers=headers)
    return ProxyRefusal(f"{status} {reason}: {why}", reply)


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


async def _read_request(conn: Connection, buf: bytearray) -> socks.ConnectRequest:
    while (parsed := socks.parse_http_connect_request(buf)) is None:
        data = await conn.recv(socks.MAX_HTTP_REQUEST)
        if not data:
            raise ConnectionClosed("client left before its request was complete")
        buf.extend(data)
    request, used = parsed
    del buf[:used]
    return request


async def _negotiate(conn: Connection, buf: bytearray, proxy: ProxySettings) -> Tunnel:
    request = await _read_request(conn, buf)
    if request.method != "CONNECT":
        raise _refusal(
            405,
            "Method Not Allowed",
            f"method {request.method} (only CONNECT)",
            (("Allow", "CONNECT"),),
        )
    if proxy.users is not None:
        login = _basic(request.authorization)
        user = None
        if login is not None:
            user = await proxy_login(
                conn, proxy.users, proxy.auth_failures, proxy.ctx, *login, how="http-proxy"
            )
        if user is None:
            raise _refusal(
                407,
                "Proxy Authentication Required",
                "login missing or refused",
                (("Proxy-Authenticate", 'Basic realm="wirecat"'),),
            )
    try:
        out = await reach(
            request.host,
            request.port,
            policy=proxy.policy,
            connect_timeout=proxy.connect_timeout,
        )
    except ProxyRefusal as refused:
        if refused.timed_out:
            status, reason = 504, "Gateway Timeout"
        else:
            status, reason = _STATUS.get(refused.code or 0x01, (502, "Bad Gateway"))
        raise _refusal(status, reason, str(refused)) from None
    reply = socks.build_http_connect_reply(200, "Connection Established")
    return Tunnel(out, reply, f"{request.host}:{request.port}")


def _bad_request(exc: ProtocolError) -> bytes:
    if isinstance(exc, LimitExceeded):  # RFC 6585 5
        return socks.build_http_connect_reply(431, "Request Header Fields Too Large")
    return socks.build_http_connect_reply(400, "Bad Request")


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

    Metrics (on ``server.ctx.metrics``): ``http_proxy_tunnels``, ``http_proxy_refused``,
    ``http_proxy_bad_requests``, ``http_proxy_incomplete``.

    Args:
        endpoints: where to listen (stream endpoints; keep them private).
        policy: allowed destinations (default: loopback only).
        users: require ``Proxy-Authorization: Basic`` (user name and token) from this
            users file.
        auth_failures: the failed-login limiter (shared with other services).
        limits: limits of the listening side; ``handshake_timeout`` (seconds) bounds the
            request.
        access: allow/deny rules for clients.
        tls: a server ``SSLContext`` for ``tls://`` endpoints (an HTTPS proxy).
        idle_timeout: end a tunnel after this many seconds with no byte either way
            (``None``: never).
        connect_timeout: seconds allowed to reach a destination.
        on_end: called with each tunnel's :class:`RelayStats`.
        reuse_port: bind with ``SO_REUSEPORT`` (several processes share the port).

    Raises:
        InvalidEndpoint: an endpoint does not parse.
    """
    # every parameter above, by name (this function's locals are only its parameters)
    return proxy_server(
        name="http-proxy", negotiate=_negotiate, bad_request=_bad_request, **locals()
    )
