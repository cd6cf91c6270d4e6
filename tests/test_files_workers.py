"""Several server processes on one files root: one quota for all; and the resume demo, quick.

Real processes throughout: ``python -m wirecat.services.files`` (prints its port once
bound), ``wirecat serve --workers 2`` (its workers share a port, so the test holds that
port with a bound, never listening ``SO_REUSEPORT`` socket read back from port 0), and
``wirecat send`` clients. Waits are reads with a timeout or bounded polls of a condition.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from helpers import files_serve_argv, read_ready, scaled
from wirecat.files.client import hash_file
from wirecat.files.digest import new_hasher
from wirecat.files.store import LEDGER
from wirecat.protocols.files import PART_PREFIX

WIRECAT = [sys.executable, "-m", "wirecat.cli.main"]
BENCH = Path(__file__).resolve().parent.parent / "bench"
FILES_ROW = re.compile(r"files\s+\S\s+(tcp://127\.0\.0\.1:\d+)")


def poll(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Wait until ``predicate()`` is true, checking every 2 ms for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout:.1f} s: {what}"
        time.sleep(0.002)


def stored_bytes(root: Path) -> int:
    """What the root holds: files and part files (not the tiny reservation ledger)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.startswith(LEDGER):
                continue
            with contextlib.suppress(FileNotFoundError):  # committed or discarded meanwhile
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


@contextmanager
def watching(root: Path) -> Iterator[list[int]]:
    """Sample :func:`stored_bytes` every 2 ms while the block runs; yields [max seen]."""
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        deadline = time.monotonic() + scaled(60)
        while not stop.wait(0.002) and time.monotonic() < deadline:
            peak[0] = max(peak[0], stored_bytes(root))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join(scaled(10))
        peak[0] = max(peak[0], stored_bytes(root))


def digest_of(data: bytes) -> str:
    h = new_hasher("blake3")
    h.update(data)
    return h.hexdigest()


