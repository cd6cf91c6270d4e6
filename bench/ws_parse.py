"""WebSocket parse cost per message, in process: ``WebSocket.receive_data`` +
``events_received`` for server frames read by a client, and client frames read by a server.

    .venv/bin/python bench/ws_parse.py

CPU time (``time.process_time``), best of 3 x 5 repetitions; on a shared machine compare
trees back to back in the same minute, not with figures from another day.
"""

from __future__ import annotations

import time
import timeit
from collections.abc import Callable

from wirecat.protocols.websocket import WebSocket, server_frame

LINE = b'{"type":"msg","room":"#lobby","nick":"ann","text":"hi there"}'


def _pair() -> tuple[WebSocket, WebSocket]:
    client, server = WebSocket.client("ws://x/"), WebSocket.server()
    server.receive_data(b"".join(client.data_to_send()))
    [req] = server.events_received()
    server.accept(req.request)  # type: ignore[union-attr]
    client.receive_data(b"".join(server.data_to_send()))
    client.events_received()
    server.events_received()
    return client, server


def _best(fn: Callable[[], object], n: int) -> float:
    timer = timeit.Timer(fn, timer=time.process_time)
    return min(min(timer.repeat(number=n, repeat=5)) for _ in range(3)) / n


def _per_message(reader: WebSocket, frame: bytes) -> tuple[float, float]:
    """Seconds per message read, one frame per chunk and 16 frames per chunk."""
    batch = frame * 16
    one = _best(lambda: (reader.receive_data(frame), reader.events_received()), 20000)
    many = _best(lambda: (reader.receive_data(batch), reader.events_received()), 2000) / 16
    return one, many


def main() -> None:
    for label, payload in (("62 B", LINE), ("1 KiB", b"x" * 1024)):
        one, many = _per_message(_pair()[0], server_frame(payload, text=False))
        print(f"client reads {label}: {one * 1e9:.0f} ns/msg alone, {many * 1e9:.0f} in 16s")
    client, server = _pair()
    client.send_bytes(LINE)
    one, many = _per_message(server, b"".join(client.data_to_send()))
    print(f"server reads 62 B: {one * 1e9:.0f} ns/msg alone, {many * 1e9:.0f} in 16s")


if __name__ == "__main__":
    main()
