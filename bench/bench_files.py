#!/usr/bin/env python3
"""Benchmark: one large file over loopback, wirecat vs nc, socat and iperf3, in one run.

Usage::

    .venv/bin/python bench/bench_files.py                 # 2 GiB, markdown table
    .venv/bin/python bench/bench_files.py --size 256M --json
    .venv/bin/python bench/bench_files.py --size 1G --repeat 5   # medians of 5 passes

The source file and every received copy live on /dev/shm (RAM), so the disk is out of the
picture; the receivers write to /dev/shm too (a file transfer, not a /dev/null sink), except
iperf3 which is memory to memory and serves as the ceiling. Rows:

- ``wirecat send`` (blake3, sha256): ``wirecat send FILE`` to ``python -m
  wirecat serve --files`` (sendfile out; in: threads recv, write and hash 1 MiB buffers,
  fsync + rename, verified).
  The rate is size / the transfer time the client reports (process start-up excluded).
- ``wirecat get`` (blake3): the reverse direction (sendfile on the server, the same
  threaded receive on the client).
- ``nc``: ``nc -l`` > file  <-  ``nc -N`` < file (netcat-openbsd), wall time.
- ``socat``: ``socat -u TCP-LISTEN CREATE:file``  <-  ``socat -u FILE TCP``, wall time.
- ``iperf3``: ``iperf3 -s -1`` + ``iperf3 -c 127.0.0.1 -n SIZE``, receiver rate.

``--adjacent-iperf3`` adds an iperf3 run right after each measured wirecat transfer and a
``vs_iperf3_adjacent`` ratio to it (on a shared machine the load changes within a ~25 s
pass; the standard ``vs_iperf3`` uses the pass's one iperf3 run, taken first).

CPU seconds are recorded too: ``cpu_s`` (iperf3, nc, socat: both ends), ``server_cpu_s`` (the
wirecat server during that transfer) and ``client_cpu_s`` (the whole ``wirecat send/get``
process, Python start-up of ~0.3 s included).

Every step has a time bound; /dev/shm files are removed at the end, whatever happens.
On a VM, the first touch of fresh RAM is slow: the script writes the source file first,
which pre-faults memory, and runs a warm-up transfer before measuring.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

STEP_TIMEOUT = 300.0  # seconds allowed for any one transfer


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, proc: subprocess.Popen[Any], deadline: float = 10.0) -> None:
    """Wait until something accepts on 127.0.0.1:port (bench only: external tools)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited early ({proc.returncode})")
        with socket.socket() as s:
            s.settimeout(0.2)
            # a probe connection would be taken as the transfer by nc/socat: use ss instead
            out = subprocess.run(
                ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True
            ).stdout
            if out.strip():
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listening on port {port} after {deadline} s")


@contextlib.contextmanager
def popen(cmd: list[str], **kw: Any) -> Iterator[subprocess.Popen[Any]]:
    proc = subprocess.Popen(cmd, **kw)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


_TICK = os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds (user + system) of this script's waited-for children so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a live process, from /proc (10 ms ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def row(tool: str, detail: str, size: int, seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "tool": tool,
        "detail": detail,
        "bytes": size,
        "seconds": round(seconds, 4),
        "gbps": round(size / seconds / 1e9, 3) if seconds > 0 else None,
        **extra,
    }


