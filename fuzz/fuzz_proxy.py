"""atheris target: the PROXY protocol parser raises only RemoteProtocolError/LimitExceeded,
and any split of the input gives the same header and rest.

Run: ``fuzz/run.sh proxy``.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from wirecat.errors import LimitExceeded, RemoteProtocolError
    from wirecat.protocols.proxy import ProxyHeaderParser


def _feed(data: bytes, step: int) -> tuple[object, bytes] | str:
    parser = ProxyHeaderParser(max_header=256)
    header = None
    try:
        for i in range(0, len(data), step):
            header = parser.receive_data(data[i : i + step]) or header
    except (RemoteProtocolError, LimitExceeded) as exc:
        assert str(exc)
        return type(exc).__name__
    return header, parser.rest


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    step = fdp.ConsumeIntInRange(1, 64)
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())
    whole = _feed(payload, len(payload) or 1)
    split = _feed(payload, step)
    if not isinstance(whole, str) and not isinstance(split, str):
        assert whole == split, (whole, split)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
