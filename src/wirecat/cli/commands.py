"""The list of ``wirecat`` verbs. Each verb module adds its command here (one line each)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []

from .serve import serve_command  # noqa: E402

COMMANDS.append(serve_command)
from .bench import bench as bench_command  # noqa: E402

COMMANDS.append(bench_command)
