"""Issue 13 against the files service (items 4, 5, 7, 8), over real sockets on 127.0.0.1.

Each test fails on the code before the fix: stalled downloads held a thread and a descriptor
forever; a dribbled header or upload body held the connection (and an upload's whole quota
reservation) forever; a name with a 248-255 byte component, a name on disk that is not
UTF-8 and a hostile server's nested header gave tracebacks; abandoned parts stayed forever.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from helpers import wait_for
from test_files_service import (
    LOOPS,
    TIMEOUT,
    arun,
    blob,
    line,
    raw,
    serving,
    settle,
    start_put,
)
from wirecat.files.client import FilesClient, TransferError, hash_file
from wirecat.runtime.limits import Limits, MinRate


def sendfile_threads() -> int:
    return sum(t.name == "wirecat-sendfile" for t in threading.enumerate())


def join_sendfile_threads() -> None:
    for t in threading.enumerate():
        if t.name == "wirecat-sendfile":
            t.join(TIMEOUT)


async def stalled_get(ep: Any, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Ask for ``name``, read the header and one body byte, then read nothing more."""
    reader, writer = await raw(ep)
    writer.write(json.dumps({"op": "get", "name": name}).encode() + b"\n")
    assert (await line(reader))["ok"]
    assert len(await asyncio.wait_for(reader.readexactly(1), TIMEOUT)) == 1
    writer.transport.pause_reading()  # the client stops reading: TCP fills up
    return reader, writer


async def slots_free(svc: Any) -> None:
    """Wait (bounded) until the cut transfers' threads have handed their slots back."""
    await wait_for(lambda: svc.slots.in_use == 0, TIMEOUT, what="transfer slots handed back")


# -- item 4: downloads that are never read ------------------------------------------------
@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("zero_copy", [True, False])
def test_a_download_nobody_reads_is_cut_and_its_thread_released(
    tmp_path: Path, loop: str, zero_copy: bool
) -> None:
    """Before: the idle timeout skipped a connection with a download running and the
    sendfile thread waited without a deadline; the connection stayed forever."""
    (tmp_path / "root").mkdir()
    blob(tmp_path / "root", 48 * 1024 * 1024, "big")

    async def main() -> None:
        lim = Limits(idle_timeout=0.4, shutdown_grace=1.0)
        async with serving(tmp_path / "root", limits=lim, zero_copy=zero_copy) as (svc, ep):
            _reader, writer = await stalled_get(ep, "big")
            await settle(svc)  # the server cut the connection: no progress for idle_timeout
            assert svc.test_ctx.metrics["files_download_stalled"] == 1  # type: ignore[attr-defined]
            await slots_free(svc)
            writer.close()

    arun(main(), loop)
    join_sendfile_threads()
    assert sendfile_threads() == 0


def test_a_slow_download_that_moves_is_not_cut(tmp_path: Path) -> None:
    """Progress (even slow) counts as activity: only a download that stands still is cut."""
    (tmp_path / "root").mkdir()
    src = blob(tmp_path / "root", 4 * 1024 * 1024, "f")

    async def main() -> None:
        lim = Limits(idle_timeout=0.5, shutdown_grace=1.0)
        async with serving(tmp_path / "root", limits=lim) as (svc, ep):
            reader, writer = await raw(ep)
            writer.write(b'{"op":"get","name":"f"}\n')
            hdr = await line(reader)
            got = 0
            while got < hdr["length"]:  # ~3 MiB/s: about 1.3 s, longer than idle_timeout
                chunk = await asyncio.wait_for(reader.read(64 * 1024), TIMEOUT)
                assert chunk
                got += len(chunk)
                await asyncio.sleep(0.02)  # the pace under test, not synchronisation
            assert (await line(reader))["digest"] == hash_file(src)
            assert svc.test_ctx.metrics["files_download_stalled"] == 0  # type: ignore[attr-defined]
            writer.close()

    arun(main())


def test_transfer_threads_are_bounded(tmp_path: Path) -> None:
    """Before: one sendfile thread (and 4 descriptors) per download, however many."""
    (tmp_path / "root").mkdir()
    blob(tmp_path / "root", 48 * 1024 * 1024, "big")
    before = sendfile_threads()

    async def main() -> None:
        lim = Limits(idle_timeout=1.0, shutdown_grace=1.0)
        async with serving(tmp_path / "root", limits=lim, transfer_threads=2) as (svc, ep):
            conns = [await stalled_get(ep, "big") for _ in range(5)]
            assert sendfile_threads() - before <= 2  # the other three copy on the loop
            assert svc.slots.in_use == 2
            await settle(svc)  # all five stalled: all cut
            assert svc.test_ctx.metrics["files_download_stalled"] == 5  # type: ignore[attr-defined]
            await slots_free(svc)
            for _r, w in conns:
                w.close()

    arun(main())
    join_sendfile_threads()


