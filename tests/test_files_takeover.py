"""The threaded receive path (``SocketBody``: the socket taken over for one body) and the
client's hash thread, over real sockets on 127.0.0.1: bodies cut mid-way, short, with a
wrong digest, a full disk racing the last bytes, and downloads from a scripted server."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from test_files_service import LOOPS, TIMEOUT, arun, blob, line, serving, settle, start_put
from wirecat.errors import ConnectionClosedError
from wirecat.files.client import FilesClient, TransferError, hash_file
from wirecat.files.digest import hash_fd, new_hasher
from wirecat.files.pipeline import FileHashJob

SIZE = 5 * 1024 * 1024 + 13  # several 1 MiB receive buffers, not a multiple of a page


def digest_of(data: bytes) -> str:
    h = new_hasher("blake3")
    h.update(data)
    return h.hexdigest()


@pytest.mark.parametrize("loop", LOOPS)
def test_upload_and_download_through_the_threads(tmp_path: Path, loop: str) -> None:
    src = blob(tmp_path, SIZE)

    async def main() -> None:
        async with serving(tmp_path / "root") as (_svc, ep), await FilesClient.connect(ep) as c:
            seen: list[int] = []
            up = await c.upload(src, "a.bin")
            assert up.digest == hash_file(src) and up.method == "sendfile"
            down = await c.download(
                "a.bin", tmp_path / "out.bin", progress=lambda d, t: seen.append(d)
            )
            assert down.method == "recv" and down.digest == up.digest
            assert seen[-1] == SIZE

    arun(main(), loop)
    assert (tmp_path / "root/a.bin").read_bytes() == src.read_bytes()
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["a.bin"]
    assert not (tmp_path / ".out.bin.wcpart").exists()


@pytest.mark.parametrize("loop", LOOPS)
def test_upload_cut_mid_body_keeps_exactly_what_arrived_then_resumes(
    tmp_path: Path, loop: str
) -> None:
    src = blob(tmp_path, SIZE)
    data = src.read_bytes()
    cut = 3 * 1024 * 1024 + 4097

    async def main() -> None:
        async with serving(tmp_path / "root") as (svc, ep):
            _reader, writer, reply = await start_put(ep, "big", SIZE)
            assert reply.get("ready"), reply
            writer.write(data[:cut])
            await writer.drain()
            writer.close()  # FIN mid-body: an unclean end, every byte sent is kept
            await settle(svc)
            async with await FilesClient.connect(ep) as c:
                assert (await c.stat("big")).partial == cut
                result = await c.upload(src, "big")  # the server hashes the held prefix
            assert result.resumed_from == cut and result.transferred == SIZE - cut

    arun(main(), loop)
    assert (tmp_path / "root/big").read_bytes() == data


def test_upload_reset_mid_body_keeps_a_consistent_prefix(tmp_path: Path) -> None:
    src = blob(tmp_path, SIZE)
    data = src.read_bytes()

    async def main() -> None:
        async with serving(tmp_path / "root") as (svc, ep):
            _reader, writer, _ = await start_put(ep, "r", SIZE)
            writer.write(data[: SIZE // 2])
            await writer.drain()
            writer.transport.abort()  # RST: bytes in flight may be lost, never garbled
            await settle(svc)
            part = tmp_path / "root/.wcpart-r"
            held = part.stat().st_size
            assert held <= SIZE // 2
            assert part.read_bytes() == data[:held]
            async with await FilesClient.connect(ep) as c:
                result = await c.upload(src, "r")
            assert result.resumed_from == held

    arun(main())
    assert hash_file(tmp_path / "root/r") == hash_file(src)


def test_short_body_then_eof_keeps_the_part(tmp_path: Path) -> None:
    data = random.Random(5).randbytes(2 * 1024 * 1024)

    async def main() -> None:
        async with serving(tmp_path / "root") as (svc, ep):
            reader, writer, _ = await start_put(ep, "s", len(data) + 1000)
            writer.write(data)
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
            writer.close()
            await settle(svc)
        assert (tmp_path / "root/.wcpart-s").read_bytes() == data
        assert not (tmp_path / "root/s").exists()

    arun(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_wrong_digest_discards_and_the_connection_stays_usable(tmp_path: Path, loop: str) -> None:
    data = random.Random(6).randbytes(SIZE)

    async def main() -> None:
        async with serving(tmp_path / "root") as (svc, ep):
            reader, writer, _ = await start_put(ep, "w", SIZE)
            writer.write(data + json.dumps({"digest": digest_of(data[:-1])}).encode() + b"\n")
            reply = await line(reader)
            assert reply["error"] == "digest_mismatch"
            hdr = {"op": "put", "name": "w", "size": SIZE, "offset": 0, "digest": "blake3"}
            writer.write(json.dumps(hdr).encode() + b"\n")
            assert (await line(reader)).get("ready")
            writer.write(data + json.dumps({"digest": digest_of(data)}).encode() + b"\n")
            reply = await line(reader)
            assert reply["ok"] is True and reply["size"] == SIZE
            writer.close()
            await settle(svc)

    arun(main(), loop)
    assert (tmp_path / "root/w").read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["w"]


@pytest.mark.parametrize("attempt", range(5))
def test_no_space_racing_the_last_bytes_is_reported_as_no_space(
    tmp_path: Path, attempt: int
) -> None:
    """The server refuses after 1 MiB of 5 MiB: the client has usually sent everything by
    then (socket buffers), and must report ``no_space``, not a local protocol error."""
    src = blob(tmp_path, SIZE)
    budget = [1024 * 1024 + 100]

    def full_disk(fd: int, data: bytes | memoryview) -> int:
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = os.write(fd, memoryview(data)[: budget[0]])
        budget[0] -= n
        return n

    async def main() -> None:
        async with serving(tmp_path / "root") as (svc, ep):
            svc.store.write_hook = full_disk
            async with await FilesClient.connect(ep) as c:
                with pytest.raises(TransferError) as e:
                    await c.upload(src, "f")
                assert e.value.code == "no_space"
            await settle(svc)
            svc.store.write_hook = os.write
            async with await FilesClient.connect(ep) as c:
                assert (await c.stat("f")).partial == 1024 * 1024 + 100
                result = await c.upload(src, "f")
                assert result.resumed_from == 1024 * 1024 + 100

    arun(main())
    assert hash_file(tmp_path / "root/f") == hash_file(src)


# -- the client's hash thread ---------------------------------------------------------------
@pytest.mark.parametrize(("start", "end"), [(0, 0), (0, 1), (0, SIZE), (4095, SIZE - 7)])
def test_hash_fd_reads_the_range(tmp_path: Path, start: int, end: int) -> None:
    src = blob(tmp_path, SIZE)
    fd = os.open(src, os.O_RDONLY)
    try:
        h = new_hasher("blake3")
        hash_fd(fd, h, start, end)
    finally:
        os.close(fd)
    assert h.hexdigest() == digest_of(src.read_bytes()[start:end])


def test_hash_fd_past_the_end_raises(tmp_path: Path) -> None:
    src = blob(tmp_path, 1000)
    fd = os.open(src, os.O_RDONLY)
    try:
        with pytest.raises(OSError, match="ended at byte 1000"):
            hash_fd(fd, new_hasher("blake3"), 0, 2000)
    finally:
        os.close(fd)


def test_file_hash_job_survives_its_fd_closing_and_cancel(tmp_path: Path) -> None:
    src = blob(tmp_path, SIZE)

    async def main() -> None:
        fd = os.open(src, os.O_RDONLY)
        h = new_hasher("blake3")
        job = FileHashJob(fd, h, 0, SIZE)
        os.close(fd)  # the job reads its own duplicate
        await asyncio.wait_for(job.future, TIMEOUT)
        assert h.hexdigest() == hash_file(src)

        fd = os.open(src, os.O_RDONLY)
        job = FileHashJob(fd, new_hasher("sha256"), 0, SIZE)
        job.cancel()
        os.close(fd)
        with pytest.raises(asyncio.CancelledError):
            await job.future

        fd = os.open(src, os.O_RDONLY)
        job = FileHashJob(fd, new_hasher("blake3"), 0, SIZE + 1)  # past the end
        os.close(fd)
        with pytest.raises(OSError):
            await asyncio.wait_for(job.future, TIMEOUT)

    arun(main())


# -- downloads from a scripted server -------------------------------------------------------
async def scripted_server(
    body: bytes, size: int, digest: str, *, close_after_body: bool
) -> tuple[asyncio.Server, int, asyncio.Event]:
    """A files "server" that answers one get with ``body`` (maybe short) and ``digest``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await answer(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            done.set()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        req: dict[str, Any] = json.loads(await reader.readline())
        assert req["op"] == "get"
        head = {
            "ok": True,
            "name": req["name"],
            "size": size,
            "offset": req["offset"],
            "length": size - req["offset"],
            "digest": "blake3",
        }
        writer.write(json.dumps(head).encode() + b"\n")
        writer.write(body[req["offset"] :])
        if not close_after_body:
            writer.write(json.dumps({"digest": digest}).encode() + b"\n")
        await writer.drain()
        if not close_after_body:
            await reader.read()  # until the client goes

    done = asyncio.Event()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], done


