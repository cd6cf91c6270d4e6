"""What every verb shares: option types, running a coroutine, errors to exit codes."""

from __future__ import annotations

import os
import sys
from collections.abc import Coroutine
from typing import Any, NoReturn

import click

from ..config import SERVE_LIMITS, ServeConfig
from ..endpoints import Endpoint, parse_endpoint
from ..errors import InvalidEndpoint, WirecatError
from ..protocols import MAX_TOKEN
from ..runtime.logs import configure_logging
from ..runtime.loop import LoopKind, run
from .exits import exit_code_for, message_for

__all__ = [
    "ENDPOINT",
    "EXIT_INTERRUPTED",
    "LOOP_OPTION",
    "PROXY_OPTION",
    "check_proxy",
    "die",
    "limit_options",
    "read_token",
    "relay_limit_options",
    "run_command",
    "tls_client_options",
    "tls_connect_kwargs",
    "tls_server_options",
    "token_options",
]

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class BadEndpoint(click.BadParameter):
    """A bad endpoint on the command line: exit 64 like every other invalid endpoint."""

    exit_code = 64


class EndpointType(click.ParamType):  # type: ignore[type-arg]  # generic since click 8.3
    """A click parameter parsed with :func:`parse_endpoint` (bad input -> usage error)."""

    name = "endpoint"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Endpoint:
        if isinstance(value, Endpoint):
            return value
        try:
            return parse_endpoint(str(value), default_host="127.0.0.1")
        except InvalidEndpoint as exc:
            raise BadEndpoint(str(exc), ctx, param) from None


ENDPOINT = EndpointType()

PROXY_OPTION = click.option(
    "--proxy",
    default=None,
    metavar="URL",
    help="Go through a proxy: socks5://[user:pass@]host:port or http://host:port (HTTP "
    "CONNECT); tcp, tls, ws and wss endpoints. The proxy resolves host names.",
)


def check_proxy(
    endpoint: Endpoint | None, proxy: str, *, schemes: tuple[str, ...] = ("tcp", "tls")
) -> None:
    """Exit 64 (one line) unless ``--proxy proxy`` parses and can tunnel ``endpoint``
    (``None``: an ``exec:`` target) for this verb, whose endpoints of ``schemes`` it may
    tunnel."""
    from ..runtime.proxy import parse_proxy

    if endpoint is None or endpoint.scheme not in schemes:
        kinds = [f"{s}://" for s in schemes]
        listed = ", ".join(kinds[:-1]) + " and " + kinds[-1] if len(kinds) > 1 else kinds[0]
        die(f"--proxy tunnels {listed} endpoints, not {endpoint or 'exec:'}", 64)
    try:
        parse_proxy(proxy)
    except InvalidEndpoint as exc:
        die(f"--proxy: {exc}", 64)


LOOP_OPTION = click.option(
    "--loop",
    "loop_kind",
    type=click.Choice(["auto", "asyncio", "uvloop"]),
    default="auto",
    show_default=True,
    help="Event loop: auto picks uvloop when installed.",
)


def die(message: str, code: int = 1) -> NoReturn:
    """Print ``wirecat: message`` on stderr and exit with ``code``."""
    click.echo(f"wirecat: {message}", err=True)
    sys.exit(code)


#: The environment variable a client reads its token from (never a command-line argument).
TOKEN_ENV = "WIRECAT_TOKEN"

token_options = click.option(
    "--token-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help=f"Read your token (serve --users) from this file's first line; default ${TOKEN_ENV}.",
)


def read_token(token_file: str | None) -> str | None:
    """The client's token: the first line of ``token_file``, else ``$WIRECAT_TOKEN``, else None.

    Tokens are never taken from the command line (other users see it in ``ps``).
    Exits 64 on an unreadable file or a token that is empty or over MAX_TOKEN bytes.
    """
    if token_file is not None:
        try:
            with open(token_file, "rb") as fh:
                raw = fh.readline(MAX_TOKEN + 2).rstrip(b"\r\n")
        except OSError as exc:
            die(f"cannot read {token_file}: {exc.strerror}", 66)
        where = token_file
    elif TOKEN_ENV in os.environ:
        raw, where = os.environ[TOKEN_ENV].strip().encode(), f"${TOKEN_ENV}"
    else:
        return None
    if not 0 < len(raw) <= MAX_TOKEN:
        die(f"the token in {where} must be 1-{MAX_TOKEN} bytes", 64)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        die(f"the token in {where} is not UTF-8", 64)


