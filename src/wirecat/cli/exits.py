"""Exit codes and hints of the ``wirecat`` command: the one place errors meet the shell.

The library raises :class:`~wirecat.errors.WirecatError` subclasses whose messages never name
a command-line flag; here each class gets an exit code (BSD sysexits in spirit, the table in
README.md) and, where a flag would help, a hint naming it.
"""

from __future__ import annotations

from ..errors import (
    AddressInUse,
    ChatRefused,
    ConfigError,
    ConnectionClosedError,
    ConnectionRefused,
    ConnectTimeout,
    HandshakeError,
    HandshakeTimeout,
    InvalidEndpoint,
    ListenError,
    NameResolutionError,
    NetworkError,
    PermissionDenied,
    ProtocolError,
    TLSError,
    UsersFileError,
    WirecatError,
    WirecatTimeout,
)

__all__ = ["EXIT_CODES", "exit_code_for", "message_for"]

#: Exit codes by exception class (most specific first). 0 success, 1 generic error,
#: 2 usage (click's own), 64+ follow BSD sysexits in spirit.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidEndpoint, 64),  # EX_USAGE-like: bad address given
    (TLSError, 78),  # EX_CONFIG: a certificate, key or CA file cannot be used
    (UsersFileError, 78),
    (ConfigError, 64),
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
    (ChatRefused, 1),  # 77 (EX_NOPERM) when authentication was refused: see exit_code_for
    (WirecatError, 1),
)

#: Flags that help, by the library's wording of a problem.
_HINTS: tuple[tuple[type[BaseException], str, str], ...] = (
    (
        UsersFileError,
        "(or accept it with users_insecure_ok)",
        "(or accept it with --users-insecure-ok)",
    ),
    (
        HandshakeError,
        "(trust its CA, pin its certificate, or turn verification off)",
        "(trust its CA with --cafile, pin it with --pin sha256:..., or --insecure)",
    ),
)


def exit_code_for(exc: BaseException) -> int:
    """Return the exit code for ``exc``: its own ``exit_code`` attribute when it has one
    (e.g. 77 for a refused login), else the first match in :data:`EXIT_CODES`, else 1."""
    if isinstance(exc, ChatRefused) and exc.auth:
        return 77  # EX_NOPERM
    if isinstance(exc, ConfigError) and exc.field == "files_root":
        return 78  # EX_CONFIG: a path that cannot be used, like a certificate file
    own = getattr(exc, "exit_code", None)
    if isinstance(own, int) and own:
        return own
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return 1


def message_for(exc: BaseException) -> str:
    """Return the one-line message for ``exc``, with the library's wording of a fix replaced
    by the command-line flags that do it."""
    text = str(exc) or type(exc).__name__
    for cls, library, cli in _HINTS:
        if isinstance(exc, cls) and library in text:
            text = text.replace(library, cli)
    return text
