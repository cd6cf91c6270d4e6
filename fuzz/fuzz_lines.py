"""atheris target: ``LineFramer`` never raises on peer bytes, keeps its buffer below
``max_line``, and any split of the stream gives the same events.

Run: ``fuzz/run.sh lines``.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from wirecat.protocols.lines import EndOfStream, Line, LineFramer, LineOverflow


def _normalise(events: list[object]) -> list[object]:
    # How many bytes an overflow reports depends on the split; the events do not.
    return [LineOverflow(e.limit, 0) if isinstance(e, LineOverflow) else e for e in events]


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    max_line = fdp.ConsumeIntInRange(2, 128)
    eof = fdp.ConsumeBool()
    cuts = sorted(fdp.ConsumeIntInRange(0, 4096) for _ in range(fdp.ConsumeIntInRange(0, 8)))
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    framer = LineFramer(max_line=max_line)
    events: list[object] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        cut = min(max(cut, start), len(stream))
        framer.receive_data(stream[start:cut])
        start = cut
        assert len(framer._buffer) < max_line, "line buffer grew past max_line"
        events += framer.events_received()
    if eof:
        framer.receive_eof()
        events += framer.events_received()
    for ev in events:
        assert isinstance(ev, Line | LineOverflow | EndOfStream), ev
        if isinstance(ev, Line):
            assert len(ev.data) < max_line and b"\n" not in ev.data, ev
    whole = LineFramer(max_line=max_line)
    whole.receive_data(stream)
    if eof:
        whole.receive_eof()
    assert _normalise(events) == _normalise(list(whole.events_received()))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
