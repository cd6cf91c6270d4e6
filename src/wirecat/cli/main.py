"""The ``wirecat`` command: a thin layer over the library.

Each verb lives in its own module under ``wirecat.cli`` and is registered here. Verbs map
flags to one config, call the public API, and turn :class:`~wirecat.errors.WirecatError`
into a one-line message on stderr and an exit code (:func:`wirecat.cli.exits.exit_code_for`).
No traceback ever reaches a user.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from .. import __version__

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="wirecat")
def cli() -> None:
    """wirecat: sockets made solid.

    Connect, listen, serve, relay, chat and move files over TCP, UDP, Unix sockets
    and TLS, on IPv4 and IPv6. Endpoints look like tcp://127.0.0.1:7000, udp://[::1]:7007,
    unix:/tmp/chat.sock, or host:port (TCP).

    \b
    Examples:
      wirecat serve                          # greeting :7000, echo :7007, chat :7070
      wirecat connect 127.0.0.1:7007         # talk to the echo service
      wirecat connect udp://127.0.0.1:7007   # one datagram per line
      wirecat listen tcp://127.0.0.1:9000 -k # accept peers to stdio
      wirecat chat 127.0.0.1:7070 --nick ann # terminal chat client
    """


def _register() -> None:
    from . import commands

    for command in commands.COMMANDS:
        cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``wirecat`` command; return its exit code (0 success, 2 usage, 64+ errors)."""
    try:
        if not cli.commands:
            _register()
        cli.main(args=list(argv) if argv is not None else None, prog_name="wirecat")
    except SystemExit as exc:  # click exits via SystemExit; turn it into a return code
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # last resort: a bug must still not print a traceback
        print(
            f"wirecat: internal error: {type(exc).__name__}: {exc} "
            "(please report it; run with WIRECAT_DEBUG=1 for details)",
            file=sys.stderr,
        )
        if os.environ.get("WIRECAT_DEBUG"):
            raise
        return 70  # EX_SOFTWARE
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
