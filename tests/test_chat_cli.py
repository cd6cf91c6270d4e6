"""`wirecat chat` as a user meets it: piped lines, a terminal, a hostile server, a wrong port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from helpers import scaled
from test_chat_service import _run_cli, chat_server, text_user

T = scaled(15.0)


@contextlib.asynccontextmanager
async def fake_server(
    script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def test_piped_stdin_gives_plain_lines_without_a_prompt() -> None:
    async with chat_server() as (_, ep, stack):
        ann = await text_user(ep, stack, "ann")
        code, out, err = await _run_cli(f"127.0.0.1:{ep.port}", "-n", "bot", stdin=b"hi\n")
        assert code == 0, err
        await ann.until(b"#lobby <bot> hi\n")
        assert b"\x1b" not in out  # no terminal UI on a pipe: no prompt, no colours
        assert not any(line.startswith(b"bot>") for line in out.splitlines())
        assert b"#lobby <bot> hi\n" in out


async def test_a_hostile_server_cannot_drive_the_terminal() -> None:
    evil = "\x1b[2J\u202e\u2028\u200b"

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = json.loads(await reader.readline())

        def obj(**o: object) -> bytes:
            return json.dumps(o).encode() + b"\n"

        ts = "2026-01-01T00:00:00.000Z"
        writer.write(
            obj(
                type="welcome",
                nick="bot",
                server="x",
                default_room="#lobby",
                motd=evil,
                ref=hello["ref"],
            )
            + obj(type="joined", room="#lobby", members=["bot", evil], history=[])
            + obj(type="message", id=1, ts=ts, room="#lobby", nick=evil, text=evil, kind="say")
            + obj(type="dm", id=2, ts=ts, to="bot", text=evil, **{"from": evil})
            + obj(type="notice", text=evil)
            + obj(type="error", code=evil, reason=evil)
            + obj(type="bye")
        )
        await writer.drain()
        await reader.read()

    async with fake_server(script) as port:
        code, out, err = await _run_cli(f"127.0.0.1:{port}", "-n", "bot", stdin=b"")
    assert code == 0, err
    assert not any(c in out.decode() for c in "\x1b\u202e\u2028\u200b"), out
    assert out.count(b"\\x1b[2J") >= 7  # every peer field shown, visibly escaped


async def test_a_port_that_is_not_chat_is_named_as_such() -> None:
    async def greeting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"Thank you for connecting\n")
        await writer.drain()

    async with fake_server(greeting) as port:
        code, _, err = await _run_cli(f"127.0.0.1:{port}", "-n", "bot", stdin=b"")
    assert code != 0 and err.count(b"\n") == 1, err
    assert b"does not look like a wirecat chat service" in err
    assert b"Thank you for connecting" in err


@pytest.mark.skipif(sys.platform != "linux", reason="a pty")
def test_a_terminal_keeps_the_input_line_and_sends_it() -> None:
    import pty

    argv = [sys.executable, "-m", "wirecat", "serve", "--json", "--no-greeting", "--no-echo"]
    argv += ["--chat", "tcp://127.0.0.1:0"]
    serve = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        from helpers import read_ready

        ep = read_ready(serve.stdout, T)["endpoints"]["chat"][0]
        pid, fd = pty.fork()
        if pid == 0:  # the child: wirecat chat on a terminal
            os.environ["PROMPT_TOOLKIT_NO_CPR"] = "1"
            os.execv(sys.executable, [sys.executable, "-m", "wirecat", "chat", ep, "-n", "ann"])
        seen = b""

        def until(needle: bytes) -> None:
            nonlocal seen
            deadline = time.monotonic() + T
            while needle not in seen:
                assert time.monotonic() < deadline, (needle, seen[-400:])
                ready, _, _ = select.select([fd], [], [], 0.5)
                if ready:
                    try:
                        seen += os.read(fd, 65536)
                    except OSError:  # the child is gone
                        break
            assert needle in seen, (needle, seen[-400:])

        until(b"ann>")  # the prompt, below what was printed
        os.write(fd, b"hello there\r")
        until(b"<ann> \x1b[0mhello there")  # printed above the prompt, in colour
        after = seen.rindex(b"hello there")
        deadline = time.monotonic() + T
        while b"ann>" not in seen[after:]:  # the prompt is drawn again below the message
            assert time.monotonic() < deadline, seen[-400:]
            if select.select([fd], [], [], 0.2)[0]:
                seen += os.read(fd, 65536)
        os.write(fd, b"\x04")  # Ctrl-D: quit
        deadline = time.monotonic() + T
        while time.monotonic() < deadline:  # drain the terminal until the child closes it
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                with contextlib.suppress(OSError):
                    seen += os.read(fd, 65536)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError(f"wirecat chat did not exit after Ctrl-D: {seen[-400:]!r}")
        assert os.waitstatus_to_exitcode(status) == 0, seen[-400:]
        os.close(fd)
    finally:
        serve.terminate()
        serve.communicate(timeout=T)
