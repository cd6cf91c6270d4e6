"""``wirecat serve``: the multi-service server (greeting, echo, chat, files)."""

from __future__ import annotations

import ssl
import sys

import click
from rich.console import Console
from rich.table import Table

from ..auth import Users, UsersFileError
from ..endpoints import Endpoint, parse_endpoint
from ..runtime.connection import ServerContext
from ..runtime.limits import AccessList, Limits, read_rules
from ..runtime.loop import LoopKind
from ..runtime.server import Server, Service, run_until_signal
from ..runtime.tls import TLSError, TLSProfile, server_context
from ..runtime.tls import self_signed as make_self_signed
from ..runtime.workers import run_workers
from ..services import DEFAULTS, build_services
from .common import ENDPOINT, LOOP_OPTION, die, run_command

__all__ = ["serve_command"]


def _print_table(server: Server, console: Console) -> None:
    table = Table(title="wirecat serve", title_justify="left", show_edge=False)
    table.add_column("service", style="bold cyan")
    table.add_column("listening on")
    table.add_column("try it with", style="dim")
    for name, ep in server.bound:
        if ep.is_unix:
            hint = f"nc -U {ep.path}" if ep.scheme == "unix" else f"wirecat connect {ep}"
        elif ep.scheme == "udp":
            hint = f"wirecat connect {ep}"
        else:
            host = f"[{ep.host}]" if ep.host and ":" in ep.host else ep.host
            if name == "files":
                hint = f"wirecat ls {ep}"
            elif ep.scheme == "tls":
                hint = f"ncat --ssl {host} {ep.port}"
            else:
                hint = f"nc {host} {ep.port}"
        table.add_row(name, str(ep), hint)
    console.print(table)
    console.print("[dim]Ctrl-C drains and stops (twice forces).[/dim]")


def _warn_exposed(server: Server, console: Console, authenticated: bool) -> None:
    exposed = [str(ep) for _, ep in server.bound if not ep.is_loopback and ep.scheme != "tls"]
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


def _endpoints(given: tuple[Endpoint, ...], disabled: bool, name: str) -> list[Endpoint] | None:
    if disabled:
        return None
    if given:
        return list(given)
    return [parse_endpoint(e) for e in DEFAULTS[name]]


