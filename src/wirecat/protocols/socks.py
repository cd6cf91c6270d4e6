"""SOCKS5 (RFC 1928) with username/password authentication (RFC 1929), and the HTTP
``CONNECT`` tunnel request (RFC 9110 9.3.6): sans-I/O framing for both sides.

Each ``parse_*`` function takes the bytes received so far and returns ``None`` while the
message is incomplete, else the parsed message and how many bytes it used (the rest belongs
to the next message or to the tunnel: never lost). Every length is bounded by the protocol
itself (one byte: at most 255) and checked before use; anything malformed raises
:class:`RemoteProtocolError` with the reason. ``build_*`` functions return the bytes to send.

Both sides are here: the servers (``wirecat relay socks5://...``, ``wirecat relay
http-proxy://...``) and the clients of ``--proxy socks5://`` and ``--proxy http://``.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from ..errors import LimitExceeded, LocalProtocolError, RemoteProtocolError

__all__ = [
    "ATYP_DOMAIN",
    "ATYP_IPV4",
    "ATYP_IPV6",
    "CMD_CONNECT",
    "MAX_HTTP_REQUEST",
    "MAX_HTTP_RESPONSE",
    "METHOD_NONE",
    "METHOD_NO_ACCEPTABLE",
    "METHOD_USERPASS",
    "REPLIES",
    "ConnectRequest",
    "Request",
    "build_http_connect",
    "build_http_connect_reply",
    "build_method",
    "build_methods",
    "build_reply",
    "build_request",
    "build_userpass",
    "build_userpass_status",
    "parse_http_connect_request",
    "parse_http_connect_response",
    "parse_method",
    "parse_methods",
    "parse_reply",
    "parse_request",
    "parse_userpass",
    "parse_userpass_status",
]

VERSION = 5
METHOD_NONE = 0x00
METHOD_USERPASS = 0x02
METHOD_NO_ACCEPTABLE = 0xFF
CMD_CONNECT = 0x01
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 0x01, 0x03, 0x04

#: Reply codes (RFC 1928 6).
REPLIES: dict[int, str] = {
    0x00: "succeeded",
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}

#: Largest HTTP CONNECT response head accepted, in bytes.
MAX_HTTP_RESPONSE = 8192


@dataclass(frozen=True, slots=True)
class Request:
    """A SOCKS5 request (or reply address): command, destination host and port.

    Attributes:
        command: ``CMD_CONNECT`` (1), BIND (2) or UDP ASSOCIATE (3).
        host: an IPv4/IPv6 literal, or a domain name (at most 255 bytes).
        port: 0-65535.
        atyp: the address type it was encoded with.
    """

    command: int
    host: str
    port: int
    atyp: int


def _version(buf: bytes | bytearray, what: str) -> None:
    if buf[0] != VERSION:
        raise RemoteProtocolError(f"SOCKS {what}: version {buf[0]}, expected 5")


# -- server side ------------------------------------------------------------------------------
def parse_methods(buf: bytes | bytearray) -> tuple[list[int], int] | None:
    """The client greeting: ``VER NMETHODS METHODS...`` -> ``(methods, used)``.

    Raises:
        RemoteProtocolError: not version 5, or no method at all.
    """
    if len(buf) < 2:
        return None
    _version(buf, "greeting")
    n = buf[1]
    if n == 0:
        raise RemoteProtocolError("SOCKS greeting offers no authentication method")
    if len(buf) < 2 + n:
        return None
    return list(buf[2 : 2 + n]), 2 + n


def parse_userpass(buf: bytes | bytearray) -> tuple[str, str, int] | None:
    """RFC 1929: ``VER=1 ULEN UNAME PLEN PASSWD`` -> ``(user, password, used)``.

    Raises:
        RemoteProtocolError: wrong version, an empty name, or non-UTF-8 text.
    """
    if len(buf) < 2:
        return None
    if buf[0] != 1:
        raise RemoteProtocolError(f"SOCKS username/password version {buf[0]}, expected 1")
    ulen = buf[1]
    if ulen == 0:
        raise RemoteProtocolError("SOCKS username is empty")
    if len(buf) < 3 + ulen:
        return None
    plen = buf[2 + ulen]
    end = 3 + ulen + plen
    if len(buf) < end:
        return None
    try:
        user = bytes(buf[2 : 2 + ulen]).decode()
        password = bytes(buf[3 + ulen : end]).decode()
    except UnicodeDecodeError:
        raise RemoteProtocolError("SOCKS username or password is not UTF-8") from None
    return user, password, end


def _parse_address(buf: bytes | bytearray, at: int, what: str) -> tuple[str, int, int, int] | None:
    """``ATYP ADDR PORT`` from ``at`` -> ``(host, port, atyp, end)``."""
    if len(buf) < at + 1:
        return None
    atyp = buf[at]
    if atyp == ATYP_IPV4:
        end = at + 1 + 4 + 2
        if len(buf) < end:
            return None
        host = socket.inet_ntop(socket.AF_INET, bytes(buf[at + 1 : at + 5]))  # dotted quad
    elif atyp == ATYP_IPV6:
        end = at + 1 + 16 + 2
        if len(buf) < end:
            return None
        host = str(ipaddress.IPv6Address(bytes(buf[at + 1 : at + 17])))
    elif atyp == ATYP_DOMAIN:
        if len(buf) < at + 2:
            return None
        n = buf[at + 1]
        if n == 0:
            raise RemoteProtocolError(f"SOCKS {what}: empty domain name")
        end = at + 2 + n + 2
        if len(buf) < end:
            return None
        try:
            host = bytes(buf[at + 2 : at + 2 + n]).decode("ascii")
        except UnicodeDecodeError:
            raise RemoteProtocolError(f"SOCKS {what}: domain name is not ASCII") from None
        if any(not (c.isalnum() or c in "-._") for c in host):
            raise RemoteProtocolError(f"SOCKS {what}: invalid domain name {host[:60]!r}")
    else:
        raise RemoteProtocolError(f"SOCKS {what}: address type {atyp} not supported")
    port = struct.unpack_from("!H", buf, end - 2)[0]
    return host, port, atyp, end


def parse_request(buf: bytes | bytearray) -> tuple[Request, int] | None:
    """``VER CMD RSV ATYP DST.ADDR DST.PORT`` -> ``(Request, used)``.

    Raises:
        RemoteProtocolError: wrong version, reserved byte set, unknown address type, or a
            bad domain name. (Unsupported commands parse: the server answers 0x07.)
    """
    if len(buf) < 4:
        return None
    _version(buf, "request")
    if buf[2] != 0:
        raise RemoteProtocolError("SOCKS request: the reserved byte must be 0")
    parsed = _parse_address(buf, 3, "request")
    if parsed is None:
        return None
    host, port, atyp, end = parsed
    return Request(buf[1], host, port, atyp), end


def build_method(method: int) -> bytes:
    """The server's method selection (``METHOD_NO_ACCEPTABLE`` refuses)."""
    return bytes((VERSION, method))


