"""Chat delivery latency across processes on the Redis hub: ``.venv/bin/python bench/bench_hub.py``.

Starts ``redis-server`` (Unix socket, persistence off) and two ``wirecat serve --hub``
processes on it (all pinned to core 0), connects ``--members`` chat members spread evenly over
the two processes (this load generator on core 1), and has one member on process A send
``--rate`` messages per second for ``--seconds``. Each text carries its send time; members on
process B (every one, or a sample of ``--sample``) note when it arrives: the latency of a
message crossing from one process to the other through Redis. Prints one JSON object:
deliveries/s, latency p50/p99/max (ms, across processes), and the server CPU (both wirecat
processes and redis-server) per delivery.

    .venv/bin/python bench/bench_hub.py --members 100 --rate 1000 --seconds 5
    .venv/bin/python bench/bench_hub.py --members 1000 --rate 100 --seconds 5

Everything runs on loopback / a Unix socket and is stopped at the end; the run is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIRECAT = str(Path(sys.executable).with_name("wirecat"))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            raw = Path(f"/proc/{pid}/stat").read_text()
            fields = raw[raw.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


@contextlib.contextmanager
def started(argv: list[str], ready: bool) -> Iterator[tuple[subprocess.Popen[bytes], dict]]:
    p = subprocess.Popen(
        ["taskset", "-c", "0", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if ready else subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        info: dict = {}
        if ready:
            assert p.stdout is not None
            r, _, _ = select.select([p.stdout], [], [], 20)
            line = p.stdout.readline() if r else b""
            if not line.startswith(b"{"):
                raise RuntimeError(f"no ready line: {line!r}")
            info = json.loads(line)
        yield p, info
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


class Member(asyncio.Protocol):
    def __init__(self, bench: Bench, sampled: bool) -> None:
        self.bench, self.sampled = bench, sampled
        self.buf = b""
        self.joined = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.joined.done():
            self.buf += data
            if b'"type":"joined"' in self.buf:
                self.joined.set_result(None)
                self.buf = b""
            return
        if not self.sampled:
            self.bench.bytes += len(data)
            return
        now = time.perf_counter_ns()
        buf = self.buf + data
        lines = buf.split(b"\n")
        self.buf = lines.pop()
        for line in lines:
            at = line.find(b'"text":"t')
            if at >= 0:
                sent = int(line[at + 9 : line.index(b'"', at + 9)])
                self.bench.latencies.append((now - sent) / 1e6)


class Bench:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.bytes = 0


async def connect(
    port: int, nick: str, bench: Bench, sampled: bool
) -> tuple[asyncio.Transport, Member]:
    loop = asyncio.get_running_loop()
    transport, member = await loop.create_connection(
        lambda: Member(bench, sampled), "127.0.0.1", port
    )
    transport.write(json.dumps({"type": "hello", "nick": nick}).encode() + b"\n")
    await asyncio.wait_for(member.joined, 30)
    return transport, member  # type: ignore[return-value]


async def run(
    ports: list[int], members: int, rate: float, seconds: float, sample: int, pids: list[int]
) -> dict:
    bench = Bench()
    conns = []
    for i in range(members):
        on_b = i % 2 == 1
        sampled = on_b and (sample == 0 or (i // 2) % max(1, members // 2 // sample) == 0)
        conns.append(await connect(ports[i % 2], f"m{i}", bench, sampled))
    sampled_n = sum(1 for _, m in conns if m.sampled)
    sender = conns[0][0]
    await asyncio.sleep(0.5)  # the joins have crossed
    interval = 1.0 / rate
    count = int(rate * seconds)
    cpu0 = cpu_seconds(pids)
    each0 = [cpu_seconds([p]) for p in pids]
    began = time.perf_counter()
    for k in range(count):
        due = began + k * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        text = f"t{time.perf_counter_ns()}"
        sender.write(b'{"type":"say","text":"%s"}\n' % text.encode())
    sent_for = time.perf_counter() - began
    deadline = time.perf_counter() + 10
    while len(bench.latencies) < count * sampled_n and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    cpu = cpu_seconds(pids) - cpu0
    each = [cpu_seconds([p]) - c for p, c in zip(pids, each0, strict=True)]
    for t, _ in conns:
        t.close()
    lat = sorted(bench.latencies)
    return {
        "members": members,
        "rate": rate,
        "messages": count,
        "send_seconds": round(sent_for, 3),
        "sampled_receivers_on_b": sampled_n,
        "received_sampled": len(lat),
        "latency_ms_across_processes": {
            "p50": round(statistics.median(lat), 3) if lat else None,
            "p99": round(lat[int(len(lat) * 0.99) - 1], 3) if lat else None,
            "max": round(lat[-1], 3) if lat else None,
        },
        "server_cpu_s": round(cpu, 3),
        "server_cpu_us_per_delivery": round(cpu / (count * members) * 1e6, 3),
        "server_cpu_us_per_message": round(cpu / count * 1e6, 1),
        # per process: redis-server, A (the sender's), B; or the one server with --local
        "cpu_us_per_message_by_process": [round(c / count * 1e6, 1) for c in each],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=100)
    ap.add_argument("--rate", type=float, default=1000.0, help="messages per second")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--sample", type=int, default=50, help="receivers on B timed (0: all)")
    ap.add_argument(
        "--local", action="store_true", help="baseline: one wirecat serve, in-process hub"
    )
    args = ap.parse_args()
    os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory(prefix="wc-hub-", dir="/tmp") as tmp:
        sock = os.path.join(tmp, "redis.sock")
        redis_argv = ["redis-server", "--port", "0", "--unixsocket", sock, "--save", "",
                      "--appendonly", "no", "--maxclients", "5000"]  # fmt: skip
        serve = [
            WIRECAT, "serve", "--no-greeting", "--no-echo", "--no-web", "--json", "--chat",
            "tcp://127.0.0.1:0", "--chat-rate", "0", "--max-conns", "20000",
            "--max-conns-per-source", "0", "--conn-rate", "0",
        ]  # fmt: skip
        if not args.local:
            serve += ["--hub", f"unix:{sock}"]
        with started(redis_argv, False) as (redis, _):
            deadline = time.monotonic() + 10
            while not os.path.exists(sock):
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.01)
            with started(serve, True) as (a, ia), started(serve, True) as (b, ib):
                ports = [int(i["endpoints"]["chat"][0].rsplit(":", 1)[1]) for i in (ia, ib)]
                pids = [redis.pid, a.pid, b.pid]  # taskset execs: the programs' own pids
                if args.local:  # everyone on A
                    ports, pids = [ports[0], ports[0]], [a.pid]
                result = asyncio.run(
                    run(ports, args.members, args.rate, args.seconds, args.sample, pids)
                )
        result["hub"] = "in-process (one server)" if args.local else "redis (two servers)"
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
