"""``wirecat relay FROM TO``: a bidirectional bridge between two endpoints (socat's job)."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, NoReturn

import click
from click.core import ParameterSource

from ..app import tls_context, warn_if_no_users
from ..config import SERVE_LIMITS, TLSConfig
from ..endpoints import Endpoint, parse_endpoint
from ..errors import ConfigError, InvalidEndpoint, WirecatError
from ..runtime.limits import AccessList
from ..runtime.logs import configure_logging
from ..runtime.server import run_until_signal
from ..services.relay import RelayStats, Target, relay, relay_pair
from .common import (
    LOOP_OPTION,
    PROXY_OPTION,
    check_proxy,
    die,
    relay_limit_options,
    run_command,
    server_settings,
    tls_connect_kwargs,
    tls_peer_options,
    tls_server_options,
)
from .exits import message_for

__all__ = ["relay_command"]


def _parse(text: str, what: str) -> Endpoint:
    try:
        return parse_endpoint(text, default_host="127.0.0.1")
    except InvalidEndpoint as exc:
        die(f"{what}: {exc}", 64)


@click.command("relay")
@click.argument("from_", metavar="FROM")
@click.argument("to", metavar="TO", required=False)
@click.option(
    "--connect-first",
    is_flag=True,
    help="Dial FROM instead of listening on it; relay the one pair, then exit.",
)
@click.option(
    "--socks-allow",
    multiple=True,
    metavar="CIDR[:PORTS]",
    help="socks5:// or http-proxy:// FROM: destinations the proxy may reach (repeatable), e.g. "
    "10.0.0.0/8:80,443 or [::1/128]:8000-9000. Default: loopback only.",
)
@click.option(
    "--users",
    "users_file",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="socks5:// or http-proxy:// FROM: require a login (password = the user's token).",
)
@click.option(
    "--users-insecure-ok",
    is_flag=True,
    help="Accept a --users FILE that others may read or write (see serve --help).",
)
@PROXY_OPTION
@click.option(
    "--ws-text",
    is_flag=True,
    help="WebSocket sides carry lines as text messages (a \\n ends each; received text "
    "messages get one). Default: bytes as binary messages, boundaries kept.",
)
@click.option(
    "--allow-origin",
    multiple=True,
    metavar="ORIGIN",
    help="ws:// FROM: let pages of ORIGIN (https://app.example, or '*') open the WebSocket, "
    "besides the page's own origin and programs sending no Origin (repeatable). Other "
    "origins get 403: a page elsewhere cannot reach TO through a visitor's browser.",
)
@click.option(
    "--max-sessions",
    type=click.IntRange(1),
    default=1024,
    show_default=True,
    help="Datagram relays: client sessions at once (one socket to TO each).",
)
@click.option(
    "-t",
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Give up connecting to TO after this long.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Processes sharing a tcp/tls/socks5/http-proxy FROM port (SO_REUSEPORT; the port must be "
    "given), each relaying the peers the kernel hands it.",
)
@click.option("-v", "--verbose", count=True, help="Print each relay's bytes and duration.")
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@relay_limit_options
@tls_server_options
@tls_peer_options
@LOOP_OPTION
@click.pass_context
def relay_command(ctx: click.Context, /, **params: Any) -> None:
    """Relay every peer of FROM to TO, both ways, until both directions end.

    FROM is listened on (tcp, tls, unix, unix+seqpacket, ws, wss, udp, unix+dgram); each
    peer gets its own connection to TO (tcp, tls, unix, unix+seqpacket, ws, wss, or
    exec:CMD run per peer; udp/unix+dgram for a datagram FROM, one session per client
    address). EOF in one direction is passed on
    as a half-close to the other; a slow side slows the other (backpressure); every
    limit of `wirecat serve` applies to FROM (--max-conns, --conn-rate, --allow...), and
    --idle-timeout ends a relay quiet in both directions. With --connect-first both
    sides are dialled and the one pair is relayed. FROM `-` relays stdin/stdout.
    Plain tcp/unix pairs are relayed by the kernel (os.splice, no copy through Python);
    --workers N runs N processes on one tcp port.

    \b
    SOCKS5 (RFC 1928/1929): `wirecat relay socks5://HOST:PORT` is a SOCKS server (no TO);
    `wirecat relay http-proxy://HOST:PORT` an HTTP CONNECT proxy (RFC 9110 9.3.6, e.g.
    for curl --proxytunnel --proxy http://HOST:PORT). Both reach only --socks-allow destinations
    (default: loopback), never an open proxy; --users asks for a login (SOCKS5
    username/password, HTTP Proxy-Authorization Basic; the password is the user's token).

    \b
    WebSocket: a ws:// FROM publishes TO to browsers (each message's bytes go to TO, bytes
    from TO come back as binary messages; --ws-text: lines as text messages); a ws:// TO
    is a WebSocket reached from nc. Pages of other origins are refused (403) unless
    --allow-origin names them. Messages and unix+seqpacket packets keep their boundaries
    between two such sides. EOF toward a WebSocket starts its closing handshake (it has
    no half-close); its close is EOF the other way.

    \b
    TLS: a tls:// or wss:// FROM needs --cert/--key or --self-signed (TLS termination); a
    tls:// or wss:// TO is verified like `wirecat connect` (--cafile, --pin, --insecure,
    --servername).

    \b
    Examples:
      wirecat relay tcp://127.0.0.1:9000 tcp://127.0.0.1:7007        # port forward
      wirecat relay tls://[::]:7443 tcp://127.0.0.1:7070 --self-signed  # add TLS
      wirecat relay tcp://127.0.0.1:9000 tls://example.org:443        # remove TLS
      wirecat relay unix:/tmp/app.sock tcp://127.0.0.1:8080 -v
      wirecat relay udp://127.0.0.1:5353 udp://127.0.0.1:53 --max-sessions 100
      wirecat relay tcp://127.0.0.1:9000 exec:'cat'                   # ncat -e
      wirecat relay ws://127.0.0.1:8080/ tcp://127.0.0.1:7007         # TCP to browsers
      wirecat relay ws://127.0.0.1:8080/ 127.0.0.1:7007 --allow-origin http://localhost:3000
      wirecat relay tcp://127.0.0.1:9000 wss://example.org:443/ws     # nc to a WebSocket
      wirecat relay wss://[::]:8443/chat tcp://127.0.0.1:7000 --self-signed --ws-text
      wirecat relay unix+seqpacket:/tmp/app.sock tcp://127.0.0.1:7007
      wirecat relay --workers 2 tcp://127.0.0.1:9000 tcp://127.0.0.1:7007  # 2 processes
      wirecat relay --connect-first tcp://127.0.0.1:7007 tcp://127.0.0.1:9001
      wirecat relay socks5://127.0.0.1:1080                       # a SOCKS5 server
      wirecat relay socks5://127.0.0.1:1080 --socks-allow 10.0.0.0/8:80,443 --users u.toml
      wirecat relay http-proxy://127.0.0.1:3128                   # an HTTP CONNECT proxy
      wirecat relay tcp://127.0.0.1:9000 tcp://10.1.2.3:22 --proxy socks5://127.0.0.1:1080
    """
    given = {
        n
        for n in params
        if ctx.get_parameter_source(n) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    }
    socks_from = params["from_"].startswith(("socks5://", "http-proxy://"))
    if params["to"] is None and not socks_from:
        die("relay needs FROM and TO, e.g. wirecat relay tcp://127.0.0.1:9000 127.0.0.1:7007", 2)
    if socks_from:
        if params["to"] is not None:
            die("a proxy server has no TO: clients name their destination", 2)
        params["to"] = "exec:-"  # unused placeholder
    configure_logging(params["log_format"], max(params["verbose"], 1) if params["verbose"] else 0)
    to_text: str = params["to"]
    to_ep = None if to_text.startswith("exec:") else _parse(to_text, "TO")
    tls_kwargs: dict[str, Any] = {}
    if to_ep is not None:
        tls_kwargs = tls_connect_kwargs(
            to_ep,
            cafile=params["cafile"],
            pin=params["pin"],
            insecure=params["insecure"],
            servername=params["servername"],
            alpn=params["alpn"],
            client_cert=None,
            client_key=None,
        )
    connect_kwargs: dict[str, Any] = {"timeout": params["timeout"], **tls_kwargs}
    if params["proxy"]:
        connect_kwargs["proxy"] = params["proxy"]
    ws_binary = not params["ws_text"]
    if to_ep is not None and to_ep.scheme in ("ws", "wss"):
        connect_kwargs["ws_binary"] = ws_binary
    settings = server_settings(params, given)
    try:
        limits = dataclasses.replace(SERVE_LIMITS, **settings["limits"])
        access = AccessList(settings.get("allow", ()), settings.get("deny", ()))
    except (ConfigError, ValueError) as exc:
        die(str(exc), 64)
    _check_flags(params, to_ep, proxy_from=socks_from)
    if params["from_"] == "-":
        _stdio_relay(to_ep, to_text, connect_kwargs, params)
        return
    if socks_from:
        _socks_main(params, limits, access, ended_printer(params))
        return
    from_ep = _parse(params["from_"], "FROM")

    ended = ended_printer(params)

    async def main() -> int:
        if params["connect_first"]:
            if to_ep is None:
                die("--connect-first needs an endpoint TO, not exec:", 64)
            a_kwargs: dict[str, Any] = {"timeout": params["timeout"]}
            if from_ep.scheme in ("ws", "wss"):
                a_kwargs["ws_binary"] = ws_binary
            stats = await relay_pair(
                from_ep,
                to_ep,
                idle_timeout=limits.idle_timeout,
                a_kwargs=a_kwargs,
                b_kwargs=connect_kwargs,
            )
            ended(stats)
            return 0
        tls_ctx = None
        if from_ep.scheme in ("tls", "wss"):
            tls_ctx, fingerprint = tls_context(TLSConfig(**settings["tls"]))
            if fingerprint:
                click.echo(f"wirecat: self-signed certificate {fingerprint}", err=True)
        elif settings["tls"]:
            die("--cert/--key/--self-signed need a tls:// or wss:// FROM", 64)
        target = Target(endpoint=to_ep, connect_kwargs=connect_kwargs) if to_ep else to_text
        ws_settings = None
        if params["allow_origin"]:
            from ..runtime.websocket import WebSocketSettings

            try:
                ws_settings = WebSocketSettings(allow_origin=params["allow_origin"])
            except ValueError as exc:
                die(f"--allow-origin: {exc}", 64)
        server = relay(
            from_ep,
            target,
            limits=limits,
            access=access,
            tls=tls_ctx,
            idle_timeout=limits.idle_timeout,
            max_sessions=params["max_sessions"],
            on_end=ended,
            reuse_port=params["workers"] > 1,
            ws_text=params["ws_text"],
            websocket=ws_settings,
        )
        await server.start()
        click.echo(f"wirecat: relaying {server.endpoint()} -> {target}", err=True)
        return await run_until_signal(server)

    if params["connect_first"] and params["workers"] > 1:
        die("--workers is for a listening FROM, not --connect-first", 64)
    _run_workers(main, params, from_ep)


def _run_workers(main: Any, params: dict[str, Any], from_ep: Endpoint) -> None:
    """Run ``main()`` here, or in ``--workers`` processes sharing FROM's port."""
    count = params["workers"]
    if count == 1:
        _run(main(), params)
    if from_ep.scheme not in ("tcp", "tls") or not from_ep.port:
        die("--workers needs a tcp, tls, socks5 or http-proxy FROM with a fixed port (not 0)", 64)
    from ..runtime.workers import run_workers

    def worker(index: int) -> int:
        _run(main(), params)  # exits with the worker's code

    sys.exit(run_workers(count, worker, grace=SERVE_LIMITS.shutdown_grace))


