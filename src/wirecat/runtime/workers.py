"""Several worker processes sharing each listening port (``SO_REUSEPORT``, Linux >= 3.9).

The kernel spreads new TCP connections and UDP flows across the workers' sockets by a hash
of the 4-tuple, so each core runs its own event loop with no shared state. Services that
keep state in memory (chat, until a shared hub exists) and Unix-socket listeners (which
cannot be shared by port) run in worker 0 only; files run in every worker (their locks and
quota live in the file system).

Shutdown: SIGINT/SIGTERM to the parent is forwarded to every worker (each drains within its
grace period); a second signal kills them. SIGHUP is forwarded too (each worker reloads).
The parent exits with the first non-zero worker
exit code, or 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable

__all__ = ["run_workers"]


def run_workers(count: int, worker: Callable[[int], int], *, grace: float = 5.0) -> int:
    """Fork ``count`` processes that each run ``worker(index)``; wait for all of them.

    Args:
        count: number of worker processes (>= 1).
        worker: runs in the child; returns its exit code. Index 0 is the "primary" worker.
        grace: seconds the workers get to drain after the first signal before SIGKILL
            (a second signal kills at once).

    Returns:
        0 if every worker exited 0, else the first non-zero exit code seen.

    Not safe to call from a running event loop (it forks).
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    pids: dict[int, int] = {}
    for index in range(count):
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop handles it
                code = worker(index)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # pragma: no cover - reported by the worker itself
                code = 70
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids[pid] = index

    signals = 0

    def forward(signum: int, _frame: object) -> None:
        nonlocal signals
        signals += 1
        sig = signal.SIGTERM if signals == 1 else signal.SIGKILL
        for pid in list(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if signals == 1:
            signal.alarm(max(1, int(grace + 1.5)))

    def hangup(_signum: int, _frame: object) -> None:
        for pid in list(pids):  # SIGHUP: every worker reloads (users file, certificate)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    def on_alarm(_signum: int, _frame: object) -> None:
        for pid in list(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    old = {
        sig: signal.signal(sig, handler)
        for sig, handler in (
            (signal.SIGINT, forward),
            (signal.SIGTERM, forward),
            (signal.SIGALRM, on_alarm),
            (signal.SIGHUP, hangup),
        )
    }
    result = 0
    try:
        while pids:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            if pid not in pids:
                continue
            del pids[pid]
            code = os.waitstatus_to_exitcode(status)
            if code < 0 and signals:  # killed after our own signal: a forced stop
                code = 0
            if code != 0 and result == 0:
                result = code
                if not signals:  # one worker died on its own: stop the others too
                    forward(signal.SIGTERM, None)
    finally:
        signal.alarm(0)
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return result
