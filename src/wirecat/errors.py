"""One exception tree for everything wirecat raises.

::

    WirecatError
    ├── InvalidEndpoint              (also ValueError) an endpoint string that does not parse
    ├── ConfigError                  (also ValueError) a server setting is invalid (``field``)
    │   ├── TLSError                 a TLS certificate, key, CA file or pin cannot be used
    │   └── UsersFileError           a users file is unreadable, too large or malformed
    ├── ConcurrencyError             two coroutines read one connection at once (a caller bug)
    ├── ChatError                    a chat command was refused (``code``, ``reason``)
    │   └── ChatRefused              the chat server refused the login (nick taken, bad token)
    ├── FilesError                   a files request was refused or failed (``code``, ``offset``)
    │   ├── FileStoreError           the file store refused an operation (server side)
    │   └── TransferError            a transfer was refused or failed verification (client)
    ├── ProtocolError                the bytes on the wire break a protocol's rules
    │   ├── LocalProtocolError       we were asked to send something the protocol forbids
    │   ├── RemoteProtocolError      the peer sent something the protocol forbids
    │   │   └── InvalidMessage       malformed content: bad UTF-8, bad JSON, wrong shape
    │   │       └── FieldError       one JSON field is missing or wrong (``field``, ``code``)
    │   └── LimitExceeded            a security limit (max_* in bytes, counts, rates) was hit
    │       └── LineTooLong          a line longer than max_line bytes
    ├── NetworkError                 an I/O operation failed (translated from OSError)
    │   ├── ConnectError             could not establish a connection
    │   │   ├── ConnectionRefused    nobody listens there (ECONNREFUSED, ENOENT for unix)
    │   │   ├── NameResolutionError  the host name did not resolve
    │   │   ├── ProxyError           a SOCKS5 or HTTP CONNECT proxy refused or failed
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
(``runtime/``), always with ``raise ... from exc`` so the cause is kept. Errors carry data:
``NetworkError`` and ``WirecatTimeout`` the ``endpoint`` they concern, ``LimitExceeded`` its
``limit``, ``ConfigError`` its ``field``. Messages say what happened in the library's words,
never a CLI flag. Library code never prints or exits; the CLI (``wirecat.cli.exits``) maps
each class to a one-line message and an exit code.
"""

from __future__ import annotations

import errno

__all__ = [
    "AddressInUse",
    "ChatError",
    "ChatRefused",
    "ConcurrencyError",
    "ConfigError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "ConnectionRefused",
    "FieldError",
    "FileStoreError",
    "FilesError",
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
    "ProxyError",
    "RemoteProtocolError",
    "TLSError",
    "TransferError",
    "UsersFileError",
    "WirecatError",
    "WirecatTimeout",
    "translate_os_error",
]


class WirecatError(Exception):
    """Root of every exception wirecat raises on purpose."""


class InvalidEndpoint(WirecatError, ValueError):
    """An endpoint string does not parse; the message names what is wrong."""


class ConfigError(WirecatError, ValueError):
    """A server setting is invalid or settings contradict each other.

    Attributes:
        field: the setting at fault (``ServeConfig`` field name, e.g. ``"workers"``), or
            ``None`` when several settings conflict.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class TLSError(ConfigError):
    """A TLS certificate, key or CA file cannot be loaded, or a pin is malformed."""


class UsersFileError(ConfigError):
    """A users file is unreadable, too large, or malformed (the message says where)."""


class FilesError(WirecatError):
    """A files request was refused or failed.

    Attributes:
        code: the files protocol's error code (``exists``, ``conflict``, ``quota``,
            ``digest_mismatch``...; see ``wirecat.protocols.files.ERROR_CODES``), or
            ``local_exists`` / ``local_io`` for problems on the client's side.
        offset: for ``conflict``, the bytes the store already holds of that upload.
    """

    def __init__(self, code: str, message: str | None = None, *, offset: int | None = None):
        super().__init__(message if message is not None else code)
        self.code = code
        self.offset = offset


class FileStoreError(FilesError):
    """The file store refused an operation (server side)."""


class TransferError(FilesError):
    """A transfer was refused by the server or failed verification (client side)."""


class ConcurrencyError(WirecatError, RuntimeError):
    """Two coroutines used one connection in a way it does not support, e.g. two concurrent
    reads (which would each get a random part of the stream). A bug in the caller."""


class ChatError(WirecatError):
    """A chat command was refused; the member stays connected unless told otherwise.

    Raised by the chat core (server side) and by :class:`wirecat.ChatClient` when the
    server answers a command with an ``error`` reply.

    Attributes:
        code: the stable error code (``nick_taken``, ``not_in_room``, ``auth_failed``...; see
            :class:`~wirecat.protocols.chat.ErrorEvent`).
        reason: the server's one human-readable sentence.
    """

    def __init__(self, code: str, reason: str = "") -> None:
        super().__init__(f"{reason} ({code})" if reason else code)
        self.code = code
        self.reason = reason


class ChatRefused(ChatError):
    """The chat server refused to log us in (nick taken or invalid, token refused...).

    Attributes:
        auth: True when authentication was refused (``code`` starts with ``auth_``).
    """

    @property
    def auth(self) -> bool:
        """True when authentication itself was refused (``auth_required``, ``auth_failed``)."""
        return self.code.startswith("auth_")


class ProtocolError(WirecatError):
    """Bytes on the wire break a protocol's rules."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol forbids (a bug in the caller)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids."""