def _run(main: Any, params: dict[str, Any]) -> NoReturn:
    """Run ``main`` (errors become one line and an exit code; Ctrl-C exits 130)."""
    verbosity = max(params["verbose"], 1) if params["verbose"] else 0
    run_command(
        main, loop=params["loop_kind"], log_format=params["log_format"], verbosity=verbosity
    )


def _check_flags(params: dict[str, Any], to_ep: Endpoint | None, *, proxy_from: bool) -> None:
    """Refuse (exit 64) a flag that would do nothing with this FROM and TO, and a --proxy
    that does not parse, rather than ignore it or fail on every peer later."""
    from_text: str = params["from_"]
    ws_from = from_text.startswith(("ws://", "wss://"))
    ws_to = to_ep is not None and to_ep.scheme in ("ws", "wss")

    def refuse(flag: str, needs: str) -> None:
        die(f"{flag} needs {needs}", 64)

    if not proxy_from:
        for flag, name in (
            ("--socks-allow", "socks_allow"),
            ("--users", "users_file"),
            ("--users-insecure-ok", "users_insecure_ok"),
        ):
            if params[name]:
                refuse(flag, "a socks5:// or http-proxy:// FROM (a proxy server)")
    if params["allow_origin"] and not ws_from:
        refuse("--allow-origin", "a ws:// or wss:// FROM")
    if params["ws_text"] and not (ws_from or ws_to):
        refuse("--ws-text", "a ws:// or wss:// FROM or TO")
    if proxy_from and params["connect_first"]:
        die("--connect-first dials FROM; a proxy server listens", 64)
    if params["proxy"]:
        if proxy_from:
            die("--proxy is for the connections to TO; a proxy server has no TO", 64)
        check_proxy(to_ep, params["proxy"], schemes=("tcp", "tls", "ws", "wss"))


