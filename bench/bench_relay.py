"""The relay part of the peer suite: ``bench/run --only relay`` (``--quick`` for a smoke run).

Rows, each peer measured in the same run, interleaved (peer order rotated per repetition):

- **bulk**: one iperf3 stream (``-t SECONDS``) straight to its server (the loopback limit),
  and through ``wirecat relay``, ``socat -b262144``, ``socat`` (default 8 KiB buffer) and a
  Go ``io.Copy`` relay (bench/peers/relay.go; Go splices TCP to TCP itself). Nothing is
  pinned here: iperf3's client and server and the relay share both cores. Besides GB/s,
  the relay's CPU seconds per GB (its whole session: socat's forked child included);
- **short connections**: connect, 64 B each way, close (``wirecat.bench`` ``connect`` mode,
  50 at a time) through each relay to one echo server (Go, else wirecat); the relay has
  core 0 to itself (socat's forked children too), echo server and load generator share core 1;
  ``wirecat-w2`` (``relay --workers 2``) may use both cores: not the same budget;
- **SOCKS5**: greeting, CONNECT to the echo server by IPv4, 64 B each way, close (a small
  Protocol client in this process, 50 at a time) through ``wirecat relay socks5://`` and
  ``microsocks`` (a thread per client), each on core 0 (``wirecat-w2``: both cores).

Traffic goes to 127.0.0.1 only; every process is started here and killed on the way out.
The machine is shared: ratios within one run mean more than absolute figures, and the CPU
per operation columns more than the rates.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LIMIT_FLAGS = ["--max-conns", "100000", "--max-conns-per-source", "0", "--conn-rate", "0"]
SECTION = "## Relay and SOCKS5"


def _sample(peer: str, case: str, rate: float, cpu: float, **raw: Any) -> dict[str, Any]:
    return {"peer": peer, "case": case, "rate": rate, "cpu": cpu, **raw}


# -- bulk ------------------------------------------------------------------------------------
def _iperf(port: int, seconds: float) -> float:
    out = subprocess.run(
        ["taskset", "-c", "0,1", "iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds),
         "-J"],
        capture_output=True, text=True, timeout=seconds + 30,
    )  # fmt: skip
    data = json.loads(out.stdout)
    if "error" in data:
        raise RuntimeError(f"iperf3: {data['error']}")
    return float(data["end"]["sum_received"]["bits_per_second"]) / 8 / 1e9  # GB/s


def _bulk_peers(R: ModuleType, target: int) -> list[Any]:
    to = f"{R.HOST}:{target}"
    peers = [
        R.Peer("wirecat", [R.wirecat_bin(), "relay", f"tcp://{R.HOST}:{{port}}", f"tcp://{to}",
                           *LIMIT_FLAGS], ready="listening", cores="0,1",
               note="wirecat relay (os.splice through a pipe)"),
        R.Peer("socat-256k", ["socat", "-b262144",
                              f"TCP-LISTEN:{{port}},bind={R.HOST},reuseaddr,fork,backlog=1024",
                              f"TCP:{to}"], ready="listening", cores="0,1",
               note="socat -b262144, fork"),
        R.Peer("socat", ["socat", f"TCP-LISTEN:{{port}},bind={R.HOST},reuseaddr,fork,backlog=1024",
                         f"TCP:{to}"], ready="listening", cores="0,1",
               note="socat, default 8 KiB buffer, fork"),
    ]  # fmt: skip
    go = R.build_go("relay")
    if go is not None:
        peers.append(R.Peer("go-io.Copy", [str(go), R.HOST, "0", to], cores="0,1",
                            note="Go io.Copy per direction (splices TCP to TCP)"))  # fmt: skip
    return peers


def run_bulk(R: ModuleType, reps: int, seconds: float) -> list[dict[str, Any]]:
    iport = R.free_port()
    server = subprocess.Popen(
        ["taskset", "-c", "0,1", "iperf3", "-s", "-p", str(iport), "-B", R.HOST],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    samples: list[dict[str, Any]] = []
    try:
        R.wait_listening(iport, server)
        with R.running(_bulk_peers(R, iport)) as live:
            rows = [None, *live]  # None: iperf3 direct
            for rep in range(reps):
                R.log(f"bulk repetition {rep + 1}/{reps}")
                for peer in rows[rep % len(rows) :] + rows[: rep % len(rows)]:
                    name = "iperf3 direct" if peer is None else peer.name
                    try:
                        cpu0 = R.session_cpu(peer.sid) if peer else 0.0
                        gbps = _iperf(iport if peer is None else peer.port, seconds)
                        cpu1 = R.session_cpu(peer.sid) if peer else 0.0
                    except (RuntimeError, ValueError, KeyError, subprocess.SubprocessError) as e:
                        R.log(f"  bulk {name}: FAILED {e}")
                        continue
                    per_gb = (cpu1 - cpu0) / (gbps * seconds) if peer else float("nan")
                    R.log(f"  bulk {name:<14} {gbps:6.2f} GB/s  relay cpu {per_gb:.3f} s/GB")
                    samples.append(_sample(name, "bulk", gbps, per_gb, rep=rep))
                    time.sleep(0.2)
    finally:
        server.kill()
        server.wait(5)
    return samples


# -- short connections -----------------------------------------------------------------------
def _echo_target(R: ModuleType) -> Any:
    go = R.build_go("echo")
    if go is not None:
        return R.Peer("echo-go", [str(go), R.HOST, "0"], cores="1", note="Go echo")
    return R.Peer("echo-wirecat", R.wirecat_echo_argv(), ready="port", cores="1")


def _short_peers(R: ModuleType, target: int) -> list[Any]:
    to = f"{R.HOST}:{target}"
    peers = [
        R.Peer("wirecat", [R.wirecat_bin(), "relay", f"tcp://{R.HOST}:{{port}}", f"tcp://{to}",
                           *LIMIT_FLAGS], ready="listening",
               note="wirecat relay, one process"),
        R.Peer("socat-fork", ["socat", f"TCP-LISTEN:{{port}},bind={R.HOST},reuseaddr,fork,"
                              "backlog=4096", f"TCP:{to}"], ready="listening",
               note="socat fork: a process per connection"),
    ]  # fmt: skip
    go = R.build_go("relay")
    if go is not None:
        peers.append(R.Peer("go-io.Copy", [str(go), R.HOST, "0", to], note="Go io.Copy"))
    peers.append(
        R.Peer("wirecat-w2", [R.wirecat_bin(), "relay", "--workers", "2",
                              f"tcp://{R.HOST}:{{port}}", f"tcp://{to}", *LIMIT_FLAGS],
               ready="listening", cores="0,1",
               note="wirecat relay --workers 2 on both cores: not the same core budget")
    )  # fmt: skip
    return peers


def run_short(R: ModuleType, target: int, reps: int, duration: float) -> list[dict[str, Any]]:
    from wirecat import parse_endpoint
    from wirecat.bench import BenchConfig

    samples = []
    with R.running(_short_peers(R, target)) as live:
        made = R.interleaved(
            live,
            [("short", lambda p: BenchConfig(parse_endpoint(p.endpoint), mode="connect",
                                             conns=50, size=64, duration=duration))],
            reps, "ops",
        )  # fmt: skip
        for i, s in enumerate(made):  # interleaved() measures the peers rep by rep
            samples.append(_sample(s.peer, "short", s.rate, s.cpu_us_per_op, rep=i // len(live),
                                   server_util=s.server_util, load_util=s.load_util,
                                   errors=s.errors))  # fmt: skip
    return samples


# -- SOCKS5 ----------------------------------------------------------------------------------
class _SocksClient(asyncio.Protocol):
    """Greeting, CONNECT, 64 B out and back, close: one operation."""

    def __init__(self, request: bytes, payload: bytes, done: asyncio.Future[bool]) -> None:
        self.request, self.payload, self.done = request, payload, done
        self.buf = b""
        self.need = 2
        self.step = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(b"\x05\x01\x00")  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        t = self.transport
        assert t is not None
        while len(self.buf) >= self.need and not self.done.done():
            chunk, self.buf = self.buf[: self.need], self.buf[self.need :]
            if self.step == 0:
                self.step, self.need = 1, 10
                t.write(self.request)
            elif self.step == 1:
                if chunk[1] != 0:
                    self.done.set_result(False)
                    t.close()
                    return
                self.step, self.need = 2, len(self.payload)
                t.write(self.payload)
            else:
                self.done.set_result(chunk == self.payload)
                t.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(False)


async def _socks_load(
    port: int, target: int, conns: int, duration: float, marks: Any
) -> tuple[int, int, float]:
    loop = asyncio.get_running_loop()
    request = b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", target)
    payload = b"x" * 64
    counting = False
    ops = errors = 0

    async def worker() -> None:
        nonlocal ops, errors
        while not stop.is_set():
            done: asyncio.Future[bool] = loop.create_future()
            try:
                t, _ = await loop.create_connection(
                    lambda done=done: _SocksClient(request, payload, done), "127.0.0.1", port
                )
                ok = await asyncio.wait_for(done, 5.0)
                t.close()
            except (OSError, TimeoutError):
                ok = False
            if counting:
                if ok:
                    ops += 1
                else:
                    errors += 1

    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(worker()) for _ in range(conns)]
    await asyncio.sleep(0.3)  # warm-up, not counted
    counting = True
    marks("start")
    began = time.perf_counter()
    await asyncio.sleep(duration)
    marks("stop")
    elapsed = time.perf_counter() - began
    counting = False
    stop.set()
    await asyncio.wait(tasks, timeout=10)
    return ops, errors, elapsed


def run_socks(R: ModuleType, target: int, reps: int, duration: float) -> list[dict[str, Any]]:
    import uvloop

    peers = [
        R.Peer("wirecat", [R.wirecat_bin(), "relay", f"socks5://{R.HOST}:{{port}}",
                           *LIMIT_FLAGS], ready="listening",
               note="wirecat relay socks5://, no login"),
    ]  # fmt: skip
    peers.append(
        R.Peer("wirecat-w2", [R.wirecat_bin(), "relay", "--workers", "2",
                              f"socks5://{R.HOST}:{{port}}", *LIMIT_FLAGS],
               ready="listening", cores="0,1", note="--workers 2 on both cores")
    )  # fmt: skip
    if shutil.which("microsocks"):
        peers.append(R.Peer("microsocks", ["microsocks", "-i", R.HOST, "-p", "{port}"],
                            ready="listening", note="microsocks: a thread per client"))  # fmt: skip
    samples = []
    with R.running(peers) as live:
        for rep in range(reps):
            R.log(f"socks repetition {rep + 1}/{reps}")
            for peer in live[rep % len(live) :] + live[: rep % len(live)]:
                marks: dict[str, tuple[float, float]] = {}

                def mark(what: str, peer: Any = peer, marks: dict[str, Any] = marks) -> None:
                    marks[what] = (R.session_cpu(peer.sid), time.process_time())

                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    ops, errors, elapsed = runner.run(
                        _socks_load(peer.port, target, 50, duration, mark)
                    )
                (c0, l0), (c1, l1) = marks["start"], marks["stop"]
                rate = ops / elapsed
                cpu = (c1 - c0) / ops * 1e6 if ops else float("nan")
                R.log(f"  socks {peer.name:<12} {rate:>9,.0f}/s  cpu {cpu:7.1f} us/op  "
                      f"gen {(l1 - l0) / elapsed:4.0%}  err {errors}")  # fmt: skip
                samples.append(_sample(peer.name, "socks", rate, cpu, rep=rep,
                                       server_util=(c1 - c0) / elapsed,
                                       load_util=(l1 - l0) / elapsed, errors=errors))  # fmt: skip
                time.sleep(0.2)
    return samples


# -- the part --------------------------------------------------------------------------------
def run_part(R: ModuleType, reps: int, duration: float, quick: bool) -> dict[str, Any]:
    """Run every relay row; returns ``{"rows": [...], "load": ..., ...}``."""
    missing = [t for t in ("iperf3", "socat", "ss") if shutil.which(t) is None]
    if missing:
        return {"skipped": f"missing {', '.join(missing)} (bench/run installs them first)"}
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    seconds = 1.0 if quick else 3.0
    samples = run_bulk(R, reps, seconds)
    with R.running([_echo_target(R)]) as echo:
        if not echo:
            return {"skipped": "the echo target did not start", "rows": samples}
        target = echo[0].port
        samples += run_short(R, target, reps, max(duration, 2.0))
        samples += run_socks(R, target, reps, max(duration, 2.0))
    load1 = Path("/proc/loadavg").read_text().split()[:3]
    return {"rows": samples, "load": [load0, load1], "reps": reps, "seconds": seconds,
            "duration": max(duration, 2.0)}  # fmt: skip


def _med(R: ModuleType, part: dict[str, Any], case: str, peer: str, key: str) -> float:
    return float(
        R.med([s[key] for s in part["rows"] if s["case"] == case and s["peer"] == peer])[0]
    )


def section(R: ModuleType, part: dict[str, Any], when: str) -> list[str]:
    """The report's relay section (markdown lines)."""
    md = [f"{SECTION} (`bench/run --only relay`, {when})", ""]
    if "skipped" in part:
        return [*md, f"Skipped: {part['skipped']}.", ""]
    load0, load1 = part["load"]
    md += [
        f"{part['reps']} interleaved repetitions, medians (min-max); bulk runs of "
        f"{part['seconds']:g} s, short-connection and SOCKS5 runs of {part['duration']:g} s. "
        f"Load average {' '.join(load0)} before and {' '.join(load1)} after: other jobs shared "
        "this 2-core machine, so the rates move between runs; the CPU per operation columns "
        "(the relay's whole session) are the steadier comparison.",
        "",
    ]

    def table(case: str, unit: str, cpu_unit: str, ref: str) -> list[str]:
        peers = list(dict.fromkeys(s["peer"] for s in part["rows"] if s["case"] == case))
        if not peers:
            return ["(no rows)", ""]
        rate_ref = _med(R, part, case, ref, "rate")
        wc_rate = _med(R, part, case, "wirecat", "rate")
        wc_cpu = _med(R, part, case, "wirecat", "cpu")
        out = [
            f"| peer | {unit} median (min-max) | ÷ {ref} | wirecat ÷ this | relay CPU "
            f"{cpu_unit} | wirecat CPU ÷ this |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for p in sorted(peers, key=lambda p: -_med(R, part, case, p, "rate")):
            vals = [s["rate"] for s in part["rows"] if s["case"] == case and s["peer"] == p]
            r, lo, hi = R.med(vals)
            cpu = _med(R, part, case, p, "cpu")
            fmt = (lambda v: f"{v:.2f}") if case == "bulk" else R.fmt_rate
            name = f"**{p}**" if p == "wirecat" else p
            cpu_txt = "-" if cpu != cpu else (f"{cpu:.3f}" if case == "bulk" else f"{cpu:,.0f}")
            out.append(
                f"| {name} | {fmt(r)} ({fmt(lo)}-{fmt(hi)}) | {R.r2(r / rate_ref)} "
                f"| {R.r2(wc_rate / r)} | {cpu_txt} | {R.r2(wc_cpu / cpu) if cpu == cpu else '-'} |"
            )
        return [*out, ""]

    md += ["**One bulk TCP stream** (iperf3 through each relay, GB/s; CPU s per GB moved)", ""]
    md += table("bulk", "GB/s", "s/GB", "iperf3 direct")
    md += ["**Short relayed connections** (connect, 64 B each way, close; connections/s; "
           "relay CPU µs per connection; each relay on core 0 alone, the echo server and the "
           "load generator on core 1; `wirecat-w2` = `relay --workers 2` on both cores)",
           ""]  # fmt: skip
    md += table("short", "conn/s", "µs/conn", "socat-fork")
    md += ["**SOCKS5 CONNECT + 64 B round trip** (tunnels/s; proxy CPU µs per tunnel; proxy "
           "on core 0, `wirecat-w2` on both)", ""]  # fmt: skip
    md += table("socks", "tunnels/s", "µs/op", "microsocks")

    def per_rep(case: str, a: str, b: str, key: str) -> list[float]:
        """``a`` over ``b`` within each repetition (the same minutes of machine load)."""
        by: dict[tuple[int, str], float] = {
            (r["rep"], r["peer"]): r[key] for r in part["rows"] if r["case"] == case
        }
        reps = sorted({rep for rep, _ in by})
        return [by[r, a] / by[r, b] for r in reps if by.get((r, b)) and (r, a) in by]

    def x(case: str, a: str, b: str, key: str = "rate") -> float:
        return float(R.med(per_rep(case, a, b, key))[0])

    def spread(case: str, a: str, b: str, key: str = "rate") -> str:
        vals = per_rep(case, a, b, key)
        return f" ({min(vals):.2f}-{max(vals):.2f})" if len(vals) > 1 else ""

    targets = [
        ("bulk ≥ 0.6x iperf3 direct", ("bulk", "wirecat", "iperf3 direct"), 0.6),
        ("bulk ≥ 1.2x socat -b262144", ("bulk", "wirecat", "socat-256k"), 1.2),
        ("short connections ≥ 3x socat fork (rate)", ("short", "wirecat", "socat-fork"), 3.0),
        ("SOCKS5 ≥ 1.0x microsocks (rate)", ("socks", "wirecat", "microsocks"), 1.0),
    ]
    md += [
        "Targets (issue 12): the ratio within each repetition, median (min-max) over the "
        "repetitions:",
        "",
    ]
    for name, (case, a, b), want in targets:
        got = x(case, a, b)
        state = "n/a" if got != got else ("met" if got >= want else "**not met**")
        md.append(f"- {name}: {R.r2(got)}x{spread(case, a, b)}, {state}")
    md += [
        "- with `relay --workers 2` on both cores (not the same core budget): short "
        f"connections {R.r2(x('short', 'wirecat-w2', 'socat-fork'))}x socat fork, SOCKS5 "
        f"{R.r2(x('socks', 'wirecat-w2', 'microsocks'))}x microsocks",
        "- the same work in CPU time (the other side ÷ wirecat; above 1: wirecat spends less): "
        f"per GB, socat -b262144 {R.r2(x('bulk', 'socat-256k', 'wirecat', 'cpu'))}x, Go "
        f"{R.r2(x('bulk', 'go-io.Copy', 'wirecat', 'cpu'))}x; per short connection, socat "
        f"fork {R.r2(x('short', 'socat-fork', 'wirecat', 'cpu'))}x, Go "
        f"{R.r2(x('short', 'go-io.Copy', 'wirecat', 'cpu'))}x; per SOCKS5 tunnel, microsocks "
        f"{R.r2(x('socks', 'microsocks', 'wirecat', 'cpu'))}x",
        "",
    ]
    util = [
        r["server_util"] for r in part["rows"] if r["case"] == "short" and r["peer"] == "wirecat"
    ]
    md += [
        "What limits these figures: with the load average above (other jobs), every process "
        "waits for a core at each wake-up, and a short connection or a SOCKS5 tunnel is a "
        "chain of wake-ups across three processes (load generator, relay, echo server), so "
        "the rates measure scheduling delay as much as work: the single wirecat relay process "
        f"used {min(util, default=0):.0%}-{max(util, default=0):.0%} of its core in the "
        "short-connection runs. Peers with a thread per connection (microsocks, Go) get a "
        "larger share of a contended core (the scheduler shares per thread). Per operation, "
        "wirecat's relay CPU is mostly kernel work (a py-spy profile of a short-connection "
        "run: connect, the four small writes, two shutdowns and accept are about two thirds), "
        "the rest Python callbacks (admission, the engine's bookkeeping). A SOCKS5 tunnel "
        "adds two request/reply steps in Python (greeting, CONNECT), where microsocks spends "
        "less. In bulk the relay spends the least CPU per GB of the relays here (os.splice, "
        "no copy), but iperf3's own two processes, sharing the same two cores, set the pace.",
        "",
    ]
    return md


def replace_section(path: Path, lines: list[str]) -> None:
    """Put ``lines`` in place of the report's relay section (or append it)."""
    text = path.read_text() if path.exists() else ""
    old = text.split("\n")
    start = next((i for i, ln in enumerate(old) if ln.startswith("## Relay")), None)
    if start is None:
        new = [*old, "", *lines] if text else lines
    else:
        end = next((i for i in range(start + 1, len(old)) if old[i].startswith("## ")), len(old))
        new = [*old[:start], *lines, *old[end:]]
    path.write_text("\n".join(new).rstrip() + "\n")


if __name__ == "__main__":  # the old entry point: the same rows through bench/run
    raise SystemExit(
        subprocess.call(
            [sys.executable, str(ROOT / "bench" / "run.py"), "--only", "relay", *sys.argv[1:]]
        )
    )