def run_command(
    main: Coroutine[Any, Any, int | None],
    *,
    loop: LoopKind = "auto",
    log_format: str = "text",
    verbosity: int = 0,
) -> NoReturn:
    """Run a verb's coroutine; map its outcome to an exit code and exit.

    ``WirecatError`` becomes one line on stderr and :func:`exit_code_for`; Ctrl-C exits
    130 quietly; a broken stdout pipe exits 0 quietly (like ``cat``). No traceback.
    """
    configure_logging("json" if log_format == "json" else "text", verbosity)
    try:
        code = run(main, loop=loop)
    except WirecatError as exc:  # a verb's own errors may carry their exit code
        die(message_for(exc), exit_code_for(exc))
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        sys.exit(0)
    except ValueError as exc:  # e.g. uvloop requested but missing
        die(str(exc), 64)
    sys.exit(code or 0)


def tls_peer_options(f: Any) -> Any:
    """The TLS client flags without ``--cert``/``--key`` (for verbs whose ``--cert`` is the
    server's own, e.g. ``relay``)."""
    return tls_client_options(f, client_cert=False)


def tls_client_options(f: Any, *, client_cert: bool = True) -> Any:
    """Add the TLS client flags (for ``tls://`` endpoints) to a verb; ``client_cert=False``
    leaves out ``--cert``/``--key``."""
    options = [
        click.option(
            "--cafile",
            type=click.Path(dir_okay=False, exists=True),
            default=None,
            help="tls: trust these PEM CAs instead of the system store.",
        ),
        click.option(
            "--pin",
            default=None,
            metavar="sha256:HEX",
            help="tls: accept only this certificate (works with self-signed servers).",
        ),
        click.option(
            "--insecure",
            is_flag=True,
            help="tls: do not verify the server at all (prints a warning).",
        ),
        click.option(
            "--servername",
            default=None,
            metavar="NAME",
            help="tls: name to send (SNI) and verify; default the endpoint's host.",
        ),
        click.option(
            "--alpn",
            multiple=True,
            metavar="PROTO",
            help="tls: ALPN protocol to offer (repeatable).",
        ),
        click.option(
            "--cert",
            "client_cert",
            type=click.Path(dir_okay=False, exists=True),
            default=None,
            help="tls: client certificate (PEM) for mTLS.",
        ),
        click.option(
            "--key",
            "client_key",
            type=click.Path(dir_okay=False, exists=True),
            default=None,
            help="tls: private key for --cert.",
        ),
    ]
    if not client_cert:
        options = options[:-2]
    for option in reversed(options):
        f = option(f)
    return f


def tls_connect_kwargs(
    endpoint: Endpoint,
    *,
    cafile: str | None,
    pin: str | None,
    insecure: bool,
    servername: str | None,
    alpn: tuple[str, ...],
    client_cert: str | None,
    client_key: str | None,
) -> dict[str, Any]:
    """Turn the TLS client flags into keyword arguments for :func:`wirecat.connect`.

    Exits 64 when TLS flags are given for a non-TLS endpoint or a pin is malformed, and 78
    when a file cannot be loaded.
    """
    from ..runtime.tls import TLSError, client_context, parse_pin

    given = cafile or pin or insecure or servername or alpn or client_cert
    if endpoint.scheme not in ("tls", "wss"):
        if given:
            die(f"TLS options need a tls:// or wss:// endpoint, not {endpoint}", 64)
        return {}
    try:
        if pin:
            parse_pin(pin)
        if insecure:
            click.echo(
                "wirecat: warning: --insecure: the server's identity is NOT verified; "
                "anyone on the path can read and change this connection",
                err=True,
            )
        ctx = client_context(
            cafile=cafile,
            insecure=insecure,
            pinned=pin is not None,
            cert=client_cert,
            key=client_key,
            alpn=alpn,
        )
    except TLSError as exc:
        die(str(exc), 64 if "pin" in str(exc) else 78)
    return {"ssl": ctx, "pin": pin, "server_hostname": servername}


