"""The files service over tls:// (self-signed server, pinned client), library and CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from helpers import files_serve_argv, read_ready
from wirecat.endpoints import Endpoint, parse_endpoint
from wirecat.errors import HandshakeError
from wirecat.files.client import FilesClient, hash_file
from wirecat.runtime.limits import Limits
from wirecat.runtime.loop import run
from wirecat.runtime.server import Server
from wirecat.runtime.tls import SelfSigned, self_signed, server_context
from wirecat.services.files import FilesService

T = TypeVar("T")
TIMEOUT = 10.0  # seconds: the one bound for every wait in this file
LOOPS = ["asyncio", "uvloop"]


@pytest.fixture(scope="module")
def cert() -> SelfSigned:
    return self_signed()


def arun(coro: Awaitable[T], loop: str = "asyncio") -> T:
    async def bounded() -> T:
        async with asyncio.timeout(TIMEOUT * 3):
            return await coro

    return run(bounded(), loop=loop)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def serving_tls(root: Path, cert: SelfSigned, **kw: Any) -> AsyncIterator[Endpoint]:
    svc = FilesService([parse_endpoint("tls://127.0.0.1:0")], root, **kw)
    ctx = server_context(cert.cert_pem, cert.key_pem)
    server = Server([svc], limits=Limits(shutdown_grace=1.0), tls=ctx)
    await server.start()
    try:
        yield server.endpoint("files")
    finally:
        await server.shutdown()


@pytest.mark.parametrize("loop", LOOPS)
def test_tls_upload_download_round_trip_with_pin(
    tmp_path: Path, cert: SelfSigned, loop: str
) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(random.Random(5).randbytes(2 * 1024 * 1024 + 3))

    async def main() -> None:
        async with (
            serving_tls(tmp_path / "root", cert) as ep,
            await FilesClient.connect(ep, pin=cert.fingerprint, timeout=TIMEOUT) as c,
        ):
            assert ep.scheme == "tls"
            up = await c.upload(src, "d/a.bin")
            # no sendfile through TLS: the bytes must be encrypted by the transport
            assert up.method == "copy" and up.digest == hash_file(src)
            listing = await c.list("d")
            assert [e.name for e in listing.entries] == ["a.bin"]
            down = await c.download("d/a.bin", tmp_path / "out.bin")
            assert down.digest == up.digest
            # resume over TLS: a partial download continues from its size
            part = tmp_path / ".again.bin.wcpart"
            part.write_bytes(src.read_bytes()[:1000])
            again = await c.download("d/a.bin", tmp_path / "again.bin")
            assert again.resumed_from == 1000
        assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
        assert (tmp_path / "again.bin").read_bytes() == src.read_bytes()
        assert hash_file(tmp_path / "root/d/a.bin") == hash_file(src)

    arun(main(), loop)


def test_tls_refused_without_pin_or_with_a_wrong_one(tmp_path: Path, cert: SelfSigned) -> None:
    other = self_signed()

    async def main() -> None:
        async with serving_tls(tmp_path / "root", cert) as ep:
            with pytest.raises(HandshakeError):  # self-signed: not in the system CAs
                await FilesClient.connect(ep, timeout=TIMEOUT)
            with pytest.raises(HandshakeError, match="does not match"):
                await FilesClient.connect(ep, pin=other.fingerprint, timeout=TIMEOUT)
            # the server is still fine afterwards
            async with await FilesClient.connect(ep, pin=cert.fingerprint, timeout=TIMEOUT) as c:
                assert (await c.stat("x")).exists is False

    arun(main())


# -- CLI -----------------------------------------------------------------------------------
@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    proc = subprocess.Popen(
        files_serve_argv(tmp_path / "root", "tls://127.0.0.1:0", "--self-signed"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = read_ready(proc.stdout, TIMEOUT)  # printed once bound
        assert ready["fingerprint"].startswith("sha256:"), ready
        yield ready["endpoints"]["files"][0], ready["fingerprint"]
    finally:
        proc.terminate()
        proc.wait(TIMEOUT * 2)
        if proc.stdout is not None:
            proc.stdout.close()


def wirecat(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wirecat.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
    )


def test_cli_send_get_ls_over_tls(tmp_path: Path, tls_server: tuple[str, str]) -> None:
    endpoint, pin = tls_server
    src = tmp_path / "a.bin"
    src.write_bytes(random.Random(9).randbytes(200_000))
    sent = wirecat("send", str(src), endpoint, "--pin", pin, "--json")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["digest"] == hash_file(src)
    listing = wirecat("ls", endpoint, "--pin", pin, "--json")
    assert [e["name"] for e in json.loads(listing.stdout)["entries"]] == ["a.bin"]
    dest = tmp_path / "got.bin"
    got = wirecat("get", "a.bin", endpoint, "--pin", pin, "-o", str(dest), "-q")
    assert got.returncode == 0, got.stderr
    assert dest.read_bytes() == src.read_bytes()

    refused = wirecat("ls", endpoint)
    assert refused.returncode != 0 and "TLS" in refused.stderr
    unpinned = wirecat("send", str(src), endpoint, "--as", "b.bin", "--json")
    assert unpinned.returncode != 0 and "TLS" in json.loads(unpinned.stdout)["message"]
    misuse = wirecat("send", str(src), "127.0.0.1:9", "--pin", pin)
    assert misuse.returncode == 64 and "tls://" in misuse.stderr
