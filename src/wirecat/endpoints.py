"""The one address model, shared by the library, the CLI and the relay.

Examples::

    >>> parse_endpoint("tcp://127.0.0.1:7000")
    Endpoint(scheme='tcp', host='127.0.0.1', port=7000, path=None)
    >>> parse_endpoint("localhost:7007")            # host:port means TCP
    Endpoint(scheme='tcp', host='localhost', port=7007, path=None)
    >>> parse_endpoint("udp://[::1]:7007")          # IPv6 literals go in brackets (RFC 3986 3.2.2)
    Endpoint(scheme='udp', host='::1', port=7007, path=None)
    >>> parse_endpoint("unix:/tmp/chat.sock")
    Endpoint(scheme='unix', host=None, port=None, path='/tmp/chat.sock')
    >>> str(parse_endpoint("tcp://[::]:7000"))      # [::] listens dual-stack
    'tcp://[::]:7000'

Schemes: ``tcp``, ``udp``, ``tls``, ``unix``, ``unix+dgram``, ``unix+seqpacket``, ``ws``, ``wss``,
and ``-`` for standard input/output.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from .errors import InvalidEndpoint

__all__ = ["SCHEMES", "Endpoint", "Scheme", "parse_endpoint"]

Scheme = Literal["tcp", "udp", "tls", "unix", "unix+dgram", "unix+seqpacket", "ws", "wss", "stdio"]

#: Schemes with a host and a port.
_INET: frozenset[str] = frozenset({"tcp", "udp", "tls", "ws", "wss"})
#: Schemes with a filesystem path (or an abstract name starting with ``@``).
_UNIX: frozenset[str] = frozenset({"unix", "unix+dgram", "unix+seqpacket"})
SCHEMES: frozenset[str] = _INET | _UNIX | {"stdio"}

_MAX_ENDPOINT = 4096  # bytes; longer input is rejected before any parsing
_MAX_UNIX_PATH = 107  # sun_path is 108 bytes on Linux, including the NUL
# RFC 1123 host names: labels of letters, digits and hyphens, dot-separated.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to connect or listen.

    Attributes:
        scheme: transport kind, one of :data:`SCHEMES`.
        host: host name or IP literal (no brackets) for inet schemes, else ``None``.
            ``""`` is never stored; the wildcard addresses are ``"0.0.0.0"`` and ``"::"``.
        port: 0-65535 for inet schemes (0 asks the OS to pick one when listening), else ``None``.
        path: filesystem path for unix schemes (``@name`` for Linux abstract sockets), the
            resource path for ``ws``/``wss`` (default ``"/"``), else ``None``.
    """

    scheme: Scheme
    host: str | None = None
    port: int | None = None
    path: str | None = None

    @property
    def is_inet(self) -> bool:
        """True for schemes addressed by host and port."""
        return self.scheme in _INET

    @property
    def is_unix(self) -> bool:
        """True for Unix-domain schemes."""
        return self.scheme in _UNIX

    @property
    def is_datagram(self) -> bool:
        """True when messages keep their boundaries (udp, unix+dgram)."""
        return self.scheme in ("udp", "unix+dgram")

    @property
    def is_stream(self) -> bool:
        """True for byte-stream transports (tcp, tls, unix, ws, wss, stdio)."""
        return not self.is_datagram and self.scheme != "unix+seqpacket"

    @property
    def is_wildcard(self) -> bool:
        """True when the host is a wildcard address (``0.0.0.0`` or ``::``)."""
        return self.host in ("0.0.0.0", "::")

    @property
    def is_loopback(self) -> bool:
        """True for unix sockets and loopback hosts (127.0.0.0/8, ::1, localhost)."""
        if self.is_unix or self.scheme == "stdio":
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host or "").is_loopback
        except ValueError:
            return False

    def with_port(self, port: int) -> Endpoint:
        """Return a copy with another port (e.g. the one the OS picked for port 0)."""
        return Endpoint(self.scheme, self.host, port, self.path)

    def __str__(self) -> str:
        if self.scheme == "stdio":
            return "-"
        if self.is_unix:
            # "unix:/p" normally; "unix://" + path when the path itself starts with "//".
            sep = "://" if (self.path or "").startswith("//") else ":"
            return f"{self.scheme}{sep}{self.path}"
        host = self.host or ""
        if ":" in host:
            host = f"[{host}]"
        suffix = self.path if self.scheme in ("ws", "wss") and self.path not in (None, "/") else ""
        return f"{self.scheme}://{host}:{self.port}{suffix}"