@click.command("serve")
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
    help="Echo listener, stream or datagram (repeatable). Default tcp and udp 127.0.0.1:7007.",
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
    "--files",
    "files_dir",
    type=click.Path(file_okay=False),
    default=None,
    metavar="DIR",
    help="Serve DIR as the file store (off unless given).",
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
@click.option("--no-greeting", is_flag=True, help="Do not run the greeting service.")
@click.option("--no-echo", is_flag=True, help="Do not run the echo service.")
@click.option("--no-chat", is_flag=True, help="Do not run the chat service.")
@click.option(
    "--banner", default="Thank you for connecting", show_default=True, help="The greeting line."
)
@click.option(
    "--history",
    type=click.IntRange(0, 10000),
    default=50,
    show_default=True,
    help="Chat messages kept per room and replayed on join.",
)
@click.option(
    "--max-line",
    type=click.IntRange(min=64),
    default=4096,
    show_default=True,
    metavar="BYTES",
    help="Longest line accepted by text services.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    metavar="SECONDS",
    help="Close connections idle this long (0: never).",
)
@click.option(
    "--max-conns",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Connections open at once, across services.",
)
@click.option(
    "--max-conns-per-source",
    type=click.IntRange(min=0),
    default=64,
    show_default=True,
    help="Connections open at once from one IP (0: no cap).",
)
@click.option(
    "--conn-rate",
    type=click.FloatRange(min=0),
    default=20.0,
    show_default=True,
    metavar="PER_SECOND",
    help="New connections per second from one IP (0: no limit).",
)
@click.option(
    "--conn-burst",
    type=click.IntRange(min=1),
    default=40,
    show_default=True,
    help="Connections one IP may open in a burst before --conn-rate applies.",
)
@click.option(
    "--login-timeout",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Absolute deadline to finish logging in (chat: first line) (0: none).",
)
@click.option(
    "--chat-rate",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    metavar="PER_SECOND",
    help="Chat messages per second per member before 'rate_limited' (0: no limit).",
)
@click.option(
    "--chat-burst",
    type=click.IntRange(min=1),
    default=10,
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
    "--auth-failures",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Failed logins (chat, files) allowed per source IP before it is refused unchecked.",
)
@click.option(
    "--auth-failure-rate",
    type=click.FloatRange(min=0.001),
    default=0.1,
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
    default=1000.0,
    show_default=True,
    metavar="PER_SECOND",
    help="UDP datagrams answered per second per source IP (0: no limit).",
)
@click.option(
    "--allow",
    "allow_rules",
    multiple=True,
    metavar="CIDR",
    help="Only accept peers in this network (repeatable), e.g. 10.0.0.0/8.",
)
@click.option(
    "--deny",
    "deny_rules",
    multiple=True,
    metavar="CIDR",
    help="Refuse peers in this network (repeatable); checked before any byte is read.",
)
@click.option(
    "--allow-file",
    type=click.Path(dir_okay=False, exists=True),
    multiple=True,
    help="Read --allow rules from a file (one CIDR per line, # comments).",
)
@click.option(
    "--deny-file",
    type=click.Path(dir_okay=False, exists=True),
    multiple=True,
    help="Read --deny rules from a file.",
)
@click.option(
    "--max-output",
    type=click.IntRange(min=65536),
    default=1024 * 1024,
    show_default=True,
    metavar="BYTES",
    help="Unsent output per client before it is cut as a slow consumer.",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="How long shutdown waits for peers to finish.",
)
@click.option(
    "--cert",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="PEM certificate chain for tls:// endpoints.",
)
@click.option(
    "--key",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="PEM private key for --cert (if not in the same file).",
)
@click.option(
    "--self-signed",
    is_flag=True,
    help="Generate a throwaway certificate in memory for tls:// endpoints "
    "(development); its SHA-256 fingerprint is printed for --pin.",
)
@click.option(
    "--tls-profile",
    type=click.Choice(["intermediate", "modern"]),
    default="intermediate",
    show_default=True,
    help="intermediate: TLS 1.2+ ECDHE+AEAD; modern: TLS 1.3 only.",
)
@click.option(
    "--client-ca",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Require client certificates signed by these CAs (mTLS).",
)
@click.option(
    "--handshake-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Absolute TLS handshake deadline.",
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
    help="Processes sharing the tcp/udp ports (SO_REUSEPORT); chat and unix "
    "listeners stay in the first.",
)
@click.option("-v", "--verbose", count=True, help="More logs (-v info, -vv debug).")
@click.option("-q", "--quiet", is_flag=True, help="Do not print the table of listeners.")
@LOOP_OPTION
def serve_command(
    greeting_eps: tuple[Endpoint, ...],
    echo_eps: tuple[Endpoint, ...],
    chat_eps: tuple[Endpoint, ...],
    files_dir: str | None,
    files_eps: tuple[Endpoint, ...],
    files_readonly: bool,
    max_file_size: int | None,
    quota: int | None,
    no_greeting: bool,
    no_echo: bool,
    no_chat: bool,
    banner: str,
    history: int,
    max_line: int,
    idle_timeout: float,
    max_conns: int,
    max_conns_per_source: int,
    conn_rate: float,
    conn_burst: int,
    login_timeout: float,
    chat_rate: float,
    chat_burst: int,
    users_file: str | None,
    auth_failures: int,
    auth_failure_rate: float,
    guests: bool,
    udp_rate: float,
    allow_rules: tuple[str, ...],
    deny_rules: tuple[str, ...],
    allow_file: tuple[str, ...],
    deny_file: tuple[str, ...],
    max_output: int,
    grace: float,
    cert: str | None,
    key: str | None,
    self_signed: bool,
    tls_profile: TLSProfile,
    client_ca: str | None,
    handshake_timeout: float,
    log_format: str,
    workers: int,
    verbose: int,
    quiet: bool,
    loop_kind: LoopKind,
) -> None:
    """Run wirecat's services: greeting, echo (TCP+UDP), chat, and optionally files.

    Everything binds loopback unless told otherwise. Each service takes any number of
    endpoints; --no-SERVICE turns one off.

    \b
    Examples:
      wirecat serve
      wirecat serve --no-chat --echo tcp://[::]:7007 --echo udp://[::]:7007
      wirecat serve --chat tcp://127.0.0.1:7070 --chat unix:/tmp/chat.sock
      wirecat serve --files ./shared --files-readonly
      wirecat serve --chat tls://127.0.0.1:7443 --self-signed
      wirecat serve --chat tls://[::]:7443 --cert site.pem --key site.key --users users.toml
      wirecat serve --echo tls://[::]:7443 --cert site.pem --key site.key
      wirecat serve --log-format json -v

    \b
    Then, in another terminal:
      nc 127.0.0.1 7000                      # banner
      nc 127.0.0.1 7007                      # echo
      nc 127.0.0.1 7070                      # chat (pick a nick, talk in #lobby)
      wirecat connect udp://127.0.0.1:7007   # UDP echo
    """

    def services_for(worker: int) -> list[Service]:
        # Worker 0 runs everything; the others only the inet listeners of the services that
        # keep no state in memory: greeting, echo, and files (its part-file locks and its
        # quota are shared through the file system, see wirecat.files.store).
        def eps(given: tuple[Endpoint, ...], off: bool, name: str) -> list[Endpoint] | None:
            found = _endpoints(given, off, name)
            if worker == 0 or found is None:
                return found
            return [ep for ep in found if ep.is_inet] or None

        files = eps(files_eps, files_dir is None, "files")
        return build_services(
            greeting=eps(greeting_eps, no_greeting, "greeting"),
            echo=eps(echo_eps, no_echo, "echo"),
            chat=_endpoints(chat_eps, no_chat, "chat") if worker == 0 else None,
            banner=banner,
            history=history,
            files_dir=files_dir if files else None,
            files=files,
            files_readonly=files_readonly,
            max_file_size=max_file_size,
            quota=quota,
            udp_rate=udp_rate or None,
            chat_rate=chat_rate or None,
            chat_burst=chat_burst,
            users=users,
            guests=guests,
            auth_failures=(auth_failure_rate, auth_failures),
        )

    if guests and not users_file:
        die("--guests needs --users FILE (without it everyone is a guest)", 64)
    users = None
    if users_file:
        try:
            users = Users.load(users_file)
        except UsersFileError as exc:
            die(str(exc), 78)
    try:
        services = services_for(0)
        limits = Limits(
            max_line=max_line,
            max_conns=max_conns,
            max_conns_per_source=max_conns_per_source or None,
            conn_rate=conn_rate or None,
            conn_burst=conn_burst,
            login_timeout=login_timeout or None,
            idle_timeout=idle_timeout or None,
            max_output=max_output,
            shutdown_grace=grace,
            handshake_timeout=handshake_timeout,
        )
        allow = [*allow_rules, *(r for f in allow_file for r in read_rules(f))]
        deny = [*deny_rules, *(r for f in deny_file for r in read_rules(f))]
        access = AccessList(allow, deny)
    except (ValueError, OSError) as exc:
        die(str(exc), 64)
    wants_tls = any(ep.scheme == "tls" for s in services for ep in s.endpoints)
    tls_ctx: ssl.SSLContext | None = None
    fingerprint: str | None = None
    if cert and self_signed:
        die("--cert and --self-signed exclude each other", 64)
    if (cert or self_signed) and not wants_tls:
        die(
            "--cert/--self-signed given but no tls:// endpoint: e.g. --chat tls://127.0.0.1:7443",
            64,
        )
    if wants_tls:
        try:
            if cert:
                tls_ctx = server_context(cert, key, profile=tls_profile, client_ca=client_ca)
            elif self_signed:
                made = make_self_signed()
                fingerprint = made.fingerprint
                tls_ctx = server_context(
                    made.cert_pem, made.key_pem, profile=tls_profile, client_ca=client_ca
                )
            else:
                die("tls:// endpoints need --cert/--key (or --self-signed for development)", 64)
        except TLSError as exc:
            die(str(exc), 78)
    if not services:
        die("nothing to serve: every service is turned off", 64)
    console = Console(stderr=False, highlight=False)

    async def main(worker: int = 0) -> int:
        server = Server(
            services if worker == 0 else services_for(worker),
            ctx=ServerContext(limits, access=access),
            tls=tls_ctx,
            reuse_port=workers > 1,
        )
        await server.start()
        if worker == 0:
            if not quiet:
                _print_table(server, console)
                if workers > 1:
                    console.print(f"{workers} worker processes share the inet listeners")
            if fingerprint:
                console.print(f"self-signed certificate {fingerprint}", soft_wrap=True)
                console.print(f"  clients: wirecat connect ... --pin {fingerprint}", soft_wrap=True)
            _warn_exposed(server, console, users is not None)
        return await run_until_signal(server)

    if workers == 1:
        run_command(main(), loop=loop_kind, log_format=log_format, verbosity=verbose)

    def worker_main(index: int) -> int:
        try:
            run_command(main(index), loop=loop_kind, log_format=log_format, verbosity=verbose)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1
        return 0  # pragma: no cover - run_command always exits

    sys.exit(run_workers(workers, worker_main, grace=grace))
