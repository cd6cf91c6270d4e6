#!/usr/bin/env python3
"""The resume demo: a large transfer cut several times resumes and verifies.

Usage::

    .venv/bin/python bench/resume_demo.py                     # 2 GiB, 3 cuts, blake3
    .venv/bin/python bench/resume_demo.py --size 256M --cuts 5 --digest sha256
    .venv/bin/python bench/resume_demo.py --size 64M --json   # one JSON object (tests)

What it does, with real processes only (loopback, files on /dev/shm):

1. writes SIZE random bytes to a source file, hashing them on the way (the ``blake3``
   package or ``hashlib``: not wirecat's code);
2. starts ``wirecat serve --files DIR`` on 127.0.0.1 port 0 (read back from its table);
3. runs ``wirecat send SOURCE ENDPOINT --json --retries 0`` and, CUTS times, SIGKILLs the
   client once the server's part file passes a random offset (the file size is polled every
   millisecond); then waits until the server has let go of the part (its ``flock`` is free);
4. once more, SIGKILLs the *server* mid-upload instead, and starts a new one on the same
   directory;
5. runs ``wirecat send`` a last time: it must resume (its JSON ``resumed_from`` equals the
   part's size, > 0), exit 0 and report a verified digest equal to the source's; the stored
   file must hash to the same value and no part file may be left.

Each attempt must start where the previous one stopped: the part never shrinks (a restart
from 0 would truncate it). Every wait has a time bound; everything started is killed and the
work directory removed in a ``finally``. Exit status 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import blake3

WIRECAT = [sys.executable, "-m", "wirecat.cli.main"]
PART_PREFIX = ".wcpart-"  # wirecat.protocols.files.PART_PREFIX
NAME = "demo.bin"
FILES_ROW = re.compile(r"files\s+\S\s+(tcp://127\.0\.0\.1:\d+)")
CHUNK = 16 << 20


class DemoError(Exception):
    """A check failed or a step took too long."""


@dataclass
class Attempt:
    """One run of ``wirecat send``: bytes are counted in the server's part file."""

    number: int
    ending: str  # "client killed", "server killed", "verified"
    start: int  # bytes the server held when it began
    kept: int  # bytes it added (what the server holds after, minus start)
    seconds: float  # wall time, process start-up included
    exit_code: int | None
    resumed_from: int | None = None  # from the client's JSON (last attempt)


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def new_hash(algo: str) -> Any:
    return blake3.blake3() if algo == "blake3" else hashlib.sha256()


def hash_path(path: Path, algo: str) -> str:
    h = new_hash(algo)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    digest: str = h.hexdigest()
    return digest


def make_source(path: Path, size: int, algo: str) -> str:
    """Write ``size`` random bytes to ``path``; return their digest."""
    h = new_hash(algo)
    with path.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(CHUNK, left))
            f.write(block)
            h.update(block)
            left -= len(block)
    digest: str = h.hexdigest()
    return digest


def held(part: Path) -> int:
    try:
        return part.stat().st_size
    except FileNotFoundError:
        return 0


def part_released(part: Path) -> bool:
    """Has the server let go of the part (upload ended, its ``flock`` dropped)?"""
    try:
        fd = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # drops our shared lock at once
    return True


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise DemoError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.001)


