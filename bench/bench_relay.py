"""Relay speed against its peers, in one run: ``.venv/bin/python bench/bench_relay.py``.

Rows (ratios in the same run, since absolute figures on a shared 2-core machine are noisy):

- bulk: iperf3 (``-t SECONDS``, one stream) direct to its server (the loopback limit), and
  through ``wirecat relay``, ``socat -b262144``, ``socat`` with its default buffer;
- short connections: ``wirecat bench -m connect -s 64`` (connect, 64 B each way, close)
  through ``wirecat relay`` and ``socat ... fork`` to the same wirecat echo.

Every process is started here on loopback, on a port the OS just handed out (socat and iperf3
cannot report a port they picked themselves), and stopped at the end; every load is bounded
in time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def free_port() -> int:
    """A port the OS just gave us (socat and iperf3 cannot report one they picked)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float = 10.0) -> None:
    """Wait until something listens on ``port`` (read from ``ss``: a probe connection would
    reach iperf3's server through a relay and hold it busy)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["ss", "-Htln"], capture_output=True, text=True).stdout
        if re.search(rf":{port}\b", out):
            return
        time.sleep(0.02)  # a benchmark's start-up poll, bounded
    raise RuntimeError(f"nothing listens on {port}")


@contextlib.contextmanager
def proc(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield p
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def relay_cmd(kind: str, port: int, target: int) -> list[str]:
    if kind == "wirecat":
        return [
            *(PY, "-m", "wirecat", "relay", f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{target}"),
            *("--max-conns-per-source", "0", "--conn-rate", "0", "--max-conns", "100000"),
        ]
    buf = ["-b262144"] if kind == "socat-256k" else []
    return [
        "socat",
        *buf,
        f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=1024",
        f"TCP:127.0.0.1:{target}",
    ]


def iperf(port: int, seconds: float) -> float:
    out = subprocess.run(
        ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )
    data = json.loads(out.stdout)
    return float(data["end"]["sum_received"]["bits_per_second"]) / 8 / 1e9  # GB/s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0, help="per bulk run")
    ap.add_argument("--conns", type=int, default=50, help="short-connection concurrency")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    for tool in ("iperf3", "socat"):
        if shutil.which(tool) is None:
            print(f"missing {tool}: apt-get install {tool}", file=sys.stderr)
            return 1
    rows: dict[str, list[float]] = {}
    iport = free_port()
    with proc(["iperf3", "-s", "-p", str(iport), "-B", "127.0.0.1"]):
        wait_listening(iport)
        for _ in range(args.reps):
            rows.setdefault("iperf3 direct", []).append(iperf(iport, args.seconds))
            for kind in ("wirecat", "socat-256k", "socat"):
                port = free_port()
                with proc(relay_cmd(kind, port, iport)):
                    wait_listening(port)
                    rows.setdefault(f"bulk via {kind}", []).append(iperf(port, args.seconds))
    # short connections through each relay to one wirecat echo
    eport = free_port()
    with proc(
        [
            PY,
            "-m",
            "wirecat",
            "serve",
            "--load-test",
            "--no-greeting",
            "--no-chat",
            "-q",
            "--echo",
            f"tcp://127.0.0.1:{eport}",
            "--max-conns",
            "100000",
        ]
    ):
        wait_listening(eport)
        for _ in range(args.reps):
            for kind in ("wirecat", "socat"):
                port = free_port()
                with proc(relay_cmd(kind, port, eport)):
                    wait_listening(port)
                    out = subprocess.run(
                        [
                            PY,
                            "-m",
                            "wirecat",
                            "bench",
                            f"127.0.0.1:{port}",
                            "-m",
                            "connect",
                            "-s",
                            "64",
                            "-c",
                            str(args.conns),
                            "-d",
                            "3",
                            "--json",
                        ],
                        capture_output=True,
                        text=True,
                        timeout=120,
                    )
                    rate = json.loads(out.stdout)["ops_per_s"] if out.returncode == 0 else 0.0
                    rows.setdefault(f"short conns via {kind}", []).append(float(rate))
    med = {k: sorted(v)[len(v) // 2] for k, v in rows.items()}
    print("| row | median | runs |")
    print("|---|---:|---|")
    for k, v in rows.items():
        unit = "GB/s" if "bulk" in k or "iperf" in k else "conn/s"
        print(f"| {k} | {med[k]:.2f} {unit} | {', '.join(f'{x:.2f}' for x in v)} |")
    direct = med["iperf3 direct"]
    print()
    print(f"wirecat relay / iperf3 direct: {med['bulk via wirecat'] / direct:.2f}x")
    print(
        f"wirecat relay / socat -b256k: {med['bulk via wirecat'] / med['bulk via socat-256k']:.2f}x"
    )
    print(f"wirecat relay / socat default: {med['bulk via wirecat'] / med['bulk via socat']:.2f}x")
    short = med["short conns via wirecat"] / max(med["short conns via socat"], 1e-9)
    print(f"short connections wirecat / socat fork: {short:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
