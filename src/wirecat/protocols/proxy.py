"""The PROXY protocol, versions 1 and 2 (HAProxy's specification, 2020-03-05): the real
client address that a load balancer puts before the first byte of a connection.

Sans-I/O: feed bytes with :meth:`ProxyHeaderParser.receive_data`; once it returns a
:class:`ProxyHeader`, :attr:`ProxyHeaderParser.rest` holds the bytes that followed it (the
client's own data, never lost). Every limit is checked before anything is buffered: a v1
line is at most 107 bytes (spec 2.1); a v2 header at most ``max_header`` bytes (16 + its
length field, TLVs included; spec 2.2). Anything else is a :class:`RemoteProtocolError` with
the reason: a listener that expects a header refuses the connection before any service byte.

::

    parser = ProxyHeaderParser()
    header = parser.receive_data(b"PROXY TCP4 192.0.2.1 198.51.100.2 51000 443\\r\\nhello")
    header.source        # ("192.0.2.1", 51000)
    parser.rest          # b"hello"
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ..errors import LimitExceeded, RemoteProtocolError

__all__ = [
    "MAX_V1",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderParser",
    "encode_v1",
    "encode_v2",
]

#: Longest v1 header, CRLF included (spec 2.1: "PROXY UNKNOWN ffff:...:ffff ... 65535\r\n").
MAX_V1 = 107
#: The 12 bytes every v2 header starts with (spec 2.2).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What the balancer said about the connection.

    Attributes:
        version: 1 or 2.
        local: True for a connection the balancer made itself (v2 ``LOCAL``, v1 ``UNKNOWN``):
            keep the real peer address.
        source: the client's ``(host, port)``, or ``None`` when ``local`` or not IP.
        destination: the address the client connected to, or ``None``.
        transport: ``"tcp"``, ``"udp"``, ``"unix"`` or ``""`` (unknown / local).
    """

    version: int
    local: bool
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None
    transport: str = ""


class ProxyHeaderParser:
    """Incremental parser of one PROXY header (v1 or v2, whichever arrives).

    Args:
        max_header: the largest v2 header accepted, in bytes (16 + length; TLVs included).
        allow_v1: accept the text version (v1).
    """

    def __init__(self, *, max_header: int = 4096, allow_v1: bool = True) -> None:
        if max_header < 16 + 36:
            raise ValueError("max_header must hold at least an IPv6 v2 header (52 bytes)")
        self.max_header = max_header
        self.allow_v1 = allow_v1
        self._buf = bytearray()
        self.rest = b""
        self.header: ProxyHeader | None = None

    def receive_data(self, data: bytes) -> ProxyHeader | None:
        """Feed bytes; return the header once complete (then see :attr:`rest`), else None.

        Raises:
            RemoteProtocolError: not a PROXY header, or a malformed one.
            LimitExceeded: longer than the limits allow, before buffering more.
        """
        if self.header is not None:
            self.rest += data
            return self.header
        self._buf += data
        buf = self._buf
        probe = bytes(buf[:12])
        if V2_SIGNATURE.startswith(probe):
            if len(buf) < 16:
                return None
            length = struct.unpack_from("!H", buf, 14)[0]
            if 16 + length > self.max_header:
                raise LimitExceeded(
                    f"PROXY v2 header of {16 + length} bytes exceeds {self.max_header}",
                    limit=self.max_header,
                )
            if len(buf) < 16 + length:
                return None
            header = _parse_v2(bytes(buf[: 16 + length]))
            end = 16 + length
        elif self.allow_v1 and _V1_PREFIX.startswith(probe[:6]):
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) >= MAX_V1:
                    raise LimitExceeded(f"PROXY v1 line longer than {MAX_V1} bytes", limit=MAX_V1)
                if b"\n" in buf:
                    raise RemoteProtocolError("PROXY v1 line must end with CRLF")
                return None
            if end + 2 > MAX_V1:
                raise LimitExceeded(f"PROXY v1 line longer than {MAX_V1} bytes", limit=MAX_V1)
            header = _parse_v1(bytes(buf[:end]))
            end += 2
        else:
            raise RemoteProtocolError("no PROXY protocol header (v1 or v2) where one is required")
        self.header = header
        self.rest = bytes(buf[end:])
        self._buf = bytearray()
        return header


