"""``wirecat send``, ``wirecat get``, ``wirecat ls``: verified, resumable file transfer.

Exit status 0 only when the file was verified end to end (the whole-file digest matched on
both sides). Refusals map to sysexits-like codes (:data:`TRANSFER_EXIT_CODES`).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from ..endpoints import Endpoint
from ..errors import (
    HandshakeError,
    LimitExceeded,
    NetworkError,
    ProtocolError,
    WirecatError,
    WirecatTimeout,
)
from ..escape import for_terminal
from ..files.client import FilesClient, Progress, TransferError, TransferResult
from ..runtime.loop import LoopKind
from .common import (
    ENDPOINT,
    LOOP_OPTION,
    PROXY_OPTION,
    TOKEN_ENV,
    check_proxy,
    die,
    read_token,
    run_command,
    tls_client_options,
    tls_connect_kwargs,
    token_options,
)
from .exits import exit_code_for

__all__ = ["TRANSFER_EXIT_CODES", "get_command", "ls_command", "send_command"]

T = TypeVar("T")

#: Exit codes for refusals, by error code (others: 1).
TRANSFER_EXIT_CODES: dict[str, int] = {
    "digest_mismatch": 65,  # EX_DATAERR
    "not_found": 66,  # EX_NOINPUT
    "bad_name": 65,
    "bad_request": 76,  # EX_PROTOCOL
    "exists": 73,  # EX_CANTCREAT
    "local_exists": 73,
    "local_io": 74,  # EX_IOERR
    "read_only": 77,  # EX_NOPERM
    "too_large": 73,
    "quota": 73,
    "no_space": 73,
    "locked": 75,  # EX_TEMPFAIL
    "conflict": 75,
    "shutting_down": 75,
    "timeout": 75,
    "io_error": 74,
    "auth_required": 77,
    "auth_failed": 77,
}


def _auth_options(f: Any) -> Any:
    """``--user`` and ``--token-file`` (token default ``$WIRECAT_TOKEN``)."""
    f = token_options(f)
    return click.option(
        "--user",
        default=None,
        metavar="NAME",
        help="Authenticate as NAME (servers started with --users); token from "
        "--token-file or $WIRECAT_TOKEN.",
    )(f)


def _connect_kwargs(endpoint: Endpoint, flags: dict[str, Any]) -> dict[str, Any]:
    """FilesClient.connect keywords from the TLS and authentication flags."""
    user, token_file = flags.pop("user", None), flags.pop("token_file", None)
    proxy = flags.pop("proxy", None)
    kw = tls_connect_kwargs(endpoint, **flags)
    if proxy:
        check_proxy(endpoint, proxy)
        kw["proxy"] = proxy
    if user is not None:
        token = read_token(token_file)
        if token is None:
            die("--user needs a token: --token-file FILE or $WIRECAT_TOKEN", 64)
        kw.update(user=user, token=token)
    return kw


_DIGEST = click.option(
    "--digest",
    type=click.Choice(["blake3", "sha256"]),
    default="blake3",
    show_default=True,
    help="Whole-file digest verified end to end.",
)
_QUIET = click.option("-q", "--quiet", is_flag=True, help="No progress bar, no summary.")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON object (scripts).")
_TIMEOUT = click.option(
    "--timeout",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds to connect, and without progress before giving up.",
)
_RETRIES = click.option(
    "--retries",
    type=click.IntRange(0, 100),
    default=3,
    show_default=True,
    help="Reconnect and resume this many times if the connection drops.",
)


def _fail(exc: BaseException, as_json: bool) -> int:
    code = exc.code if isinstance(exc, TransferError) else type(exc).__name__
    status = (
        TRANSFER_EXIT_CODES.get(exc.code, 1)
        if isinstance(exc, TransferError)
        else exit_code_for(exc)
    )
    message = for_terminal(_explain(exc))
    if as_json:
        click.echo(json.dumps({"ok": False, "error": code, "message": message}))
    else:
        click.echo(f"wirecat: {message}", err=True)
    return status


def _explain(exc: BaseException) -> str:
    """The server's words, turned into what to type where there is something to type."""
    if isinstance(exc, TransferError):
        if exc.code == "auth_required":
            return (
                "this server needs a user: run again with --user NAME and the token in "
                f"${TOKEN_ENV} (or --token-file FILE)"
            )
        if exc.code == "auth_failed":
            return f"the server refused that user name or token ({exc})"
        return str(exc)
    if isinstance(exc, ProtocolError) and not isinstance(exc, LimitExceeded):
        return f"this does not look like a wirecat files service (it answered: {exc})"
    return str(exc)


