"""wirecat bench: the histogram, the config/report plumbing, and short real runs.

The real runs talk to tiny servers on 127.0.0.1 port 0 running on their own loop in a
thread; each run is bounded to a fraction of a second. No timing is asserted: speed is
measured by bench/run.py, not by tests.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import socket
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import serve_in_thread
from wirecat import parse_endpoint
from wirecat.bench import BenchConfig, BenchReport, Histogram, WorkerResult
from wirecat.bench.chat import TOKEN_RE, encode_message, make_token
from wirecat.cli.bench import ByteSize, bench
from wirecat.cli.main import main

# -- histogram ------------------------------------------------------------------------------


def exact_percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered) / 100 - 1e-9))
    return ordered[rank - 1]


def test_histogram_small_values_are_exact() -> None:
    h = Histogram()
    for v in range(1, 101):
        h.record(v)
    assert h.count == 100
    assert h.percentiles([0, 50, 90, 99, 100]) == [1, 50, 90, 99, 100]
    assert h.min == 1 and h.max == 100
    assert h.mean == pytest.approx(50.5)


def test_histogram_p99_9_rank_is_exact() -> None:
    h = Histogram()
    for v in range(1, 1001):
        h.record(v)
    assert h.percentile(99.9) == 999  # not 1000: ceil(0.999 * 1000) is 999 exactly
    assert h.percentile(99.95) == 1000


def test_histogram_large_values_within_relative_error() -> None:
    rng = random.Random(7)
    values = [rng.randint(1, 10**10) for _ in range(20_000)]
    h = Histogram()
    for v in values:
        h.record(v)
    for q in (50, 90, 99, 99.9):
        exact = exact_percentile(values, q)
        assert abs(h.percentile(q) - exact) <= exact * h.relative_error
    assert h.percentile(100) == max(values)
    assert h.percentile(0) == min(values)


def test_histogram_weighted_record() -> None:
    h = Histogram()
    h.record(10, 99)
    h.record(5000, 1)
    assert h.count == 100
    assert h.percentile(99) == 10
    assert h.percentile(99.5) == 5000


def test_histogram_empty() -> None:
    h = Histogram()
    assert h.percentiles([50, 99]) == [0, 0]
    assert h.mean == 0.0
    h.record(3)
    h.reset()
    assert h.count == 0 and h.percentile(50) == 0


def test_histogram_overflow_lands_in_top_bucket() -> None:
    h = Histogram(precision_bits=4, max_value=1 << 10)
    h.record(1 << 30)
    assert h.max == 1 << 30
    assert h.percentile(50) == 1 << 30  # clamped to max, never beyond


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"precision_bits": 1}, "precision_bits"), ({"precision_bits": 8, "max_value": 10}, "max")],
)
def test_histogram_bad_arguments(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Histogram(**kwargs)


def test_histogram_rejects_bad_input() -> None:
    h = Histogram()
    with pytest.raises(ValueError):
        h.record(-1)
    with pytest.raises(ValueError):
        h.percentile(101)
    with pytest.raises(ValueError):
        h.percentile(float("nan"))


def test_histogram_merge_equals_recording_everything() -> None:
    rng = random.Random(3)
    a, b, both = Histogram(), Histogram(), Histogram()
    for _ in range(5000):
        v = rng.randint(0, 10**7)
        (a if rng.random() < 0.3 else b).record(v)
        both.record(v)
    a.merge(b)
    assert a.to_dict() == both.to_dict()
    assert a.percentiles([50, 99, 99.9]) == both.percentiles([50, 99, 99.9])


def test_histogram_merge_into_empty_and_mismatch() -> None:
    a, b = Histogram(), Histogram()
    b.record(42)
    a.merge(b)
    assert (a.min, a.max, a.count) == (42, 42, 1)
    with pytest.raises(ValueError):
        a.merge(Histogram(precision_bits=5))


def test_histogram_dict_round_trip() -> None:
    h = Histogram()
    for v in (0, 1, 2047, 2048, 123_456_789):
        h.record(v)
    again = Histogram.from_dict(json.loads(json.dumps(h.to_dict())))
    assert again.to_dict() == h.to_dict()
    bad = h.to_dict()
    bad["count"] = 99
    with pytest.raises(ValueError):
        Histogram.from_dict(bad)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=1 << 45))
def test_histogram_bucket_contains_value(value: int) -> None:
    h = Histogram()
    lo, hi = h.bucket_range(h.index_of(value))
    assert lo <= value <= hi
    assert hi - lo <= max(0, value * h.relative_error)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=300),
    st.floats(min_value=0, max_value=100),
)
def test_histogram_percentile_property(values: list[int], q: float) -> None:
    h = Histogram()
    for v in values:
        h.record(v)
    exact = exact_percentile(values, q)
    got = h.percentile(q)
    assert min(values) <= got <= max(values)
    assert abs(got - exact) <= exact * h.relative_error or got == exact


# -- config and report ---------------------------------------------------------------------

EP = parse_endpoint("tcp://127.0.0.1:9")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"conns": 0}, "conns"),
        ({"size": 0}, "size"),
        ({"duration": 0.0}, "duration"),
        ({"count": 0}, "count"),
        ({"workers": 3, "conns": 2}, "workers"),
        ({"mode": "chat", "senders": 5, "conns": 2}, "senders"),
        ({"mode": "chat", "room": "a b"}, "room"),
        ({"endpoint": parse_endpoint("udp://127.0.0.1:9")}, "udp"),
    ],
)
def test_config_validation(changes: dict[str, object], match: str) -> None:
    config = BenchConfig(**{"endpoint": EP, **changes})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        config.validate()


def test_config_split_adds_up() -> None:
    config = BenchConfig(EP, conns=10, count=1001, workers=3)
    parts = config.split()
    assert [p.conns for p in parts] == [4, 3, 3]
    assert sum(p.count or 0 for p in parts) == 1001
    assert all(p.workers == 1 for p in parts)


def test_report_merge() -> None:
    a, b = WorkerResult(ops=10, elapsed=1.0), WorkerResult(ops=30, elapsed=2.0)
    a.latency.record(1000)
    b.latency.record(3000)
    a.errors["reset"] += 1
    report = BenchReport.merge(BenchConfig(EP), [WorkerResult.from_dict(a.to_dict()), b])
    data = report.to_json()
    assert data["ops"] == 40 and data["ops_per_s"] == 20.0
    assert data["errors"] == 1 and data["errors_by_kind"] == {"reset": 1}
    assert data["latency_us"]["max"] == 3.0 and data["latency_samples"] == 2


def test_chat_tokens_parse_in_every_framing() -> None:
    text = make_token(3, 42, 64)
    assert len(text) == 64
    for protocol in ("wirecat", "lines", "redis"):
        framed = encode_message(protocol, "#room", text)
        (m,) = TOKEN_RE.finditer(framed)
        assert (int(m[1]), int(m[2])) == (3, 42)


@pytest.mark.parametrize(("text", "value"), [("64", 64), ("1KiB", 1024), ("2k", 2000)])
def test_byte_size(text: str, value: int) -> None:
    assert ByteSize().convert(text, None, None) == value


# -- real runs -------------------------------------------------------------------------------


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class _Broker(asyncio.Protocol):
    """Every line to every other peer, like ``ncat --broker``."""

    peers: set[_Broker]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.peers.add(self)

    def data_received(self, data: bytes) -> None:
        for peer in self.peers:
            if peer is not self:
                peer.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.peers.discard(self)


@pytest.fixture
def echo_server() -> Iterator[str]:
    yield from serve_in_thread(_Echo)


@pytest.fixture
def broker_server() -> Iterator[str]:
    peers: set[_Broker] = set()

    def factory() -> _Broker:
        b = _Broker()
        b.peers = peers
        return b

    yield from serve_in_thread(factory)


def _bench(*args: str) -> Result:
    # The command itself, not ``main``: these tests do not depend on the other verbs.
    return CliRunner().invoke(bench, list(args), catch_exceptions=False)


def _bench_json(*args: str) -> dict[str, object]:
    result = _bench(*args, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_echo_run(echo_server: str, loop: str) -> None:
    data = _bench_json(echo_server, "-c", "4", "-s", "100", "-d", "0.3", "--loop", loop)
    assert data["mode"] == "echo"
    assert isinstance(data["ops"], int) and data["ops"] > 0
    assert data["errors"] == 0
    assert data["bytes_received"] == data["ops"] * 100  # type: ignore[operator]
    assert data["latency_samples"] == data["ops"]


def test_echo_count_stops_early(echo_server: str) -> None:
    data = _bench_json(echo_server, "-c", "3", "-n", "50", "-d", "5")
    assert data["ops"] == 50
    assert data["errors"] == 0


def test_stream_run(echo_server: str) -> None:
    data = _bench_json(echo_server, "-m", "stream", "-c", "2", "-s", "16KiB", "-d", "0.3")
    assert data["ops"] > 0 and data["bytes_sent"] > 0 and data["bytes_received"] > 0  # type: ignore[operator]
    assert data["errors"] == 0


def test_connect_run(echo_server: str) -> None:
    data = _bench_json(echo_server, "-m", "connect", "-c", "2", "-s", "8", "-d", "0.3")
    assert data["connects"] == data["ops"]
    assert data["ops"] > 0  # type: ignore[operator]
    assert data["errors"] == 0


def test_two_workers_merge(echo_server: str) -> None:
    data = _bench_json(echo_server, "-c", "2", "-w", "2", "-d", "0.3")
    assert data["workers"] == 2
    assert data["ops"] > 0 and data["errors"] == 0  # type: ignore[operator]


def test_chat_lines_run(broker_server: str) -> None:
    data = _bench_json(
        broker_server, "-m", "chat", "--chat-protocol", "lines", "-c", "5", "-n", "40",
        "-d", "5",
    )  # fmt: skip
    assert data["ops"] == 40
    assert data["deliveries"] == 40 * 4
    assert data["errors"] == 0


def test_text_output(echo_server: str) -> None:
    result = _bench(echo_server, "-n", "10", "-d", "2")
    assert result.exit_code == 0
    assert "round trips" in result.stdout and "p99.9" in result.stdout


def test_refused_exit_code() -> None:
    with socket.socket() as sock:  # bound but not listening: connecting is refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result = _bench(f"tcp://127.0.0.1:{port}", "-d", "0.2")
    assert result.exit_code == 69
    assert "refused" in result.stderr


def test_usage_error() -> None:
    result = _bench("tcp://127.0.0.1:9", "-m", "echo", "-s", "0")
    assert result.exit_code == 2
    assert "--size" in result.stderr


def test_registered_as_a_verb(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--help"]) == 0
    assert "Load-test the server" in capsys.readouterr().out


def _serve(*flags: str) -> Iterator[str]:
    import subprocess
    import sys

    from helpers import read_ready, scaled

    argv = [sys.executable, "-m", "wirecat", "serve", "--json", "--no-greeting", "--no-chat"]
    argv += ["--echo", "tcp://127.0.0.1:0", *flags]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield read_ready(proc.stdout, scaled(15))["endpoints"]["echo"][0]
    finally:
        proc.terminate()
        proc.wait(scaled(10))
        assert proc.stdout is not None
        proc.stdout.close()


def test_a_run_refused_by_the_server_limits_says_why_and_fails() -> None:
    # wirecat serve's defaults: 20 new connections/s per source, burst 40. 100 at once trip
    # it; the bench must not report rates measured on nothing, and must say what to change.
    for endpoint in _serve():
        result = _bench(endpoint, "-c", "100", "-d", "0.5", "--json")
        assert result.exit_code == 69, result.output
        assert "refused" in result.stderr and "connecting too fast" in result.stderr
        assert "--load-test" in result.stderr
        assert result.stdout == ""  # no rates from a failed run


def test_the_same_run_passes_with_load_test() -> None:
    for endpoint in _serve("--load-test"):
        data = _bench_json(endpoint, "-c", "100", "-d", "0.5")
        assert data["ops"] > 0 and data["errors"] == 0  # type: ignore[operator]


def test_error_rate_threshold() -> None:
    from wirecat.cli.bench import _failure

    config = BenchConfig(
        endpoint=parse_endpoint("tcp://127.0.0.1:9"), mode="echo", conns=1, size=64
    )
    ok = BenchReport(
        config=config, result=WorkerResult(ops=1000, connects=1, elapsed=1.0), workers=1
    )
    assert _failure(ok, 0.01) is None
    ok.result.errors["reset"] = 10  # 10 / 1010 < 1 %
    assert _failure(ok, 0.01) is None
    ok.result.errors["reset"] = 11
    failure = _failure(ok, 0.01)
    assert failure is not None and "1.1% > 1.0%" in str(failure)
    empty = BenchReport(config=config, result=WorkerResult(elapsed=0.0), workers=1)
    assert "measured nothing" in str(_failure(empty, 0.01))


def test_connections_that_never_opened_count_against_conns() -> None:
    from wirecat.cli.bench import _failure

    config = BenchConfig(
        endpoint=parse_endpoint("tcp://127.0.0.1:9"), mode="echo", conns=100, size=64
    )
    result = WorkerResult(ops=100_000, connects=99, elapsed=1.0)
    result.errors["connect_refused"] = 1  # 1 error in 100001 operations: under 1 %
    failure = _failure(BenchReport(config=config, result=result, workers=1), 0.01)
    assert failure is not None and "only 99 of 100 connections opened" in str(failure)
    assert "fewer connections than --conns" in str(failure)
    # connect mode: each operation is a connection, the error rate decides
    each = BenchConfig(endpoint=config.endpoint, mode="connect", conns=100, size=0)
    result = WorkerResult(ops=100_000, connects=100_000, elapsed=1.0)
    result.errors["connect_refused"] = 1
    assert _failure(BenchReport(config=each, result=result, workers=1), 0.01) is None


def test_connections_dropped_during_the_run_count_against_conns() -> None:
    from wirecat.cli.bench import _failure

    config = BenchConfig(
        endpoint=parse_endpoint("tcp://127.0.0.1:9"), mode="echo", conns=100, size=64
    )
    result = WorkerResult(ops=100_000, connects=100, dropped=1, elapsed=1.0)
    result.errors["closed_by_peer"] = 1
    assert _failure(BenchReport(config=config, result=result, workers=1), 0.01) is None
    result.dropped = result.errors["closed_by_peer"] = 2  # 2 % of the connections
    failure = _failure(BenchReport(config=config, result=result, workers=1), 0.01)
    assert failure is not None and "2 of 100 connections were closed" in str(failure)


def test_a_run_where_some_connections_never_opened_fails() -> None:
    # Every other connection binds to an address this host does not have: it never opens.
    # The other half echo fine: before, the run reported their rates as those of -c 4.
    for endpoint in serve_in_thread(_Echo):
        result = _bench(endpoint, "-c", "4", "-d", "0.3", "--json",
                        "--source-addr", "127.0.0.1", "--source-addr", "192.0.2.1")  # fmt: skip
        assert result.exit_code != 0, result.output
        assert "only 2 of 4 connections opened" in result.stderr
        assert result.stdout == ""  # no rates


class _CloseEveryOther(asyncio.Protocol):
    count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        _CloseEveryOther.count += 1
        if _CloseEveryOther.count % 2 == 0:
            transport.close()

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def test_a_run_where_the_server_closed_connections_fails() -> None:
    _CloseEveryOther.count = 0
    for endpoint in serve_in_thread(_CloseEveryOther):
        result = _bench(endpoint, "-c", "4", "-d", "0.3", "--json")
        assert result.exit_code == 74, result.output
        assert "2 of 4 connections were closed, reset or refused" in result.stderr
        assert result.stdout == ""
