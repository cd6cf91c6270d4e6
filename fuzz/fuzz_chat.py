"""atheris target: the chat parsers never raise on peer input, every error has a documented
code, and the server protocol's line buffer stays below ``max_line``.

Covers ``ChatServerProtocol`` (framing + mode choice), ``parse_text_line``,
``parse_json_line`` and ``decode_json_event`` (which may raise only ``InvalidMessage``).

Run: ``fuzz/run.sh chat``.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from wirecat.errors import InvalidMessage
    from wirecat.protocols import chat

CODES = chat.ERROR_CODES


def _check(result: object) -> None:
    if isinstance(result, chat.ErrorEvent):
        assert result.code in CODES, result
        assert result.reason and "\n" not in result.reason, result
    elif result is not None and not isinstance(result, chat.EndOfStream):
        chat.encode_json_command(result)  # type: ignore[arg-type]  # a real command


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    target = fdp.ConsumeIntInRange(0, 3)
    max_text = fdp.ConsumeIntInRange(1, 256)
    if target == 0:
        _check(
            chat.parse_text_line(
                fdp.ConsumeBytes(fdp.remaining_bytes()),
                registered=fdp.ConsumeBool(),
                max_text=max_text,
            )
        )
    elif target == 1:
        _check(chat.parse_json_line(fdp.ConsumeBytes(fdp.remaining_bytes()), max_text=max_text))
    elif target == 2:
        with contextlib.suppress(InvalidMessage):
            chat.decode_json_event(fdp.ConsumeBytes(fdp.remaining_bytes()))
    else:
        max_line = fdp.ConsumeIntInRange(8, 512)
        proto = chat.ChatServerProtocol(max_line=max_line, max_text=max_text)
        while fdp.remaining_bytes():
            proto.receive_data(fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 64)))
            assert len(proto._framer._buffer) < max_line
            while (ev := proto.next_event()) is not None:
                _check(ev)
                if isinstance(ev, chat.Hello):
                    if ev.token is None and ev.nick and fdp.ConsumeBool():
                        proto.expect_token(ev.nick)  # the next line is taken as a token
                    else:
                        proto.registered = True
        proto.receive_eof()
        while (ev := proto.next_event()) is not None:
            _check(ev)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