def build_userpass_status(ok: bool) -> bytes:
    """RFC 1929 status: 0 success, anything else failure (the connection then closes)."""
    return bytes((1, 0 if ok else 1))


_PORT = struct.Struct("!H").pack


def _encode_address(host: str, port: int) -> bytes:
    try:  # the common case (a server's reply, from getsockname): a dotted quad
        return bytes((ATYP_IPV4,)) + socket.inet_pton(socket.AF_INET, host) + _PORT(port)
    except (OSError, ValueError):
        pass
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            raw = host.encode("idna")
        except UnicodeError:
            raise LocalProtocolError(f"invalid domain name {host[:60]!r}") from None
        if not 0 < len(raw) <= 255:
            raise LocalProtocolError(f"domain name of {len(raw)} bytes: 1-255 allowed") from None
        return bytes((ATYP_DOMAIN, len(raw))) + raw + struct.pack("!H", port)
    atyp = ATYP_IPV4 if ip.version == 4 else ATYP_IPV6
    return bytes((atyp,)) + ip.packed + struct.pack("!H", port)


def build_reply(code: int, host: str = "0.0.0.0", port: int = 0) -> bytes:
    """``VER REP RSV ATYP BND.ADDR BND.PORT`` (``code`` from :data:`REPLIES`)."""
    return bytes((VERSION, code, 0)) + _encode_address(host, port)


