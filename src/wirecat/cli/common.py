"""What every verb shares: option types, running a coroutine, errors to exit codes."""

from __future__ import annotations

import sys
from collections.abc import Coroutine
from typing import Any, NoReturn

import click

from ..endpoints import Endpoint, parse_endpoint
from ..errors import InvalidEndpoint, WirecatError, exit_code_for
from ..runtime.logs import configure_logging
from ..runtime.loop import LoopKind, run

__all__ = ["ENDPOINT", "EXIT_INTERRUPTED", "LOOP_OPTION", "die", "run_command"]

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
    except WirecatError as exc:
        die(str(exc), exit_code_for(exc))
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        sys.exit(0)
    except ValueError as exc:  # e.g. uvloop requested but missing
        die(str(exc), 64)
    sys.exit(code or 0)
