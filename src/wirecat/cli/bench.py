"""``wirecat bench ENDPOINT``: a load generator for any stream server.

Thin: flags become one :class:`~wirecat.bench.BenchConfig`; :func:`~wirecat.bench.run_bench`
does the work; the report is printed as text or JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

import click

from ..bench import BenchConfig, BenchReport, default_size, run_bench
from ..bench.config import CHAT_PROTOCOLS, MODES
from ..endpoints import parse_endpoint
from ..errors import (
    ConnectError,
    ConnectionClosedError,
    ConnectionRefused,
    ConnectTimeout,
    WirecatError,
)
from ..escape import for_terminal
from .exits import exit_code_for

__all__ = ["bench"]

_UNITS = {"": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6, "mib": 1024**2}


class ByteSize(click.ParamType):  # type: ignore[type-arg]
    """A size in bytes: ``64``, ``1KiB``, ``64k`` (1000), ``1MiB``."""

    name = "BYTES"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _UNITS:
            self.fail(f"{value!r} is not a size (examples: 64, 1KiB, 64k, 1MiB)", param, ctx)
        return int(m.group(1)) * _UNITS[m.group(2).lower()]


def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.1f} {unit}".rstrip()


def _us(value: float) -> str:
    return f"{value / 1000:.2f} ms" if value >= 1000 else f"{value:.1f} µs"


def format_report(report: BenchReport) -> str:
    """Return the human-readable report, a few aligned lines."""
    data = report.to_json()
    c = report.config
    what = {
        "echo": "round trips",
        "stream": "chunks",
        "connect": "connections",
        "chat": "messages",
    }[c.mode]
    head = (
        f"wirecat bench {c.mode} {c.endpoint}: {c.conns} conn(s) x {c.size} B, "
        f"{report.workers} worker(s), {data['duration_s']:.2f} s measured"
    )
    lines = [head, f"  {what:<12} {data['ops']:>12,}   {_si(data['ops_per_s'], '')}/s"]
    if c.mode == "chat":
        rate = _si(data["deliveries_per_s"], "")
        lines.append(f"  {'deliveries':<12} {data['deliveries']:>12,}   {rate}/s")
    lines.append(
        f"  {'bytes':<12} sent {_si(data['bytes_sent'], 'B')}, received "
        f"{_si(data['bytes_received'], 'B')}   {_si(data['bytes_per_s'], 'B/s')}"
    )
    if data["latency_samples"]:
        lat = data["latency_us"]
        lines.append(
            f"  {'latency':<12} p50 {_us(lat['p50'])}  p90 {_us(lat['p90'])}  "
            f"p99 {_us(lat['p99'])}  p99.9 {_us(lat['p99_9'])}  max {_us(lat['max'])}"
        )
    if c.mode != "connect":
        dropped = (
            f", {data['conns_dropped']} dropped by the server" if data["conns_dropped"] else ""
        )
        lines.append(f"  {'connections':<12} {data['connects']} of {c.conns} opened{dropped}")
    errs = ", ".join(f"{k} {v}" for k, v in data["errors_by_kind"].items())
    lines.append(f"  {'errors':<12} {data['errors']}" + (f" ({errs})" if errs else ""))
    return "\n".join(lines)


def _failure(report: BenchReport, max_error_rate: float) -> WirecatError | None:
    """Return the error to exit with, else None. Its message says why in one line.

    A run fails when it measured nothing; when errors pass ``max_error_rate`` (a fraction
    of operations plus errors); and, except in ``connect`` mode (where each operation is a
    connection), when fewer than ``--conns`` connections opened (the rates would be those
    of fewer connections than asked) or when the connections the server closed, reset or
    refused during the run pass ``max_error_rate`` of ``--conns``.
    """
    r, c = report.result, report.config
    errors = report.error_count
    done = r.ops or (r.connects if c.mode == "connect" else 0)
    never = max(0, c.conns - r.connects) if c.mode != "connect" else 0
    dropped = r.dropped / c.conns if c.mode != "connect" else 0.0
    rate = errors / (done + errors) if errors else 0.0
    if not errors and not done:
        return WirecatError("the run measured nothing: no operation completed")
    if never:
        head = f"only {r.connects} of {c.conns} connections opened"
        if done:
            head += " (rates would be those of fewer connections than --conns)"
    elif dropped > max_error_rate:
        head = (
            f"{r.dropped} of {c.conns} connections were closed, reset or refused by the "
            f"server during the run ({dropped:.1%} > {max_error_rate:.1%})"
        )
    elif not errors or (done and rate <= max_error_rate):
        return None
    elif done:
        head = f"{errors} errors in {done + errors} operations ({rate:.1%} > {max_error_rate:.1%})"
    else:
        head = "no operation completed"
    if not errors:  # e.g. a chat whose members all joined too late: nothing to classify
        return WirecatError(head)
    where = str(c.endpoint)
    refused = {k[8:]: n for k, n in r.errors.items() if k.startswith("refused:")}
    if refused:
        reason, n = max(refused.items(), key=lambda kv: kv[1])
        return ConnectionRefused(
            f"{head}: the server refused {sum(refused.values())} connections "
            f"({for_terminal(reason)!r}); against wirecat serve, start it with --load-test "
            "(or raise its --max-conns-per-source, --conn-rate, --max-conns)"
        )
    kind, n = r.errors.most_common(1)[0]
    if kind.startswith("chat_rate_limited"):
        return WirecatError(
            f"{head}: the chat server rate-limited the members ({n}x); against wirecat serve, "
            "start it with --load-test (or --chat-rate 0)"
        )
    if kind == "connect_refused":
        return ConnectionRefused(f"{head}: connection refused by {where} (is a server listening?)")
    if kind == "connect_timeout":
        return ConnectTimeout(f"{head}: timed out connecting to {where}")
    if kind in ("reset", "closed_by_peer"):
        return ConnectionClosedError(
            f"{head}: {where} closed or reset {n} connections (a server limit? against "
            "wirecat serve, start it with --load-test)"
        )
    return ConnectError(f"{head}: mostly {kind} ({n}x)")


@click.command("bench")
@click.argument("endpoint")
@click.option(
    "-m",
    "--mode",
    type=click.Choice(MODES),
    default="echo",
    show_default=True,
    help="echo: ping-pong round trips; stream: one-way bulk; connect: connections/s; "
    "chat: room fan-out.",
)
@click.option(
    "-c",
    "--conns",
    type=click.IntRange(1, 100_000),
    default=1,
    show_default=True,
    help="Concurrent connections (chat: room members).",
)
@click.option(
    "-s",
    "--size",
    type=ByteSize(),
    default=None,
    help="Payload bytes per message [default: echo 64, stream 64KiB, connect 0, chat 64].",
)
@click.option(
    "-d",
    "--duration",
    type=click.FloatRange(0, 86400, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to measure; a hard cap even with --count.",
)
@click.option(
    "-n",
    "--count",
    type=click.IntRange(1),
    default=None,
    help="Stop after this many operations in total (round trips, chunks, connections, "
    "chat messages).",
)
@click.option(
    "-w",
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Load-generator processes, each with its own event loop.",
)
@click.option(
    "--warmup",
    type=click.FloatRange(0, 3600),
    default=0.0,
    show_default=True,
    help="Seconds of traffic before measuring starts.",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(0, 3600, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds allowed for opening the connections.",
)
@click.option(
    "--connect-concurrency",
    type=click.IntRange(1, 100_000),
    default=256,
    show_default=True,
    help="Connections opened at once during set-up (1 for servers with a short backlog).",
)
@click.option(
    "--loop",
    "loop_kind",
    type=click.Choice(["auto", "asyncio", "uvloop"]),
    default="auto",
    show_default=True,
    help="Event loop of the load generator.",
)
@click.option(
    "--source-addr",
    "source_addrs",
    multiple=True,
    metavar="IP",
    help="Bind connections to these local addresses in turn (e.g. 127.0.0.2); "
    "repeat the flag. Spreads many connections over more ephemeral ports.",
)
@click.option("--insecure", is_flag=True, help="tls://: do not verify the certificate.")
@click.option(
    "--senders",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="chat: how many members send.",
)
@click.option(
    "--rate",
    type=click.FloatRange(0, 1e7, min_open=True),
    default=None,
    help="chat: messages/s per sender [default: one in flight per sender].",
)
@click.option("--room", default="bench", show_default=True, help="chat: room name.")
@click.option(
    "--chat-protocol",
    type=click.Choice(CHAT_PROTOCOLS),
    default="wirecat",
    show_default=True,
    help="chat: wirecat JSON lines, plain lines (ncat --broker) or redis pub/sub; over "
    "ws:// and wss:// one text frame per message or command (wirecat or lines).",
)
@click.option(
    "--max-error-rate",
    type=click.FloatRange(0, 100),
    default=1.0,
    show_default=True,
    metavar="PERCENT",
    help="Exit non-zero (and report no rates) when errors pass this share of operations, "
    "or connections dropped by the server this share of --conns.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.pass_context
def bench(
    ctx: click.Context,
    endpoint: str,
    mode: str,
    conns: int,
    size: int | None,
    duration: float,
    count: int | None,
    workers: int,
    warmup: float,
    connect_timeout: float,
    connect_concurrency: int,
    loop_kind: str,
    source_addrs: tuple[str, ...],
    insecure: bool,
    senders: int,
    rate: float | None,
    room: str,
    chat_protocol: str,
    max_error_rate: float,
    as_json: bool,
) -> None:
    """Load-test the server at ENDPOINT: messages/s, bytes/s, latency percentiles.

    Every run is bounded: --duration caps it even with --count. Latency is measured per
    operation (a round trip, a connection); in chat mode per delivery (send to receipt by
    one member), sampled on one message in 8, while every delivery is counted and checked.

    A run that completed nothing, whose errors pass --max-error-rate, where fewer than
    --conns connections opened, or where the server closed or refused more than
    --max-error-rate of the --conns connections during the run, reports no rates: it
    exits non-zero with one line that says why (e.g. the server refused the connections).
    Start wirecat serve with --load-test to bench it.

    \b
    Examples:
      wirecat serve --load-test &                           # lifts per-source limits
      wirecat bench 127.0.0.1:7007 -c 100 -d 10            # echo round trips, 64 B
      wirecat bench 127.0.0.1:7007 -m stream -s 1MiB        # bulk throughput
      wirecat bench 127.0.0.1:7007 -m connect -c 50         # connections per second
      wirecat bench 127.0.0.1:7070 -m chat -c 100 --json    # chat fan-out to 100 members
      wirecat bench ws://127.0.0.1:7080/chat -m chat -c 100 # the same, WebSocket members
    """
    try:
        config = BenchConfig(
            endpoint=parse_endpoint(endpoint),
            mode=mode,  # type: ignore[arg-type]
            conns=conns,
            size=size if size is not None else default_size(mode),  # type: ignore[arg-type]
            duration=duration,
            count=count,
            workers=workers,
            warmup=warmup,
            connect_timeout=connect_timeout,
            connect_concurrency=connect_concurrency,
            loop=loop_kind,  # type: ignore[arg-type]
            insecure=insecure,
            source_addresses=source_addrs,
            senders=senders,
            rate=rate,
            room=room,
            chat_protocol=chat_protocol,  # type: ignore[arg-type]
        )
        try:
            config.validate()
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        report = run_bench(config)
        failure = _failure(report, max_error_rate / 100)
        if failure is not None:
            raise failure
    except WirecatError as exc:
        click.echo(f"wirecat bench: {exc}", err=True)
        ctx.exit(exit_code_for(exc))
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        click.echo(format_report(report))
