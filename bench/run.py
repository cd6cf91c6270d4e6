#!/usr/bin/env python3
"""wirecat's peer benchmark suite: one command, under 10 minutes, writes bench/RESULTS.md.

Runs wirecat and reference peers side by side in one run: the server under test pinned to
core 0, the load generator (``wirecat.bench``, in this process) pinned to core 1, interleaved
repetitions, medians with min-max, server CPU time per operation (process CPU clocks of the
server's whole session, reaped children included) over exactly the measured window.

    .venv/bin/python bench/run.py            # the full suite (about 7 minutes)
    .venv/bin/python bench/run.py --quick    # smoke run: 1 repetition, short runs
    .venv/bin/python bench/run.py --only echo,idle --reps 5

Parts: ``echo`` (round trips, 1/10/100 connections x 64 B/1 KiB), ``chat`` (fan-out to a room
of 100 and 1000 members), ``multicore`` (echo 100 x 64 B, ``wirecat serve --workers 1/2``),
``idle`` (server RSS per idle connection), ``files`` (rows from bench/bench_files.py), ``ws``
(WebSocket echo 100 x 64 B against Node's ws and websockets' asyncio server, and WebSocket chat
fan-out to 1000 members against a Node ws broadcast server), ``relay`` (bulk, short
connections and SOCKS5 through relays, bench/bench_relay.py). wirecat
runs through its CLI (``wirecat serve``). Traffic goes to 127.0.0.1 only; every process
started here is killed on the way out. The report starts with the issue's targets, each
marked met or not met.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PEERS = BENCH / "peers"
BIN = PEERS / "bin"
OUT = BENCH / "out"
PY = sys.executable
HOST = "127.0.0.1"
SERVER_CORE, LOAD_CORE = 0, 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
NPROC = len(os.sched_getaffinity(0))  # before the runner pins itself to one core
PARTS = ("echo", "chat", "multicore", "idle", "files", "ws", "relay")
PAGE = os.sysconf("SC_PAGE_SIZE")

sys.path.insert(0, str(ROOT / "src"))
from wirecat import parse_endpoint  # noqa: E402
from wirecat.bench import BenchConfig, run_bench  # noqa: E402
from wirecat.bench.engine import raise_fd_limit  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- processes -------------------------------------------------------------------------------


def session_procs(sid: int) -> Iterator[tuple[int, list[str]]]:
    """Yield (pid, stat fields after the command name) of every process in session ``sid``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        if int(fields[3]) == sid:
            yield int(entry), fields