# -- client side ------------------------------------------------------------------------------
def build_methods(userpass: bool) -> bytes:
    """The client greeting: no authentication, and username/password when we have them."""
    methods = (METHOD_NONE, METHOD_USERPASS) if userpass else (METHOD_NONE,)
    return bytes((VERSION, len(methods), *methods))


def parse_method(buf: bytes | bytearray) -> tuple[int, int] | None:
    """The server's method selection -> ``(method, used)``."""
    if len(buf) < 2:
        return None
    _version(buf, "method selection")
    return buf[1], 2


def build_userpass(user: str, password: str) -> bytes:
    """RFC 1929 sub-negotiation.

    Raises:
        LocalProtocolError: a name or password is empty or longer than 255 bytes.
    """
    u, p = user.encode(), password.encode()
    if not 0 < len(u) <= 255 or len(p) > 255:
        raise LocalProtocolError("SOCKS username must be 1-255 bytes, password 0-255")
    return bytes((1, len(u))) + u + bytes((len(p),)) + p


def parse_userpass_status(buf: bytes | bytearray) -> tuple[bool, int] | None:
    """RFC 1929 status -> ``(ok, used)``."""
    if len(buf) < 2:
        return None
    return buf[1] == 0, 2


def build_request(host: str, port: int) -> bytes:
    """A CONNECT request for ``host`` (a name is sent as is: the proxy resolves it)."""
    return bytes((VERSION, CMD_CONNECT, 0)) + _encode_address(host, port)


def parse_reply(buf: bytes | bytearray) -> tuple[int, str, int, int] | None:
    """The server's reply -> ``(code, bound host, bound port, used)``."""
    if len(buf) < 4:
        return None
    _version(buf, "reply")
    parsed = _parse_address(buf, 3, "reply")
    if parsed is None:
        return None
    host, port, _, end = parsed
    return buf[1], host, port, end


def build_http_connect(host: str, port: int, *, authorization: str | None = None) -> bytes:
    """``CONNECT host:port HTTP/1.1`` with its Host header (RFC 9110 9.3.6)."""
    try:
        authority = (
            f"[{host}]:{port}" if ipaddress.ip_address(host).version == 6 else f"{host}:{port}"
        )
    except ValueError:
        authority = f"{host}:{port}"
    if any(c in authority for c in "\r\n "):
        raise LocalProtocolError(f"invalid CONNECT target {authority!r}")
    head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if authorization:
        head += f"Proxy-Authorization: {authorization}\r\n"
    return (head + "\r\n").encode("ascii")


def parse_http_connect_response(buf: bytes | bytearray) -> tuple[int, str, int] | None:
    """The proxy's response head -> ``(status, reason, used)``; bytes after the blank line
    are the tunnel's. A head over :data:`MAX_HTTP_RESPONSE` bytes is refused.

    Raises:
        RemoteProtocolError: not an HTTP/1.x status line.
        LimitExceeded: no blank line within the limit.
    """
    end = bytes(buf[: MAX_HTTP_RESPONSE + 4]).find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HTTP_RESPONSE:
            raise LimitExceeded(
                f"HTTP CONNECT response head over {MAX_HTTP_RESPONSE} bytes",
                limit=MAX_HTTP_RESPONSE,
            )
        return None
    line = bytes(buf[: buf.find(b"\r\n")]).decode("latin-1")
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise RemoteProtocolError(f"not an HTTP response to CONNECT: {line[:80]!r}")
    return int(parts[1]), parts[2] if len(parts) > 2 else "", end + 4