def _apply(options: list[Any], f: Any) -> Any:
    for option in reversed(options):
        f = option(f)
    return f


_D = ServeConfig()
_L = SERVE_LIMITS

#: The server limit flags (connection caps, rates, deadlines, sizes, access lists), shared
#: by every verb that accepts peers; ``limits_from_flags`` turns them into settings.
_LIMIT_OPTIONS: list[Any] = [
    click.option(
        "--max-line",
        type=click.IntRange(min=64),
        default=_L.max_line,
        show_default=True,
        metavar="BYTES",
        help="Longest line accepted by text services.",
    ),
    click.option(
        "--idle-timeout",
        type=click.FloatRange(min=0),
        default=_L.idle_timeout,
        show_default=True,
        metavar="SECONDS",
        help="Close connections idle this long (0: never).",
    ),
    click.option(
        "--max-conns",
        type=click.IntRange(min=1),
        default=_L.max_conns,
        show_default=True,
        help="Connections open at once, across services.",
    ),
    click.option(
        "--max-conns-per-source",
        type=click.IntRange(min=0),
        default=_L.max_conns_per_source,
        show_default=True,
        help="Connections open at once from one IP (0: no cap).",
    ),
    click.option(
        "--conn-rate",
        type=click.FloatRange(min=0),
        default=_L.conn_rate,
        show_default=True,
        metavar="PER_SECOND",
        help="New connections per second from one IP (0: no limit).",
    ),
    click.option(
        "--conn-burst",
        type=click.IntRange(min=1),
        default=_L.conn_burst,
        show_default=True,
        help="Connections one IP may open in a burst before --conn-rate applies.",
    ),
    click.option(
        "--login-timeout",
        type=click.FloatRange(min=0),
        default=_L.login_timeout,
        show_default=True,
        metavar="SECONDS",
        help="Absolute deadline to finish logging in (chat: first line) (0: none).",
    ),
    click.option(
        "--allow",
        "allow_rules",
        multiple=True,
        metavar="CIDR",
        help="Only accept peers in this network (repeatable), e.g. 10.0.0.0/8.",
    ),
    click.option(
        "--deny",
        "deny_rules",
        multiple=True,
        metavar="CIDR",
        help="Refuse peers in this network (repeatable); checked before any byte is read.",
    ),
    click.option(
        "--allow-file",
        type=click.Path(dir_okay=False, exists=True),
        multiple=True,
        help="Read --allow rules from a file (one CIDR per line, # comments).",
    ),
    click.option(
        "--deny-file",
        type=click.Path(dir_okay=False, exists=True),
        multiple=True,
        help="Read --deny rules from a file.",
    ),
    click.option(
        "--max-output",
        type=click.IntRange(min=65536),
        default=_L.max_output,
        show_default=True,
        metavar="BYTES",
        help="Unsent output per client before it is cut as a slow consumer.",
    ),
    click.option(
        "--grace",
        type=click.FloatRange(min=0),
        default=_L.shutdown_grace,
        show_default=True,
        metavar="SECONDS",
        help="How long shutdown waits for peers to finish.",
    ),
]


def _handshake_timeout_option(help: str) -> Any:
    """``--handshake-timeout``, with the help of the verb that takes it."""
    return click.option(
        "--handshake-timeout",
        type=click.FloatRange(min=0.1),
        default=_L.handshake_timeout,
        show_default=True,
        metavar="SECONDS",
        help=help,
    )


_SERVE_HANDSHAKE = _handshake_timeout_option(
    "Absolute deadline of each TLS handshake on TLS listeners."
)
_RELAY_HANDSHAKE = _handshake_timeout_option(
    "Absolute deadline of each TLS handshake on TLS listeners (for socks5:// and "
    "http-proxy:// servers, also the deadline of the client's request)."
)

