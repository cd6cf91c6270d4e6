"""One exception tree for everything wirecat raises.

::

    WirecatError
    ├── InvalidEndpoint              (also ValueError) an endpoint string that does not parse
    ├── ProtocolError                the bytes on the wire break a protocol's rules
    │   ├── LocalProtocolError       we were asked to send something the protocol forbids
    │   ├── RemoteProtocolError      the peer sent something the protocol forbids
    │   │   └── InvalidMessage       malformed content: bad UTF-8, bad JSON, wrong shape
    │   └── LimitExceeded            a security limit (max_* in bytes, counts, rates) was hit
    │       └── LineTooLong          a line longer than max_line bytes
    ├── NetworkError                 an I/O operation failed (translated from OSError)
    │   ├── ConnectError             could not establish a connection
    │   │   ├── ConnectionRefused    nobody listens there (ECONNREFUSED, ENOENT for unix)
    │   │   ├── NameResolutionError  the host name did not resolve
    │   │   └── HandshakeError       the TLS handshake failed (bad certificate, pin mismatch)
    │   ├── ListenError              could not open a listener
    │   │   ├── AddressInUse         EADDRINUSE
    │   │   └── PermissionDenied     EACCES / EPERM (a port below 1024 without privileges)
    │   └── ConnectionClosed         the connection is gone
    │       ├── ConnectionClosedOK       closed cleanly (EOF)
    │       └── ConnectionClosedError    closed with an error (RST, broken pipe, aborted)
    └── WirecatTimeout               (also TimeoutError) a deadline passed, by phase
        ├── ConnectTimeout           TCP connect did not complete in time
        ├── HandshakeTimeout         TLS or protocol handshake did not complete in time
        └── IdleTimeout              nothing was received for the idle period

``OSError`` and ``ssl.SSLError`` are translated into this tree only at the I/O boundary
(``runtime/``), always with ``raise ... from exc`` so the cause is kept. Library code never
prints or exits; the CLI maps each class to a one-line message and an exit code
(:data:`EXIT_CODES`).
"""

from __future__ import annotations

import errno

__all__ = [
    "EXIT_CODES",
    "AddressInUse",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "ConnectionRefused",
    "HandshakeError",
    "HandshakeTimeout",
    "IdleTimeout",
    "InvalidEndpoint",
    "InvalidMessage",
    "LimitExceeded",
    "LineTooLong",
    "ListenError",
    "LocalProtocolError",
    "NameResolutionError",
    "NetworkError",
    "PermissionDenied",
    "ProtocolError",
    "RemoteProtocolError",
    "WirecatError",
    "WirecatTimeout",
    "exit_code_for",
    "translate_os_error",
]


class WirecatError(Exception):
    """Root of every exception wirecat raises on purpose."""


class InvalidEndpoint(WirecatError, ValueError):
    """An endpoint string does not parse; the message names what is wrong."""


class ProtocolError(WirecatError):
    """Bytes on the wire break a protocol's rules."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol forbids (a bug in the caller)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids."""


class InvalidMessage(RemoteProtocolError):
    """Malformed content from the peer: invalid UTF-8, invalid JSON, JSON of the wrong shape."""


class LimitExceeded(ProtocolError):
    """A security limit was hit (a size in bytes, a count or a rate).

    Attributes:
        limit: the configured limit that was exceeded (bytes, count or per-second rate).
    """

    def __init__(self, message: str, *, limit: int | float | None = None) -> None:
        super().__init__(message)
        self.limit = limit


class LineTooLong(LimitExceeded):
    """A line exceeded ``max_line`` bytes before its terminator arrived."""


class NetworkError(WirecatError):
    """An I/O operation failed; ``__cause__`` holds the original ``OSError``."""


class ConnectError(NetworkError):
    """A connection could not be established."""


class ConnectionRefused(ConnectError):
    """Nobody listens at that address (ECONNREFUSED; ENOENT/ECONNREFUSED for Unix sockets)."""


class NameResolutionError(ConnectError):
    """The host name did not resolve (``socket.gaierror``)."""


class HandshakeError(ConnectError):
    """The TLS handshake failed: certificate not trusted, wrong name, pin mismatch, no shared
    protocol version or cipher, or a plaintext peer on a TLS port."""


class ListenError(NetworkError):
    """A listener could not be opened."""


class AddressInUse(ListenError):
    """The address is already in use (EADDRINUSE)."""


class PermissionDenied(ListenError):
    """The OS refused the operation (EACCES/EPERM), e.g. a port below 1024 without privileges."""


class ConnectionClosed(NetworkError):
    """The connection is closed; no more data can be sent or received."""