# -- item 5: dribbling --------------------------------------------------------------------
@pytest.mark.parametrize("loop", LOOPS)
def test_a_dribbled_request_header_meets_its_deadline(tmp_path: Path, loop: str) -> None:
    """A byte every 50 ms keeps the idle timer happy; the header deadline does not."""

    async def main() -> None:
        lim = Limits(idle_timeout=1.0, shutdown_grace=1.0)
        async with serving(tmp_path / "root", limits=lim, header_timeout=0.4) as (svc, ep):
            reader, writer = await raw(ep)
            header = json.dumps({"op": "stat", "name": "x" * 200}).encode() + b"\n"

            async def dribble() -> None:
                for b in header:
                    writer.write(bytes([b]))
                    await asyncio.sleep(0.05)  # the attack's pace, not synchronisation

            task = asyncio.ensure_future(dribble())
            reply = await line(reader)
            assert reply["error"] == "timeout" and "header" in reply["message"]
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
            task.cancel()
            writer.close()
            await settle(svc)
            assert svc.test_ctx.metrics["files_header_timeouts"] == 1  # type: ignore[attr-defined]

    arun(main(), loop)


def test_a_header_sent_at_once_after_a_quiet_while_is_fine(tmp_path: Path) -> None:
    """The deadline runs from a header's first byte: a quiet connection is the idle
    timeout's business, and pipelined requests each get their own deadline."""

    async def main() -> None:
        async with serving(tmp_path / "root", header_timeout=0.2) as (_svc, ep):
            reader, writer = await raw(ep)
            await asyncio.sleep(0.4)  # longer than the header deadline, before any byte
            writer.write(b'{"op":"stat","name":"a"}\n{"op":"stat","name":"b"}\n')
            assert (await line(reader))["name"] == "a"
            assert (await line(reader))["name"] == "b"
            writer.close()

    arun(main())


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("zero_copy", [True, False])
def test_an_upload_below_the_minimum_rate_is_cut_and_frees_the_quota(
    tmp_path: Path, loop: str, zero_copy: bool
) -> None:
    """Before: a put declaring the whole quota, then a byte every few seconds, made every
    other upload fail with quota for as long as the dribbler liked."""
    quota = 100_000

    async def main() -> None:
        kw: dict[str, Any] = {"quota": quota, "min_rate": 1000, "rate_window": 0.5}
        lim = Limits(idle_timeout=5.0, shutdown_grace=1.0)
        async with serving(tmp_path / "root", limits=lim, zero_copy=zero_copy, **kw) as (
            svc,
            ep,
        ):
            reader, writer, reply = await start_put(ep, "hog", quota)
            assert reply.get("ready")

            async def dribble() -> None:
                while not writer.is_closing():
                    writer.write(b"x")
                    await asyncio.sleep(0.1)  # 10 bytes/s: the attack's pace

            task = asyncio.ensure_future(dribble())
            other = tmp_path / "other"
            other.write_bytes(b"y" * 1000)
            async with await FilesClient.connect(ep) as c:
                with pytest.raises(TransferError, match="quota"):
                    await c.upload(other, "other")
            cut = await line(reader)
            assert cut["error"] == "timeout" and "bytes/s" in cut["message"]
            task.cancel()
            writer.close()
            await settle(svc)
            assert svc.test_ctx.metrics["files_upload_too_slow"] == 1  # type: ignore[attr-defined]
            async with await FilesClient.connect(ep) as c:
                await c.upload(other, "other")  # the reservation was released
                held = (await c.stat("hog")).partial
                assert held is not None and 0 < held < 100  # kept for a resume

    arun(main(), loop)


def test_a_fast_upload_is_not_cut(tmp_path: Path) -> None:
    src = blob(tmp_path, 8 * 1024 * 1024)

    async def main() -> None:
        async with serving(tmp_path / "root", min_rate=1000, rate_window=0.2) as (svc, ep):
            async with await FilesClient.connect(ep) as c:
                await c.upload(src, "f")
            assert svc.test_ctx.metrics["files_upload_too_slow"] == 0  # type: ignore[attr-defined]

    arun(main())
    assert hash_file(tmp_path / "root/f") == hash_file(src)


def test_min_rate_arithmetic() -> None:
    r = MinRate(100, 1.0, now=0.0)
    r.add(50)
    assert r.check(0.9) and r.due(0.9) == pytest.approx(0.1)
    assert not r.check(1.0)  # 50 bytes in the 1 s window: below 100 bytes/s
    r = MinRate(100, 1.0, now=0.0)
    r.add(100)
    assert r.check(1.0)  # met: the next window starts
    r.pause(1.5)  # our disk lags: not the peer's time
    assert r.check(10.0) and r.elapsed(10.0) == pytest.approx(0.5)
    r.resume(10.0)
    assert not r.check(10.5)
    with pytest.raises(ValueError):
        MinRate(0, 1.0, now=0.0)


