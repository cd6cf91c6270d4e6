"""Connecting through a proxy: SOCKS5 (RFC 1928, RFC 1929) or HTTP ``CONNECT`` (RFC 9110).

:func:`wirecat.connect` takes ``proxy="socks5://[user:pass@]host:port"`` or
``proxy="http://host:port"``: the connection goes to the proxy, asks it for a tunnel to the
endpoint (a host name is sent as is, so the proxy resolves it), and, for ``tls://``
endpoints, runs the TLS handshake with the endpoint through the tunnel. Whatever the endpoint
sent in the same segment as the proxy's reply stays in the connection's buffer: the first
``recv`` returns it (a known ncat bug, avoided here by reading the reply exactly).
"""

from __future__ import annotations

import base64
import urllib.parse
from dataclasses import dataclass, field

from ..endpoints import Endpoint
from ..errors import ConnectionRefused, InvalidEndpoint, ProxyError
from ..protocols import socks
from .connection import Connection

__all__ = ["ProxySpec", "parse_proxy", "tunnel"]


@dataclass(frozen=True, slots=True)
class ProxySpec:
    """A proxy to tunnel through.

    Attributes:
        scheme: ``socks5`` or ``http``.
        endpoint: the proxy's own ``tcp://`` endpoint.
        username, password: credentials (SOCKS5 RFC 1929, HTTP Basic), or ``None``.
    """

    scheme: str
    endpoint: Endpoint
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_proxy(url: str | ProxySpec) -> ProxySpec:
    """Parse ``socks5://[user:pass@]host:port`` or ``http://[user:pass@]host:port``.

    Raises:
        InvalidEndpoint: another scheme, no port, or a malformed URL.
    """
    if isinstance(url, ProxySpec):
        return url
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidEndpoint(f"invalid proxy {url!r}: {exc}") from None
    scheme = {"socks5": "socks5", "socks5h": "socks5", "http": "http"}.get(parts.scheme)
    if scheme is None:
        raise InvalidEndpoint(f"proxy {url!r}: use socks5://host:port or http://host:port")
    if not parts.hostname or port is None:
        raise InvalidEndpoint(f"proxy {url!r} needs a host and a port")
    if parts.path not in ("", "/"):
        raise InvalidEndpoint(f"proxy {url!r}: unexpected path {parts.path!r}")
    user = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return ProxySpec(scheme, Endpoint("tcp", parts.hostname, port), user, password)


async def tunnel(
    conn: Connection, spec: ProxySpec, host: str, port: int, *, timeout: float | None
) -> None:
    """Ask the proxy at the other end of ``conn`` for a tunnel to ``host:port``.

    Raises:
        ProxyError: the proxy refused (``code`` is its answer) or broke its protocol.
        ConnectionRefused: the proxy reports that the destination refused.
    """
    where = str(spec.endpoint)
    try:
        if spec.scheme == "http":
            auth = None
            if spec.username is not None:
                token = f"{spec.username}:{spec.password or ''}".encode()
                auth = "Basic " + base64.b64encode(token).decode()
            await conn.send(socks.build_http_connect(host, port, authorization=auth))
            head = await conn.recv_until(b"\r\n\r\n", socks.MAX_HTTP_RESPONSE, timeout=timeout)
            parsed = socks.parse_http_connect_response(head)
            assert parsed is not None
            status, reason, _ = parsed
            if not 200 <= status < 300:
                raise ProxyError(
                    f"HTTP proxy {where} refused CONNECT {host}:{port}: {status} {reason}",
                    endpoint=where,
                    code=status,
                )
            return
        await conn.send(socks.build_methods(userpass=spec.username is not None))
        method, _ = socks.parse_method(await conn.recv_exact(2, timeout=timeout)) or (0, 0)
        if method == socks.METHOD_USERPASS:
            if spec.username is None:
                raise ProxyError(f"SOCKS proxy {where} wants a username and password")
            await conn.send(socks.build_userpass(spec.username, spec.password or ""))
            ok, _ = socks.parse_userpass_status(await conn.recv_exact(2, timeout=timeout)) or (
                False,
                0,
            )
            if not ok:
                raise ProxyError(f"SOCKS proxy {where} refused the username or password")
        elif method != socks.METHOD_NONE:
            raise ProxyError(f"SOCKS proxy {where} accepts none of our methods", endpoint=where)
        await conn.send(socks.build_request(host, port))
        buf = await conn.recv_exact(5, timeout=timeout)  # up to the domain length byte
        need = {socks.ATYP_IPV4: 10, socks.ATYP_IPV6: 22}.get(buf[3], 5 + buf[4] + 2)
        buf += await conn.recv_exact(need - 5, timeout=timeout)
        reply = socks.parse_reply(buf)
        assert reply is not None
        code = reply[0]
        if code != 0:
            why = socks.REPLIES.get(code, f"code {code}")
            cls = ConnectionRefused if code == 0x05 else ProxyError
            message = f"SOCKS proxy {where} could not reach {host}:{port}: {why}"
            if cls is ConnectionRefused:
                raise ConnectionRefused(message, endpoint=where)
            raise ProxyError(message, endpoint=where, code=code)
    except (ProxyError, ConnectionRefused):
        raise
    except Exception as exc:
        from ..errors import WirecatError

        if isinstance(exc, WirecatError) and not isinstance(exc, ProxyError):
            raise ProxyError(f"proxy {where} failed: {exc}", endpoint=where) from exc
        raise
