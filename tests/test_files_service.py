"""The files service over real sockets on 127.0.0.1 (port 0), on asyncio and uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import random
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from wirecat.endpoints import Endpoint, parse_endpoint
from wirecat.files.client import FilesClient, TransferError, hash_file
from wirecat.files.digest import new_hasher
from wirecat.runtime.limits import Limits
from wirecat.runtime.loop import run
from wirecat.runtime.server import Server
from wirecat.services.files import FilesService

T = TypeVar("T")
TIMEOUT = 10.0  # seconds: the one bound for every wait in this file
LOOPS = ["asyncio", "uvloop"]


def arun(coro: Awaitable[T], loop: str = "asyncio") -> T:
    async def bounded() -> T:
        async with asyncio.timeout(TIMEOUT * 3):
            return await coro

    return run(bounded(), loop=loop)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def serving(root: Path, **kw: Any) -> AsyncIterator[tuple[FilesService, Endpoint]]:
    svc = FilesService([parse_endpoint("tcp://127.0.0.1:0")], root, **kw)
    server = Server([svc], limits=Limits(shutdown_grace=1.0))
    await server.start()
    svc.test_ctx = server.ctx  # type: ignore[attr-defined]
    try:
        yield svc, server.endpoint("files")
    finally:
        await server.shutdown()


async def settle(svc: FilesService) -> None:
    """Wait until every connection is gone and dropped uploads are flushed and unlocked."""
    await asyncio.wait_for(svc.test_ctx.wait_empty(), TIMEOUT)  # type: ignore[attr-defined]
    await asyncio.wait_for(svc.stop(), TIMEOUT)


def blob(tmp_path: Path, size: int, name: str = "src.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(random.Random(size).randbytes(size))
    return path


def digest_of(data: bytes) -> str:
    h = new_hasher("blake3")
    h.update(data)
    return h.hexdigest()


async def raw(ep: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(ep.host, ep.port)


async def line(reader: asyncio.StreamReader) -> dict[str, Any]:
    data = await asyncio.wait_for(reader.readline(), TIMEOUT)
    assert data, "server closed without answering"
    obj: dict[str, Any] = json.loads(data)
    return obj


async def start_put(ep: Endpoint, name: str, size: int, offset: int = 0) -> Any:
    reader, writer = await raw(ep)
    hdr = {"op": "put", "name": name, "size": size, "offset": offset, "digest": "blake3"}
    writer.write(json.dumps(hdr).encode() + b"\n")
    return reader, writer, await line(reader)


# -- round trips ---------------------------------------------------------------------------
@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("algo", ["blake3", "sha256"])
def test_send_get_ls_round_trip(tmp_path: Path, loop: str, algo: str) -> None:
    src = blob(tmp_path, 3 * 1024 * 1024 + 7)

    async def main() -> None:
        async with serving(tmp_path / "root") as (_svc, ep), await FilesClient.connect(ep) as c:
            seen: list[int] = []
            up = await c.upload(src, "dir/a.bin", digest=algo, progress=lambda d, t: seen.append(d))
            assert up.digest == hash_file(src, algo) and up.size == src.stat().st_size
            assert seen[-1] == up.size
            listing = await c.list("dir")
            assert [(e.name, e.size) for e in listing.entries] == [("a.bin", up.size)]
            down = await c.download("dir/a.bin", tmp_path / "out.bin", digest=algo)
            assert down.digest == up.digest
            empty = tmp_path / "empty"
            empty.write_bytes(b"")
            await c.upload(empty, "empty")
            await c.download("empty", tmp_path / "empty.out")
        assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
        assert (tmp_path / "empty.out").read_bytes() == b""

    arun(main(), loop)


def test_copy_path_without_zero_copy(tmp_path: Path) -> None:
    src = blob(tmp_path, 1024 * 1024)

    async def main() -> None:
        async with (
            serving(tmp_path / "root", zero_copy=False) as (_svc, ep),
            await FilesClient.connect(ep) as c,
        ):
            up = await c.upload(src, "a", zero_copy=False)
            assert up.method == "copy"
            await c.download("a", tmp_path / "o")
        assert (tmp_path / "o").read_bytes() == src.read_bytes()

    arun(main())


def test_refusals_over_the_wire(tmp_path: Path) -> None:
    src = blob(tmp_path, 1000)
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "evil").symlink_to(tmp_path / "outside")

    async def main() -> None:
        async with (
            serving(root, max_file_size=500) as (_svc, ep),
            await FilesClient.connect(ep) as c,
        ):
            for name, code in [
                ("../x", "bad_name"),
                ("evil/x", "bad_name"),
                ("big", "too_large"),
            ]:
                with pytest.raises(TransferError) as e:
                    await c.upload(src, name)
                assert e.value.code == code
            with pytest.raises(TransferError) as e:
                await c.download("missing", tmp_path / "m")
            assert e.value.code == "not_found"
            assert not (tmp_path / ".m.wcpart").exists()
        assert list((tmp_path / "outside").iterdir()) == []

    arun(main())


def test_overwrite_and_readonly(tmp_path: Path) -> None:
    src = blob(tmp_path, 100)

    async def main() -> None:
        async with serving(tmp_path / "root") as (_svc, ep), await FilesClient.connect(ep) as c:
            await c.upload(src, "a")
            with pytest.raises(TransferError) as e:
                await c.upload(src, "a")
            assert e.value.code == "exists"
            await c.upload(src, "a", overwrite=True)
        async with (
            serving(tmp_path / "root", readonly=True) as (_svc, ep),
            await FilesClient.connect(ep) as c,
        ):
            with pytest.raises(TransferError) as e:
                await c.upload(src, "b")
            assert e.value.code == "read_only"

    arun(main())


# -- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "header",
    [
        b'{"op":"stat","name":"' + b"a" * 9000 + b'"}\n',  # header longer than 8 KiB
        b'{"op":"put","name":"a","size":-1}\n',
        b'{"op":"put","name":"a","size":"12"}\n',
        b"garbage\n",
    ],
)
def test_bad_headers_get_a_clear_error(tmp_path: Path, header: bytes) -> None:
    async def main() -> None:
        async with serving(tmp_path / "root") as (_svc, ep):
            reader, writer = await raw(ep)
            writer.write(header)
            reply = await line(reader)
            assert reply["ok"] is False and reply["error"] == "bad_request"
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # then it closes
            writer.close()
        assert list((tmp_path / "root").iterdir()) == []

    arun(main())


def test_size_above_limit_refused_before_body(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "root", max_file_size=10) as (_svc, ep):
            _reader, writer, reply = await start_put(ep, "a", 11)
            assert reply["error"] == "too_large"  # answered without a single body byte
            writer.close()

    arun(main())


def test_wrong_checksum_discards(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "root") as (_svc, ep):
            reader, writer, reply = await start_put(ep, "a", 3)
            assert reply == {"ok": True, "ready": True, "offset": 0}
            writer.write(b"abc" + json.dumps({"digest": digest_of(b"abd")}).encode() + b"\n")
            reply = await line(reader)
            assert reply["error"] == "digest_mismatch"
            writer.close()
        assert list((tmp_path / "root").iterdir()) == []

    arun(main())


def test_body_longer_than_declared(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "root") as (svc, ep):
            reader, writer, _ = await start_put(ep, "a", 3)
            writer.write(b"abcdef-not-a-trailer\n")
            reply = await line(reader)
            assert reply["error"] == "bad_request"
            writer.close()
            await settle(svc)
        assert list((tmp_path / "root").iterdir()) == []

    arun(main())


def test_body_shorter_than_declared_keeps_part_then_resumes(tmp_path: Path) -> None:
    src = blob(tmp_path, 100_000)

    async def main() -> None:
        async with serving(tmp_path / "root") as (svc, ep):
            reader, writer, _ = await start_put(ep, "a", 100_000)
            writer.write(src.read_bytes()[:40_000])
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
            writer.close()
            await settle(svc)  # the dropped upload's part is flushed and unlocked
            async with await FilesClient.connect(ep) as c:
                assert (await c.stat("a")).partial == 40_000
                result = await c.upload(src, "a")
                assert result.resumed_from == 40_000 and result.transferred == 60_000
        assert hash_file(tmp_path / "root/a") == hash_file(src)

    arun(main())


def test_wrong_offset_is_a_conflict_that_changes_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "root") as (svc, ep):
            _reader, writer, _ = await start_put(ep, "a", 100)
            writer.write(b"x" * 30)
            writer.close()
            await settle(svc)
            _, w2, reply = await start_put(ep, "a", 100, offset=10)
            assert reply["error"] == "conflict" and reply["offset"] == 30
            w2.close()
            async with await FilesClient.connect(ep) as c:
                assert (await c.stat("a")).partial == 30

    arun(main())


# -- faults --------------------------------------------------------------------------------
@pytest.mark.parametrize("loop", LOOPS)
def test_cut_at_random_offsets_each_resumes_verified(tmp_path: Path, loop: str) -> None:
    size = 2 * 1024 * 1024
    src = blob(tmp_path, size)
    data = src.read_bytes()
    rng = random.Random(int(os.environ.get("WIRECAT_TEST_SEED", "7")))
    cuts = sorted(rng.randrange(1, size) for _ in range(3))

    async def main() -> None:
        async with serving(tmp_path / "root") as (svc, ep):
            held = 0
            for cut in cuts:
                _reader, writer, reply = await start_put(ep, "big", size, offset=held)
                assert reply.get("ready"), reply
                writer.write(data[held:cut])
                await writer.drain()
                writer.transport.abort()  # cut the connection (RST)
                await settle(svc)
                async with await FilesClient.connect(ep) as c:
                    held = (await c.stat("big")).partial or 0
                assert held <= cut
            async with await FilesClient.connect(ep) as c:
                result = await c.upload(src, "big")
            assert result.resumed_from == held

    arun(main(), loop)
    assert hash_file(tmp_path / "root/big") == hash_file(src)


@pytest.mark.parametrize("zero_copy", [True, False])
@pytest.mark.parametrize("loop", LOOPS)
def test_download_cut_then_resumed(tmp_path: Path, loop: str, zero_copy: bool) -> None:
    size = 3 * 1024 * 1024
    src = blob(tmp_path, size)
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_bytes(src.read_bytes())
    out = tmp_path / "out"

    async def main() -> None:
        async with serving(root) as (_svc, ep):
            c = await FilesClient.connect(ep)

            def cut(done: int, total: int) -> None:
                if done >= size // 3:
                    c.abort()

            with pytest.raises(Exception):  # noqa: B017 - any transport error
                await c.download("f", out, progress=cut, zero_copy=zero_copy)
            held = (tmp_path / ".out.wcpart").stat().st_size
            # the threads may have read ahead of the progress report (at most the whole
            # body); through the loop the cut lands mid-body
            assert 0 < held <= size and not out.exists()
            if not zero_copy:
                assert held < size
            async with await FilesClient.connect(ep) as c2:
                result = await c2.download("f", out)
            assert result.resumed_from == held

    arun(main(), loop)
    assert out.read_bytes() == src.read_bytes()
    assert not (tmp_path / ".out.wcpart").exists()


def test_two_uploaders_of_one_name(tmp_path: Path) -> None:
    src = blob(tmp_path, 1000)

    async def main() -> None:
        async with serving(tmp_path / "root") as (_svc, ep):
            reader, writer, reply = await start_put(ep, "same", 1000)
            assert reply.get("ready")
            async with await FilesClient.connect(ep) as c:
                with pytest.raises(TransferError) as e:
                    await c.upload(src, "same", resume=False)
                assert e.value.code == "locked"
            writer.write(src.read_bytes() + json.dumps({"digest": hash_file(src)}).encode() + b"\n")
            assert (await line(reader))["ok"] is True
            writer.close()

    arun(main())


@pytest.mark.parametrize("zero_copy", [True, False])
def test_enospc_clear_error_part_kept_and_resume(tmp_path: Path, zero_copy: bool) -> None:
    size = 2 * 1024 * 1024
    src = blob(tmp_path, size)

    async def main() -> None:
        async with serving(tmp_path / "root") as (svc, ep):
            budget = [size // 2]

            def full_disk(fd: int, data: bytes | memoryview) -> int:
                if budget[0] <= 0:
                    raise OSError(errno.ENOSPC, "No space left on device")
                n = os.write(fd, memoryview(data)[: budget[0]])
                budget[0] -= n
                return n

            svc.store.write_hook = full_disk
            async with await FilesClient.connect(ep) as c:
                with pytest.raises(TransferError) as e:
                    await c.upload(src, "f", zero_copy=zero_copy)
                assert e.value.code == "no_space"
            await settle(svc)
            svc.store.write_hook = os.write
            async with await FilesClient.connect(ep) as c:
                assert (await c.stat("f")).partial == size // 2
                result = await c.upload(src, "f")
                assert result.resumed_from == size // 2

    arun(main())
    assert hash_file(tmp_path / "root/f") == hash_file(src)


@pytest.mark.parametrize("loop", LOOPS)
def test_stalled_upload_body_hits_the_idle_timeout(tmp_path: Path, loop: str) -> None:
    """The body is read on threads (the loop's idle timer sees nothing): they time out too."""
    size = 1024 * 1024
    data = random.Random(3).randbytes(size)

    async def main() -> None:
        async with serving(tmp_path / "root", limits=Limits(idle_timeout=0.3)) as (svc, ep):
            reader, writer, reply = await start_put(ep, "s", size)
            assert reply.get("ready")
            writer.write(data[:1000])
            await writer.drain()
            # then nothing: the server closes once idle_timeout passed without a byte
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
            writer.close()
            await settle(svc)
            assert svc.test_ctx.metrics["files_upload_idle"] == 1  # type: ignore[attr-defined]
            async with await FilesClient.connect(ep) as c:
                assert (await c.stat("s")).partial == 1000

    arun(main(), loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_shutdown_during_a_stalled_upload_body(tmp_path: Path, loop: str) -> None:
    size = 1024 * 1024

    async def main() -> None:
        root = tmp_path / "root"
        async with serving(root, limits=Limits(idle_timeout=None)) as (_svc, ep):
            reader, writer, reply = await start_put(ep, "s", size)
            assert reply.get("ready")
            writer.write(b"z" * 5000)
            await writer.drain()
        # serving() shut the server down: the grace period ran out, the peer was cut,
        # the receiving threads stopped and the part was kept and unlocked
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        writer.close()
        assert (root / ".wcpart-s").stat().st_size == 5000

    arun(main(), loop)