# -- item 7: names ---------------------------------------------------------------------------
def test_long_names_and_names_that_are_not_utf8_over_the_wire(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with open(os.path.join(os.fsencode(root), b"latin1-\xe9.txt"), "wb") as f:
        f.write(b"x")
    name = "d/" + "é" * 127 + "x"  # a 255-byte component

    async def main() -> None:
        async with serving(root) as (_svc, ep), await FilesClient.connect(ep) as c:
            assert not (await c.stat(name)).exists  # before: a traceback, the connection cut
            payload = tmp_path / "payload"
            payload.write_bytes(b"payload")
            await c.upload(payload, name)
            assert (await c.stat(name)).size == 7
            assert [e.name for e in (await c.list()).entries] == ["d"]  # before: failed
            assert [e.name for e in (await c.list("d")).entries] == [name[2:]]
            local = tmp_path / "out" / name[2:]  # the client's own part name fits too
            local.parent.mkdir()
            await c.download(name, local)
            assert local.read_bytes() == b"payload"

    arun(main())


def test_wirecat_ls_against_a_server_sending_a_deeply_nested_header(tmp_path: Path) -> None:
    """Before: RecursionError, a traceback and exit 70."""
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def hostile() -> None:
        conn, _ = lsock.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"[" * 8000 + b"\n")

    t = threading.Thread(target=hostile, daemon=True)
    t.start()
    proc = subprocess.run(
        [sys.executable, "-m", "wirecat", "ls", f"tcp://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    t.join(TIMEOUT)
    lsock.close()
    assert "Traceback" not in proc.stderr
    assert proc.returncode not in (0, 70)
    assert "nested too deeply" in proc.stderr or "does not look like" in proc.stderr


# -- item 8: leftovers -----------------------------------------------------------------------
def test_a_refused_put_over_the_wire_creates_no_directory(tmp_path: Path) -> None:
    root = tmp_path / "root"

    async def main() -> None:
        async with serving(root, quota=10) as (_svc, ep):
            _r, w, reply = await start_put(ep, "a/b/c/f", 11)
            assert reply["error"] == "quota"
            w.close()
            _r, w, reply = await start_put(ep, "x/y", 5, offset=3)
            assert reply["error"] == "conflict"
            w.close()

    arun(main())
    assert list(root.iterdir()) == []


def test_a_put_that_got_ready_then_left_leaves_no_part(tmp_path: Path) -> None:
    root = tmp_path / "root"

    async def main() -> None:
        async with serving(root) as (svc, ep):
            _r, w, reply = await start_put(ep, "gone", 100)
            assert reply.get("ready")
            w.close()
            await settle(svc)

    arun(main())
    assert list(root.iterdir()) == []


def test_abandoned_parts_are_swept_at_start_and_periodically(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "sub").mkdir()
    (root / "sub/.wcpart-old").write_bytes(b"x" * 10)
    os.utime(root / "sub/.wcpart-old", (1, 1))
    (root / ".wcpart-fresh").write_bytes(b"y" * 10)

    async def main() -> None:
        async with serving(root, part_expiry=0.4) as (svc, ep):
            assert not (root / "sub/.wcpart-old").exists()  # swept at start
            assert svc.test_ctx.metrics["files_parts_expired"] == 1  # type: ignore[attr-defined]
            async with await FilesClient.connect(ep) as c:
                assert (await c.stat("fresh")).partial == 10
                for _ in range(int(TIMEOUT / 0.05)):  # swept every part_expiry / 4 s
                    if (await c.stat("fresh")).partial is None:
                        break
                    await asyncio.sleep(0.05)
                assert (await c.stat("fresh")).partial is None

    arun(main())


def test_files_config_fields_and_flags_reach_the_service(tmp_path: Path) -> None:
    import wirecat
    from wirecat.app import build_services, prepare
    from wirecat.cli.serve import serve_command

    cfg = wirecat.ServeConfig(
        greeting=[],
        echo=[],
        chat=[],
        files_root=str(tmp_path),
        files_header_timeout=3.0,
        files_min_rate=0,
        files_rate_window=7.0,
        files_transfer_threads=4,
        files_part_expiry=0,
    )
    (svc,) = build_services(cfg, prepare(cfg))
    assert (svc.header_timeout, svc.min_rate, svc.rate_window) == (3.0, None, 7.0)  # type: ignore[attr-defined]
    assert svc.slots.limit == 4 and svc.part_expiry is None  # type: ignore[attr-defined]
    with pytest.raises(wirecat.ConfigError):
        wirecat.ServeConfig(files_header_timeout=0)
    helptext = serve_command.get_help(
        serve_command.make_context("serve", ["--help"], resilient_parsing=True)
    )
    for flag in (
        "--files-header-timeout",
        "--files-min-rate",
        "--files-rate-window",
        "--files-transfer-threads",
        "--files-part-expiry",
    ):
        assert flag in helptext
