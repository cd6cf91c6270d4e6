"""Run a benchmark over N worker processes and merge what they measured.

Each worker is a fresh process (``spawn``: no inherited loop, threads or sockets) with its
own event loop. Workers open their connections, report ready, wait for one shared start
signal, measure, and send back a :class:`~wirecat.bench.config.WorkerResult` as a dict.
Everything is bounded: a worker that does not report in time is terminated and counted as
a ``worker_timeout`` error.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..runtime.loop import run as run_loop
from .config import BenchConfig, BenchReport, WorkerResult
from .engine import run_worker

__all__ = ["run_bench"]

_SPAWN_ALLOWANCE = 30.0  # seconds for a worker process to start and import wirecat
_RESULT_GRACE = 10.0  # seconds past the worker's own bound before it is declared stuck


def run_bench(
    config: BenchConfig, *, on_measure: Callable[[str], None] | None = None
) -> BenchReport:
    """Run ``config`` to completion and return the merged report.

    With ``workers == 1`` the run happens in this process, on a fresh event loop (so it must
    not be called from a running loop). Otherwise ``workers`` processes share the
    connections and ``count``, start together and are merged.

    Bounded in time: at most about ``connect_timeout + warmup + duration`` seconds, plus
    process start-up for workers.

    Args:
        config: what to run.
        on_measure: called in this process with ``"start"`` and ``"stop"`` around the
            measured window, connections still open (see
            :func:`~wirecat.bench.engine.run_worker`). Only with ``workers == 1``.

    Raises:
        ValueError: the config is invalid, or ``on_measure`` with ``workers > 1``.
        RuntimeError: called from a running event loop with ``workers == 1``.
    """
    config.validate()
    if config.workers == 1:
        result = run_loop(run_worker(config, None, on_measure), loop=config.loop)
        return BenchReport.merge(config, [result])
    if on_measure is not None:
        raise ValueError("on_measure needs workers == 1 (the window is per process)")
    return _run_processes(config)


def _worker_main(
    config: BenchConfig, index: int, go: Any, results: Any, wait_limit: float
) -> None:  # pragma: no cover - runs in a child process
    def start() -> None:
        results.put(("ready", index, None))
        if not go.wait(wait_limit):
            raise TimeoutError("no start signal from the parent")

    try:
        result = run_loop(run_worker(config, start), loop=config.loop)
        results.put(("result", index, result.to_dict()))
    except BaseException as exc:
        results.put(("failed", index, f"{type(exc).__name__}: {exc}"))


def _run_processes(config: BenchConfig) -> BenchReport:
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    results: Any = ctx.Queue()
    parts = config.split()
    setup_limit = _SPAWN_ALLOWANCE + config.connect_timeout
    run_limit = config.warmup + config.duration + config.connect_timeout + _RESULT_GRACE
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(part, i, go, results, setup_limit + run_limit),
            name=f"wirecat-bench-{i}",
            daemon=True,
        )
        for i, part in enumerate(parts)
    ]
    collected: dict[int, WorkerResult] = {}
    failed: set[int] = set()
    errors: Counter[str] = Counter()
    try:
        for p in procs:
            p.start()
        waiting = set(range(len(procs)))
        ready: set[int] = set()
        deadline = time.monotonic() + setup_limit
        while ready | set(collected) | failed != waiting and time.monotonic() < deadline:
            _drain_one(results, deadline, ready, collected, failed)
        go.set()  # whoever is ready starts; a worker that never got ready is cut below
        deadline = time.monotonic() + run_limit
        while len(collected) + len(failed) < len(procs):
            if time.monotonic() >= deadline:
                break
            _drain_one(results, deadline, ready, collected, failed)
        if failed:
            errors["worker_failed"] += len(failed)
        missing = len(procs) - len(collected) - len(failed)
        if missing > 0:
            errors["worker_timeout"] += missing
    finally:
        go.set()
        for p in procs:
            p.join(timeout=2.0)
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=2.0)
            if p.is_alive():  # pragma: no cover - a worker ignoring SIGTERM
                p.kill()
                p.join(timeout=2.0)
        results.close()
        results.join_thread()
    report = BenchReport.merge(config, list(collected.values()))
    report.result.errors.update(errors)
    report.workers = len(procs)
    return report


def _drain_one(
    results: Any,
    deadline: float,
    ready: set[int],
    collected: dict[int, WorkerResult],
    failed: set[int],
) -> None:
    try:
        kind, index, payload = results.get(timeout=max(0.01, min(1.0, deadline - time.monotonic())))
    except queue.Empty:
        return
    if kind == "ready":
        ready.add(index)
    elif kind == "result":
        collected[index] = WorkerResult.from_dict(payload)
    else:
        failed.add(index)
