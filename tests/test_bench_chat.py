"""The chat load generator counts every delivery, and notices any it did not get.

It no longer looks at each message received: it counts a sender's tokens per chunk and
checks the first and last seq (or only the length of a chunk of same-size messages), and
parses one chunk in ``_PARSE_EVERY``. So these tests run it against a line broker (``ncat
--broker`` in miniature) that can misbehave for one member: drop a message, send one twice,
swap two, cut its lines at random, or add lines that are no message.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Iterator

import pytest

from helpers import serve_in_thread
from wirecat import parse_endpoint
from wirecat.bench import BenchConfig, run_bench
from wirecat.bench import chat as bench_chat

VICTIM_SEQ = b"0000000007"  # the seq the faulty broker mishandles
_SEQ = re.compile(rb"wcb(\d{4})\.(\d{10})\.")


class _Broker(asyncio.Protocol):
    """Every line to every other peer; ``fault`` hits the second peer that connected."""

    def __init__(self, peers: list[_Broker], fault: str) -> None:
        self.peers = peers
        self.fault = fault
        self.buf = b""
        self.held: bytes | None = None
        self.held_sender = b""
        self.faulted = False
        self.rnd = random.Random(7)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.peers.append(self)

    def data_received(self, data: bytes) -> None:
        data = self.buf + data
        end = data.rfind(b"\n") + 1
        self.buf = data[end:]
        for line in data[:end].splitlines(keepends=True):
            for i, peer in enumerate(self.peers):
                if peer is not self:
                    peer.deliver(line, victim=i == 1)

    def deliver(self, line: bytes, *, victim: bool) -> None:
        m = _SEQ.search(line)
        hit = victim and not self.faulted and m is not None and m[2] == VICTIM_SEQ
        if hit:
            self.faulted = True  # once: one message of one sender
        if self.held is not None and m is not None and m[1] == self.held_sender:
            self.transport.write(line + self.held)  # swap: that sender's 8 before its 7
            self.held = None
        elif hit and self.fault == "drop":
            pass
        elif hit and self.fault == "dup":
            self.transport.write(line + line)
        elif hit and self.fault == "swap":
            assert m is not None
            self.held, self.held_sender = line, m[1]
        elif self.fault == "noise" and victim:  # lines that are no message: not counted
            self.transport.write(b"*** a notice\n")
            self.transport.write(line + b"*** another one\n")
        elif self.fault == "cut" and victim and len(line) > 2:
            k = self.rnd.randrange(1, len(line) - 1)
            self.transport.write(line[:k])
            self.transport.write(line[k:])
        else:
            self.transport.write(line)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.peers:
            self.peers.remove(self)


@pytest.fixture(params=["none", "drop", "dup", "swap", "cut", "noise"])
def broker(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    peers: list[_Broker] = []
    for endpoint in serve_in_thread(lambda: _Broker(peers, request.param)):
        yield endpoint, request.param


def _run(endpoint: str, senders: int, count: int, duration: float) -> dict[str, object]:
    config = BenchConfig(
        parse_endpoint(endpoint),
        mode="chat",
        conns=6,
        senders=senders,
        count=count,
        size=40,
        duration=duration,
        connect_timeout=10,
        chat_protocol="lines",
    )
    return run_bench(config).to_json()


@pytest.mark.parametrize("senders", [1, 2, 6])
def test_chat_counts_and_checks_every_delivery(
    broker: tuple[str, str], senders: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, fault = broker
    if fault == "swap":  # inside one chunk, only a parsed chunk shows it: parse them all
        monkeypatch.setattr(bench_chat, "_PARSE_EVERY", 1)
    count = 300
    data = _run(endpoint, senders, count, duration=1.5 if fault in ("drop", "swap") else 10)
    errors = data["errors_by_kind"]
    assert isinstance(errors, dict)
    if fault in ("none", "cut", "noise"):
        assert data["ops"] == count
        assert data["deliveries"] == count * 5  # every member but the message's sender
        assert data["errors"] == 0
        assert 0 < data["latency_samples"] <= data["deliveries"]  # type: ignore[operator]
    elif fault == "dup":
        assert data["ops"] == count  # everything arrived; one message twice
        assert errors == {"chat_duplicate": 1}
    else:  # a message missing, or late: that member stops counting, the run is incomplete
        assert errors.get("chat_out_of_order") == 1, errors
        assert errors.get("undelivered", 0) > 0, errors
        assert data["ops"] < count  # type: ignore[operator]


def _ws_bench(endpoint: str, protocol: str, members: int, count: int) -> dict[str, object]:
    config = BenchConfig(
        parse_endpoint(endpoint),
        mode="chat",
        conns=members,
        count=count,
        size=64,
        duration=10,
        connect_timeout=10,
        chat_protocol=protocol,  # type: ignore[arg-type]
    )
    return run_bench(config).to_json()


def test_chat_over_websocket_against_wirecat_web_chat() -> None:
    import subprocess
    import sys

    from helpers import read_ready, scaled

    argv = [sys.executable, "-m", "wirecat", "serve", "--json", "--no-greeting", "--no-echo"]
    argv += ["--chat", "tcp://127.0.0.1:0", "--web", "tcp://127.0.0.1:0", "--load-test"]
    argv += ["--chat-rate", "0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        web = read_ready(proc.stdout, scaled(15))["endpoints"]["web"][0]
        port = parse_endpoint(web).port
        data = _ws_bench(f"ws://127.0.0.1:{port}/chat", "wirecat", 20, 200)
    finally:
        proc.terminate()
        proc.wait(scaled(10))
        assert proc.stdout is not None
        proc.stdout.close()
    assert data["errors"] == 0, data["errors_by_kind"]
    assert data["ops"] == 200 and data["deliveries"] == 200 * 19


def test_chat_over_websocket_against_the_node_ws_broadcast_peer() -> None:
    import shutil
    import subprocess
    from pathlib import Path

    from helpers import scaled

    node = shutil.which("node")
    assert node, "node is missing: scripts/test.sh installs it (apt nodejs)"
    root = Path(__file__).parent.parent
    assert (root / "tests" / "node" / "node_modules" / "ws").is_dir(), "npm ws is missing"
    proc = subprocess.Popen(
        [node, str(root / "bench" / "peers" / "ws_broadcast.js"), "127.0.0.1", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        import select

        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], scaled(15))
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("LISTENING "), line
        data = _ws_bench(f"ws://127.0.0.1:{line.split()[1]}/", "lines", 10, 100)
    finally:
        proc.terminate()
        proc.wait(scaled(10))
        if proc.stdout is not None:
            proc.stdout.close()
    assert data["errors"] == 0, data["errors_by_kind"]
    assert data["ops"] == 100 and data["deliveries"] == 100 * 9


def test_ws_client_frame_is_a_valid_masked_frame() -> None:
    from wirecat.protocols.websocket import TextMessage, WebSocket

    for size in (0, 5, 125, 126, 70000):
        text = bytes(0x41 + i % 26 for i in range(size))
        frame = bench_chat.ws_client_frame(text)
        assert frame[1] & 0x80  # masked, as a client must
        client = WebSocket.client("ws://127.0.0.1:9/")
        server = WebSocket.server(max_message=1 << 20)
        server.receive_data(b"".join(client.data_to_send()))
        server.accept(server.events_received()[0].request)  # type: ignore[union-attr]
        server.events_received()
        server.receive_data(frame)
        assert server.events_received() == [TextMessage(text.decode())]