def ended_printer(params: dict[str, Any]) -> Any:
    def ended(stats: RelayStats) -> None:
        if params["verbose"]:
            why = f" ({stats.reason})" if stats.reason else ""
            click.echo(
                f"wirecat: relay {stats.peer} -> {stats.target}{why}: "
                f"{stats.up} bytes up, {stats.down} bytes down, {stats.duration:.3f} s",
                err=True,
            )

    return ended


def _socks_main(params: dict[str, Any], limits: Any, access: AccessList, ended: Any) -> None:
    from ..services.httpproxy import http_proxy_server
    from ..services.socks import SocksPolicy, socks_server

    scheme, _, rest = params["from_"].partition("://")
    ep = _parse("tcp://" + rest, "FROM")
    make, what = (
        (http_proxy_server, "HTTP CONNECT proxy")
        if scheme == "http-proxy"
        else (socks_server, "SOCKS5 server")
    )
    try:
        policy = SocksPolicy(params["socks_allow"]) if params["socks_allow"] else SocksPolicy()
    except ValueError as exc:
        die(f"--socks-allow: {exc}", 64)
    users = None
    if params["users_file"]:
        from ..auth import Users

        try:
            users = Users.load(params["users_file"], insecure_ok=params["users_insecure_ok"])
        except WirecatError as exc:
            die(message_for(exc), 78)
        warn_if_no_users(params["users_file"], users, where=f"the {what}")

    async def main() -> int:
        server = make(
            ep,
            policy=policy,
            users=users,
            limits=limits,
            access=access,
            idle_timeout=limits.idle_timeout,
            connect_timeout=params["timeout"],
            on_end=ended,
            reuse_port=params["workers"] > 1,
        )
        await server.start()
        bound = server.endpoint()
        click.echo(f"wirecat: {what} on {scheme}://{str(bound)[6:]}", err=True)
        if not ep.is_loopback and not params["socks_allow"]:
            click.echo("wirecat: destinations: loopback only (widen with --socks-allow)", err=True)
        return await run_until_signal(server)

    _run_workers(main, params, ep)


def _stdio_relay(
    to_ep: Endpoint | None, to_text: str, connect_kwargs: dict[str, Any], params: dict[str, Any]
) -> None:
    from .connect import _connect_main

    if to_ep is None:
        die("relay - needs an endpoint TO, not exec:", 64)
    tls = {k: v for k, v in connect_kwargs.items() if k != "timeout"}
    run_command(
        _connect_main(
            to_ep,
            timeout=connect_kwargs["timeout"],
            half_close=True,
            wait=None,
            crlf=False,
            verbose=bool(params["verbose"]),
            tls=tls,
        ),
        loop=params["loop_kind"],
    )