def bench_wirecat(
    src: Path, work: Path, size: int, loop: str, adjacent: bool = False
) -> list[dict[str, Any]]:
    py = sys.executable
    root = work / "wc-root"
    rows = []
    root.mkdir(parents=True, exist_ok=True)
    serve = [py, "-m", "wirecat.cli.main", "serve", "--no-greeting", "--no-echo", "--no-chat"]
    files = ["--files", str(root), "--files-endpoint", "tcp://127.0.0.1:0"]
    with popen(
        [*serve, "--json", "--load-test", "--idle-timeout", "0", *files, "--loop", loop],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as server:
        assert server.stdout is not None
        endpoint = json.loads(server.stdout.readline())["endpoints"]["files"][0]

        def cli(*args: str) -> dict[str, Any]:
            s0, c0 = process_cpu(server.pid), children_cpu()
            done = subprocess.run(
                [py, "-m", "wirecat.cli.main", *args, "--json", "--loop", loop],
                capture_output=True,
                text=True,
                timeout=STEP_TIMEOUT,
            )
            if done.returncode != 0:
                raise RuntimeError(f"wirecat {args[0]} failed: {done.stdout} {done.stderr}")
            out: dict[str, Any] = json.loads(done.stdout)
            # server: this transfer only; client: the whole process, start-up included
            out["server_cpu_s"] = round(process_cpu(server.pid) - s0, 3)
            out["client_cpu_s"] = round(children_cpu() - c0, 3)
            return out

        def cpu(out: dict[str, Any]) -> dict[str, Any]:
            extra = {k: out[k] for k in ("server_cpu_s", "client_cpu_s")}
            if adjacent:  # an iperf3 run right after this transfer: the same machine load
                ref = bench_iperf3(size)["gbps"]
                extra["iperf3_adjacent_gbps"] = ref
                extra["vs_iperf3_adjacent"] = round(size / out["seconds"] / 1e9 / ref, 3)
            return extra

        cli("send", str(src), endpoint, "--as", "warmup", "--overwrite")  # warm-up
        (root / "warmup").unlink()
        for digest in ("blake3", "sha256"):
            out = cli("send", str(src), endpoint, "--as", f"up-{digest}", "--digest", digest)
            rows.append(
                row(
                    "wirecat send",
                    f"{digest}, {out['method']}, {loop}",
                    size,
                    out["seconds"],
                    **cpu(out),
                )
            )
            (root / f"up-{digest}").unlink()
        out = cli("send", str(src), endpoint, "--as", "down")
        dest = work / "wc-down.bin"
        # warm-up: this is the first time three copies are in RAM at once (fresh pages)
        cli("get", "down", endpoint, "-o", str(dest))
        dest.unlink()
        out = cli("get", "down", endpoint, "-o", str(dest))
        rows.append(
            row("wirecat get", f"blake3, {out['method']}, {loop}", size, out["seconds"], **cpu(out))
        )
        dest.unlink()
        server.terminate()
        server.wait(STEP_TIMEOUT)
    shutil.rmtree(root, ignore_errors=True)  # the next pass starts from an empty root
    return rows


def bench_pair(
    tool: str, detail: str, listen: list[str], send: list[str], port: int, size: int, out: Path
) -> dict[str, Any]:
    with popen(listen, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as rx:
        wait_listening(port, rx)
        c0 = children_cpu()
        start = time.perf_counter()
        subprocess.run(send, check=True, timeout=STEP_TIMEOUT, stderr=subprocess.PIPE)
        rx.wait(STEP_TIMEOUT)
        seconds = time.perf_counter() - start
        cpu = children_cpu() - c0  # both ends (sh + the tool)
    got = out.stat().st_size if out.exists() else 0
    out.unlink(missing_ok=True)
    if got != size:
        raise RuntimeError(f"{tool}: received {got} of {size} bytes")
    return row(tool, detail, size, seconds, cpu_s=round(cpu, 3))


def bench_nc(src: Path, work: Path, size: int) -> dict[str, Any]:
    port, out = free_port(), work / "nc.out"
    shell = f"exec nc -l 127.0.0.1 {port} > {out}"
    return bench_pair(
        "nc",
        "netcat-openbsd, nc -N < file",
        ["sh", "-c", shell],
        ["sh", "-c", f"nc -N 127.0.0.1 {port} < {src}"],
        port,
        size,
        out,
    )


def bench_socat(src: Path, work: Path, size: int) -> dict[str, Any]:
    port, out = free_port(), work / "socat.out"
    return bench_pair(
        "socat",
        "socat -u FILE TCP",
        ["socat", "-u", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr", f"CREATE:{out}"],
        ["socat", "-u", f"FILE:{src}", f"TCP:127.0.0.1:{port}"],
        port,
        size,
        out,
    )


def bench_iperf3(size: int) -> dict[str, Any]:
    port = free_port()
    with popen(
        ["iperf3", "-s", "-1", "-p", str(port), "-B", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as srv:
        wait_listening(port, srv)
        c0 = children_cpu()
        done = subprocess.run(
            ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-n", str(size), "-J"],
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            check=True,
        )
        srv.wait(STEP_TIMEOUT)
        cpu = children_cpu() - c0
    report = json.loads(done.stdout)["end"]["sum_received"]
    return row(
        "iperf3",
        "memory to memory, -n SIZE",
        int(report["bytes"]),
        report["seconds"],
        cpu_s=round(cpu, 3),
    )


def run_once(
    src: Path, work: Path, size: int, loop: str, adjacent: bool = False
) -> list[dict[str, Any]]:
    """One pass over every tool; ratios are taken within the pass (same machine load)."""
    rows: list[dict[str, Any]] = []
    jobs: list[tuple[str, Callable[[], list[dict[str, Any]]]]] = [
        ("iperf3", lambda: [bench_iperf3(size)]),
        ("nc", lambda: [bench_nc(src, work, size)]),
        ("socat", lambda: [bench_socat(src, work, size)]),
        ("wirecat", lambda: bench_wirecat(src, work, size, loop, adjacent)),
    ]
    for name, job in jobs:
        if name != "wirecat" and shutil.which(name) is None:
            rows.append({"tool": name, "detail": "not installed", "gbps": None})
            continue
        try:
            rows.extend(job())
        except Exception as exc:  # one tool failing must not hide the others
            rows.append({"tool": name, "detail": f"failed: {exc}", "gbps": None})
    ref = {r["tool"]: r["gbps"] for r in rows if r.get("gbps")}
    for r in rows:
        for base in ("iperf3", "nc"):
            if r.get("gbps") and ref.get(base):
                r[f"vs_{base}"] = round(r["gbps"] / ref[base], 3)
    return rows


def medians(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per (tool, detail): the median rate and the median of the per-pass ratios."""
    keyed: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rows in runs:
        for r in rows:
            keyed.setdefault((r["tool"], r["detail"]), []).append(r)
    out = []
    for (tool, detail), rs in keyed.items():
        row: dict[str, Any] = {"tool": tool, "detail": detail, "runs": len(rs)}
        for key in (
            "gbps",
            "vs_iperf3",
            "vs_nc",
            "vs_iperf3_adjacent",
            "cpu_s",
            "server_cpu_s",
            "client_cpu_s",
        ):
            values = [r[key] for r in rs if r.get(key) is not None]
            row[key] = round(statistics.median(values), 3) if values else None
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="2G", help="file size: bytes or 512M, 2G (default 2G)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of result rows")
    parser.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"])
    parser.add_argument("--dir", default="/dev/shm", help="where files live (default /dev/shm)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="passes over every tool; report medians (default 1)"
    )
    parser.add_argument(
        "--adjacent-iperf3",
        action="store_true",
        help="also run iperf3 right after each measured wirecat transfer and report "
        "vs_iperf3_adjacent (the machine's load can change within a pass)",
    )
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    if shutil.disk_usage(args.dir).free < 3.2 * size:
        parser.error(f"{args.dir} needs about {3.2 * size / 1e9:.1f} GB free")
    work = Path(tempfile.mkdtemp(prefix="wirecat-bench-", dir=args.dir))
    runs: list[list[dict[str, Any]]] = []
    try:
        src = work / "src.bin"
        with src.open("wb") as f:  # random bytes, 64 MiB at a time
            left = size
            while left:
                n = min(left, 64 * 1024 * 1024)
                f.write(os.urandom(n))
                left -= n
        for _ in range(max(1, args.repeat)):
            runs.append(run_once(src, work, size, args.loop, args.adjacent_iperf3))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = runs[0] if len(runs) == 1 else medians(runs)
    if args.json:
        print(json.dumps(rows if len(runs) == 1 else {"runs": runs, "median": rows}, indent=2))
        return 0
    what = "" if len(runs) == 1 else f", median of {len(runs)} passes (ratios per pass)"
    print(f"File transfer over loopback, {size / 2**30:.2f} GiB, files on {args.dir}{what}\n")
    adj = any(r.get("vs_iperf3_adjacent") for r in rows)
    print(
        "| tool | detail | GB/s | vs iperf3 | vs nc | CPU s (server + client) |"
        + (" vs iperf3 run right after |" if adj else "")
    )
    print("|---|---|---:|---:|---:|---:|" + ("---:|" if adj else ""))
    for r in rows:
        gbps = f"{r['gbps']:.2f}" if r.get("gbps") else "-"
        if r.get("server_cpu_s") is not None:
            cpu = f"{r['server_cpu_s']:.2f} + {r['client_cpu_s']:.2f}"
        else:
            cpu = f"{r['cpu_s']:.2f}" if r.get("cpu_s") is not None else "-"
        print(
            f"| {r['tool']} | {r['detail']} | {gbps} | {r.get('vs_iperf3') or '-'} "
            f"| {r.get('vs_nc') or '-'} | {cpu} |"
            + (f" {r.get('vs_iperf3_adjacent') or '-'} |" if adj else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
