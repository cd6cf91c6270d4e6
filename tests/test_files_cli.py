"""``wirecat send/get/ls`` and a server killed with SIGKILL mid-upload (real processes)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import files_serve_argv, read_ready
from wirecat.files.client import hash_file

TIMEOUT = 20.0  # seconds, for every subprocess wait


class FilesServer:
    """``wirecat serve`` with only files on ``tcp://127.0.0.1:0``, in a subprocess."""

    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen(
            files_serve_argv(root, "tcp://127.0.0.1:0"), stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        ready = read_ready(self.proc.stdout, TIMEOUT)  # printed once bound: no sleep needed
        self.endpoint = ready["endpoints"]["files"][0]
        host, port = self.endpoint.removeprefix("tcp://").rsplit(":", 1)
        self.addr = (host, int(port))

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(TIMEOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FilesServer]:
    srv = FilesServer(tmp_path / "root")
    yield srv
    srv.stop()


def wirecat(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wirecat.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_send_get_ls_json_and_exit_codes(tmp_path: Path, server: FilesServer) -> None:
    src = tmp_path / "a.bin"
    src.write_bytes(os.urandom(300_000))
    sent = wirecat("send", str(src), server.endpoint, "--as", "x/a.bin", "--json")
    assert sent.returncode == 0, sent.stderr
    out = json.loads(sent.stdout)
    assert out["ok"] and out["verified"] and out["digest_name"] == "blake3"
    assert out["digest"] == hash_file(src)

    again = wirecat("send", str(src), server.endpoint, "--as", "x/a.bin", "--json")
    assert again.returncode == 73 and json.loads(again.stdout)["error"] == "exists"

    listing = wirecat("ls", server.endpoint, "x", "--json")
    assert json.loads(listing.stdout)["entries"][0]["name"] == "a.bin"

    dest = tmp_path / "got.bin"
    got = wirecat("get", "x/a.bin", server.endpoint, "-o", str(dest), "--digest", "sha256", "-q")
    assert got.returncode == 0, got.stderr
    assert dest.read_bytes() == src.read_bytes()

    missing = wirecat("get", "nope", server.endpoint, "-o", str(tmp_path / "n"))
    assert missing.returncode == 66 and "no file" in missing.stderr
    bad = wirecat("send", str(src), server.endpoint, "--as", "../escape")
    assert bad.returncode == 65 and "not allowed" in bad.stderr


def test_server_killed_mid_upload_then_resume(tmp_path: Path) -> None:
    size = 4 * 1024 * 1024
    src = tmp_path / "big.bin"
    src.write_bytes(random.Random(1).randbytes(size))
    root = tmp_path / "root"
    srv = FilesServer(root)
    try:
        with socket.create_connection(srv.addr, timeout=TIMEOUT) as sock:
            hdr = {"op": "put", "name": "big.bin", "size": size, "offset": 0}
            sock.sendall(json.dumps(hdr).encode() + b"\n")
            reply = json.loads(sock.makefile("rb").readline())
            assert reply["ready"] is True
            sock.sendall(src.read_bytes()[: size // 2])
            srv.kill9()  # no chance to clean up
        assert not (root / "big.bin").exists()  # nothing partial is visible
        assert [p.name for p in root.iterdir()] == [".wcpart-big.bin"]
    finally:
        srv.stop()
    srv = FilesServer(root)  # restart on the same directory
    try:
        listing = wirecat("ls", srv.endpoint, "--json")
        assert json.loads(listing.stdout)["entries"] == []
        sent = wirecat("send", str(src), srv.endpoint, "--json")
        assert sent.returncode == 0, sent.stderr
        out = json.loads(sent.stdout)
        assert out["verified"] and out["resumed_from"] <= size // 2
    finally:
        srv.stop()
    assert hash_file(root / "big.bin") == hash_file(src)
    assert sorted(p.name for p in root.iterdir()) == ["big.bin"]
