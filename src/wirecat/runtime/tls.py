"""TLS contexts with safe defaults, self-signed certificates in memory, and pinning.

Profiles follow Mozilla's Server Side TLS guidelines (v5.7):

- ``intermediate`` (default): TLS 1.2 and 1.3; for TLS 1.2 only ECDHE key exchange with AEAD
  ciphers (AES-GCM, ChaCha20-Poly1305), set explicitly because Python's defaults still
  include CBC suites. TLS 1.3 suites are all AEAD (RFC 8446 9.1).
- ``modern``: TLS 1.3 only.

Always: no compression (CRIME), no renegotiation (RFC 5746 attacks), no session tickets
across restarts of a self-signed server. Clients verify the server against the system CAs
(or ``cafile``) and check its name (RFC 6125) unless pinned (:func:`check_pin`) or told
``insecure``.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..errors import TLSError

__all__ = [
    "INTERMEDIATE_CIPHERS",
    "INTERMEDIATE_GROUPS",
    "SelfSigned",
    "TLSError",
    "TLSProfile",
    "check_pin",
    "client_context",
    "fingerprint",
    "parse_pin",
    "self_signed",
    "server_context",
]

TLSProfile = Literal["intermediate", "modern"]

#: Mozilla intermediate, TLS 1.2 part: ECDHE + AEAD only.
INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)


#: Mozilla intermediate key-exchange groups (OpenSSL names).
INTERMEDIATE_GROUPS = "X25519:prime256v1:secp384r1"


def _harden(ctx: ssl.SSLContext, profile: TLSProfile) -> None:
    if profile == "modern":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    elif profile == "intermediate":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(INTERMEDIATE_CIPHERS)
    else:
        raise TLSError(f"unknown TLS profile {profile!r}: expected intermediate or modern")
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)


def _load_chain(ctx: ssl.SSLContext, cert: str | bytes, key: str | bytes | None) -> None:
    """Load a certificate chain from paths, or from PEM bytes without touching the disk."""
    if isinstance(cert, bytes):
        cert_path, cert_fd = _memfile(cert)
        key_path, key_fd = _memfile(key) if isinstance(key, bytes) else (None, None)
        try:
            ctx.load_cert_chain(cert_path, key_path)
        finally:
            os.close(cert_fd)
            if key_fd is not None:
                os.close(key_fd)
        return
    assert key is None or isinstance(key, str)
    ctx.load_cert_chain(cert, key)


def _memfile(data: bytes) -> tuple[str, int]:
    """An in-memory file (memfd, Linux) readable by path, so PEM never hits the disk."""
    fd = os.memfd_create("wirecat-tls", 0)
    os.write(fd, data)
    return f"/proc/self/fd/{fd}", fd


def server_context(
    cert: str | bytes,
    key: str | bytes | None = None,
    *,
    profile: TLSProfile = "intermediate",
    client_ca: str | None = None,
    alpn: Sequence[str] = (),
) -> ssl.SSLContext:
    """Return a server-side ``SSLContext``.

    Args:
        cert: path to a PEM certificate chain, or the PEM bytes themselves.
        key: path to (or PEM bytes of) the private key; ``None`` if ``cert`` holds it.
        profile: ``intermediate`` (TLS 1.2+, ECDHE+AEAD) or ``modern`` (TLS 1.3 only).
        client_ca: a PEM file of CAs; when given, clients MUST present a certificate that
            chains to one of them (mTLS).
        alpn: protocols to offer (RFC 7301), e.g. ``["wirecat-chat"]``.

    Raises:
        TLSError: the certificate or key cannot be read or do not match.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx, profile)
    ctx.options |= ssl.OP_NO_TICKET
    # Key exchange groups: Mozilla intermediate allows X25519, P-256 and P-384 only.
    set_groups = getattr(ctx, "set_groups", None)  # Python 3.13+ / OpenSSL 3
    if set_groups is not None:
        set_groups(INTERMEDIATE_GROUPS)
    else:  # older Pythons can name a single curve only: P-256 is in every client
        ctx.set_ecdh_curve("prime256v1")
    try:
        _load_chain(ctx, cert, key)
        if client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(f"cannot load TLS certificate/key: {exc}") from exc
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def client_context(
    *,
    cafile: str | None = None,
    insecure: bool = False,
    pinned: bool = False,
    profile: TLSProfile = "intermediate",
    cert: str | None = None,
    key: str | None = None,
    alpn: Sequence[str] = (),
) -> ssl.SSLContext:
    """Return a client-side ``SSLContext`` that verifies the server by default.

    Args:
        cafile: PEM CAs to trust instead of the system store.
        insecure: do not verify the server at all (the caller must warn the user).
        pinned: the caller checks the certificate's SHA-256 with :func:`check_pin` after the
            handshake, so chain and name checks are off (works with self-signed servers).
        profile: as in :func:`server_context`.
        cert, key: a client certificate for mTLS.
        alpn: protocols to offer (RFC 7301).

    Raises:
        TLSError: a file cannot be read.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx, profile)
    try:
        if insecure or pinned:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif cafile:
            ctx.load_verify_locations(cafile=cafile)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if cert:
            ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(f"cannot load TLS files: {exc}") from exc
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def fingerprint(der: bytes) -> str:
    """Return ``sha256:HEX`` (lowercase, no colons) of a DER certificate."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def parse_pin(pin: str) -> bytes:
    """Parse ``sha256:HEX`` (colons allowed, any case) into the 32-byte digest.

    Raises:
        TLSError: not of that form.
    """
    algo, _, hexpart = pin.partition(":")
    hexpart = hexpart.replace(":", "").strip()
    if algo.lower() != "sha256" or len(hexpart) != 64:
        raise TLSError(f"invalid pin {pin!r}: expected sha256: followed by 64 hex digits")
    try:
        return bytes.fromhex(hexpart)
    except ValueError:
        raise TLSError(f"invalid pin {pin!r}: not hexadecimal") from None


def check_pin(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, pin: str) -> bool:
    """True if the peer's certificate has the SHA-256 fingerprint ``pin`` (constant time)."""
    if ssl_object is None:
        return False
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return False
    return hmac.compare_digest(hashlib.sha256(der).digest(), parse_pin(pin))


@dataclass(frozen=True)
class SelfSigned:
    """A self-signed certificate made in memory.

    Attributes:
        cert_pem: the certificate (PEM bytes).
        key_pem: its private key (PEM bytes, unencrypted: keep it in memory).
        fingerprint: ``sha256:HEX`` of the certificate, for ``--pin``.
    """

    cert_pem: bytes
    key_pem: bytes
    fingerprint: str


def self_signed(
    names: Sequence[str] = ("localhost", "127.0.0.1", "::1"), *, days: int = 30
) -> SelfSigned:
    """Generate an ECDSA P-256 self-signed certificate for ``names`` (DNS names or IPs).

    Uses the ``cryptography`` package (the ``wirecat[tls-tools]`` extra); nothing is
    written to disk.

    Raises:
        TLSError: ``cryptography`` is not installed.
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        raise TLSError(
            "self-signed certificates need the 'cryptography' package: "
            "pip install 'wirecat[tls-tools]'"
        ) from None

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "wirecat")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return SelfSigned(cert_pem, key_pem, fingerprint(cert.public_bytes(serialization.Encoding.DER)))
