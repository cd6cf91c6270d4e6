"""atheris target: the SOCKS5 and HTTP CONNECT parsers raise only their documented errors
(RemoteProtocolError, LimitExceeded), on any bytes.

Run: ``fuzz/run.sh socks``.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from wirecat.errors import LimitExceeded, RemoteProtocolError
    from wirecat.protocols import socks

PARSERS = (
    socks.parse_methods,
    socks.parse_userpass,
    socks.parse_request,
    socks.parse_method,
    socks.parse_userpass_status,
    socks.parse_reply,
    socks.parse_http_connect_response,
    socks.parse_http_connect_request,
)


def test_one_input(data: bytes) -> None:
    for parse in PARSERS:
        try:
            parsed = parse(data)
        except (RemoteProtocolError, LimitExceeded) as exc:
            assert str(exc)
            continue
        if parsed is not None:
            assert 0 < parsed[-1] <= len(data)  # never claims bytes it was not given


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
