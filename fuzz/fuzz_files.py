"""atheris target: the files protocol, both sides (request parser and response parser).

Fuzzed bytes are fed, in fuzzed pieces, to a :class:`FilesServerProtocol` (answering as a
server that accepts uploads and refuses the rest) or to a :class:`FilesClientProtocol`
waiting for the answer to a fuzzed request (and uploading when told ``ready``). Contract:
only the documented peer errors (``RemoteProtocolError``, its ``InvalidMessage``,
``LimitExceeded``) come out, with a message, the state is then ``ERROR`` or ``CLOSED``, and
the buffer never holds more than ``max_header`` bytes. (Whole-versus-split equality is the
Hypothesis round trip's job, ``tests/test_files_fuzz.py``: with a peer pipelining out of turn
the protocol's out-of-turn limit depends on when the other side answered.)

Run: ``fuzz/run.sh files``.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from wirecat.errors import LimitExceeded, RemoteProtocolError
    from wirecat.protocols import files

_REQUESTS = ("auth", "stat", "list", "get", "put", "put0")


def _client(kind: str, max_header: int) -> files.FilesClientProtocol:
    proto = files.FilesClientProtocol(max_header=max_header, max_list_body=4096)
    if kind == "auth":
        proto.send_auth("ann", "token")
    elif kind == "stat":
        proto.send_stat("a.txt")
    elif kind == "list":
        proto.send_list("d")
    elif kind == "get":
        proto.send_get("a.txt", offset=5)
    elif kind == "put":
        proto.send_put("a.txt", size=20, offset=4)
    else:
        proto.send_put("a.txt", size=0)
    proto.data_to_send()
    return proto


def _react(proto: files.FilesClientProtocol | files.FilesServerProtocol) -> None:
    for ev in proto.events_received():
        if isinstance(proto, files.FilesClientProtocol):
            if isinstance(ev, files.Ready):
                proto.send_body(b"x" * proto.body_left)
                proto.send_trailer("0" * 64)
        elif isinstance(ev, files.PutRequest):
            proto.send_ready()
        elif isinstance(ev, files.Trailer):
            proto.send_error("digest_mismatch", "no")
        elif isinstance(
            ev, files.AuthRequest | files.StatRequest | files.ListRequest | files.GetRequest
        ):
            proto.send_error("not_found", "no")
        proto.data_to_send()
        if (err := proto.take_error()) is not None:
            raise err


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    server_side = fdp.ConsumeBool()
    kind = _REQUESTS[fdp.ConsumeIntInRange(0, len(_REQUESTS) - 1)]
    max_header = fdp.ConsumeIntInRange(128, 1024)
    step = fdp.ConsumeIntInRange(1, 128)
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())
    proto: files.FilesClientProtocol | files.FilesServerProtocol
    if server_side:
        proto = files.FilesServerProtocol(max_header=max_header)
    else:
        proto = _client(kind, max_header)
    try:
        for i in range(0, len(payload), step):
            proto.receive_data(payload[i : i + step])
            assert len(proto._buffer) <= max_header
            _react(proto)
    except (RemoteProtocolError, LimitExceeded) as exc:
        assert str(exc)
        assert proto.state in (files.State.ERROR, files.State.CLOSED), proto.state
        if isinstance(proto, files.FilesServerProtocol):
            proto.send_fatal("bad_request", str(exc))
    proto.receive_eof()
    assert isinstance(proto.events_received()[-1], files.EndOfStream)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
