"""A connection wired to a subprocess's stdin and stdout (``wirecat listen --exec``, ncat -e).

::

    async def handler(conn: Connection) -> None:
        code = await bridge_process(conn, ["/bin/cat"])

Bytes from the peer go to the process's stdin; when the peer half-closes, the process's
stdin is closed (it reads EOF). The process's stdout goes to the peer; when the process
closes its stdout (usually by exiting), the peer is sent EOF. The process's stderr is
inherited. The process runs in its own session and process group; if the peer resets the
connection, or the bridge is cancelled, the whole group is terminated (SIGTERM, then
SIGKILL after ``grace`` seconds), so a shell's children do not outlive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence

from ..errors import ConnectionClosed
from .connection import Connection

__all__ = ["bridge_process"]

_CHUNK = 64 * 1024


async def _stop(proc: asyncio.subprocess.Process, grace: float) -> None:
    """Stop the process and everything it started (its own process group)."""
    if proc.returncode is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            _signal_group(proc, signal.SIGKILL)
            await proc.wait()
    # A shell's children outlive it: clean up the rest of the group as well.
    _signal_group(proc, signal.SIGTERM)


def _signal_group(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


async def bridge_process(
    conn: Connection,
    command: Sequence[str] | str,
    *,
    shell: bool = False,
    env: Mapping[str, str] | None = None,
    grace: float = 2.0,
) -> int:
    """Run ``command`` with its stdin and stdout wired to ``conn``; return its exit status.

    Args:
        conn: the peer's stream connection (left open; the caller closes it).
        command: argv list (``shell=False``) or one shell command line (``shell=True``).
        shell: run ``command`` through ``/bin/sh -c``.
        env: the process's environment; ``None`` inherits ours.
        grace: seconds between SIGTERM and SIGKILL when the process must be stopped.

    Returns:
        The exit status (negative: killed by that signal).

    Raises:
        OSError: the command could not be started (not found, not executable).

    Cancelling stops the process (bounded by ``grace``) before propagating.
    """
    pipe = asyncio.subprocess.PIPE
    if shell:
        if not isinstance(command, str):
            command = " ".join(command)
        proc = await asyncio.create_subprocess_shell(
            command, stdin=pipe, stdout=pipe, env=env, start_new_session=True
        )
    else:
        argv = [command] if isinstance(command, str) else list(command)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=pipe, stdout=pipe, env=env, start_new_session=True
        )
    assert proc.stdin is not None and proc.stdout is not None
    child_in, child_out = proc.stdin, proc.stdout

    async def to_process() -> None:
        try:
            while data := await conn.recv():
                child_in.write(data)
                await child_in.drain()
        except (BrokenPipeError, ConnectionResetError):
            return  # the process stopped reading; keep its output flowing
        finally:
            with contextlib.suppress(OSError):
                child_in.close()

    async def to_peer() -> None:
        while data := await child_out.read(_CHUNK):
            await conn.send(data)
        await conn.send_eof()

    inbound = asyncio.create_task(to_process())
    outbound = asyncio.create_task(to_peer())
    try:
        await asyncio.wait({inbound, outbound}, return_when=asyncio.FIRST_COMPLETED)
        if inbound.done() and not outbound.done():
            if isinstance(inbound.exception(), ConnectionClosed):
                return await _stopped(proc, grace)  # the peer is gone: nobody to answer
            await asyncio.wait({outbound})
        try:
            outbound.result()
        except ConnectionClosed:
            return await _stopped(proc, grace)
        await proc.wait()
        return proc.returncode if proc.returncode is not None else 0
    finally:
        for task in (inbound, outbound):
            task.cancel()
        await asyncio.gather(inbound, outbound, return_exceptions=True)
        await asyncio.shield(_stop(proc, grace))


async def _stopped(proc: asyncio.subprocess.Process, grace: float) -> int:
    await _stop(proc, grace)
    return proc.returncode if proc.returncode is not None else -1
