"""``wirecat connect``: standard input to a socket, the socket to standard output (like nc)."""

from __future__ import annotations

from typing import Any

import click

from ..endpoints import Endpoint, parse_endpoint
from ..errors import InvalidEndpoint
from ..runtime.connection import Connection, DatagramConnection, connect, connect_datagram
from ..runtime.loop import LoopKind
from ..runtime.stdio import BridgeResult, bridge_datagram, bridge_stream, open_stdin, open_stdout
from .common import (
    LOOP_OPTION,
    PROXY_OPTION,
    check_proxy,
    die,
    run_command,
    tls_client_options,
    tls_connect_kwargs,
)

__all__ = ["connect_command", "endpoint_argument"]

#: Exit code for a bad endpoint given on the command line (EX_USAGE, as ``exit_code_for``).
EXIT_BAD_ENDPOINT = 64


def endpoint_argument(text: str, port: str | None) -> Endpoint:
    """Parse ``ENDPOINT [PORT]`` (``host port`` is accepted like nc); exit 64 if invalid."""
    if port is not None:
        host = text.strip("[]")
        text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        return parse_endpoint(text, default_host="127.0.0.1")
    except InvalidEndpoint as exc:
        die(str(exc), EXIT_BAD_ENDPOINT)


def report(verbose: bool, result: BridgeResult) -> None:
    """With ``-v``, print how the session ended on stderr."""
    if verbose:
        click.echo(
            f"wirecat: {result.reason}; sent {result.sent} bytes, received {result.received} bytes",
            err=True,
        )


async def _connect_main(
    ep: Endpoint,
    *,
    timeout: float | None,
    half_close: bool,
    wait: float | None,
    crlf: bool,
    verbose: bool,
    tls: dict[str, Any],
) -> int:
    conn: Connection | DatagramConnection
    if ep.is_datagram:
        conn = await connect_datagram(ep, timeout=timeout)
    else:
        conn = await connect(ep, timeout=timeout, **tls)
    stdin = await open_stdin()
    stdout = await open_stdout()
    try:
        if verbose:
            click.echo(f"wirecat: connected to {ep} from {conn.local_address}", err=True)
        if isinstance(conn, Connection):
            result = await bridge_stream(
                conn, stdin, stdout, half_close=half_close, wait=wait, crlf=crlf
            )
        else:
            result = await bridge_datagram(
                conn, stdin, stdout, wait=1.0 if wait is None else wait, crlf=crlf
            )
        report(verbose, result)
    finally:
        stdin.close()
        await conn.aclose()
        await stdout.aclose()
    return 0


@click.command("connect")
@click.argument("endpoint", metavar="ENDPOINT")
@click.argument("port", required=False, metavar="[PORT]")
@click.option(
    "--no-shutdown",
    is_flag=True,
    help="Do not half-close the connection when stdin ends; keep reading until the peer closes.",
)
@click.option(
    "-w",
    "--wait",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="After stdin ends, wait at most this long for the peer, then exit 0. "
    "Default: until the peer closes (tcp, unix); 1 s (udp, unix+dgram).",
)
@click.option(
    "-t",
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Give up connecting after this long (name resolution included).",
)
@click.option("-C", "--crlf", is_flag=True, help="Send every LF from stdin as CRLF.")
@PROXY_OPTION
@click.option("-v", "--verbose", is_flag=True, help="Print connection details on stderr.")
@tls_client_options
@LOOP_OPTION
def connect_command(
    endpoint: str,
    port: str | None,
    no_shutdown: bool,
    wait: float | None,
    timeout: float,
    crlf: bool,
    proxy: str | None,
    verbose: bool,
    cafile: str | None,
    pin: str | None,
    insecure: bool,
    servername: str | None,
    alpn: tuple[str, ...],
    client_cert: str | None,
    client_key: str | None,
    loop_kind: LoopKind,
) -> None:
    """Connect to ENDPOINT; copy stdin to it and what it sends to stdout.

    ENDPOINT is tcp://HOST:PORT, HOST:PORT (tcp), tls://HOST:PORT, udp://HOST:PORT,
    unix:/PATH, unix+dgram:/PATH, unix+seqpacket:/PATH, ws://HOST:PORT/PATH or
    wss://HOST:PORT/PATH; `HOST PORT` works too. Bytes pass through unchanged (each stdin
    chunk one packet over unix+seqpacket), except over WebSockets: there each stdin line
    is one text message and each message received is printed as one line (stdin EOF sends
    a close frame; wss:// takes the TLS options of tls://).
    TLS verifies the server against the system CAs (TLS 1.2+, AEAD ciphers) unless told
    otherwise with --cafile, --pin or --insecure.

    End of stream: when stdin ends, wirecat half-closes the connection (the peer reads
    EOF) and keeps printing until the peer closes, then exits 0. When the peer closes
    first, the rest of stdin is still sent, unless stdin is a terminal (then it exits at
    once). UDP: each stdin line, newline included, is one datagram; every datagram
    received is printed; after stdin ends wirecat waits --wait seconds (default 1) for
    replies.

    Exit codes: 0 done, 64 bad endpoint, 68 unknown host, 69 connection refused,
    74 connection reset, 75 timeout, 130 interrupted.

    \b
    Examples:
      printf 'GET / HTTP/1.0\\r\\n\\r\\n' | wirecat connect example.com:80
      wirecat connect 127.0.0.1:7007                 # type lines, see them echoed
      wirecat connect 127.0.0.1 7007 < file.bin > copy.bin
      wirecat connect --crlf mail.example.com:25     # talk SMTP by hand
      echo hi | wirecat connect udp://127.0.0.1:7007 # one datagram, 1 s for replies
      echo stats | wirecat connect unix:/run/app.sock
      wirecat connect tls://example.com:443 --alpn http/1.1
      wirecat connect tls://127.0.0.1:7443 --pin sha256:9f86d0...   # self-signed server
      wirecat connect 10.0.0.5:22 --proxy socks5://127.0.0.1:1080   # through SOCKS5
      tail -f log | wirecat connect --no-shutdown --wait 2 host:9000
      wirecat connect ws://127.0.0.1:7080/chat       # type {"type":"hello","nick":"me"}
    """
    ep = endpoint_argument(endpoint, port)
    tls = tls_connect_kwargs(
        ep,
        cafile=cafile,
        pin=pin,
        insecure=insecure,
        servername=servername,
        alpn=alpn,
        client_cert=client_cert,
        client_key=client_key,
    )
    if proxy:
        check_proxy(ep, proxy, schemes=("tcp", "tls", "ws", "wss"))
    run_command(
        _connect_main(
            ep,
            timeout=timeout,
            half_close=not no_shutdown,
            wait=wait,
            crlf=crlf,
            verbose=verbose,
            tls={**tls, "proxy": proxy} if proxy else tls,
        ),
        loop=loop_kind,
    )