def _parse_port(text: str, original: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise InvalidEndpoint(f"invalid port {text!r} in {original!r}: expected a number 0-65535")
    port = int(text)
    if port > 65535:
        raise InvalidEndpoint(f"port {port} out of range in {original!r}: expected 0-65535")
    return port


def _parse_host(text: str, original: str) -> str:
    if text.startswith("["):
        if not text.endswith("]"):
            raise InvalidEndpoint(f"unclosed '[' in {original!r}: write IPv6 as [::1]:port")
        inner = text[1:-1]
        addr, pct, zone = inner.partition("%")
        if pct and not zone:
            raise InvalidEndpoint(f"empty IPv6 zone after '%' in {original!r}")
        try:
            ipaddress.IPv6Address(addr)
        except ValueError:
            raise InvalidEndpoint(f"invalid IPv6 address {inner!r} in {original!r}") from None
        if zone and not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", zone):
            raise InvalidEndpoint(f"invalid IPv6 zone {zone!r} in {original!r}")
        return inner
    if ":" in text:
        raise InvalidEndpoint(
            f"IPv6 address in {original!r} must be in brackets, e.g. tcp://[::1]:7000"
        )
    if not text:
        raise InvalidEndpoint(f"missing host in {original!r}")
    if text == "*":
        return "0.0.0.0"
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        pass
    if not _HOSTNAME.match(text) or text.replace(".", "").isdigit():
        raise InvalidEndpoint(f"invalid host {text!r} in {original!r}")
    return text.lower()


def parse_endpoint(
    text: str,
    *,
    default_host: str | None = None,
    default_port: int | None = None,
) -> Endpoint:
    """Parse an endpoint string into an :class:`Endpoint`.

    Args:
        text: ``scheme://host:port[/path]``, ``host:port`` (TCP), ``:port`` or a bare port
            (TCP on ``default_host``), ``unix:/path``, ``unix+dgram:/path``,
            ``unix+seqpacket:/path``, or ``-`` (stdio). IPv6 literals in brackets.
        default_host: host used when the string gives none (``":7000"``, ``"7000"``);
            ``None`` makes a missing host an error.
        default_port: port used when an inet string gives none; ``None`` makes it an error.

    Returns:
        A frozen :class:`Endpoint`.

    Raises:
        InvalidEndpoint: the string is empty, too long (over 4096 bytes), names an unknown
            scheme, or has a bad host, port or path. The message names what is wrong.
    """
    original = text
    if not isinstance(text, str):
        raise InvalidEndpoint(f"endpoint must be a string, not {type(text).__name__}")
    if len(text) > _MAX_ENDPOINT:
        raise InvalidEndpoint(f"endpoint longer than {_MAX_ENDPOINT} characters")
    text = text.strip()
    if not text:
        raise InvalidEndpoint("empty endpoint: expected e.g. tcp://127.0.0.1:7000")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise InvalidEndpoint(f"control character in endpoint {original!r}")
    if text in ("-", "stdio:", "stdio://"):
        return Endpoint("stdio")

    scheme: str
    rest: str
    authority_form = False
    head = text.split(":", 1)[0].lower()
    if "://" in text:
        scheme, rest = text.split("://", 1)
        authority_form = True
        if rest.startswith("/") and scheme.lower() in _INET:  # "tcp:///127.0.0.1:7007"
            raise InvalidEndpoint(
                f"too many '/' in {text!r}: write {scheme.lower()}://{rest.lstrip('/')}"
            )
    elif head in _UNIX and ":" in text:
        scheme, rest = text.split(":", 1)  # "unix:123" is a path, never host "unix" port 123
    elif re.match(r"^[a-z][a-z0-9+]*:(?!\d+$)", text) and not text.startswith("["):
        # "unix:/path" style (no authority). "localhost:7000" has only digits after the colon.
        scheme, rest = text.split(":", 1)
        if scheme in _INET:
            raise InvalidEndpoint(
                f"{scheme} endpoint needs '//': write {scheme}://{rest.lstrip('/')}"
            )
    else:
        scheme, rest = "tcp", text
        for known in sorted(_INET | _UNIX, key=len, reverse=True):
            if text.lower().startswith(known + "/"):  # "tcp//host:port", "tcp/host:port"
                rest = text[len(known) :].lstrip("/")
                raise InvalidEndpoint(f"{known} endpoint needs '://': write {known}://{rest}")
    scheme = scheme.lower()
    if scheme not in SCHEMES or scheme == "stdio":
        known = ", ".join(sorted(SCHEMES - {"stdio"}))
        raise InvalidEndpoint(f"unknown scheme {scheme!r} in {original!r}: expected one of {known}")

    if scheme in _UNIX:
        sock_path = rest if authority_form else (rest[2:] if rest.startswith("//") else rest)
        if not sock_path:
            raise InvalidEndpoint(f"missing path in {original!r}: write {scheme}:/path/to.sock")
        if "\x00" in sock_path:
            raise InvalidEndpoint(f"NUL byte in unix socket path {original!r}")
        if len(sock_path.encode()) > _MAX_UNIX_PATH:
            raise InvalidEndpoint(
                f"unix socket path longer than {_MAX_UNIX_PATH} bytes in {original!r}"
            )
        return Endpoint(scheme, path=sock_path)  # type: ignore[arg-type]

    # inet: authority [path]
    authority, slash, path_part = rest.partition("/")
    path: str | None = None
    if scheme in ("ws", "wss"):
        path = "/" + path_part if slash else "/"
    elif slash and path_part:
        raise InvalidEndpoint(f"unexpected path {'/' + path_part!r} in {original!r}")
    if "@" in authority:
        raise InvalidEndpoint(f"user info is not supported in {original!r}")

    host_text: str
    port_text: str | None
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise InvalidEndpoint(f"unclosed '[' in {original!r}: write IPv6 as [::1]:port")
        host_text = authority[: close + 1]
        after = authority[close + 1 :]
        if after and not after.startswith(":"):
            raise InvalidEndpoint(f"unexpected {after!r} after IPv6 address in {original!r}")
        port_text = after[1:] if after else None
    elif authority.isascii() and authority.isdigit():
        host_text, port_text = "", authority
    elif authority.count(":") > 1:
        raise InvalidEndpoint(
            f"IPv6 address in {original!r} must be in brackets, e.g. tcp://[::1]:7000"
        )
    else:
        host_text, sep, port_text_ = authority.partition(":")
        port_text = port_text_ if sep else None

    if not host_text:
        if default_host is None:
            raise InvalidEndpoint(f"missing host in {original!r}: write host:port")
        host = default_host.strip("[]")
    else:
        host = _parse_host(host_text, original)

    if port_text is None or port_text == "":
        if port_text == "" or default_port is None:
            raise InvalidEndpoint(f"missing port in {original!r}: write {scheme}://host:port")
        port = default_port
    else:
        port = _parse_port(port_text, original)
    return Endpoint(scheme, host, port, path)  # type: ignore[arg-type]