def _progress_bar(enabled: bool, label: str) -> tuple[Progress | None, Callable[[], None]]:
    """A rich progress bar on stderr (bytes, rate, ETA), or nothing."""
    if not enabled:
        return None, lambda: None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import Progress as RichProgress

    bar = RichProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    bar.start()
    task = bar.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return update, bar.stop


def _summary(verb: str, result: TransferResult, as_json: bool, quiet: bool) -> None:
    if as_json:
        click.echo(json.dumps({"ok": True, "op": verb, **result.as_dict()}))
        return
    if quiet:
        return
    rate = result.transferred / result.seconds / 1e6 if result.seconds else 0.0
    resumed = f", resumed at {result.resumed_from}" if result.resumed_from else ""
    click.echo(
        f"{verb} {result.name} -> {result.path if verb == 'get' else result.name}: "
        f"{result.size} bytes{resumed}, {rate:.1f} MB/s, "
        f"{result.digest_name} {result.digest} verified",
        err=True,
    )


async def _with_retries(
    ep: Endpoint,
    timeout: float,
    retries: int,
    job: Callable[[FilesClient], Awaitable[T]],
    connect_kw: dict[str, Any],
) -> T:
    attempt = 0
    while True:
        try:
            async with await FilesClient.connect(ep, timeout=timeout, **connect_kw) as client:
                return await job(client)
        except (NetworkError, WirecatTimeout) as exc:
            # a certificate that failed verification will fail again: do not retry it
            if attempt >= retries or isinstance(exc, WirecatTimeout | HandshakeError):
                raise
            attempt += 1
            click.echo(f"wirecat: {exc}; resuming (attempt {attempt}/{retries})", err=True)
            await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
        except TransferError as exc:
            if exc.code not in ("locked",) or attempt >= retries:
                raise
            attempt += 1
            await asyncio.sleep(min(0.2 * 2**attempt, 5.0))


def _show_bar(quiet: bool, as_json: bool) -> bool:
    return not quiet and not as_json and sys.stderr.isatty()


def _run_transfer(
    verb: str,
    name: str,
    op: Callable[[FilesClient, Callable[[int, int], None] | None], Awaitable[TransferResult]],
    *,
    endpoint: Endpoint,
    timeout: float,
    retries: int,
    connect_kw: dict[str, Any],
    quiet: bool,
    as_json: bool,
    loop_kind: LoopKind,
) -> None:
    """Run one verified transfer with retries and a progress bar; exit with its code."""

    async def main() -> int:
        bar, stop = _progress_bar(_show_bar(quiet, as_json), f"{verb} {name}")
        seen = [0, 0]  # bytes done, total: for the line Ctrl-C prints

        def update(done: int, total: int) -> None:
            seen[0], seen[1] = done, total
            if bar is not None:
                bar(done, total)

        try:
            result = await _with_retries(
                endpoint, timeout, retries, lambda c: op(c, update), connect_kw
            )
        except asyncio.CancelledError:  # Ctrl-C: say how far it got, and how to go on
            stop()
            done, total = seen
            where = f"{done} of {total} bytes" if total else "before any byte"
            click.echo(
                f"wirecat: interrupted after {where}; run the same command again to resume",
                err=True,
            )
            raise
        except (WirecatError, OSError) as exc:
            stop()
            return _fail(exc, as_json)
        stop()
        _summary(verb, result, as_json, quiet)
        return 0

    run_command(main(), loop=loop_kind)


@click.command("send")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True))
@click.argument("endpoint", type=ENDPOINT)
@click.option("--as", "name", metavar="NAME", help="Name on the server (default: FILE's name).")
@click.option("--overwrite", is_flag=True, help="Replace an existing file on the server.")
@click.option("--no-resume", is_flag=True, help="Start over instead of resuming a partial upload.")
@_DIGEST
@_QUIET
@_JSON
@_TIMEOUT
@_RETRIES
@_auth_options
@tls_client_options
@PROXY_OPTION
@LOOP_OPTION
def send_command(
    file: str,
    endpoint: Endpoint,
    name: str | None,
    overwrite: bool,
    no_resume: bool,
    digest: str,
    quiet: bool,
    as_json: bool,
    timeout: float,
    retries: int,
    loop_kind: LoopKind,
    **tls: Any,
) -> None:
    """Upload FILE to a files service at ENDPOINT, verified, resumable, atomic.

    ENDPOINT is where `wirecat serve --files DIR` listens (e.g. 127.0.0.1:7071).

    \b
    Examples:
      wirecat send big.iso 127.0.0.1:7071
      wirecat send report.pdf 127.0.0.1:7071 --as docs/2024.pdf --digest sha256 --json
      wirecat send big.iso tls://files.example:7443 --pin sha256:3f1c...
      WIRECAT_TOKEN=... wirecat send big.iso tls://files.example:7443 --user ann
      wirecat send big.iso 10.0.0.5:7071 --proxy socks5://127.0.0.1:1080
    """
    target = name or os.path.basename(file)
    connect_kw = _connect_kwargs(endpoint, tls)

    _run_transfer(
        "send",
        target,
        lambda c, update: c.upload(
            file,
            target,
            digest=digest,
            overwrite=overwrite,
            resume=not no_resume,
            progress=update,
        ),
        endpoint=endpoint,
        timeout=timeout,
        retries=retries,
        connect_kw=connect_kw,
        quiet=quiet,
        as_json=as_json,
        loop_kind=loop_kind,
    )