def process_cpu(pid: int) -> float | None:
    """CPU seconds of every thread of ``pid``, to the nanosecond: the process CPU clock
    (``clock_getcpuclockid``), or None once the process is gone."""
    try:
        return time.clock_gettime((~pid << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
    except OSError:
        return None


def session_cpu(sid: int) -> float:
    """CPU seconds used by session ``sid`` so far.

    Each live process counts with its CPU clock (nanoseconds, all threads); /proc/PID/stat's
    utime+stime are in 10 ms ticks per process, which rounds a process-per-connection
    server's 100 short-lived children to zero. Children already reaped count through their
    parent's cutime+cstime (ticks, summed before rounding); a zombie through its own ticks.
    """
    total = 0.0
    for pid, f in session_procs(sid):
        own = process_cpu(pid)
        if own is None:
            own = (int(f[11]) + int(f[12])) / CLK_TCK
        total += own + (int(f[13]) + int(f[14])) / CLK_TCK
    return total


def settle(sid: int, baseline: int, limit: float = 3.0) -> None:
    """Wait until the session is back to ``baseline`` processes (forking servers' children
    of the previous run have exited), at most ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if sum(1 for _ in session_procs(sid)) <= baseline:
            return
        time.sleep(0.05)


def session_split(sid: int) -> dict[int, tuple[float, int]]:
    """Per live process of session ``sid``: (CPU seconds so far, open sockets)."""
    out: dict[int, tuple[float, int]] = {}
    for pid, _ in session_procs(sid):
        cpu = process_cpu(pid)
        if cpu is None:
            continue
        socks = 0
        with suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with suppress(OSError):
                    socks += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        out[pid] = (cpu, socks)
    return out


def session_rss(sid: int) -> int:
    """Resident bytes of every process in session ``sid``."""
    return sum(int(f[21]) * PAGE for _, f in session_procs(sid))


def free_port() -> int:
    # Only for peers that cannot report the port they bound (ncat, socat, redis).
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_connectable(port: int, proc: subprocess.Popen[bytes], limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening")
        with suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)  # an external program gives no readiness signal but the port
    raise RuntimeError(f"not listening on {port} after {limit} s")


def wait_listening(port: int, proc: subprocess.Popen[bytes], limit: float = 15.0) -> None:
    """Wait until something listens on ``port`` on HOST, read from ``ss`` (no connection)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening")
        out = subprocess.run(["ss", "-Htln"], capture_output=True, text=True).stdout
        if any(line.split()[3] == f"{HOST}:{port}" for line in out.splitlines() if line):
            return
        time.sleep(0.05)  # an external program gives no readiness signal but the port
    raise RuntimeError(f"not listening on {port} after {limit} s")


@dataclass
class Peer:
    """A server program. ``argv`` may hold ``{port}``; ``ready`` is ``stdout`` (the program
    prints ``LISTENING <port>``), ``port`` (we pick a port and wait until it accepts) or
    ``listening`` (we pick a port and wait until ``ss`` shows it listening: no probe)."""

    name: str
    argv: list[str]
    ready: str = "stdout"
    note: str = ""
    cores: str = str(SERVER_CORE)  # taskset -c list for the server
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    baseline: int = 1  # processes in its session when idle
    idle_socks: dict[int, int] = field(default_factory=dict)  # per process, no client
    log_path: Path | None = None
    scheme: str = "tcp"  # ws: the endpoint is ws://HOST:PORT{path}
    path: str = "/"  # the WebSocket resource

    def start(self) -> None:
        port = free_port() if self.ready in ("port", "listening") else 0
        argv = [a.replace("{port}", str(port)) for a in self.argv]
        self.log_path = OUT / f"server-{self.name}.log"
        err = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            ["taskset", "-c", self.cores, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if self.ready == "stdout" else subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # its own session: CPU/RSS of all its children, one kill
            cwd=ROOT,
        )
        err.close()
        if self.ready == "stdout":
            assert self.proc.stdout is not None
            ready, _, _ = select.select([self.proc.stdout], [], [], 20.0)
            line = self.proc.stdout.readline().decode() if ready else ""
            if not line.startswith("LISTENING"):
                raise RuntimeError(f"{self.name}: no LISTENING line (got {line!r})")
            port = int(line.split()[1])
        elif self.ready == "listening":  # no probe connection (it would reach a relay's
            wait_listening(port, self.proc)  # target: iperf3 would take it for a test)
        else:
            wait_connectable(port, self.proc)
        self.port = port
        time.sleep(0.5)  # let the readiness probe's child (ncat, socat) exit
        self.baseline = sum(1 for _ in session_procs(self.sid))
        self.idle_socks = {pid: socks for pid, (_, socks) in session_split(self.sid).items()}

    @property
    def sid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def endpoint(self) -> str:
        if self.scheme == "ws":
            return f"ws://{HOST}:{self.port}{self.path}"
        return f"tcp://{HOST}:{self.port}"

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)  # the session we created: the server and its children
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        if proc.stdout is not None:
            proc.stdout.close()


@contextmanager
def running(peers: list[Peer]) -> Iterator[list[Peer]]:
    started: list[Peer] = []
    try:
        for p in peers:
            try:
                p.start()
                started.append(p)
                log(f"started {p.name} on {p.endpoint}")
            except (RuntimeError, OSError) as exc:
                log(f"SKIP {p.name}: {exc}")
                p.stop()
        yield started
    finally:
        for p in peers:
            p.stop()


# -- building and finding peers ----------------------------------------------------------------


def build_go(name: str = "echo") -> Path | None:
    """Build bench/peers/NAME.go into bench/peers/bin/NAME-go (once; None without Go)."""
    if shutil.which("go") is None:
        return None
    BIN.mkdir(parents=True, exist_ok=True)
    out = BIN / f"{name}-go"
    src = PEERS / f"{name}.go"
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    env = dict(os.environ)
    env.update(
        GOPATH="/tmp/wirecat-bench-go/path",
        GOCACHE="/tmp/wirecat-bench-go/cache",
        GO111MODULE="off",
        GOPROXY="off",
        GOFLAGS="",
        GOTOOLCHAIN="local",
        CGO_ENABLED="0",
    )
    res = subprocess.run(
        ["go", "build", "-o", str(out), str(src)], env=env, capture_output=True, timeout=180
    )
    if res.returncode != 0:
        log(f"go build failed: {res.stderr.decode()[-500:]}")
        return None
    return out


def wirecat_bin() -> str:
    return str(Path(PY).with_name("wirecat"))


def wirecat_echo_argv(*extra: str) -> list[str]:
    return [
        wirecat_bin(),
        "serve",
        "-q",
        "--no-greeting",
        "--no-chat",
        "--echo",
        f"tcp://{HOST}:{{port}}",
        "--max-conns",
        "20000",
        "--max-conns-per-source",
        "0",
        "--conn-rate",
        "0",
        *extra,
    ]


def echo_peers() -> list[Peer]:
    peers = [
        Peer(
            "wirecat",
            wirecat_echo_argv(),
            ready="port",
            note="wirecat serve, echo service (uvloop, StreamHandler)",
        ),
    ]
    go = build_go()
    if go is not None:
        peers.append(Peer("go", [str(go), HOST, "0"], note="goroutine per connection"))
    if shutil.which("node"):
        peers.append(Peer("node", ["node", str(PEERS / "echo.js"), HOST, "0"], note="net, pipe"))
    peers.append(
        Peer("py-uvloop", [PY, str(PEERS / "echo_uvloop.py"), HOST, "0"], note="Protocol+uvloop")
    )
    peers.append(
        Peer("py-streams", [PY, str(PEERS / "echo_streams.py"), HOST, "0"], note="asyncio streams")
    )
    if shutil.which("ncat"):
        peers.append(
            Peer("ncat", ["ncat", "-k", "-l", HOST, "{port}", "-m", "5000", "--exec", "/bin/cat"],
                 ready="port", note="--exec /bin/cat: a process per connection")
        )  # fmt: skip
    if shutil.which("socat"):
        peers.append(
            Peer("socat", ["socat", f"TCP-LISTEN:{{port}},bind={HOST},fork,reuseaddr,backlog=4096",
                           "EXEC:cat"], ready="port", note="fork + EXEC:cat per connection")
        )  # fmt: skip
    return peers


def chat_peers() -> list[Peer]:
    peers = [
        Peer("wirecat", [wirecat_bin(), "serve", "-q", "--no-greeting", "--no-echo",
                         "--chat", f"tcp://{HOST}:{{port}}", "--chat-rate", "0",
                         "--max-conns", "20000", "--max-conns-per-source", "0",
                         "--conn-rate", "0"],
             ready="port", note="wirecat serve --chat, JSON lines, --chat-rate 0 (no per-member "
             "limit)"),
    ]  # fmt: skip
    if shutil.which("ncat"):
        peers.append(
            Peer("ncat-broker", ["ncat", "--broker", "-l", HOST, "{port}", "-m", "5000"],
                 ready="port", note="plain lines")
        )  # fmt: skip
    if shutil.which("redis-server"):
        peers.append(
            Peer("redis", ["redis-server", "--port", "{port}", "--bind", HOST, "--save", "",
                           "--appendonly", "no", "--maxclients", "5000", "--protected-mode", "no"],
                 ready="port", note="PUBLISH/SUBSCRIBE, RESP")
        )  # fmt: skip
        # The Redis hub (#11): redis-server and wirecat in one session, so that the server
        # CPU per delivery counts both; one process, then --workers 2 (members spread over
        # two processes by SO_REUSEPORT), all pinned to the server core.
        for name, workers in (("wirecat-hub", "1"), ("wirecat-hub-w2", "2")):
            sock = OUT / f"{name}-redis.sock"
            serve = " ".join(
                [wirecat_bin(), "serve", "-q", "--no-greeting", "--no-echo", "--no-web",
                 "--chat", f"tcp://{HOST}:{{port}}", "--chat-rate", "0", "--max-conns", "20000",
                 "--max-conns-per-source", "0", "--conn-rate", "0", "--workers", workers,
                 "--hub", f"unix:{sock}"]
            )  # fmt: skip
            script = (
                f"redis-server --port 0 --unixsocket {sock} --save '' --appendonly no "
                f"--maxclients 5000 >/dev/null & exec {serve}"
            )
            peers.append(
                Peer(name, ["sh", "-c", script], ready="port",
                     note=f"wirecat serve --hub (Redis on a Unix socket), --workers {workers}; "
                     "CPU: wirecat + redis-server")
            )  # fmt: skip
    return peers


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Sample:
    peer: str
    case: str
    rate: float  # operations (echo: round trips; chat: deliveries) per second
    cpu_us_per_op: float  # server CPU microseconds per operation
    server_util: float  # server CPU seconds / wall seconds
    load_util: float  # load-generator CPU seconds / wall seconds
    p50_us: float
    p99_us: float
    errors: int
    raw: dict[str, Any] = field(default_factory=dict)


def measure(
    peer: Peer, case: str, config: BenchConfig, per: str = "ops", split: bool = False
) -> Sample:
    marks: dict[str, tuple[float, float, float]] = {}
    procs: dict[str, dict[int, tuple[float, int]]] = {}

    def on_measure(what: str) -> None:  # exactly the measured window, connections open
        marks[what] = (session_cpu(peer.sid), time.perf_counter(), time.process_time())
        if split:  # after the marks: reading /proc/PID/fd is not free
            procs[what] = session_split(peer.sid)

    settle(peer.sid, peer.baseline)
    began = time.perf_counter()
    report = run_bench(config, on_measure=on_measure)
    total = time.perf_counter() - began
    data = report.to_json()
    if "stop" not in marks:
        raise RuntimeError(f"nothing measured: {data['errors_by_kind']}")
    if config.mode != "connect" and (data["connects"] < config.conns or data["conns_dropped"]):
        # as wirecat bench: rates of fewer connections than asked are not this case's rates
        raise RuntimeError(
            f"{data['connects']} of {config.conns} connections opened, "
            f"{data['conns_dropped']} dropped: {data['errors_by_kind']}"
        )
    (cpu0, wall0, load0), (cpu1, wall1, load1) = marks["start"], marks["stop"]
    ops = data[per] or 0
    wall = wall1 - wall0
    rate = data[f"{per}_per_s"]
    sample = Sample(
        peer=peer.name,
        case=case,
        rate=rate,
        cpu_us_per_op=(cpu1 - cpu0) / ops * 1e6 if ops else float("nan"),
        server_util=(cpu1 - cpu0) / wall,
        load_util=(load1 - load0) / wall,
        p50_us=data["latency_us"]["p50"],
        p99_us=data["latency_us"]["p99"],
        errors=data["errors"],
        raw={**data, "setup_s": total - wall},  # connecting, joining, closing
    )
    if split and "start" in procs and "stop" in procs:
        # Each worker process: its share of the server's CPU in the window, and the client
        # connections it holds (sockets now less those it had before any client came).
        # (--workers N > 1: a parent that only waits, plus N workers; leave the parent out)
        a, b = procs["start"], procs["stop"]
        pids = [pid for pid in sorted(b) if pid in a and (pid != peer.sid or len(b) == 1)]
        sample.raw["procs"] = [
            {
                "pid": pid,
                "cpu_s": b[pid][0] - a[pid][0],
                "conns": b[pid][1] - peer.idle_socks.get(pid, 0),
            }
            for pid in pids
        ]
    log(
        f"  {case:<14} {peer.name:<12} {rate:>12,.0f}/s  cpu {sample.cpu_us_per_op:6.2f} us/op  "
        f"srv {sample.server_util:4.0%} gen {sample.load_util:4.0%}  err {sample.errors}"
    )
    return sample


def interleaved(
    peers: list[Peer],
    cases: list[tuple[str, Callable[[Peer], BenchConfig | None]]],
    reps: int,
    per: str,
    failures: list[str] | None = None,
    split: bool = False,
) -> list[Sample]:
    samples: list[Sample] = []
    for rep in range(reps):
        log(f"repetition {rep + 1}/{reps}")
        for case, make in cases:
            order = peers[rep % len(peers) :] + peers[: rep % len(peers)]  # rotate per repetition
            for peer in order:
                config = make(peer)
                if config is None:
                    continue
                try:
                    samples.append(measure(peer, case, config, per, split))
                except Exception as exc:  # one peer failing must not sink the suite
                    log(f"  {case} {peer.name}: FAILED {type(exc).__name__}: {exc}")
                    if failures is not None:
                        failures.append(f"{case}, {peer.name}: {type(exc).__name__}: {exc}")
                time.sleep(0.1)
    return samples


def run_part(
    peers: list[Peer],
    cases: list[tuple[str, Callable[[Peer], BenchConfig | None]]],
    reps: int,
    per: str,
    *,
    warm_conns: int = 0,
    failures: list[str] | None = None,
    split: bool = False,
) -> dict[str, Any]:
    """Start ``peers``, warm each with ``warm_conns`` connections for 0.3 s (0: no warm-up),
    run the ``cases`` interleaved, and return the part's raw result (samples, cases, notes,
    and ``failures`` when a list is given)."""
    with running(peers) as live:
        for p in live if warm_conns else ():  # JIT for node, page faults, caches
            run_bench(BenchConfig(parse_endpoint(p.endpoint), conns=warm_conns, duration=0.3))
        samples = interleaved(live, cases, reps, per, failures, split)
        notes = {p.name: p.note for p in live}
    part: dict[str, Any] = {"samples": samples, "cases": [c[0] for c in cases], "notes": notes}
    if failures is not None:
        part["failures"] = failures
    return part


def echo_cases(
    sizes: list[tuple[str, int, int]], duration: float
) -> list[tuple[str, Callable[[Peer], BenchConfig | None]]]:
    """Echo cases ``(name, conns, size)`` as interleaved() takes them."""
    return [
        (
            name,
            lambda p, c=c, s=s: BenchConfig(
                parse_endpoint(p.endpoint), conns=c, size=s, duration=duration
            ),
        )
        for name, c, s in sizes
    ]


def run_echo(reps: int, duration: float) -> dict[str, Any]:
    cases = [(f"{c} x {s} B", c, s) for s in (64, 1024) for c in (1, 10, 100)]
    return run_part(echo_peers(), echo_cases(cases, duration), reps, "ops", warm_conns=10)


def ws_peers() -> list[Peer]:
    """WebSocket echo servers: wirecat serve --echo ws://, Node's ws, websockets' asyncio."""
    argv = wirecat_echo_argv()
    argv[argv.index(f"tcp://{HOST}:{{port}}")] = f"ws://{HOST}:{{port}}"
    peers = [Peer("wirecat", argv, ready="port", note="serve --echo ws:// (uvloop)", scheme="ws")]
    if shutil.which("node") and (ROOT / "tests" / "node" / "node_modules" / "ws").is_dir():
        peers.append(
            Peer("node-ws", ["node", str(PEERS / "ws_echo.js"), HOST, "0"],
                 note="npm ws, perMessageDeflate off", scheme="ws")
        )  # fmt: skip
    peers.append(
        Peer("websockets", [PY, str(PEERS / "ws_echo_websockets.py"), HOST, "0"],
             note="websockets.asyncio.server (uvloop)", scheme="ws")
    )  # fmt: skip
    return peers


def run_ws(reps: int, duration: float) -> dict[str, Any]:
    """WebSocket echo, 100 connections x 64 B messages (one in flight per connection)."""
    cases = [("100 x 64 B", 100, 64)]
    part = run_part(ws_peers(), echo_cases(cases, duration), reps, "ops", warm_conns=10)
    samples = part["samples"]
    for case, _, _ in cases:
        for name in part["notes"]:
            rates = sorted(x.rate for x in samples if x.peer == name and x.case == case)
            cpus = sorted(x.cpu_us_per_op for x in samples if x.peer == name and x.case == case)
            if rates:
                log(
                    f"ws {case} {name}: median {rates[len(rates) // 2]:,.0f} round trips/s, "
                    f"server cpu {cpus[len(cpus) // 2]:.1f} us/round trip"
                )
    return part


def ws_chat_peers() -> list[Peer]:
    """WebSocket chat fan-out: wirecat's web chat (/chat, JSON) and Node's ws broadcasting."""
    peers = [
        Peer("wirecat", [wirecat_bin(), "serve", "-q", "--no-greeting", "--no-echo",
                         "--chat", f"tcp://{HOST}:0", "--web", f"tcp://{HOST}:{{port}}",
                         "--chat-rate", "0", "--max-conns", "20000",
                         "--max-conns-per-source", "0", "--conn-rate", "0"],
             ready="port", scheme="ws", path="/chat",
             note="wirecat serve --web, the chat WebSocket /chat (JSON: hello, join, say; "
             "events with ids and timestamps), --chat-rate 0"),
    ]  # fmt: skip
    if shutil.which("node") and (ROOT / "tests" / "node" / "node_modules" / "ws").is_dir():
        peers.append(
            Peer("node-ws", ["node", str(PEERS / "ws_broadcast.js"), HOST, "0"], scheme="ws",
                 note="npm ws, every message to every other client (the ws README's "
                 "broadcast), perMessageDeflate off")
        )  # fmt: skip
    return peers


def run_ws_chat(reps: int, quick: bool) -> dict[str, Any]:
    """Chat fan-out over WebSocket: 1000 members in one room, one sender, 64 B texts."""
    peers = ws_chat_peers()
    proto = {"wirecat": "wirecat", "node-ws": "lines"}
    count = 30 if quick else 200  # ~200k deliveries: Node's broadcast runs ~30-150k/s here
    cases = [("1000 members", 1000, count)]

    def make(p: Peer, members: int, n: int) -> BenchConfig:
        return BenchConfig(
            parse_endpoint(p.endpoint),
            mode="chat",
            conns=members,
            count=n,
            size=64,
            duration=30.0,
            connect_timeout=60.0,
            chat_protocol=proto[p.name],  # type: ignore[arg-type]
        )

    factories = [(name, lambda p, m=m, n=n: make(p, m, n)) for name, m, n in cases]
    return run_part(peers, factories, reps, "deliveries", failures=[])


def run_chat(reps: int, duration: float, quick: bool) -> dict[str, Any]:
    peers = chat_peers()
    proto = {"wirecat": "wirecat", "ncat-broker": "lines", "redis": "redis",
             "wirecat-hub": "wirecat", "wirecat-hub-w2": "wirecat"}  # fmt: skip
    # ~1M deliveries per run: with the load generator counting per chunk (3x cheaper per
    # delivery), 300 messages to 1000 members were over in ~0.3 s, too short on a shared box
    sizes = [(100, 300 if quick else 10000), (1000, 30 if quick else 1000)]
    cases = [(f"{m} members", m, n) for m, n in sizes]

    def make(p: Peer, members: int, count: int) -> BenchConfig | None:
        return BenchConfig(
            parse_endpoint(p.endpoint),
            mode="chat",
            conns=members,
            count=count,
            size=64,
            duration=max(duration, 15.0),
            connect_timeout=45.0 if p.name == "ncat-broker" else 30.0,
            # ncat's listen backlog is 10 and it accepts slowly: a burst of connects overflows
            # it and the SYN retries stretch set-up to tens of seconds
            connect_concurrency=4 if p.name == "ncat-broker" else 256,
            chat_protocol=proto[p.name],  # type: ignore[arg-type]
        )

    factories = [(name, lambda p, m=m, n=n: make(p, m, n)) for name, m, n in cases]
    return run_part(peers, factories, reps, "deliveries", failures=[])


MULTICORE_CASE = "100 x 64 B"


def multicore_peers() -> list[Peer]:
    both = f"{SERVER_CORE},{LOAD_CORE}"
    peers = [
        Peer("wirecat-w1-core0", wirecat_echo_argv("--workers", "1"), ready="port",
             note=f"--workers 1, server on core {SERVER_CORE} only (the echo tables' set-up)"),
        Peer("wirecat-w1", wirecat_echo_argv("--workers", "1"), ready="port", cores=both,
             note=f"--workers 1, server may run on cores {both}"),
        Peer("wirecat-w2", wirecat_echo_argv("--workers", "2"), ready="port", cores=both,
             note=f"--workers 2 (SO_REUSEPORT), server may run on cores {both}"),
    ]  # fmt: skip
    go = build_go()
    if go is not None:
        peers.append(
            Peer("go-2cores", [str(go), HOST, "0"], cores=both,
                 note=f"Go, GOMAXPROCS=2, may run on cores {both}: a multi-threaded reference")
        )  # fmt: skip
    return peers


def run_multicore(reps: int, duration: float) -> dict[str, Any]:
    """Echo 100 x 64 B against ``wirecat serve --workers 1`` and ``--workers 2``.

    The load generator stays pinned to core 1; the servers of the 2-core rows may use both
    cores, so a second worker shares core 1 with the load generator.
    """
    cases = echo_cases([(MULTICORE_CASE, 100, 64)], duration)
    return run_part(multicore_peers(), cases, reps, "ops", warm_conns=100, split=True)


async def _hold_idle(port: int, n: int, sources: list[str]) -> list[asyncio.Transport]:
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(200)
    held: list[asyncio.Transport] = []

    class Once(asyncio.Protocol):
        def __init__(self) -> None:
            self.got: asyncio.Future[None] = loop.create_future()

        def data_received(self, data: bytes) -> None:
            if not self.got.done():
                self.got.set_result(None)

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.got.done():
                self.got.set_exception(ConnectionError("closed"))
                self.got.exception()

    async def one(i: int) -> None:
        async with sem:
            t, p = await loop.create_connection(
                Once, HOST, port, local_addr=(sources[i % len(sources)], 0)
            )
            held.append(t)
            t.write(b"x")  # one echoed byte proves the server accepted and set it up
            await p.got

    async with asyncio.timeout(60):
        await asyncio.gather(*(one(i) for i in range(n)))
    return held


def _idle_row(p: Peer, n: int, sources: list[str]) -> dict[str, Any] | None:
    rss0 = session_rss(p.sid)
    loop = asyncio.new_event_loop()
    held: list[asyncio.Transport] = []
    try:
        t0 = time.perf_counter()
        held = loop.run_until_complete(_hold_idle(p.port, n, sources))
        opened = time.perf_counter() - t0
        time.sleep(1.0)
        rss1 = session_rss(p.sid)
        log(f"  idle {p.name:<12} {n:>6} conns {(rss1 - rss0) / n / 1024:7.2f} KiB/conn")
        return {
            "peer": p.name, "conns": n, "rss_before": rss0, "rss_after": rss1,
            "per_conn": (rss1 - rss0) / n, "open_s": opened,
        }  # fmt: skip
    except Exception as exc:
        log(f"  idle {p.name} {n}: FAILED {type(exc).__name__}: {exc}")
        return None
    finally:
        for t in held:
            t.abort()
        loop.run_until_complete(asyncio.sleep(0.2))
        loop.close()


def run_idle(n: int, quick: bool) -> dict[str, Any]:
    """RSS growth per idle connection: every peer at ``n``, then a fresh wirecat at the most
    connections the hard RLIMIT_NOFILE lets one process hold (1000 descriptors spare)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    most = 100_000 if hard == resource.RLIM_INFINITY else min(100_000, hard - 1000)
    raise_fd_limit(max(n, most) + 1000)
    peers = [p for p in echo_peers() if p.name not in ("ncat", "socat")]
    sources = [f"127.0.0.{i}" for i in range(1, 9)]
    rows = []
    with running(peers) as live:
        for p in live:
            row = _idle_row(p, n, sources)
            if row is not None:
                rows.append(row)
    if most > n and not quick:
        fresh = [p for p in echo_peers() if p.name == "wirecat"]
        with running(fresh) as live:
            for p in live:
                row = _idle_row(p, most, sources)
                if row is not None:
                    rows.append(row)
    return {"rows": rows, "n": n, "most": most, "hard": hard}


FILES_SIZE, FILES_REPEAT = "1G", 3


def run_files(quick: bool) -> dict[str, Any]:
    """Rows of bench/bench_files.py: one file over loopback, each tool once per pass."""
    script = BENCH / "bench_files.py"
    if not script.exists():
        return {"skipped": "bench/bench_files.py does not exist yet"}
    size, repeat = ("64M", 1) if quick else (FILES_SIZE, FILES_REPEAT)
    argv = [PY, str(script), "--json", "--size", size, "--repeat", str(repeat)]
    try:
        res = subprocess.run(argv, capture_output=True, timeout=300, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"skipped": "bench_files.py took more than 300 s"}
    if res.returncode != 0:
        return {"skipped": f"bench_files.py exited {res.returncode}: "
                           f"{res.stderr.decode(errors='replace')[-300:]}"}  # fmt: skip
    try:
        data = json.loads(res.stdout)
    except ValueError:
        return {"skipped": "bench_files.py did not print JSON"}
    # --repeat 1: a list of rows; more: {"runs": [rows per pass], "median": rows}
    passes: list[list[dict[str, Any]]] = data["runs"] if isinstance(data, dict) else [data]
    rows = []
    for i, first in enumerate(passes[0]):
        per = [p[i] for p in passes if i < len(p) and p[i].get("tool") == first.get("tool")]
        rates = [r["gbps"] for r in per if r.get("gbps")]
        row: dict[str, Any] = {"tool": first.get("tool"), "detail": first.get("detail")}
        row["gbps"] = med(rates)
        for base in ("iperf3", "nc", "socat"):
            vals = []
            for p in passes:
                ref = next((r["gbps"] for r in p if r.get("tool") == base and r.get("gbps")), 0)
                mine = p[i].get("gbps") if i < len(p) else None
                if ref and mine:
                    vals.append(mine / ref)
            row[f"vs_{base}"] = med(vals)[0]
        rows.append(row)
    return {"rows": rows, "argv": " ".join(["bench/bench_files.py", *argv[2:]]),
            "passes": len(passes), "sha256_gbps": openssl_sha256_gbps()}  # fmt: skip


def openssl_sha256_gbps() -> float | None:
    """This machine's SHA-256 speed in GB/s: ``openssl speed -evp sha256`` on 1 MiB blocks
    (the limit of a SHA-256-verified transfer; hashlib uses the same OpenSSL code)."""
    argv = ["openssl", "speed", "-seconds", "2", "-bytes", "1048576", "-evp", "sha256"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == "sha256" and fields[1].endswith("k"):
            return float(fields[1][:-1]) * 1000 / 1e9  # "1831300.91k" = 1000s of bytes/s
    return None


# -- the report --------------------------------------------------------------------------------


def med(values: list[float]) -> tuple[float, float, float]:
    vals = [v for v in values if v == v]  # drop NaN
    if not vals:
        return float("nan"), float("nan"), float("nan")
    return statistics.median(vals), min(vals), max(vals)


def fmt_rate(v: float) -> str:
    return f"{v / 1000:,.1f}k" if v >= 10_000 else f"{v:,.0f}"


def table(part: dict[str, Any], ref: str, unit: str) -> list[str]:
    samples: list[Sample] = part["samples"]
    lines: list[str] = []
    for case in part["cases"]:
        rows = [s for s in samples if s.case == case]
        peers = list(dict.fromkeys(s.peer for s in rows))
        stats = {p: [s for s in rows if s.peer == p] for p in peers}
        ref_rate = med([s.rate for s in stats.get(ref, [])])[0]
        ref_cpu = med([s.cpu_us_per_op for s in stats.get(ref, [])])[0]
        wc_rate = med([s.rate for s in stats.get("wirecat", [])])[0]
        lines += [
            f"**{case}**",
            "",
            f"| server | {unit}/s median (min-max) | ÷ {ref} | wirecat ÷ this "
            f"| server CPU µs/{unit} (÷ {ref}) | server CPU | loadgen CPU | p50 µs | p99 µs "
            "| errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in sorted(peers, key=lambda p: -med([s.rate for s in stats[p]])[0]):
            ss = stats[p]
            r, lo, hi = med([s.rate for s in ss])
            cpu = med([s.cpu_us_per_op for s in ss])[0]
            name = f"**{p}**" if p == "wirecat" else p
            srv = med([s.server_util for s in ss])[0]
            gen = med([s.load_util for s in ss])[0]
            p50 = med([s.p50_us for s in ss])[0]
            p99 = med([s.p99_us for s in ss])[0]
            lines.append(
                f"| {name} | {fmt_rate(r)} ({fmt_rate(lo)}-{fmt_rate(hi)}) | {r / ref_rate:.2f} | "
                f"{wc_rate / r:.2f} | {cpu:.2f} ({cpu / ref_cpu:.2f}) | {srv:.0%} | {gen:.0%} | "
                f"{p50:,.0f} | {p99:,.0f} | {sum(s.errors for s in ss)} |"
            )
        lines.append("")
    return lines


def r2(x: float) -> str:
    return "n/a" if x != x else f"{x:.2f}"


def ratio(part: dict[str, Any], case: str, a: str, b: str, attr: str) -> float:
    ss = [s for s in part["samples"] if s.case == case]
    va = med([getattr(s, attr) for s in ss if s.peer == a])[0]
    vb = med([getattr(s, attr) for s in ss if s.peer == b])[0]
    return va / vb if vb else float("nan")


def versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            res = subprocess.run(argv, capture_output=True, timeout=10)
            text = (res.stdout or res.stderr).decode(errors="replace").strip().splitlines()
            return text[0] if text else "?"
        except (OSError, subprocess.TimeoutExpired):
            return "not installed"

    import uvloop

    cpu = "?"
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": uvloop.__version__,
        "go": first_line(["go", "version"]),
        "node": first_line(["node", "--version"]),
        "ncat": first_line(["ncat", "--version"]),
        "socat": _socat_version(),
        "redis": first_line(["redis-server", "--version"]),
        "mem": f"{os.sysconf('SC_PHYS_PAGES') * PAGE / 2**30:.1f} GiB",
    }


def _socat_version() -> str:
    try:
        out = subprocess.run(["socat", "-V"], capture_output=True, timeout=10).stdout.decode()
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    return next((ln for ln in out.splitlines() if ln.startswith("socat version")), "?")


# -- targets and the previous full run ---------------------------------------------------------

#: Figures of the previous full run (bench/RESULTS.md of commit 0d8f571, before the
#: optimisations listed in bench/OPTIMISATIONS.md), for the "previous vs this run" table.
PREVIOUS_RUN = "commit 0d8f571, 2026-11-21 05:46 UTC"
PREVIOUS: dict[str, float] = {
    "echo_rt_go": 1.11,
    "echo_cpu_go": 0.84,
    "chat100_rate": 168_600,
    "chat100_redis": 0.34,
    "chat100_ncat": 0.39,
    "chat100_cpu_redis": 6.71,
    "chat1000_rate": 192_800,
    "chat1000_redis": 0.33,
    "chat1000_cpu_redis": 4.43,
    "idle_kib": 2.52,
    "files_send_iperf3": 0.175,
    "files_get_iperf3": 0.189,
}

#: The issue's targets.
ECHO_RT_GO = 1.0  # echo 100 x 64 B round trips/s >= 1.0x Go
ECHO_CPU_GO = 1.1  # ... and server CPU per round trip within 1.1x of Go
CHAT_NCAT = 1.0  # chat fan-out at 1000 members >= 1.0x ncat --broker deliveries/s
WS_NODE = 1.0  # ws echo 100 x 64 B round trips/s >= 1.0x Node ws
WS_WEBSOCKETS = 1.5  # ws echo 100 x 64 B round trips/s >= 1.5x websockets' asyncio server
WS_CHAT_NODE = 1.0  # ws chat fan-out at 1000 members >= 1.0x Node ws broadcast deliveries/s
CHAT_REDIS = 3.0  # ... and >= 3x Redis pub/sub
IDLE_BYTES = 1.5 * 1024  # idle RSS per connection at 10k and 100k, one process


def status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


def fmt_x(x: float) -> str:
    return "n/a" if x != x else f"{x:.2f}x"


def peer_med(part: dict[str, Any], case: str, peer: str, attr: str) -> float:
    return med([getattr(s, attr) for s in part["samples"] if s.case == case and s.peer == peer])[0]


def idle_by(parts: dict[str, Any]) -> dict[tuple[str, int], float]:
    rows = parts.get("idle", {}).get("rows", [])
    return {(r["peer"], r["conns"]): r["per_conn"] for r in rows}


def files_row(parts: dict[str, Any], tool: str) -> dict[str, Any] | None:
    rows = parts.get("files", {}).get("rows", [])
    return next((r for r in rows if r.get("tool") == tool and "blake3" in str(r["detail"])), None)


def targets_section(parts: dict[str, Any]) -> list[str]:
    md = [
        "## Targets",
        "",
        "Medians of this run. `ratio` = wirecat / peer (for CPU and memory, lower is better).",
        "",
        "| target | wirecat | peer | ratio | status |",
        "|---|---:|---:|---:|---|",
    ]
    if "echo" in parts:
        e, case = parts["echo"], "100 x 64 B"
        wr, gr = peer_med(e, case, "wirecat", "rate"), peer_med(e, case, "go", "rate")
        wc = peer_med(e, case, "wirecat", "cpu_us_per_op")
        gc = peer_med(e, case, "go", "cpu_us_per_op")
        md += [
            f"| echo 100 x 64 B: round trips/s >= {ECHO_RT_GO:.1f}x Go | {fmt_rate(wr)}/s "
            f"| Go {fmt_rate(gr)}/s | {fmt_x(wr / gr)} "
            f"| {status(None if gr != gr else wr / gr >= ECHO_RT_GO)} |",
            f"| echo 100 x 64 B: server CPU per round trip <= {ECHO_CPU_GO:.1f}x Go "
            f"| {wc:.2f} µs | Go {gc:.2f} µs | {fmt_x(wc / gc)} "
            f"| {status(None if gc != gc else wc / gc <= ECHO_CPU_GO)} |",
        ]
    if "chat" in parts:
        c, case = parts["chat"], "1000 members"
        wr = peer_med(c, case, "wirecat", "rate")
        nr = peer_med(c, case, "ncat-broker", "rate")
        rr = peer_med(c, case, "redis", "rate")
        ncat = f"ncat {fmt_rate(nr)}/s" if nr == nr else "ncat: no run completed"
        md += [
            f"| chat 1000 members: deliveries/s >= {CHAT_NCAT:.1f}x ncat --broker "
            f"| {fmt_rate(wr)}/s | {ncat} | {fmt_x(wr / nr)} "
            f"| {status(None if nr != nr else wr / nr >= CHAT_NCAT)} |",
            f"| chat 1000 members: deliveries/s >= {CHAT_REDIS:.1f}x Redis pub/sub "
            f"| {fmt_rate(wr)}/s | Redis {fmt_rate(rr)}/s | {fmt_x(wr / rr)} "
            f"| {status(None if rr != rr else wr / rr >= CHAT_REDIS)} |",
        ]
    if "ws" in parts:
        w, case = parts["ws"], "100 x 64 B"
        wr = peer_med(w, case, "wirecat", "rate")
        wc = peer_med(w, case, "wirecat", "cpu_us_per_op")
        for peer, label, want in (
            ("node-ws", "Node ws", WS_NODE),
            ("websockets", "websockets", WS_WEBSOCKETS),
        ):
            pr = peer_med(w, case, peer, "rate")
            pc = peer_med(w, case, peer, "cpu_us_per_op")
            md += [
                f"| ws echo 100 x 64 B: round trips/s >= {want:.1f}x {label} | {fmt_rate(wr)}/s "
                f"| {label} {fmt_rate(pr)}/s | {fmt_x(wr / pr)} "
                f"| {status(None if pr != pr else wr / pr >= want)} |",
                f"| ws echo 100 x 64 B: server CPU per round trip (the same target, as CPU: "
                f"<= {1 / want:.2f}x {label}) | {wc:.2f} µs | {label} {pc:.2f} µs "
                f"| {fmt_x(wc / pc)} | {status(None if pc != pc else wc / pc <= 1 / want)} |",
            ]
    if "ws_chat" in parts:
        w, case = parts["ws_chat"], "1000 members"
        wr = peer_med(w, case, "wirecat", "rate")
        nr = peer_med(w, case, "node-ws", "rate")
        wc = peer_med(w, case, "wirecat", "cpu_us_per_op")
        nc = peer_med(w, case, "node-ws", "cpu_us_per_op")
        md += [
            f"| ws chat 1000 members: deliveries/s >= {WS_CHAT_NODE:.1f}x Node ws broadcast "
            f"| {fmt_rate(wr)}/s | Node ws {fmt_rate(nr)}/s | {fmt_x(wr / nr)} "
            f"| {status(None if nr != nr else wr / nr >= WS_CHAT_NODE)} |",
            f"| ws chat 1000 members: server CPU per delivery (as CPU: <= "
            f"{1 / WS_CHAT_NODE:.1f}x) | {wc:.2f} µs | Node ws {nc:.2f} µs | {fmt_x(wc / nc)} "
            f"| {status(None if nc != nc else wc / nc <= 1 / WS_CHAT_NODE)} |",
        ]
    if "idle" in parts:
        i, by = parts["idle"], idle_by(parts)
        n, most = i["n"], i["most"]
        w = by.get(("wirecat", n), float("nan"))
        g = by.get(("go", n), float("nan"))
        md.append(
            f"| idle: <= 1.5 KB (read as {IDLE_BYTES:,.0f} B) RSS per connection at {n:,} "
            f"| {w:,.0f} B ({w / 1024:.2f} KiB) | Go {g:,.0f} B | {fmt_x(w / g)} "
            f"| {status(None if w != w else w <= IDLE_BYTES)} |"
        )
        wm = by.get(("wirecat", most), float("nan"))
        seen = f"{wm:,.0f} B ({wm / 1024:.2f} KiB) at {most:,}" if wm == wm else "not run"
        md.append(
            f"| idle: the same at 100,000 in one process | {seen} | - | - "
            f"| **not measurable here**: the hard RLIMIT_NOFILE is {i['hard']:,} and cannot be "
            f"raised; at {most:,} connections (the most that fit): "
            f"{status(None if wm != wm else wm <= IDLE_BYTES)} |"
        )
    if "multicore" in parts:
        m = parts["multicore"]
        w1 = peer_med(m, MULTICORE_CASE, "wirecat-w1-core0", "rate")
        w2 = peer_med(m, MULTICORE_CASE, "wirecat-w2", "rate")
        md.append(
            f"| `serve --workers N`: show the scaling on this machine | --workers 2: "
            f"{fmt_rate(w2)}/s | --workers 1: {fmt_rate(w1)}/s | {fmt_x(w2 / w1)} "
            "| shown (see Multi-core: 2 cores cannot show scaling) |"
        )
    for tool in ("wirecat send", "wirecat get"):
        r = files_row(parts, tool)
        if r is not None:
            md.append(
                f"| files: {tool} ({r['detail']}): no numeric target, reported "
                f"| {r['gbps'][0]:.2f} GB/s | iperf3 / nc / socat "
                f"| {fmt_x(r['vs_iperf3'])} / {fmt_x(r['vs_nc'])} / {fmt_x(r['vs_socat'])} "
                "| reported |"
            )
    return [*md, ""]


def summary_section(parts: dict[str, Any]) -> list[str]:
    out = []
    if "echo" in parts:
        e, case = parts["echo"], "100 x 64 B"
        out.append(
            f"- echo {case}: wirecat/Go round trips/s "
            f"**{r2(ratio(e, case, 'wirecat', 'go', 'rate'))}**, server CPU per round trip "
            f"wirecat/Go **{r2(ratio(e, case, 'wirecat', 'go', 'cpu_us_per_op'))}** "
            f"(wirecat/py-uvloop {r2(ratio(e, case, 'wirecat', 'py-uvloop', 'cpu_us_per_op'))})"
        )
    if "chat" in parts:
        c = parts["chat"]
        for case in c["cases"]:
            out.append(
                f"- chat {case}: wirecat/ncat-broker deliveries/s "
                f"**{r2(ratio(c, case, 'wirecat', 'ncat-broker', 'rate'))}**, wirecat/redis "
                f"**{r2(ratio(c, case, 'wirecat', 'redis', 'rate'))}**; CPU per delivery "
                f"wirecat/ncat-broker "
                f"**{r2(ratio(c, case, 'wirecat', 'ncat-broker', 'cpu_us_per_op'))}**, "
                f"wirecat/redis **{r2(ratio(c, case, 'wirecat', 'redis', 'cpu_us_per_op'))}**"
            )
    if "ws" in parts:
        w, case = parts["ws"], "100 x 64 B"
        out.append(
            f"- ws echo {case}: wirecat/Node ws round trips/s "
            f"**{r2(ratio(w, case, 'wirecat', 'node-ws', 'rate'))}**, wirecat/websockets "
            f"**{r2(ratio(w, case, 'wirecat', 'websockets', 'rate'))}**; server CPU per round "
            f"trip wirecat/Node ws **{r2(ratio(w, case, 'wirecat', 'node-ws', 'cpu_us_per_op'))}"
            f"**, wirecat/websockets "
            f"**{r2(ratio(w, case, 'wirecat', 'websockets', 'cpu_us_per_op'))}**"
        )
    if "ws_chat" in parts:
        w, case = parts["ws_chat"], "1000 members"
        out.append(
            f"- ws chat {case}: wirecat/Node ws broadcast deliveries/s "
            f"**{r2(ratio(w, case, 'wirecat', 'node-ws', 'rate'))}**; server CPU per delivery "
            f"wirecat/Node ws **{r2(ratio(w, case, 'wirecat', 'node-ws', 'cpu_us_per_op'))}**"
        )
    if "multicore" in parts:
        m, base = parts["multicore"], "wirecat-w1-core0"
        out.append(
            "- echo 100 x 64 B, `--workers 2` (cores 0-1) / `--workers 1` (core 0): round "
            f"trips/s **{r2(ratio(m, MULTICORE_CASE, 'wirecat-w2', base, 'rate'))}**, server "
            "CPU per round trip "
            f"**{r2(ratio(m, MULTICORE_CASE, 'wirecat-w2', base, 'cpu_us_per_op'))}**"
        )
    if "idle" in parts:
        i, by = parts["idle"], idle_by(parts)
        if ("wirecat", i["n"]) in by:
            text = (
                f"- idle: wirecat **{by[('wirecat', i['n'])] / 1024:.2f} KiB** per connection "
                f"at {i['n']:,}"
            )
            if ("wirecat", i["most"]) in by:
                text += f", **{by[('wirecat', i['most'])] / 1024:.2f} KiB** at {i['most']:,}"
            others = [
                f"{p} {by[(p, i['n'])] / 1024:.2f} KiB"
                for p in ("py-uvloop", "go", "node")
                if (p, i["n"]) in by
            ]
            out.append(text + (f" ({', '.join(others)})" if others else ""))
    for tool in ("wirecat send", "wirecat get"):
        r = files_row(parts, tool)
        if r is not None:
            out.append(
                f"- files, {tool} ({r['detail']}): **{r2(r['vs_iperf3'])}** x iperf3, "
                f"{r2(r['vs_nc'])} x nc, {r2(r['vs_socat'])} x socat"
            )
    return ["## Summary", "", *out, ""]


def previous_section(parts: dict[str, Any]) -> list[str]:
    """The previous full run's headline figures beside this run's."""
    rows: list[tuple[str, str, str]] = []
    p = PREVIOUS
    if "echo" in parts:
        e, case = parts["echo"], "100 x 64 B"
        rows += [
            ("echo 100 x 64 B, wirecat/Go round trips/s", f"{p['echo_rt_go']:.2f}",
             r2(ratio(e, case, "wirecat", "go", "rate"))),
            ("echo 100 x 64 B, server CPU per round trip wirecat/Go", f"{p['echo_cpu_go']:.2f}",
             r2(ratio(e, case, "wirecat", "go", "cpu_us_per_op"))),
        ]  # fmt: skip
    if "chat" in parts:
        c = parts["chat"]
        for m in (100, 1000):
            case = f"{m} members"
            rows += [
                (f"chat {m} members, wirecat deliveries/s", fmt_rate(p[f"chat{m}_rate"]),
                 fmt_rate(peer_med(c, case, "wirecat", "rate"))),
                (f"chat {m} members, wirecat/redis deliveries/s", f"{p[f'chat{m}_redis']:.2f}",
                 r2(ratio(c, case, "wirecat", "redis", "rate"))),
                (f"chat {m} members, CPU per delivery wirecat/redis",
                 f"{p[f'chat{m}_cpu_redis']:.2f}",
                 r2(ratio(c, case, "wirecat", "redis", "cpu_us_per_op"))),
            ]  # fmt: skip
        rows.append(
            ("chat 100 members, wirecat/ncat-broker deliveries/s", f"{p['chat100_ncat']:.2f}",
             r2(ratio(c, "100 members", "wirecat", "ncat-broker", "rate")))
        )  # fmt: skip
    if "idle" in parts:
        w = idle_by(parts).get(("wirecat", parts["idle"]["n"]), float("nan"))
        rows.append(("idle, wirecat KiB per connection at 10,000", f"{p['idle_kib']:.2f}",
                     r2(w / 1024)))  # fmt: skip
    for tool, key in (("wirecat send", "files_send_iperf3"), ("wirecat get", "files_get_iperf3")):
        r = files_row(parts, tool)
        if r is not None:
            rows.append((f"files, {tool} blake3 / iperf3", f"{p[key]:.3f} (256 MiB, 1 pass)",
                         f"{r['vs_iperf3']:.3f}"))  # fmt: skip
    if not rows:
        return []
    return [
        f"**The previous full run ({PREVIOUS_RUN}) against this one.** The previous run used "
        "bench/peers/wirecat_chat.py (the chat service through the library, limit lifted) "
        "where this one runs `wirecat serve --chat ... --chat-rate 0`, and 256 MiB in one pass "
        "for files.",
        "",
        "| figure | previous full run | this run |",
        "|---|---:|---:|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
        "",
    ]


def multicore_table(part: dict[str, Any]) -> list[str]:
    base = "wirecat-w1-core0"
    samples: list[Sample] = [s for s in part["samples"] if s.case == MULTICORE_CASE]
    peers = list(dict.fromkeys(s.peer for s in samples))
    ref_rate = peer_med(part, MULTICORE_CASE, base, "rate")
    ref_cpu = peer_med(part, MULTICORE_CASE, base, "cpu_us_per_op")
    lines = [
        f"| server | rt/s median (min-max) | ÷ {base} | server CPU µs/rt (÷ {base}) "
        "| server CPU | loadgen CPU | p50 µs | p99 µs | connections per worker "
        "| CPU share per worker "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for p in peers:
        ss = [s for s in samples if s.peer == p]
        r, lo, hi = med([s.rate for s in ss])
        cpu = med([s.cpu_us_per_op for s in ss])[0]
        srv = med([s.server_util for s in ss])[0]
        gen = med([s.load_util for s in ss])[0]
        p50 = med([s.p50_us for s in ss])[0]
        p99 = med([s.p99_us for s in ss])[0]
        split = ss[len(ss) // 2].raw.get("procs", [])  # one run's split (the middle one)
        if p.startswith("wirecat") and split:
            total = sum(w["cpu_s"] for w in split) or 1.0
            socks = " / ".join(str(w["conns"]) for w in split)
            share = " / ".join(f"{w['cpu_s'] / total:.0%}" for w in split)
        else:
            socks = share = "-"  # Go: one process, threads
        lines.append(
            f"| {p} | {fmt_rate(r)} ({fmt_rate(lo)}-{fmt_rate(hi)}) | {r / ref_rate:.2f} "
            f"| {cpu:.2f} ({cpu / ref_cpu:.2f}) | {srv:.0%} | {gen:.0%} | {p50:,.0f} | {p99:,.0f} "
            f"| {socks} | {share} | {sum(s.errors for s in ss)} |"
        )
    return [*lines, ""]


def multicore_findings(part: dict[str, Any]) -> list[str]:
    """This run's comparisons, in words."""

    def r(a: str, b: str, attr: str) -> str:
        return r2(ratio(part, MULTICORE_CASE, a, b, attr))

    gen = med([s.load_util for s in part["samples"]])[0]
    return [
        f"In this run: `--workers 2` vs `--workers 1` on the same two cores: "
        f"**{r('wirecat-w2', 'wirecat-w1', 'rate')}x** the round trips/s and "
        f"**{r('wirecat-w2', 'wirecat-w1', 'cpu_us_per_op')}x** the server CPU per round trip; "
        f"vs one worker alone on core {SERVER_CORE}: "
        f"{r('wirecat-w2', 'wirecat-w1-core0', 'rate')}x and "
        f"{r('wirecat-w2', 'wirecat-w1-core0', 'cpu_us_per_op')}x. Go on both cores: "
        f"{r('go-2cores', 'wirecat-w1-core0', 'rate')}x and "
        f"{r('go-2cores', 'wirecat-w1-core0', 'cpu_us_per_op')}x. The load generator ran at "
        f"{gen:.0%} of its core (median of every multi-core run): it, not the server, sets the "
        "pace of every row.",
        "",
    ]


MULTICORE_TEXT = """\
What the numbers mean. This machine has 2 cores and the load generator needs one of them, so
`--workers 2` cannot get a core per worker here: its second worker shares core 1 with the load
generator (the `server CPU` column can exceed 100% only by taking time from the client). The
round trips/s of the 2-core rows therefore say as much about the scheduler and the client as
about wirecat; the figure that carries over to a bigger machine is **server CPU per round
trip**: if it stays flat from 1 to 2 workers, the workers do not get in each other's way (no
shared state, no lock: each process runs its own event loop on its own listening socket, and
the kernel hands every new connection to one of them). Here it does not stay quite flat: a
worker that shares core 1 with the load generator is switched in and out against it for
every batch it serves, and any server allowed on both cores (one wirecat worker, or Go) pays
for the same migrations and context switches, which a core per worker would not cost.
`connections per worker` counts the
client connections each worker held during the measured window (one run, the middle one),
and `CPU share per worker` its share of the server's CPU time: SO_REUSEPORT spreads
connections by a hash of the 4-tuple (addresses and ports), so with 100 connections the split
is near even but not exact, and it is fixed per connection (a few heavy connections can land
on one worker; one connection never spreads). Go with GOMAXPROCS=2 on the same cores is the
reference for what a multi-threaded server gets out of this set-up.

What to expect on more cores: for the stateless services (echo, greeting, UDP echo) each
worker is a copy of the one-process server, so with enough connections and a load generator
on cores of its own, throughput should grow close to linearly with the number of workers (one
per core) until the kernel's own work (loopback or NIC softirq processing, the network stack
taking locks per socket) or the NIC becomes the limit; CPU per round trip should stay where
the one-worker row has it. Latency per round trip does not improve (one connection is always
served by one worker). Chat does not scale with `--workers`: rooms live in one process's
memory, so chat (and Unix-socket listeners) stay in worker 0 until a shared hub (e.g. a
broker between workers) exists; chat fan-out is bound by that one process. Files run in every
worker: their locks and quota live in the file system.
"""


def write_results(
    args: argparse.Namespace, parts: dict[str, Any], took: float, meta: dict[str, Any]
) -> Path:
    v = versions()
    now = meta["date"]
    cmd = " ".join(["bench/run", *meta["argv"]])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    md = [
        "# wirecat peer benchmarks",
        "",
        f"- command: `{cmd}` (bench/run.py), run on {now}, took {took / 60:.1f} minutes. "
        "Do not edit by hand: re-run the suite (see bench/README.md).",
        f"- machine: nproc {NPROC}, CPU `{v['cpu']}` (/proc/cpuinfo model name), {v['mem']} RAM, "
        f"kernel Linux {v['kernel']}; RLIMIT_NOFILE hard limit {hard:,} (cannot be raised "
        "here). Shared with other jobs: compare ratios within this run, not absolute numbers "
        "across runs.",
        f"- Python {v['python']}, uvloop {v['uvloop']}; {v['go']}; node {v['node']}; "
        f"{v['ncat']}; {v['socat']}; {v['redis']}",
        f"- server pinned to core {SERVER_CORE}, load generator (`wirecat.bench`, one uvloop "
        f"process) to core {LOAD_CORE} (the multi-core rows say where their servers run); "
        f"{args.reps} interleaved repetitions (peer order rotated each time), medians with "
        "min-max",
        "- server CPU = CPU time of the server's whole session (forked children included) over "
        "exactly the measured window, divided by the operations completed: live processes "
        "through their process CPU clock (ns, all threads), reaped children through "
        "/proc/PID/stat cutime+cstime (stat's per-process utime+stime are 10 ms ticks, which "
        "round ncat's and socat's per-connection children to zero). `server CPU` and "
        "`loadgen CPU` columns are CPU seconds per wall second (100% = one core busy). A "
        "loadgen near 100% means the client, not the server, set the pace: then compare the "
        "CPU µs/op column.",
        "",
        *targets_section(parts),
        *summary_section(parts),
    ]
    limits = BENCH / "LIMITS.md"
    if limits.exists():
        md += ["## What limits the targets not met", "", *limits.read_text().splitlines()[2:], ""]
    if "echo" in parts:
        e = parts["echo"]
        md += [
            "## Echo round trips",
            "",
            f"Ping-pong, one message in flight per connection, {args.duration:g} s per run. "
            "Ratios: `÷ go` is this server's rate over the Go server's; `wirecat ÷ this` is "
            "wirecat's rate over this server's. Every server here has one core (Go's runtime "
            "sees one CPU, so GOMAXPROCS=1); Go on two cores is in the Multi-core section.",
            "",
            *table(e, "go", "rt"),
        ]
        md += ["Peers: " + "; ".join(f"{k}: {n}" for k, n in e["notes"].items()), ""]
    if "chat" in parts:
        c = parts["chat"]
        md += [
            "## Chat fan-out",
            "",
            "One room, one sender, 64-byte texts, at most 16 messages in flight (not yet "
            "delivered to every member; the sender writes the messages its window allows in "
            "one write); rate = deliveries/s until every member has every message (checked: "
            "each member counts the sender's messages per chunk received and checks their "
            "seqs, see `wirecat.bench.chat`); CPU per delivery; latency per delivery (send to "
            "receipt), sampled: every delivery of one message in 8.",
            "",
            *table(c, "redis", "delivery"),
        ]
        if c["failures"]:
            md += ["Runs that failed (left out of the medians):", ""]
            md += [f"- {f}" for f in c["failures"]] + [""]
        setup = med([s.raw["setup_s"] for s in c["samples"]
                     if s.peer == "ncat-broker" and s.case == "1000 members"])  # fmt: skip
        if setup[0] == setup[0]:
            md += [
                "ncat --broker is in the 1000-member case again: an earlier run left it out "
                "after a trial in which it accepted 669 of 1000 connections within the 30 s "
                "set-up bound. Its listen backlog is 10 and it accepts slowly, so members now "
                f"connect 4 at a time (bound 45 s); its set-up (not measured time) took "
                f"{setup[0]:.0f} s ({setup[1]:.0f}-{setup[2]:.0f}) for 1000 members in this run.",
                "",
            ]
        md += ["Peers: " + "; ".join(f"{k}: {n}" for k, n in c["notes"].items()), ""]
    if "multicore" in parts:
        m = parts["multicore"]
        md += [
            "## Multi-core: `wirecat serve --workers N`",
            "",
            f"Echo {MULTICORE_CASE}, {args.duration:g} s per run, interleaved like the rest. "
            f"The load generator stays on core {LOAD_CORE} in every row. `wirecat-w1-core0` "
            f"is the echo tables' set-up (one process on core {SERVER_CORE}); the other rows "
            f"may run on cores {SERVER_CORE} and {LOAD_CORE}. Ratios are over "
            "`wirecat-w1-core0`.",
            "",
            *multicore_table(m),
            "Peers: " + "; ".join(f"{k}: {n}" for k, n in m["notes"].items()),
            "",
            *multicore_findings(m),
            *MULTICORE_TEXT.splitlines(),
            "",
        ]
    if "idle" in parts:
        i = parts["idle"]
        md += [
            "## Idle connections",
            "",
            f"Server RSS growth with N open idle connections (each echoed one byte, so the "
            "server has accepted and set it up), sources spread over 127.0.0.1-8. Every peer "
            f"at {i['n']:,}; then a fresh wirecat at {i['most']:,}, the most one process can "
            "hold here.",
            "",
            "| server | connections | KiB per connection | bytes per connection "
            "| RSS before MiB | RSS after MiB | open time s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in sorted(i["rows"], key=lambda r: (r["conns"], r["per_conn"])):
            md.append(
                f"| {r['peer']} | {r['conns']:,} | {r['per_conn'] / 1024:.2f} "
                f"| {r['per_conn']:,.0f} | {r['rss_before'] / 2**20:.1f} "
                f"| {r['rss_after'] / 2**20:.1f} | {r['open_s']:.1f} |"
            )
        md += [
            "",
            f"100k idle connections do not fit this machine: the hard RLIMIT_NOFILE is "
            f"{i['hard']:,} (soft raised to it; the hard limit cannot be raised without "
            "privileges this environment does not grant), so one server process cannot hold "
            f"more than that many sockets; {i['most']:,} is the closest. ncat/socat fork a "
            "process per connection and are left out.",
            "",
        ]
    if "files" in parts:
        f = parts["files"]
        md += ["## Bulk file throughput", ""]
        if "skipped" in f:
            md += [f"Skipped: {f['skipped']}.", ""]
        else:
            md += [
                f"From `python {f['argv']}` (bench/bench_files.py): one file on /dev/shm over "
                f"loopback, every tool once per pass, {f['passes']} pass(es); rate in GB/s "
                "(10^9 bytes/s; bench_files.py's `gbps` field), median (min-max); ratios "
                "taken within each pass, then the median.",
                "",
                "| tool | detail | GB/s median (min-max) | ÷ iperf3 | ÷ nc | ÷ socat |",
                "|---|---|---:|---:|---:|---:|",
            ]
            for r in f["rows"]:
                g = r["gbps"]
                rate = "-" if g[0] != g[0] else f"{g[0]:.2f} ({g[1]:.2f}-{g[2]:.2f})"
                md.append(
                    f"| {r['tool']} | {r['detail']} | {rate} | {r2(r['vs_iperf3'])} "
                    f"| {r2(r['vs_nc'])} | {r2(r['vs_socat'])} |"
                )
            md.append("")
            sha = f.get("sha256_gbps")
            sha_row = next((r for r in f["rows"] if "sha256" in str(r.get("detail"))), None)
            if sha and sha_row and sha_row["gbps"][0] == sha_row["gbps"][0]:
                md += [
                    f"SHA-256 on this machine (`openssl speed -evp sha256`, 1 MiB blocks, one "
                    f"core): {sha:.2f} GB/s. wirecat send with `--digest sha256` reaches "
                    f"{sha_row['gbps'][0]:.2f} GB/s, **{sha_row['gbps'][0] / sha:.2f}x** of it: "
                    "each side hashes every byte once on one core, beside the transfer.",
                    "",
                ]
    md += ws_sections(args, parts)
    if "relay" in parts:
        import bench_relay

        md += bench_relay.section(sys.modules[__name__], parts["relay"], now)
    opt = BENCH / "OPTIMISATIONS.md"
    if opt.exists():
        md += ["## What each optimisation bought", "", *opt.read_text().splitlines()[2:], ""]
        md += previous_section(parts)
    notes = BENCH / "PROFILE.md"
    if notes.exists():
        md += ["## Profiling notes", "", *notes.read_text().splitlines()[2:], ""]
    path = Path(args.out)
    path.write_text("\n".join(md).rstrip() + "\n")
    return path


WS_NOISE = (
    "Machine noise: this 2-core machine is shared with other jobs (other agents' builds and "
    "tests run beside the benchmark), so a server or the load generator may get only part "
    "of its core: rates move by tens of percent between runs and between peers of one run. "
    "Server CPU per operation is counted in the measured window only and moves much less; "
    "read it first, and the rate ratios within one run."
)


def ws_sections(args: argparse.Namespace, parts: dict[str, Any]) -> list[str]:
    """The WebSocket echo and chat fan-out sections."""
    md: list[str] = []
    if "ws" in parts:
        w = parts["ws"]
        md += [
            "## WebSocket echo",
            "",
            f"100 connections x 64 B messages over ws://, one in flight per connection, "
            f"{args.duration:g} s per run: each round trip is one masked binary frame from "
            "the load generator (`wirecat bench ws://...`, the same client for every row) and "
            "its echo. Ratios over Node's `ws` server; `wirecat ÷ this` is wirecat's rate "
            "over this server's.",
            "",
            *table(w, "node-ws", "rt"),
            "Peers: " + "; ".join(f"{k}: {n}" for k, n in w["notes"].items()),
            "",
            WS_NOISE,
            "",
        ]
    if "ws_chat" in parts:
        c = parts["ws_chat"]
        md += [
            "## WebSocket chat fan-out",
            "",
            "One room of 1000 WebSocket members, one sender, 64-byte texts, at most 16 "
            "messages in flight, counted like the TCP chat rows (`wirecat bench ws://... -m "
            "chat`: receivers walk the frame headers and count the tokens inside). wirecat: "
            "the web listener's /chat, JSON commands in, JSON events out (ids, timestamps, "
            "history), each event encoded once as one text frame for every member and "
            "written once per member per loop iteration. Node: `ws`, each message sent to "
            "every other client (no parsing, no ids). Ratios over Node.",
            "",
            *table(c, "node-ws", "delivery"),
        ]
        if c["failures"]:
            md += ["Runs that failed (left out of the medians):", ""]
            md += [f"- {f}" for f in c["failures"]] + [""]
        md += [
            "Peers: " + "; ".join(f"{k}: {n}" for k, n in c["notes"].items()),
            "",
            WS_NOISE,
            "",
        ]
    return md


def render(args: argparse.Namespace) -> int:
    raw = json.loads(Path(args.render).read_text())
    meta = raw.pop("_meta")
    parts = {
        k: {**v, "samples": [Sample(**s) for s in v.get("samples", [])]} for k, v in raw.items()
    }
    args.reps, args.duration = meta["reps"], meta["duration"]
    path = write_results(args, parts, meta["took"], meta)
    log(f"wrote {path} from {args.render}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 repetition, short runs (smoke test)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3)")
    ap.add_argument("--duration", type=float, default=None, help="seconds per echo run (1.5)")
    ap.add_argument("--idle-conns", type=int, default=10_000, help="idle connections (10000)")
    ap.add_argument("--only", default=",".join(PARTS), help="parts to run")
    ap.add_argument("--out", default=str(BENCH / "RESULTS.md"), help="report path")
    ap.add_argument(
        "--render",
        metavar="JSON",
        help="measure nothing: rewrite the report from a results.json of an earlier run "
        "(after editing OPTIMISATIONS.md or PROFILE.md)",
    )
    args = ap.parse_args()
    if args.render:
        return render(args)
    args.reps = args.reps or (1 if args.quick else 3)
    args.duration = args.duration or (0.5 if args.quick else 1.5)
    if args.quick:
        args.idle_conns = min(args.idle_conns, 2000)
    only = set(args.only.split(","))
    if only - set(PARTS):
        ap.error(f"--only takes {','.join(PARTS)}")
    missing = [t for t in ("taskset",) if shutil.which(t) is None]
    if missing or (os.cpu_count() or 1) < 2:
        print("bench/run.py needs taskset (util-linux) and 2 cores", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    os.sched_setaffinity(0, {LOAD_CORE})
    started = time.monotonic()
    parts: dict[str, Any] = {}
    if "echo" in only:
        log("== echo")
        parts["echo"] = run_echo(args.reps, args.duration)
    if "chat" in only:
        log("== chat fan-out")
        parts["chat"] = run_chat(args.reps, args.duration, args.quick)
    if "multicore" in only:
        log("== multi-core (serve --workers)")
        parts["multicore"] = run_multicore(args.reps, args.duration)
    if "idle" in only:
        log("== idle connections")
        parts["idle"] = run_idle(args.idle_conns, args.quick)
    if "files" in only:
        log("== bulk files")
        parts["files"] = run_files(args.quick)
    if "ws" in only:
        log("== WebSocket echo")
        parts["ws"] = run_ws(args.reps, args.duration)
        log("== WebSocket chat fan-out")
        parts["ws_chat"] = run_ws_chat(args.reps, args.quick)
    if "relay" in only:
        log("== relay and SOCKS5")
        import bench_relay

        parts["relay"] = bench_relay.run_part(
            sys.modules[__name__], args.reps, args.duration, args.quick
        )
    took = time.monotonic() - started
    raw: dict[str, Any] = {
        k: {**v, "samples": [s.__dict__ for s in v.get("samples", [])]} for k, v in parts.items()
    }
    meta = {
        "argv": sys.argv[1:],
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "took": took,
        "reps": args.reps,
        "duration": args.duration,
    }
    raw["_meta"] = meta
    if only == {"relay"}:  # one section: replace it in the report, keep the rest
        import bench_relay

        (OUT / "relay.json").write_text(json.dumps(raw, indent=1, default=str))
        path = Path(args.out)
        bench_relay.replace_section(
            path, bench_relay.section(sys.modules[__name__], parts["relay"], meta["date"])
        )
        log(f"updated the relay section of {path} in {took / 60:.1f} min")
        return 0
    (OUT / "results.json").write_text(json.dumps(raw, indent=1, default=str))
    path = write_results(args, parts, took, meta)
    log(f"wrote {path} in {took / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
