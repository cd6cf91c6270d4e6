"""ICMP and ICMPv6 echo (RFC 792, RFC 4443 4.1-4.2), sans-I/O: the messages of ``wirecat ping``.

:func:`build_echo` makes an echo request; :func:`parse_echo_reply` recognises a reply (from a
datagram ICMP socket, which hands over the ICMP message, or a raw IPv4 socket, which hands
over the IP header first). The ICMPv6 checksum is the kernel's job (it covers a pseudo-header
with the addresses, RFC 4443 2.3); the ICMPv4 one (RFC 1071) is computed here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["EchoReply", "build_echo", "checksum", "parse_echo_reply"]

ECHO_REQUEST_V4, ECHO_REPLY_V4 = 8, 0
ECHO_REQUEST_V6, ECHO_REPLY_V6 = 128, 129


@dataclass(frozen=True, slots=True)
class EchoReply:
    """An echo reply: identifier, sequence number, payload bytes, and the IP TTL (raw v4
    sockets only, else ``None``)."""

    ident: int
    seq: int
    payload: bytes
    ttl: int | None = None


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): one's complement of the one's complement sum."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_echo(ident: int, seq: int, payload: bytes, *, v6: bool = False) -> bytes:
    """An echo request; ``ident`` and ``seq`` are 16-bit.

    Raises:
        ValueError: ``ident`` or ``seq`` out of range.
    """
    if not (0 <= ident <= 0xFFFF and 0 <= seq <= 0xFFFF):
        raise ValueError("ident and seq must be 0-65535")
    kind = ECHO_REQUEST_V6 if v6 else ECHO_REQUEST_V4
    header = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    if v6:
        return header + payload
    return struct.pack("!BBHHH", kind, 0, checksum(header + payload), ident, seq) + payload


def parse_echo_reply(data: bytes, *, v6: bool = False, ip_header: bool = False) -> EchoReply | None:
    """The echo reply in ``data``, or ``None`` for anything else (other ICMP types,
    truncated messages). ``ip_header``: ``data`` starts with an IPv4 header (raw sockets).
    """
    ttl = None
    if ip_header:
        if len(data) < 20 or data[0] >> 4 != 4:
            return None
        ihl = (data[0] & 0x0F) * 4
        ttl = data[8]
        data = data[ihl:]
    if len(data) < 8:
        return None
    kind, code, _, ident, seq = struct.unpack_from("!BBHHH", data)
    if kind != (ECHO_REPLY_V6 if v6 else ECHO_REPLY_V4) or code != 0:
        return None
    return EchoReply(ident, seq, data[8:], ttl)