@pytest.mark.parametrize("loop", LOOPS)
def test_download_with_a_wrong_digest_deletes_the_part(tmp_path: Path, loop: str) -> None:
    data = random.Random(8).randbytes(SIZE)
    out = tmp_path / "d.out"

    async def main() -> None:
        server, port, done = await scripted_server(data, SIZE, "0" * 64, close_after_body=False)
        async with server:
            async with await FilesClient.connect(f"tcp://127.0.0.1:{port}") as c:
                with pytest.raises(TransferError) as e:
                    await c.download("d", out)
                assert e.value.code == "digest_mismatch"
            await asyncio.wait_for(done.wait(), TIMEOUT)

    arun(main(), loop)
    assert not out.exists() and not (tmp_path / ".d.out.wcpart").exists()


@pytest.mark.parametrize("loop", LOOPS)
def test_download_cut_short_keeps_what_arrived(tmp_path: Path, loop: str) -> None:
    data = random.Random(9).randbytes(SIZE)
    short = 3 * 1024 * 1024 + 5
    out = tmp_path / "c.out"

    async def main() -> None:
        server, port, done = await scripted_server(data[:short], SIZE, "", close_after_body=True)
        async with server:
            async with await FilesClient.connect(f"tcp://127.0.0.1:{port}") as c:
                with pytest.raises(ConnectionClosedError):
                    await c.download("c", out)
            await asyncio.wait_for(done.wait(), TIMEOUT)

    arun(main(), loop)
    assert (tmp_path / ".c.out.wcpart").read_bytes() == data[:short]
    assert not out.exists()
