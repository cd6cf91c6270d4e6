"""atheris target: ``parse_endpoint`` raises only ``InvalidEndpoint``, and what parses
round-trips through ``str()``.

Run: ``fuzz/run.sh endpoints`` (or ``python fuzz/fuzz_endpoints.py -max_total_time=30``).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from wirecat.endpoints import SCHEMES, parse_endpoint
    from wirecat.errors import InvalidEndpoint


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    default_host = [None, "127.0.0.1", "::1"][fdp.ConsumeIntInRange(0, 2)]
    text = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())
    try:
        ep = parse_endpoint(text, default_host=default_host)
    except InvalidEndpoint as exc:
        assert str(exc), "empty error message"
        return
    assert ep.scheme in SCHEMES, ep
    assert ep.port is None or 0 <= ep.port <= 65535, ep
    assert parse_endpoint(str(ep)) == ep, (text, ep)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