class InvalidMessage(RemoteProtocolError):
    """Malformed content from the peer: invalid UTF-8, invalid JSON, JSON of the wrong shape."""


class FieldError(InvalidMessage):
    """One field of a JSON object is missing, of the wrong type, or out of its limits.

    Attributes:
        field: the field's name.
        code: the protocol's stable error code for it (``bad_shape``, ``control_chars``).
    """

    def __init__(self, field: str, code: str = "bad_shape", message: str = "") -> None:
        super().__init__(message or f"bad field {field!r}")
        self.field = field
        self.code = code


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
    """An I/O operation failed; ``__cause__`` holds the original ``OSError``.

    Attributes:
        endpoint: the endpoint (or address) concerned, as a string, when known.
    """

    def __init__(self, message: str, *, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class ConnectError(NetworkError):
    """A connection could not be established."""


class ConnectionRefused(ConnectError):
    """Nobody listens at that address (ECONNREFUSED; ENOENT/ECONNREFUSED for Unix sockets)."""


class NameResolutionError(ConnectError):
    """The host name did not resolve (``socket.gaierror``)."""


class ProxyError(ConnectError):
    """A proxy (SOCKS5, HTTP CONNECT) refused the tunnel or broke its protocol.

    Attributes:
        code: the proxy's answer: a SOCKS5 reply code (RFC 1928 6) or an HTTP status;
            ``None`` when it answered nothing usable.
    """

    def __init__(self, message: str, *, endpoint: str | None = None, code: int | None = None):
        super().__init__(message, endpoint=endpoint)
        self.code = code


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
    """The connection is closed; no more data can be sent or received.

    Attributes:
        code: the WebSocket close code (RFC 6455 7.4: 1000 normal, 1001 going away, 1006
            no close frame, 1009 too big...), ``None`` for other transports.
        reason: the WebSocket close reason (``""`` when none was given).
    """

    def __init__(
        self,
        message: str,
        *,
        endpoint: str | None = None,
        code: int | None = None,
        reason: str = "",
    ) -> None:
        super().__init__(message, endpoint=endpoint)
        self.code = code
        self.reason = reason


class ConnectionClosedOK(ConnectionClosed):
    """The peer closed the connection cleanly (end of stream)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection was closed with an error (reset, broken pipe, aborted)."""


class WirecatTimeout(WirecatError, TimeoutError):
    """A deadline passed. Subclasses name the phase.

    Attributes:
        endpoint: the endpoint concerned, as a string, when known.
    """

    def __init__(self, message: str, *, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class ConnectTimeout(WirecatTimeout):
    """Connection establishment did not complete within the connect timeout."""


class HandshakeTimeout(WirecatTimeout):
    """A TLS or protocol handshake did not complete within its deadline."""


class IdleTimeout(WirecatTimeout):
    """Nothing was received for the idle period."""


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
        return NameResolutionError(f"cannot resolve {what}: {_reason(exc)}", endpoint=what)
    if isinstance(exc, TimeoutError):
        return ConnectTimeout(f"timed out connecting to {what}", endpoint=what)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return HandshakeError(
            f"TLS handshake with {what} failed: {exc.verify_message or exc.reason} "
            "(trust its CA, pin its certificate, or turn verification off)",
            endpoint=what,
        )
    if isinstance(exc, ssl.SSLError):
        return HandshakeError(
            f"TLS handshake with {what} failed: {exc.reason or exc}", endpoint=what
        )
    if isinstance(exc, ConnectionAbortedError) and "handshake" in str(exc).lower():
        return HandshakeTimeout(f"TLS handshake with {what} timed out", endpoint=what)
    code = exc.errno
    if phase == "listen":
        if code == errno.EADDRINUSE:
            return AddressInUse(
                f"cannot listen on {what}: address already in use "
                "(another process is bound there; pick another port or stop it)",
                endpoint=what,
            )
        if code in _DENIED:
            return PermissionDenied(
                f"cannot listen on {what}: permission denied "
                "(ports below 1024 need privileges; use a higher port)",
                endpoint=what,
            )
        if code == errno.EADDRNOTAVAIL:
            return ListenError(
                f"cannot listen on {what}: address not available on this host "
                "(use 127.0.0.1, ::1, 0.0.0.0 or [::])",
                endpoint=what,
            )
        return ListenError(f"cannot listen on {what}: {_reason(exc)}", endpoint=what)
    if phase == "connect":
        if code == errno.ENOENT and what.startswith("unix"):
            return ConnectionRefused(
                f"no such socket file: {what} (is a server listening there?)", endpoint=what
            )
        if code in _REFUSED:
            return ConnectionRefused(
                f"connection refused by {what} (is a server listening there?)", endpoint=what
            )
        if code in {errno.ETIMEDOUT}:
            return ConnectTimeout(f"timed out connecting to {what}", endpoint=what)
        if code in {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL}:
            return ConnectError(f"cannot reach {what}: {_reason(exc)}", endpoint=what)
        if code in _DENIED:
            return ConnectError(f"permission denied connecting to {what}", endpoint=what)
        return ConnectError(f"cannot connect to {what}: {_reason(exc)}", endpoint=what)
    if code in _RESET:
        return ConnectionClosedError(f"connection to {what} was reset by the peer", endpoint=what)
    return NetworkError(f"I/O error on {what}: {_reason(exc)}", endpoint=what)
