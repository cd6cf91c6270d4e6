"""atheris target: the server's WebSocket fast path (``protocols/websocket.py``) never
raises on peer bytes, keeps its buffer below ``FAST_FRAME_MAX + 14`` bytes, and at any split
gives the same events and the same bytes out as websockets' own parser fed byte by byte
(each frame handled as soon as it is whole).

Run: ``fuzz/run.sh websocket``.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from wirecat.protocols.websocket import FAST_FRAME_MAX, WebSocket


def _open_server() -> WebSocket:
    client = WebSocket.client("ws://127.0.0.1:9/")
    server = WebSocket.server(max_message=1000)
    server.receive_data(b"".join(client.data_to_send()))
    [request] = server.events_received()
    server.accept(request.request)  # type: ignore[union-attr]
    server.events_received()
    server.data_to_send()
    return server


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    eof = fdp.ConsumeBool()
    cuts = sorted(fdp.ConsumeIntInRange(0, 2048) for _ in range(fdp.ConsumeIntInRange(0, 8)))
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    reference = _open_server()
    reference._fast = False  # websockets' parser only
    for i in range(len(stream)):
        reference.receive_data(stream[i : i + 1])
    if eof:
        reference.receive_eof()
    server = _open_server()
    events: list[object] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        cut = min(max(cut, start), len(stream))
        server.receive_data(stream[start:cut])
        start = cut
        assert len(server._pending) <= FAST_FRAME_MAX + 14, "fast path buffer too big"
        events += server.events_received()
    if eof:
        server.receive_eof()
        events += server.events_received()
    assert events == reference.events_received()
    assert b"".join(server.data_to_send()) == b"".join(reference.data_to_send())


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
