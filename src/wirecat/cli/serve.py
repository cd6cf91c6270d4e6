"""``wirecat serve``: the multi-service server (greeting, echo, chat, web page, files).

Thin: the flags (and a ``--config`` TOML file under them) become one
:class:`~wirecat.config.ServeConfig`; :func:`wirecat.app.run` does the rest. Here live only
what a person sees: the table of listeners, warnings, and errors as one line + exit code.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from click.core import ParameterSource
from rich.console import Console
from rich.table import Table

from ..app import Server, run
from ..config import SERVE_LIMITS, ServeConfig
from ..endpoints import Endpoint
from ..errors import ConfigError, WirecatError
from ..escape import for_terminal
from .common import (
    ENDPOINT,
    LOOP_OPTION,
    die,
    limit_options,
    none_if_zero,
    server_settings,
    tls_server_options,
)
from .exits import exit_code_for, message_for

__all__ = ["config_from_flags", "serve_command"]

_D = ServeConfig()
_L = SERVE_LIMITS

#: What to type, by the config field a ConfigError names (the library never names flags).
_FLAG_HINTS: dict[str, str] = {
    "tls": "--cert/--key or --self-signed go with a tls:// endpoint",
    "guests": "--guests needs --users FILE",
    "workers": "--workers",
    "hub": "--hub redis://host:port/db",
    "files_root": "--files-create creates it",
}


def _hint(name: str, ep: Endpoint) -> str:
    """A command that talks to ``ep`` as printed (Debian's nc wants IPv6 without brackets)."""
    if ep.is_unix:
        return f"nc -U {ep.path}" if ep.scheme == "unix" else f"wirecat connect {ep}"
    if ep.scheme == "udp":
        return f"wirecat connect {ep}"
    if name == "files":
        return f"wirecat ls {ep}"
    host = ep.host or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    if name == "web":
        return f"open {_page_url(ep)} in a browser"
    if ep.scheme in ("ws", "wss"):
        return f"wirecat connect {ep.scheme}://{_url_host(host)}:{ep.port}{ep.path or '/'}"
    if name == "metrics":
        url_host = f"[{host}]" if ":" in host else host
        scheme = "https" if ep.scheme == "tls" else "http"
        return f"curl {'-k ' if ep.scheme == 'tls' else ''}{scheme}://{url_host}:{ep.port}/metrics"
    if ep.scheme == "tls":
        return f"ncat --ssl {host} {ep.port}"
    return f"nc {host} {ep.port}"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _page_url(ep: Endpoint) -> str:
    """The address of the chat page served on ``ep`` (a web listener)."""
    if ep.is_unix:
        return f"http+unix:{ep.path}"
    host = ep.host or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    scheme = "https" if ep.scheme in ("tls", "wss") else "http"
    return f"{scheme}://{_url_host(host)}:{ep.port}/"


def _print_table(server: Server, console: Console) -> None:
    table = Table(title="wirecat serve", title_justify="left", show_edge=False)
    table.add_column("service", style="bold cyan")
    table.add_column("listening on")
    table.add_column("try it with", style="dim")
    for name, ep in server.bound:
        table.add_row(name, for_terminal(str(ep)), for_terminal(_hint(name, ep)))
    console.print(table)
    for name, ep in server.bound:
        if name == "web":
            console.print(f"chat page: {_page_url(ep)}", soft_wrap=True)
    console.print("[dim]Ctrl-C drains and stops (twice forces).[/dim]")


def _warn_exposed(server: Server, console: Console, authenticated: bool) -> None:
    exposed = [
        str(ep) for _, ep in server.bound if not ep.is_loopback and ep.scheme not in ("tls", "wss")
    ]
    if exposed and authenticated:
        console.print(
            "[bold yellow]warning:[/] listening beyond loopback without TLS: "
            + ", ".join(exposed)
            + " — tokens and messages cross the network in clear text (use tls://)."
        )
    elif exposed:
        console.print(
            "[bold yellow]warning:[/] listening beyond loopback without TLS or authentication: "
            + ", ".join(exposed)
            + " — anyone who can reach this host can connect."
        )


#: Flag (click parameter name) -> (config key, table or None, converter).
_FLAGS: dict[str, tuple[str, str | None, Any]] = {
    "files_dir": ("files_root", None, None),
    "files_readonly": ("files_readonly", None, None),
    "files_create": ("files_create", None, None),
    "max_file_size": ("max_file_size", None, None),
    "quota": ("quota", None, None),
    "files_header_timeout": ("files_header_timeout", None, None),
    "line_timeout": ("line_timeout", "limits", none_if_zero),
    "files_min_rate": ("files_min_rate", None, none_if_zero),
    "files_rate_window": ("files_rate_window", None, None),
    "files_transfer_threads": ("files_transfer_threads", None, None),
    "files_part_expiry": ("files_part_expiry", None, none_if_zero),
    "banner": ("banner", None, None),
    "history": ("history", None, None),
    "chat_rate": ("chat_rate", None, none_if_zero),
    "chat_burst": ("chat_burst", None, None),
    "chat_rooms": ("chat_rooms", None, None),
    "chat_rooms_per_source": ("chat_rooms_per_source", None, None),
    "udp_rate": ("udp_rate", None, none_if_zero),
    "users_file": ("users", None, None),
    "users_insecure_ok": ("users_insecure_ok", None, None),
    "guests": ("guests", None, None),
    "auth_failures": ("auth_failures", None, None),
    "auth_failure_rate": ("auth_failure_rate", None, None),
    "workers": ("workers", None, None),
    "hub": ("hub", None, None),
    "hub_timeout": ("hub_timeout", None, None),
    "hub_presence_ttl": ("hub_presence_ttl", None, None),
    "proxy_protocol": ("proxy_protocol", None, None),
    "log_format": ("log_format", None, None),
    "verbose": ("verbosity", None, None),
    "loop_kind": ("loop", None, None),
}


#: WebSocket flag -> WebSocketSettings field.
_WS_FLAGS = {
    "ws_compression": "compression",
    "ws_max_message": "max_message",
    "ws_ping_interval": "ping_interval",
    "ws_ping_timeout": "ping_timeout",
    "ws_close_timeout": "close_timeout",
}


def config_from_flags(params: dict[str, Any], given: set[str]) -> ServeConfig:
    """Build the :class:`ServeConfig` of ``wirecat serve``: the ``--config`` file (if any),
    then every flag in ``given`` (those typed on the command line) over it.

    Raises:
        ConfigError: contradictory flags, or an invalid file or value.
    """
    data: dict[str, Any] = {"tls": {}, "limits": {}, "websocket": {}}
    for service in ("greeting", "echo", "chat", "web"):
        eps, off = params[f"{service}_eps"], params[f"no_{service}"]
        if eps and off:
            raise ConfigError(
                f"--no-{service} and --{service} contradict each other: keep one", field=service
            )
        if off:
            data[service] = []
        elif eps:
            data[service] = list(eps)
    if params["files_eps"]:
        data["files"] = list(params["files_eps"])
    if params["allow_origin"]:
        data["websocket"]["allow_origin"] = list(params["allow_origin"])
    for flag, key in _WS_FLAGS.items():
        if flag in given:
            data["websocket"][key] = params[flag]
    if params["metrics_eps"]:
        data["metrics"] = list(params["metrics_eps"])
    if params["proxy_from"]:
        data["proxy_from"] = list(params["proxy_from"])
    for flag, (key, table, convert) in _FLAGS.items():
        if flag not in given:
            continue
        value = params[flag]
        value = convert(value) if convert is not None else value
        if table is None:
            data[key] = value
        else:
            data[table][key] = value
    for key, value in server_settings(params, given).items():
        if isinstance(value, dict):
            data[key].update(value)
        else:
            data[key] = value
    if params["load_test"]:
        data["limits"].setdefault("max_conns_per_source", None)
        data["limits"].setdefault("conn_rate", None)
        data.setdefault("chat_rate", None)
    base = ServeConfig()
    if params["config_file"]:
        base = ServeConfig.from_toml(params["config_file"])
    data = {k: v for k, v in data.items() if v != {}}
    config = ServeConfig.from_mapping(data, base=base)
    if params["files_eps"] and config.files_root is None:
        raise ConfigError("--files-endpoint needs --files DIR", field="files")
    return config


@click.command("serve")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="Read settings from a TOML file (see README); flags given here override it.",
)
@click.option(
    "--load-test",
    is_flag=True,
    help="Lift the per-source connection cap and rate and the chat message rate, so that "
    "one load generator (wirecat bench) can open many connections. Not for the open "
    "internet.",
)
@click.option(
    "--json",
    "json_ready",
    is_flag=True,
    help="Print one JSON object when listening (endpoints with real ports, certificate "
    "fingerprint) instead of the table: for scripts and tests.",
)
@click.option(
    "--metrics",
    "metrics_eps",
    type=ENDPOINT,
    multiple=True,
    metavar="ENDPOINT",
    help="Serve Prometheus metrics (GET /metrics) here, e.g. tcp://127.0.0.1:9107 (off "
    "unless given; keep it private). With --workers N, worker i serves its own on port+i.",
)
@click.option(
    "--proxy-protocol",
    is_flag=True,
    help="Behind a load balancer: read a PROXY protocol header (v1/v2) first on every "
    "stream listener; its client address drives limits, access lists and logs.",
)
@click.option(
    "--proxy-from",
    multiple=True,
    metavar="CIDR",
    help="With --proxy-protocol: the balancers allowed to send the header (repeatable); "
    "a connection from anywhere else is refused before any byte.",
)
@click.option(
    "--greeting",
    "greeting_eps",
    type=ENDPOINT,
    multiple=True,
    metavar="ENDPOINT",
    help="Greeting listener (repeatable). Default tcp://127.0.0.1:7000.",
)
@click.option(
    "--echo",
    "echo_eps",
    type=ENDPOINT,
    multiple=True,
    metavar="ENDPOINT",
    help="Echo listener: stream, datagram or ws:// (repeatable). Default tcp and udp "
    "127.0.0.1:7007.",
)
@click.option(
    "--chat",
    "chat_eps",
    type=ENDPOINT,
    multiple=True,
    metavar="ENDPOINT",
    help="Chat listener (repeatable). Default tcp://127.0.0.1:7070.",
)
@click.option(
    "--web",
    "web_eps",
    type=ENDPOINT,
    multiple=True,
    metavar="ENDPOINT",
    help="Web listener: the chat page, /healthz and the chat WebSocket at /chat "
    "(repeatable; tcp:// is http, tls:// is https). Default tcp://127.0.0.1:7080 when chat "
    "runs on its default endpoint.",
)
@click.option("--no-web", is_flag=True, help="Do not serve the web page and WebSocket chat.")
@click.option(
    "--allow-origin",
    multiple=True,
    metavar="ORIGIN",
    help="Let pages of ORIGIN (https://example.com) open the chat WebSocket, besides the "
    "page's own origin and programs sending no Origin (repeatable).",
)
@click.option(
    "--ws-compression",
    is_flag=True,
    help="Negotiate permessage-deflate with WebSocket clients that offer it (off: "
    "compression and secrets mix badly). Inflated messages stay bounded by "
    "--ws-max-message.",
)
@click.option(
    "--ws-max-message",
    type=click.IntRange(min=1),
    default=64 * 1024,
    show_default=True,
    metavar="BYTES",
    help="Largest WebSocket message accepted (after decompression); over it: close 1009.",
)
@click.option(
    "--ws-ping-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=20.0,
    show_default=True,
    metavar="SECONDS",
    help="Ping WebSocket clients this often.",
)
@click.option(
    "--ws-ping-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=20.0,
    show_default=True,
    metavar="SECONDS",
    help="Close a WebSocket (1011) whose pong is this late.",
)
@click.option(
    "--ws-close-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest wait for a WebSocket peer's close frame before the TCP connection is cut.",
)
@click.option(
    "--files",
    "files_dir",
    type=click.Path(file_okay=False),
    default=None,
    metavar="DIR",
    help="Serve DIR as the file store (off unless given; DIR must exist).",
)
@click.option(
    "--files-create",
    is_flag=True,
    help="Create the --files DIR if it does not exist (else a missing DIR is refused).",
)
@click.option(
    "--files-endpoint",
    "files_eps",
    type=ENDPOINT,
    multiple=True,
    metavar="ENDPOINT",
    help="Files listener (repeatable). Default tcp://127.0.0.1:7071.",
)
@click.option("--files-readonly", is_flag=True, help="Refuse uploads to the file store.")
@click.option(
    "--max-file-size",
    type=click.IntRange(min=1),
    default=None,
    metavar="BYTES",
    help="Largest upload accepted (bytes).",
)
@click.option(
    "--quota",
    type=click.IntRange(min=1),
    default=None,
    metavar="BYTES",
    help="Total size the file store may hold (bytes).",
)
@click.option(
    "--files-header-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=_D.files_header_timeout,
    show_default=True,
    metavar="SECONDS",
    help="Longest time from a files request header's first byte to its end.",
)
@click.option(
    "--files-min-rate",
    type=click.IntRange(min=0),
    default=_D.files_min_rate,
    show_default=True,
    metavar="BYTES_PER_SECOND",
    help="Slowest upload accepted, averaged over --files-rate-window; a slower one is cut "
    "and its quota reservation freed, its part kept (0: no minimum).",
)
@click.option(
    "--files-rate-window",
    type=click.FloatRange(min=0, min_open=True),
    default=_D.files_rate_window,
    show_default=True,
    metavar="SECONDS",
    help="Window over which --files-min-rate is averaged (the first is a grace period).",
)
@click.option(
    "--files-transfer-threads",
    type=click.IntRange(min=0),
    default=_D.files_transfer_threads,
    show_default=True,
    metavar="COUNT",
    help="File transfers on threads of their own at once (sendfile); more run on the event loop.",
)
@click.option(
    "--files-part-expiry",
    type=click.FloatRange(min=0),
    default=_D.files_part_expiry,
    show_default=True,
    metavar="SECONDS",
    help="Delete part files of abandoned uploads not written for this long (0: never); "
    "they count against --quota until then.",
)
@click.option("--no-greeting", is_flag=True, help="Do not run the greeting service.")
@click.option("--no-echo", is_flag=True, help="Do not run the echo service.")
@click.option("--no-chat", is_flag=True, help="Do not run the chat service.")
@click.option("--banner", default=_D.banner, show_default=True, help="The greeting line.")
@click.option(
    "--history",
    type=click.IntRange(0, 10000),
    default=_D.history,
    show_default=True,
    help="Chat messages kept per room and replayed on join.",
)
@click.option(
    "--chat-rate",
    type=click.FloatRange(min=0),
    default=_D.chat_rate,
    show_default=True,
    metavar="PER_SECOND",
    help="Chat messages per second per member before 'rate_limited' (0: no limit).",
)
@click.option(
    "--chat-rooms",
    type=click.IntRange(min=1),
    default=_D.chat_rooms,
    show_default=True,
    help="Chat rooms that may exist at once.",
)
@click.option(
    "--chat-rooms-per-source",
    type=click.IntRange(min=1),
    default=_D.chat_rooms_per_source,
    show_default=True,
    help="Chat rooms created from one source IP that may exist at once.",
)
@click.option(
    "--chat-burst",
    type=click.IntRange(min=1),
    default=_D.chat_burst,
    show_default=True,
    help="Chat messages a member may send at once after a quiet period.",
)
@click.option(
    "--users",
    "users_file",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="TOML users file (make one with 'wirecat users add'): chat and files then need a "
    "user's token; user names are reserved nicks, admins may /kick and /close.",
)
@click.option(
    "--users-insecure-ok",
    is_flag=True,
    help="Accept a --users FILE that others may read or write, another user owns, or that "
    "is a symbolic link (refused by default, like OpenSSH's StrictModes; fix: chmod 600 FILE).",
)
@click.option(
    "--auth-failures",
    type=click.IntRange(min=1),
    default=_D.auth_failures,
    show_default=True,
    help="Failed logins (chat, files) allowed per source IP before it is refused unchecked.",
)
@click.option(
    "--auth-failure-rate",
    type=click.FloatRange(min=0.001),
    default=_D.auth_failure_rate,
    show_default=True,
    metavar="PER_SECOND",
    help="How fast a source earns failed logins back.",
)
@click.option(
    "--guests",
    is_flag=True,
    help="With --users: also let chat members in without a token, under other nicks.",
)
@click.option(
    "--udp-rate",
    type=click.FloatRange(min=0),
    default=_D.udp_rate,
    show_default=True,
    metavar="PER_SECOND",
    help="UDP datagrams answered per second per source IP (0: no limit).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines as text or one JSON object each.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Processes sharing the tcp/udp ports (SO_REUSEPORT); unix listeners stay in the "
    "first, and chat too unless --hub shares its rooms.",
)
@click.option(
    "--hub",
    metavar="URL",
    default=None,
    help="Keep chat rooms in Redis (redis://host:6379/0, rediss://..., unix:/path): every "
    "worker and every wirecat serve on it share rooms. Password: $WIRECAT_REDIS_PASSWORD "
    "or the URL.",
)
@click.option(
    "--hub-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=_D.hub_timeout,
    show_default=True,
    metavar="SECONDS",
    help="With --hub: how long a call to Redis may take; past it the chat command gets "
    "'hub_unavailable' and the hub reconnects.",
)
@click.option(
    "--hub-presence-ttl",
    type=click.FloatRange(min=0, min_open=True),
    default=_D.hub_presence_ttl,
    show_default=True,
    metavar="SECONDS",
    help="With --hub: how long the members and nicks of a wirecat serve that died stay "
    "in Redis (a live one renews them).",
)
@click.option(
    "--line-timeout",
    type=click.FloatRange(min=0),
    default=_L.line_timeout,
    show_default=True,
    metavar="SECONDS",
    help="Longest time from a line's first byte to its newline in chat and echo (on "
    "WebSockets: from a frame's or message's first byte to its end), against peers that "
    "dribble a byte at a time (0: none).",
)
@limit_options
@tls_server_options
@click.option("-v", "--verbose", count=True, help="More logs (-v info, -vv debug).")
@click.option("-q", "--quiet", is_flag=True, help="Do not print the table of listeners.")
@LOOP_OPTION
@click.pass_context
def serve_command(ctx: click.Context, /, **params: Any) -> None:
    """Run wirecat's services: greeting, echo (TCP+UDP), chat with its web page, and
    optionally files.

    Everything binds loopback unless told otherwise. Each service takes any number of
    endpoints; --no-SERVICE turns one off. Settings can come from a TOML file (--config);
    flags given on the command line override it.

    \b
    Examples:
      wirecat serve
      wirecat serve --no-chat --echo tcp://[::]:7007 --echo udp://[::]:7007
      wirecat serve --chat tcp://127.0.0.1:7070 --chat unix:/tmp/chat.sock
      wirecat serve --files ./shared --files-readonly
      wirecat serve --chat tls://127.0.0.1:7443 --self-signed
      wirecat serve --web tcp://[::]:8080 --allow-origin https://chat.example.com
      wirecat serve --echo ws://127.0.0.1:7009   # WebSocket echo
      wirecat serve --chat tls://[::]:7443 --cert site.pem --key site.key --users users.toml
      wirecat serve --config wirecat.toml --workers 2
      wirecat serve --hub redis://127.0.0.1:6379/0 --workers 2   # chat in every worker
      wirecat serve --load-test            # then: wirecat bench 127.0.0.1:7007 -c 100
      wirecat serve --log-format json -v

    \b
    Then, in another terminal:
      nc 127.0.0.1 7000                      # banner
      nc 127.0.0.1 7007                      # echo
      nc 127.0.0.1 7070                      # chat (pick a nick, talk in #lobby)
      http://127.0.0.1:7080/                 # the same chat in a browser
      wirecat connect udp://127.0.0.1:7007   # UDP echo
    """
    given = {
        name
        for name in params
        if ctx.get_parameter_source(name)
        in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    }
    try:
        config = config_from_flags(params, given)
    except ConfigError as exc:
        hint = _FLAG_HINTS.get(exc.field or "")
        die(f"{message_for(exc)}" + (f" ({hint})" if hint and hint not in str(exc) else ""), 64)
    console = Console(stderr=False, highlight=False)
    quiet, json_ready = params["quiet"], params["json_ready"]

    def on_ready(server: Server) -> None:
        if json_ready:
            ready = {
                "ready": True,
                "endpoints": {k: [str(e) for e in v] for k, v in server.endpoints.items()},
                "fingerprint": server.fingerprint,
                "workers": config.workers,
            }
            print(json.dumps(ready), flush=True)
            return
        if not quiet:
            _print_table(server, console)
            if config.workers > 1:
                console.print(f"{config.workers} worker processes share the inet listeners")
        if server.fingerprint:
            fp = server.fingerprint
            console.print(f"self-signed certificate {fp}", soft_wrap=True)
            console.print(f"  clients: wirecat connect ... --pin {fp}", soft_wrap=True)
        _warn_exposed(server, console, server.users is not None)
        sys.stdout.flush()

    def on_worker_error(exc: WirecatError) -> int:
        click.echo(f"wirecat: {message_for(exc)}", err=True)
        return exit_code_for(exc)

    try:
        code = run(config, on_ready=on_ready, on_worker_error=on_worker_error)
    except WirecatError as exc:
        hint = _FLAG_HINTS.get(getattr(exc, "field", None) or "")
        die(message_for(exc) + (f" ({hint})" if hint else ""), exit_code_for(exc))
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code)
