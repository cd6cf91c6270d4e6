"""``wirecat bench``: a load generator for any stream server (echo, stream, connect, chat).

Sans-I/O parts (:class:`Histogram`, :class:`BenchConfig`, :class:`BenchReport`) are usable and
testable on their own; :func:`run_bench` drives the clients, in-process or over worker
processes.

Example::

    from wirecat import parse_endpoint
    from wirecat.bench import BenchConfig, run_bench

    report = run_bench(BenchConfig(parse_endpoint("tcp://127.0.0.1:7007"), conns=10, duration=2))
    print(report.to_json()["msgs_per_s"])
"""

from __future__ import annotations

from .config import BenchConfig, BenchReport, WorkerResult, default_size
from .histogram import Histogram
from .runner import run_bench

__all__ = ["BenchConfig", "BenchReport", "Histogram", "WorkerResult", "default_size", "run_bench"]