class Server:
    """``wirecat serve --files ROOT`` on 127.0.0.1 port 0, in its own session."""

    def __init__(self, root: Path, log: Path) -> None:
        self.log = log.open("ab")
        self.proc = subprocess.Popen(
            [
                *WIRECAT,
                "serve",
                "--files",
                str(root),
                "--files-create",
                "--files-endpoint",
                "tcp://127.0.0.1:0",
                "--no-greeting",
                "--no-echo",
                "--no-chat",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env={**os.environ, "COLUMNS": "200"},
            start_new_session=True,
        )
        self.endpoint = self._read_endpoint(15.0)

    def _read_endpoint(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        while (m := FILES_ROW.search(buf.decode(errors="replace"))) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DemoError(f"wirecat serve printed no files listener: {buf!r}")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise DemoError(f"wirecat serve exited early: {buf!r}")
                buf += chunk
        return m.group(1)

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()


def send(src: Path, endpoint: str, algo: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *WIRECAT,
            *("send", str(src), endpoint, "--as", NAME, "--digest", algo, "--json", "-q"),
            *("--retries", "0", "--timeout", "60"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def cut_targets(size: int, cuts: int, rng: random.Random) -> list[int]:
    """One random offset in each of ``cuts`` equal slices of [5 %, 80 %] of the size."""
    lo, hi = size * 5 // 100, size * 80 // 100
    step = (hi - lo) // cuts
    return [rng.randrange(lo + i * step, lo + (i + 1) * step) for i in range(cuts)]


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    size, algo = args.size, args.digest
    rng = random.Random(args.seed)
    src, root = work / "source.bin", work / "root"
    part, final = root / (PART_PREFIX + NAME), root / NAME
    t0 = time.perf_counter()
    source_digest = make_source(src, size, algo)
    made = time.perf_counter() - t0
    targets = cut_targets(size, args.cuts + 1, rng)  # the last one kills the server
    server = Server(root, work / "server.log")
    attempts: list[Attempt] = []
    client: subprocess.Popen[str] | None = None
    try:
        began = time.perf_counter()
        for i, target in enumerate(targets):
            kill_server = i == args.cuts
            start = held(part)
            target = max(target, start + size // 100)
            t = time.perf_counter()
            client = proc = send(src, server.endpoint, algo)
            lowest = start
            deadline = time.monotonic() + args.timeout
            while (now := held(part)) < target and proc.poll() is None:
                lowest = min(lowest, now)
                if time.monotonic() > deadline:
                    raise DemoError(f"attempt {i + 1}: the part did not pass {target} in time")
                time.sleep(0.001)
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise DemoError(
                    f"attempt {i + 1} ended (exit {proc.returncode}) before the cut at "
                    f"{target}: {out.strip() or err.strip()} (a larger --size helps)"
                )
            if kill_server:
                server.kill9()
                proc.communicate(timeout=args.timeout)  # it fails: connection lost
            else:
                proc.kill()
                proc.communicate(timeout=args.timeout)
                wait_until(lambda: part_released(part), args.timeout, "the server letting go")
            if min(lowest, held(part)) < start:
                raise DemoError(f"attempt {i + 1} did not resume: the part shrank below {start}")
            end = held(part)
            attempts.append(
                Attempt(
                    i + 1,
                    "server killed" if kill_server else "client killed",
                    start,
                    end - start,
                    time.perf_counter() - t,
                    proc.returncode,
                )
            )
            client = None
            if kill_server:
                server.stop()
                server = Server(root, work / "server.log")  # same directory, new process
        start = held(part)
        t = time.perf_counter()
        client = send(src, server.endpoint, algo)
        out, err = client.communicate(timeout=args.timeout)
        seconds = time.perf_counter() - t
        total = time.perf_counter() - began
        if client.returncode != 0:
            raise DemoError(f"the last attempt failed (exit {client.returncode}): {out}{err}")
        result = json.loads(out)
        attempts.append(
            Attempt(
                len(attempts) + 1,
                "verified",
                start,
                size - start,
                seconds,
                0,
                result["resumed_from"],
            )
        )
        client = None
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.communicate(timeout=30)
        server.stop()
    checks = {
        "last attempt exit code 0": attempts[-1].exit_code == 0,
        "resumed (resumed_from > 0, = the part's size)": result["resumed_from"] == start > 0,
        "client verified": result.get("verified") is True,
        "client digest = source digest": result["digest"] == source_digest,
        "stored file digest = source digest": hash_path(final, algo) == source_digest,
        "stored size = source size": final.stat().st_size == size,
        "no part file left": not any(
            n.startswith(PART_PREFIX) for _d, _s, names in os.walk(root) for n in names
        ),
    }
    return {
        "size": size,
        "cuts": args.cuts,
        "digest_name": algo,
        "digest": source_digest,
        "seed": args.seed,
        "source_seconds": made,
        "total_seconds": total,
        "last_transfer": {k: result[k] for k in ("transferred", "seconds", "rate", "method")},
        "attempts": [asdict(a) for a in attempts],
        "checks": checks,
        "ok": all(checks.values()),
    }


def report(summary: dict[str, Any]) -> str:
    size = summary["size"]
    lines = [
        f"resume demo: {size} bytes ({size / (1 << 30):.2f} GiB), {summary['cuts']} client "
        f"cuts + 1 server kill, {summary['digest_name']}, seed {summary['seed']}",
        "",
        "| attempt | ended by | started at (bytes) | bytes sent (kept) | wall s | exit |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for a in summary["attempts"]:
        lines.append(
            f"| {a['number']} | {a['ending']} | {a['start']:,} | {a['kept']:,} | "
            f"{a['seconds']:.2f} | {a['exit_code']} |"
        )
    total = summary["total_seconds"]
    last = summary["last_transfer"]
    lines += [
        "",
        f"verified {summary['digest_name']} {summary['digest']}",
        f"total {total:.2f} s for {size / 1e9:.2f} GB: {size / total / 1e9:.2f} GB/s "
        f"(wall, from the first send to the last confirmation: {len(summary['attempts'])} "
        "client and 2 server start-ups, the re-hashing of the held prefix at each resume)",
        f"last attempt as its client reports it: {last['transferred']:,} bytes in "
        f"{last['seconds']:.2f} s, {last['rate'] / 1e9:.2f} GB/s ({last['method']})",
        f"(source: {size:,} random bytes written and hashed in {summary['source_seconds']:.1f} s,"
        " not counted)",
        "",
    ]
    lines += [f"  [{'ok' if ok else 'FAILED'}] {what}" for what, ok in summary["checks"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("2G"), help="e.g. 2G")
    parser.add_argument("--cuts", type=int, default=3, help="client kills (then 1 server kill)")
    parser.add_argument("--digest", choices=["blake3", "sha256"], default="blake3")
    parser.add_argument("--seed", type=int, default=None, help="for the cut offsets")
    parser.add_argument("--dir", default="/dev/shm", help="where the files go (RAM)")
    parser.add_argument("--timeout", type=float, default=120.0, help="bound on each wait (s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)
    if not 1 <= args.cuts <= 20:
        parser.error("--cuts must be from 1 to 20")
    if args.size < (args.cuts + 2) * (1 << 20):
        parser.error("--size is too small to cut that many times (1 MiB per attempt at least)")
    need = 2 * args.size + (64 << 20)
    if shutil.disk_usage(args.dir).free < need:
        parser.error(f"{args.dir} has less than {need} bytes free (source + stored copy)")
    work = Path(tempfile.mkdtemp(prefix="wirecat-resume-", dir=args.dir))
    try:
        summary = run(args, work)
    except (DemoError, subprocess.TimeoutExpired, OSError, ValueError, KeyError) as exc:
        print(f"resume demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary) if args.json else report(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
