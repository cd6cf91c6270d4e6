"""The list of ``wirecat`` verbs, in the order ``wirecat --help`` shows them."""

from __future__ import annotations

import click

from .bench import bench as bench_command
from .chat import chat_command
from .connect import connect_command
from .files import get_command, ls_command, send_command
from .listen import listen_command
from .probe import ping_command, scan_command
from .relay import relay_command
from .serve import serve_command
from .users import users_command

COMMANDS: list[click.Command] = [
    serve_command,
    connect_command,
    listen_command,
    relay_command,
    chat_command,
    send_command,
    get_command,
    ls_command,
    bench_command,
    scan_command,
    ping_command,
    users_command,
]