#: Largest HTTP CONNECT request head accepted (request line and headers), in bytes.
MAX_HTTP_REQUEST = 8192
_MAX_HEADERS = 64


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """An HTTP ``CONNECT`` request (RFC 9110 9.3.6), as a proxy server reads it.

    Attributes:
        method: the request method, upper case (a proxy answers anything but ``CONNECT``
            with 405).
        host: the target host (IPv6 without brackets), ``""`` when the method is not CONNECT.
        port: the target port, 0 when the method is not CONNECT.
        authorization: the ``Proxy-Authorization`` header value, or ``None``.
    """

    method: str
    host: str
    port: int
    authorization: str | None = None


def parse_http_connect_request(buf: bytes | bytearray) -> tuple[ConnectRequest, int] | None:
    """A client's request head -> ``(request, used)``; the bytes after the blank line are
    the tunnel's (a client may send them before the proxy's answer).

    Only the request line and ``Proxy-Authorization`` matter to a CONNECT proxy; other
    headers are skipped but counted (at most 64) and bounded with the head
    (:data:`MAX_HTTP_REQUEST` bytes).

    Raises:
        RemoteProtocolError: not an HTTP/1.x request line, a bad ``host:port`` target, a
            malformed header line, or a body announced on a CONNECT.
        LimitExceeded: no blank line within the limit, or too many header lines.
    """
    end = bytes(buf[: MAX_HTTP_REQUEST + 4]).find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HTTP_REQUEST:
            raise LimitExceeded(
                f"HTTP request head over {MAX_HTTP_REQUEST} bytes", limit=MAX_HTTP_REQUEST
            )
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    if len(lines) - 1 > _MAX_HEADERS:
        raise LimitExceeded(f"more than {_MAX_HEADERS} header lines", limit=_MAX_HEADERS)
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
        raise RemoteProtocolError(f"not an HTTP/1.x request line: {lines[0][:80]!r}")
    method, target = parts[0].upper(), parts[1]
    authorization = None
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or any(c in name for c in " \t"):
            raise RemoteProtocolError(f"malformed header line {line[:80]!r}")
        key = name.lower()
        if key == "proxy-authorization":
            authorization = value.strip()
        elif (
            key in ("content-length", "transfer-encoding")
            and method == "CONNECT"
            and value.strip() not in ("0", "")
        ):
            raise RemoteProtocolError("a CONNECT request has no body")
    if method != "CONNECT":
        return ConnectRequest(method, "", 0, authorization), end + 4
    host, port = _authority(target)
    return ConnectRequest(method, host, port, authorization), end + 4


def _authority(target: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (RFC 9110 9.3.6: the authority form)."""
    if target.startswith("["):
        host, close, rest = target[1:].partition("]")
        if not close or not rest.startswith(":"):
            raise RemoteProtocolError(f"bad CONNECT target {target[:80]!r}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise RemoteProtocolError(f"bad IPv6 address in {target[:80]!r}") from None
    else:
        host, colon, port_text = target.rpartition(":")
        if not colon or not host or ":" in host:
            raise RemoteProtocolError(f"CONNECT target {target[:80]!r} is not host:port")
        if len(host) > 255 or not all(c.isalnum() or c in "-._" for c in host):
            raise RemoteProtocolError(f"bad host in CONNECT target {target[:80]!r}")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise RemoteProtocolError(f"bad port in CONNECT target {target[:80]!r}")
    return host, int(port_text)


def build_http_connect_reply(
    status: int, reason: str, *, headers: tuple[tuple[str, str], ...] = ()
) -> bytes:
    """The proxy's answer head: ``200 Connection Established`` opens the tunnel; any other
    status has an empty body and ends the connection (``Connection: close``)."""
    head = f"HTTP/1.1 {status} {reason}\r\n"
    for name, value in headers:
        head += f"{name}: {value}\r\n"
    if status != 200:
        head += "Content-Length: 0\r\nConnection: close\r\n"
    return (head + "\r\n").encode("latin-1")