class ConnectionClosedOK(ConnectionClosed):
    """The peer closed the connection cleanly (end of stream)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection was closed with an error (reset, broken pipe, aborted)."""


class WirecatTimeout(WirecatError, TimeoutError):
    """A deadline passed. Subclasses name the phase."""


class ConnectTimeout(WirecatTimeout):
    """Connection establishment did not complete within the connect timeout."""


class HandshakeTimeout(WirecatTimeout):
    """A TLS or protocol handshake did not complete within its deadline."""


class IdleTimeout(WirecatTimeout):
    """Nothing was received for the idle period."""


#: Exit codes of the ``wirecat`` command, by exception class (most specific first).
#: 0 success, 1 generic error, 2 usage (click's own), 64+ follow BSD sysexits in spirit.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidEndpoint, 64),  # EX_USAGE-like: bad address given
    (NameResolutionError, 68),  # EX_NOHOST
    (ConnectionRefused, 69),  # EX_UNAVAILABLE
    (ConnectTimeout, 75),  # EX_TEMPFAIL
    (HandshakeTimeout, 75),
    (WirecatTimeout, 75),
    (AddressInUse, 71),  # EX_OSERR-like: cannot bind
    (PermissionDenied, 77),  # EX_NOPERM
    (ListenError, 71),
    (HandshakeError, 76),
    (ProtocolError, 76),  # EX_PROTOCOL
    (ConnectionClosedError, 74),  # EX_IOERR
    (NetworkError, 74),
    (WirecatError, 1),
)


def exit_code_for(exc: BaseException) -> int:
    """Return the CLI exit code for an exception (1 for anything not in :data:`EXIT_CODES`)."""
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return 1


_REFUSED = {errno.ECONNREFUSED, errno.ENOENT}
_RESET = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ESHUTDOWN}
_DENIED = {errno.EACCES, errno.EPERM}


def _reason(exc: BaseException) -> str:
    """A never-empty reason: strerror, else the message, else the class name."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def translate_os_error(exc: OSError, *, what: str, phase: str = "connect") -> WirecatError:
    """Map an ``OSError`` raised at the I/O boundary to the wirecat tree.

    Args:
        exc: the original error (kept as ``__cause__`` by the caller's ``raise ... from exc``).
        what: a human description of the target, e.g. ``"tcp://127.0.0.1:7000"``.
        phase: ``"connect"``, ``"listen"`` or ``"io"``; decides the class for ambiguous errnos.

    Returns:
        The exception to raise; its message is one line that says what to do.
    """
    import socket  # local: keeps this module import-light for protocols/
    import ssl

    if isinstance(exc, socket.gaierror):
        return NameResolutionError(f"cannot resolve {what}: {_reason(exc)}")
    if isinstance(exc, TimeoutError):
        return ConnectTimeout(f"timed out connecting to {what}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return HandshakeError(
            f"TLS handshake with {what} failed: {exc.verify_message or exc.reason} "
            "(trust its CA with --cafile, pin it with --pin sha256:..., or --insecure)"
        )
    if isinstance(exc, ssl.SSLError):
        return HandshakeError(f"TLS handshake with {what} failed: {exc.reason or exc}")
    if isinstance(exc, ConnectionAbortedError) and "handshake" in str(exc).lower():
        return HandshakeTimeout(f"TLS handshake with {what} timed out")
    code = exc.errno
    if phase == "listen":
        if code == errno.EADDRINUSE:
            return AddressInUse(
                f"cannot listen on {what}: address already in use "
                "(another process is bound there; pick another port or stop it)"
            )
        if code in _DENIED:
            return PermissionDenied(
                f"cannot listen on {what}: permission denied "
                "(ports below 1024 need privileges; use a higher port)"
            )
        if code == errno.EADDRNOTAVAIL:
            return ListenError(
                f"cannot listen on {what}: address not available on this host "
                "(use 127.0.0.1, ::1, 0.0.0.0 or [::])"
            )
        return ListenError(f"cannot listen on {what}: {_reason(exc)}")
    if phase == "connect":
        if code in _REFUSED:
            return ConnectionRefused(f"connection refused by {what} (is a server listening there?)")
        if code in {errno.ETIMEDOUT}:
            return ConnectTimeout(f"timed out connecting to {what}")
        if code in {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL}:
            return ConnectError(f"cannot reach {what}: {_reason(exc)}")
        if code in _DENIED:
            return ConnectError(f"permission denied connecting to {what}")
        return ConnectError(f"cannot connect to {what}: {_reason(exc)}")
    if code in _RESET:
        return ConnectionClosedError(f"connection to {what} was reset by the peer")
    return NetworkError(f"I/O error on {what}: {_reason(exc)}")