def _ip(text: str, version: int, what: str) -> str:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise RemoteProtocolError(f"PROXY v1: bad {what} address {text[:50]!r}") from None
    if addr.version != version:
        raise RemoteProtocolError(f"PROXY v1: {what} address is not IPv{version}")
    return str(addr)


def _port(text: str, what: str) -> int:
    if (
        not (text.isascii() and text.isdigit())
        or len(text) > 5
        or (len(text) > 1 and text[0] == "0")
    ):
        raise RemoteProtocolError(f"PROXY v1: bad {what} port {text[:10]!r}")
    port = int(text)
    if port > 65535:
        raise RemoteProtocolError(f"PROXY v1: {what} port {port} out of range")
    return port


def _parse_v1(line: bytes) -> ProxyHeader:
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise RemoteProtocolError("PROXY v1 line is not ASCII") from None
    parts = text.split(" ")
    if parts[:2] == ["PROXY", "UNKNOWN"]:
        return ProxyHeader(version=1, local=True)
    if len(parts) != 6 or parts[0] != "PROXY" or parts[1] not in ("TCP4", "TCP6"):
        raise RemoteProtocolError(f"PROXY v1: malformed line {text[:60]!r}")
    version = 4 if parts[1] == "TCP4" else 6
    src = (_ip(parts[2], version, "source"), _port(parts[4], "source"))
    dst = (_ip(parts[3], version, "destination"), _port(parts[5], "destination"))
    return ProxyHeader(version=1, local=False, source=src, destination=dst, transport="tcp")


def _parse_v2(data: bytes) -> ProxyHeader:
    ver_cmd, fam = data[12], data[13]
    if ver_cmd >> 4 != 2:
        raise RemoteProtocolError(f"PROXY v2: unsupported version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command == 0x0:  # LOCAL: health checks from the balancer itself
        return ProxyHeader(version=2, local=True)
    if command != 0x1:
        raise RemoteProtocolError(f"PROXY v2: unknown command {command}")
    family, proto = fam >> 4, fam & 0x0F
    transport = {0x1: "tcp", 0x2: "udp"}.get(proto, "")
    body = data[16:]
    if family == 0x1:  # AF_INET
        if len(body) < 12:
            raise RemoteProtocolError("PROXY v2: IPv4 addresses truncated")
        src_ip, dst_ip, sport, dport = struct.unpack_from("!4s4sHH", body)
        return ProxyHeader(
            version=2,
            local=False,
            source=(str(ipaddress.IPv4Address(src_ip)), sport),
            destination=(str(ipaddress.IPv4Address(dst_ip)), dport),
            transport=transport,
        )
    if family == 0x2:  # AF_INET6
        if len(body) < 36:
            raise RemoteProtocolError("PROXY v2: IPv6 addresses truncated")
        src_ip, dst_ip, sport, dport = struct.unpack_from("!16s16sHH", body)
        return ProxyHeader(
            version=2,
            local=False,
            source=(str(ipaddress.IPv6Address(src_ip)), sport),
            destination=(str(ipaddress.IPv6Address(dst_ip)), dport),
            transport=transport,
        )
    # AF_UNSPEC or AF_UNIX: no IP to use; keep the connection's own address.
    return ProxyHeader(version=2, local=True, transport="unix" if family == 0x3 else "")


def encode_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """Build a v1 header (for tests and clients behind which we act as a balancer)."""
    version = ipaddress.ip_address(source[0]).version
    family = "TCP4" if version == 4 else "TCP6"
    return f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def encode_v2(
    source: tuple[str, int] | None, destination: tuple[str, int] | None, tlvs: bytes = b""
) -> bytes:
    """Build a v2 header: ``PROXY`` over TCP for addresses, ``LOCAL`` when ``source`` is None."""
    if source is None or destination is None:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", len(tlvs)) + tlvs
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version == 4:
        body = struct.pack("!4s4sHH", src.packed, dst.packed, source[1], destination[1])
        fam = 0x11
    else:
        body = struct.pack("!16s16sHH", src.packed, dst.packed, source[1], destination[1])
        fam = 0x21
    body += tlvs
    return V2_SIGNATURE + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body