@click.command("get")
@click.argument("name")
@click.argument("endpoint", type=ENDPOINT)
@click.option("-o", "--output", "output", metavar="PATH", help="Where to write (default: ./NAME).")
@click.option("--overwrite", is_flag=True, help="Replace PATH if it exists.")
@click.option("--no-resume", is_flag=True, help="Ignore a partial download and start over.")
@_DIGEST
@_QUIET
@_JSON
@_TIMEOUT
@_RETRIES
@_auth_options
@tls_client_options
@PROXY_OPTION
@LOOP_OPTION
def get_command(
    name: str,
    endpoint: Endpoint,
    output: str | None,
    overwrite: bool,
    no_resume: bool,
    digest: str,
    quiet: bool,
    as_json: bool,
    timeout: float,
    retries: int,
    loop_kind: LoopKind,
    **tls: Any,
) -> None:
    """Download NAME from a files service at ENDPOINT, verified, resumable, atomic.

    \b
    Examples:
      wirecat get big.iso 127.0.0.1:7071
      wirecat get docs/2024.pdf 127.0.0.1:7071 -o /tmp/r.pdf --json
      wirecat get big.iso tls://files.example:7443 --cafile ca.pem
      wirecat get big.iso 10.0.0.5:7071 --proxy http://127.0.0.1:3128
    """
    dest = output or os.path.basename(name)
    connect_kw = _connect_kwargs(endpoint, tls)

    _run_transfer(
        "get",
        name,
        lambda c, update: c.download(
            name,
            dest,
            digest=digest,
            overwrite=overwrite,
            resume=not no_resume,
            progress=update,
        ),
        endpoint=endpoint,
        timeout=timeout,
        retries=retries,
        connect_kw=connect_kw,
        quiet=quiet,
        as_json=as_json,
        loop_kind=loop_kind,
    )


@click.command("ls")
@click.argument("endpoint", type=ENDPOINT)
@click.argument("path", default="")
@_JSON
@_TIMEOUT
@_auth_options
@tls_client_options
@PROXY_OPTION
@LOOP_OPTION
def ls_command(
    endpoint: Endpoint,
    path: str,
    as_json: bool,
    timeout: float,
    loop_kind: LoopKind,
    **tls: Any,
) -> None:
    """List the files of a files service at ENDPOINT (optionally of directory PATH).

    Each line: size in bytes, modification time, name (a directory ends with /). Names
    are shown with control and bidi characters made visible.

    \b
    Examples:
      wirecat ls 127.0.0.1:7071
      wirecat ls 127.0.0.1:7071 docs --json
      WIRECAT_TOKEN=... wirecat ls tls://127.0.0.1:7443 --user ann --pin sha256:3f1c...
      wirecat ls 10.0.0.5:7071 --proxy socks5://ann:secret@127.0.0.1:1080
    """
    connect_kw = _connect_kwargs(endpoint, tls)

    async def main() -> int:
        try:
            async with await FilesClient.connect(endpoint, timeout=timeout, **connect_kw) as client:
                listing = await client.list(path)
        except WirecatError as exc:
            return _fail(exc, as_json)
        rows: list[dict[str, Any]] = [
            {"name": e.name, "type": e.kind, "size": e.size, "mtime": e.mtime}
            for e in listing.entries
        ]
        if as_json:
            click.echo(json.dumps({"ok": True, "path": listing.path, "entries": rows}))
            return 0
        import time as _time

        for e in listing.entries:
            when = _time.strftime("%Y-%m-%d %H:%M", _time.localtime(e.mtime))
            shown = for_terminal(e.name) + ("/" if e.kind == "dir" else "")
            click.echo(f"{e.size:>14}  {when}  {shown}")
        return 0

    run_command(main(), loop=loop_kind)
