"""A/B of the relay's per-connection cost: an older wirecat against this tree, interleaved.

    git archive REV src | tar -x -C /some/dir
    .venv/bin/python bench/ab_relay.py /some/dir [REPS] [SECONDS] [socks,short]

``base`` runs ``python -m wirecat`` with ``PYTHONPATH=/some/dir/src``, ``new`` this tree;
``socks`` also runs microsocks. Per repetition and peer (order rotated), SOCKS5 rows give the
server's user and system CPU per tunnel (/proc ticks of its whole session, so use runs of a
few seconds), ``short`` rows the CPU per connection measured by ``run.interleaved``. Medians
at the end. A development tool (the suite is bench/run's relay part); 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
_spec = importlib.util.spec_from_file_location("run", ROOT / "bench" / "run.py")
assert _spec is not None and _spec.loader is not None
R = importlib.util.module_from_spec(_spec)
sys.modules["run"] = R
_spec.loader.exec_module(R)

import bench_relay as B  # noqa: E402 - after bench/ is on the path

from wirecat import parse_endpoint  # noqa: E402
from wirecat.bench import BenchConfig  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")


def user_sys(sid: int) -> tuple[float, float]:
    """User and system CPU seconds of the processes in session ``sid`` (10 ms ticks)."""
    user = system = 0
    pids = subprocess.run(["pgrep", "-s", str(sid)], capture_output=True, text=True).stdout
    for pid in pids.split():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / 100, system / 100


def main() -> None:
    base = Path(sys.argv[1]).resolve()
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    duration = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
    which = sys.argv[4] if len(sys.argv) > 4 else "socks,short"

    def wirecat(tag: str, *args: str) -> list[str]:
        env = ["env", f"PYTHONPATH={base}/src"] if tag == "base" else []
        return [*env, PY, "-m", "wirecat", *args]

    res: dict[tuple[str, str], list[Any]] = {}
    with R.running([B._echo_target(R)]) as echo:
        target = echo[0].port
        if "socks" in which:
            peers = [
                R.Peer(t, wirecat(t, "relay", "socks5://127.0.0.1:{port}", *B.LIMIT_FLAGS),
                       ready="listening")
                for t in ("base", "new")
            ]  # fmt: skip
            peers.append(R.Peer("microsocks", ["microsocks", "-i", "127.0.0.1", "-p", "{port}"],
                                ready="listening"))  # fmt: skip
            with R.running(peers) as live:
                for rep in range(reps):
                    for p in live[rep % len(live) :] + live[: rep % len(live)]:
                        marks: dict[str, tuple[float, float]] = {}

                        def mark(w: str, p: Any = p, marks: Any = marks) -> None:
                            marks[w] = user_sys(p.sid)

                        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                            ops, errs, took = runner.run(
                                B._socks_load(p.port, target, 50, duration, mark)
                            )
                        (u0, s0), (u1, s1) = marks["start"], marks["stop"]
                        user, system = (u1 - u0) / ops * 1e6, (s1 - s0) / ops * 1e6
                        res.setdefault(("socks", p.name), []).append((ops / took, user, system))
                        print(f"socks {p.name:10} {ops / took:8.0f}/s user {user:6.1f} "
                              f"sys {system:6.1f} us/op err {errs}", flush=True)  # fmt: skip
        if "short" in which:
            to = f"127.0.0.1:{target}"
            peers = [
                R.Peer(t, wirecat(t, "relay", "tcp://127.0.0.1:{port}", f"tcp://{to}",
                                  *B.LIMIT_FLAGS), ready="listening")
                for t in ("base", "new")
            ]  # fmt: skip
            with R.running(peers) as live:
                made = R.interleaved(
                    live,
                    [("short", lambda p: BenchConfig(parse_endpoint(p.endpoint), mode="connect",
                                                     conns=50, size=64, duration=duration))],
                    reps, "ops",
                )  # fmt: skip
                for s in made:
                    res.setdefault(("short", s.peer), []).append((s.rate, s.cpu_us_per_op))
    print("load average", " ".join(Path("/proc/loadavg").read_text().split()[:3]))
    med = statistics.median
    for (case, peer), v in res.items():
        cpu = [f"{med(x[i] for x in v):.1f}" for i in range(1, len(v[0]))]
        each = [[round(x[i]) for x in v] for i in range(1, len(v[0]))]
        print(f"{case} {peer}: rate {med(x[0] for x in v):.0f}/s, cpu us/op "
              f"{' + '.join(cpu)} (each: {each})")  # fmt: skip


if __name__ == "__main__":
    main()