class FilesProc:
    """``wirecat serve`` with only files on ``tcp://127.0.0.1:0`` (and ``args``), in a
    subprocess."""

    def __init__(self, root: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            files_serve_argv(root, "tcp://127.0.0.1:0", *args), stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        ready = read_ready(self.proc.stdout, scaled(15))
        host, port = ready["endpoints"]["files"][0].removeprefix("tcp://").rsplit(":", 1)
        self.addr = (host, int(port))

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(scaled(10))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(scaled(10))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(scaled(10))
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Put:
    """One raw ``put`` over its own connection (the wire protocol, no client library)."""

    def __init__(self, addr: tuple[str, int], name: str, data: bytes, offset: int = 0) -> None:
        self.name, self.data = name, data
        self.sock = socket.create_connection(addr, timeout=scaled(10))
        self.reader = self.sock.makefile("rb")
        hdr = {"op": "put", "name": name, "size": len(data), "offset": offset, "digest": "blake3"}
        self.sock.sendall(json.dumps(hdr).encode() + b"\n")
        self.reply = json.loads(self.reader.readline())

    def finish(self) -> dict[str, object]:
        self.sock.sendall(self.data + json.dumps({"digest": digest_of(self.data)}).encode() + b"\n")
        result: dict[str, object] = json.loads(self.reader.readline())
        return result

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def test_two_server_processes_on_one_root_share_one_quota(tmp_path: Path) -> None:
    root = tmp_path / "root"
    quota, size = 1 << 20, 400 * 1024  # two uploads fit, a third does not
    data = [os.urandom(size) for _ in range(4)]
    a = FilesProc(root, "--quota", str(quota))
    b = FilesProc(root, "--quota", str(quota))
    puts: list[Put] = []
    try:
        with watching(root) as peak:
            puts.append(Put(a.addr, "f0", data[0]))
            puts.append(Put(b.addr, "f1", data[1]))
            assert puts[0].reply["ready"] and puts[1].reply["ready"]
            # each process holds one 400 KiB reservation: a per-process quota would say yes
            for addr in (a.addr, b.addr):
                refused = Put(addr, "f2", data[2])
                refused.close()
                assert refused.reply["ok"] is False and refused.reply["error"] == "quota"
            # b dies mid-upload (SIGKILL): its reservation must not outlive it
            puts[1].sock.sendall(data[1][: size // 2])
            poll(
                lambda: (root / f"{PART_PREFIX}f1").stat().st_size > 0,
                scaled(10),
                "b wrote part of f1",
            )
            b.kill9()
            puts.append(Put(a.addr, "f2", data[2]))
            assert puts[2].reply["ready"], puts[2].reply  # f0's 400 + f1's part + 400 fit
            results = [puts[0].finish(), puts[2].finish()]
        assert [r["ok"] for r in results] == [True, True]
        assert (root / "f0").read_bytes() == data[0] and (root / "f2").read_bytes() == data[2]
        held = (root / f"{PART_PREFIX}f1").stat().st_size
        assert 0 < held <= size // 2
        # the kept part counts: resuming f1 needs 400 KiB - held more, which does not fit
        resume = Put(a.addr, "f1", data[1], offset=held)
        resume.close()
        assert resume.reply["ok"] is False and resume.reply["error"] == "quota"
        assert peak[0] <= quota
        assert stored_bytes(root) == 2 * size + held
        assert not (root / LEDGER).exists()  # nothing in flight any more
    finally:
        for p in puts:
            p.close()
        a.stop()
        b.stop()


def _hold_reuseport() -> socket.socket:
    """A bound, never listening SO_REUSEPORT socket on 127.0.0.1 port 0 (read back): the
    workers of ``wirecat serve --workers`` can bind the same port, nobody else can."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    return holder


def _read_files_endpoint(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + scaled(15)
    buf = b""
    while (m := FILES_ROW.search(buf.decode(errors="replace"))) is None:
        left = deadline - time.monotonic()
        assert left > 0, f"no files listener in time; got {buf!r}"
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, f"wirecat serve exited early: {buf!r}"
            buf += chunk
    return m.group(1)


def test_serve_workers_refuse_the_excess_with_quota(tmp_path: Path) -> None:
    """Five concurrent ``wirecat send`` of 300 KiB to ``serve --quota 1MiB --workers 2``.

    (Today ``wirecat serve`` runs the files service in worker 0 only; if it runs in every
    worker, this test covers the shared quota too. Two processes on one root are tested
    directly above.)
    """
    root = tmp_path / "root"
    quota, size, count = 1 << 20, 300 * 1024, 5  # 3 fit, 2 do not
    sources = []
    for i in range(count):
        src = tmp_path / f"s{i}.bin"
        src.write_bytes(os.urandom(size))
        sources.append(src)
    holder = _hold_reuseport()
    port = holder.getsockname()[1]
    server = subprocess.Popen(
        [
            *WIRECAT,
            "serve",
            "--files",
            str(root),
            "--files-create",
            "--files-endpoint",
            f"tcp://127.0.0.1:{port}",
            "--quota",
            str(quota),
            "--workers",
            "2",
            "--no-greeting",
            "--no-echo",
            "--no-chat",
            "--loop",
            "asyncio",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
        start_new_session=True,
    )
    clients: list[subprocess.Popen[str]] = []
    try:
        endpoint = _read_files_endpoint(server)
        assert endpoint == f"tcp://127.0.0.1:{port}"
        with watching(root) as peak:
            clients = [
                subprocess.Popen(
                    [*WIRECAT, "send", str(src), endpoint, "--json", "--retries", "0"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for src in sources
            ]
            outcomes = [c.communicate(timeout=scaled(30)) for c in clients]
        codes = [c.returncode for c in clients]
        answers = [json.loads(out) for out, _err in outcomes]
        assert sorted(codes) == [0, 0, 0, 73, 73], outcomes
        assert sorted(str(a.get("error")) for a in answers if not a["ok"]) == ["quota", "quota"]
        stored = sorted(p.name for p in root.iterdir())
        assert stored == sorted(a["name"] for a in answers if a["ok"])  # no part, no ledger
        assert peak[0] <= quota
        assert stored_bytes(root) == 3 * size
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.communicate(timeout=scaled(10))
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.communicate(timeout=scaled(15))
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.communicate(timeout=scaled(10))
        holder.close()


def _load_demo() -> Any:
    spec = importlib.util.spec_from_file_location("resume_demo", BENCH / "resume_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_resume_demo_quick_three_cuts_and_a_server_kill() -> None:
    """bench/resume_demo.py on 128 MiB: 3 client kills, 1 server kill, then a verified resume."""
    demo = _load_demo()
    size = 128 << 20  # the cuts land in the first 80 %: enough left that none finishes first
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = Path(tempfile.mkdtemp(prefix="wirecat-test-resume-", dir=shm))
    try:
        args = argparse.Namespace(
            size=size, cuts=3, digest="blake3", seed=20261121, timeout=scaled(60)
        )
        summary = demo.run(args, work)
        attempts = summary["attempts"]
        assert [a["ending"] for a in attempts] == [
            *["client killed"] * 3,
            "server killed",
            "verified",
        ]
        assert attempts[0]["start"] == 0
        for before, after in itertools.pairwise(attempts):
            assert before["kept"] > 0
            assert after["start"] == before["start"] + before["kept"]  # resumed, not restarted
        last = attempts[-1]
        assert last["exit_code"] == 0 and last["resumed_from"] == last["start"] > 0
        assert last["start"] + last["kept"] == size
        assert summary["ok"] and all(summary["checks"].values())
        # and independently of the demo's own checks:
        stored = work / "root" / "demo.bin"
        assert hash_file(stored) == hash_file(work / "source.bin") == summary["digest"]
        assert sorted(p.name for p in (work / "root").iterdir()) == ["demo.bin"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
