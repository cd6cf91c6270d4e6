"""Interop of wirecat's WebSocket server with Node's `ws` package (npm), a WebSocket
implementation we did not write: as a client of the ws echo and of the chat at /chat.

``scripts/test.sh`` installs Node (Debian) and ``ws`` into tests/node/ (npm); a missing
peer FAILS these tests."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

import wirecat
from helpers import scaled
from wirecat import ServeConfig

pytestmark = [pytest.mark.interop, pytest.mark.loops("asyncio")]

NODE_DIR = Path(__file__).parent / "node"


def _node() -> str:
    node = shutil.which("node")
    assert node, "node is missing: scripts/test.sh installs it (apt nodejs)"
    assert (NODE_DIR / "node_modules" / "ws").is_dir(), (
        "the npm package ws is missing: scripts/test.sh runs npm install in tests/node"
    )
    return node


async def _run_node(url: str, mode: str) -> dict[str, object]:
    proc = await asyncio.create_subprocess_exec(
        _node(),
        str(NODE_DIR / "ws_client.js"),
        url,
        mode,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), scaled(20))
    assert proc.returncode == 0, (out, err)
    result: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def test_node_ws_client_against_echo_and_chat() -> None:
    config = ServeConfig(
        greeting=[],
        echo=["ws://127.0.0.1:0"],
        chat=["tcp://127.0.0.1:0"],
        web=["tcp://127.0.0.1:0"],
    )
    async with wirecat.Server(config) as server:
        echo = server.endpoint("echo")
        result = await _run_node(f"ws://127.0.0.1:{echo.port}/", "echo")
        assert result["ok"] is True and result["messages"] == 12
        web = server.endpoint("web")
        result = await _run_node(f"ws://127.0.0.1:{web.port}/chat", "chat")
        assert result["ok"] is True
        assert result["seen"][:3] == ["welcome", "join", "joined"]  # type: ignore[index]