#: The server certificate flags for ``tls://`` listeners.
_TLS_SERVER_OPTIONS: list[Any] = [
    click.option(
        "--cert",
        type=click.Path(dir_okay=False, exists=True),
        default=None,
        help="PEM certificate chain for tls:// endpoints.",
    ),
    click.option(
        "--key",
        type=click.Path(dir_okay=False, exists=True),
        default=None,
        help="PEM private key for --cert (if not in the same file).",
    ),
    click.option(
        "--self-signed",
        is_flag=True,
        help="Generate a throwaway certificate in memory for tls:// endpoints "
        "(development); its SHA-256 fingerprint is printed for --pin.",
    ),
    click.option(
        "--tls-profile",
        type=click.Choice(["intermediate", "modern"]),
        default="intermediate",
        show_default=True,
        help="intermediate: TLS 1.2+ ECDHE+AEAD; modern: TLS 1.3 only.",
    ),
    click.option(
        "--client-ca",
        type=click.Path(dir_okay=False, exists=True),
        default=None,
        help="Require client certificates signed by these CAs (mTLS).",
    ),
]


def limit_options(f: Any) -> Any:
    """Add the server limit flags (see :data:`_LIMIT_OPTIONS`) and ``--handshake-timeout``
    to ``serve``."""
    return _apply([*_LIMIT_OPTIONS, _SERVE_HANDSHAKE], f)


def relay_limit_options(f: Any) -> Any:
    """:func:`limit_options` for ``relay``: its ``--handshake-timeout`` also bounds the
    request of a ``socks5://`` or ``http-proxy://`` server's client."""
    return _apply([*_LIMIT_OPTIONS, _RELAY_HANDSHAKE], f)


def tls_server_options(f: Any) -> Any:
    """Add the server certificate flags (``--cert``, ``--key``, ``--self-signed``,
    ``--tls-profile``, ``--client-ca``) to a verb."""
    return _apply(_TLS_SERVER_OPTIONS, f)


def none_if_zero(value: Any) -> Any:
    """``0`` on the command line means "off" (``None`` in the config)."""
    return None if value == 0 else value


#: Limit and TLS flags (click parameter names) -> (config key, table, converter).
_SERVER_FLAGS: dict[str, tuple[str, str, Any]] = {
    "max_line": ("max_line", "limits", None),
    "idle_timeout": ("idle_timeout", "limits", none_if_zero),
    "max_conns": ("max_conns", "limits", None),
    "max_conns_per_source": ("max_conns_per_source", "limits", none_if_zero),
    "conn_rate": ("conn_rate", "limits", none_if_zero),
    "conn_burst": ("conn_burst", "limits", None),
    "login_timeout": ("login_timeout", "limits", none_if_zero),
    "max_output": ("max_output", "limits", None),
    "grace": ("shutdown_grace", "limits", None),
    "handshake_timeout": ("handshake_timeout", "limits", None),
    "cert": ("cert", "tls", None),
    "key": ("key", "tls", None),
    "self_signed": ("self_signed", "tls", None),
    "tls_profile": ("profile", "tls", None),
    "client_ca": ("client_ca", "tls", None),
}


def server_settings(params: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """The flags of :func:`limit_options` and :func:`tls_server_options` that were typed
    (``given``), as :class:`~wirecat.config.ServeConfig` data: ``{"limits": {...},
    "tls": {...}, "allow": [...], "deny": [...]}``.

    Raises:
        ConfigError: an ``--allow-file``/``--deny-file`` cannot be read.
    """
    from ..app import load_rules

    out: dict[str, Any] = {"limits": {}, "tls": {}}
    for flag, (key, table, convert) in _SERVER_FLAGS.items():
        if flag in given:
            value = params[flag]
            out[table][key] = convert(value) if convert is not None else value
    for kind in ("allow", "deny"):
        rules = (*params[f"{kind}_rules"], *load_rules(params[f"{kind}_file"]))
        if rules:
            out[kind] = list(rules)
    return out
