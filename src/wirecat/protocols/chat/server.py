"""The server side of one chat connection: line framing, mode choice and its state machine."""

from __future__ import annotations

from collections import deque
from enum import Enum, IntEnum
from typing import Final, TypeAlias

from ...errors import LocalProtocolError
from .. import MAX_TOKEN
from ..lines import EndOfStream, Line, LineEvent, LineFramer, LineOverflow
from .events import (
    MAX_TEXT,
    Command,
    ErrorEvent,
    Hello,
)
from .jsonl import (
    JsonCodec,
    parse_json_line,
)
from .text import (
    TextCodec,
    parse_text_line,
)

Codec: TypeAlias = TextCodec | JsonCodec
TEXT_CODEC: Final = TextCodec()
JSON_CODEC: Final = JsonCodec()


# -- the server side of one connection -------------------------------------------------------
class Mode(Enum):
    """The front-end a connection speaks, chosen by its first line."""

    TEXT = "text"
    JSON = "json"


class State(IntEnum):
    """Where one chat connection stands (server side)."""

    GREETING = 0  # banner sent, no line yet: the first line picks the mode
    MODE_CHOSEN = 1  # text or JSON mode chosen; not logged in yet
    AWAIT_TOKEN = 2  # text mode: the next line is the token for a registered nick
    LOGGED_IN = 3  # a hello succeeded: chat commands are accepted
    CLOSED = 4  # end of stream received: nothing more is parsed


#: ``(state, step) -> next state``. Steps: ``first_line`` (the mode is chosen),
#: ``expect_token`` / ``token`` (text-mode login of a registered nick), ``login`` (the
#: caller accepted a hello), ``eof``. Any other step raises :class:`LocalProtocolError`.
TRANSITIONS: Final[dict[tuple[State, str], State]] = {
    (State.GREETING, "first_line"): State.MODE_CHOSEN,
    (State.MODE_CHOSEN, "expect_token"): State.AWAIT_TOKEN,
    (State.AWAIT_TOKEN, "token"): State.MODE_CHOSEN,
    (State.MODE_CHOSEN, "login"): State.LOGGED_IN,
    (State.GREETING, "eof"): State.CLOSED,
    (State.MODE_CHOSEN, "eof"): State.CLOSED,
    (State.AWAIT_TOKEN, "eof"): State.CLOSED,
    (State.LOGGED_IN, "eof"): State.CLOSED,
}


class ChatServerProtocol:
    """Server side of one chat connection, without I/O.

    Feed bytes with :meth:`receive_data` / :meth:`receive_eof` and pull what they mean with
    :meth:`next_event`, one at a time: how a text line parses depends on whether the peer
    is registered yet, which the caller learns only by handling the previous command, so
    the caller sets :attr:`registered` between calls.

    Args:
        max_line: the longest line accepted, terminator included (bytes); longer lines are
            dropped and reported as ``line_too_long`` errors, the connection goes on.
        max_text: the most bytes of UTF-8 a message text may take.

    Attributes:
        mode: ``None`` until the first line arrives, then :class:`Mode`.
        registered: set to True by the caller once a :class:`Hello` succeeded (the
            ``login`` step of :data:`TRANSITIONS`).
        state: the :class:`State` of the connection.
    """

    __slots__ = ("_eof_seen", "_framer", "_pending", "_token_for", "max_text", "mode", "state")

    def __init__(self, *, max_line: int = 4096, max_text: int = MAX_TEXT) -> None:
        self._framer = LineFramer(max_line=max_line)
        self._pending: deque[LineEvent] = deque()
        self.max_text = max_text
        self.mode: Mode | None = None
        self.state = State.GREETING
        self._token_for: str | None = None
        self._eof_seen = False

    def _step(self, step: str) -> None:
        new = TRANSITIONS.get((self.state, step))
        if new is None:
            raise LocalProtocolError(f"cannot {step.replace('_', ' ')} in state {self.state.name}")
        self.state = new

    @property
    def registered(self) -> bool:
        """True once logged in (a :class:`Hello` was accepted by the caller)."""
        return self.state is State.LOGGED_IN

    @registered.setter
    def registered(self, value: bool) -> None:
        """Record a successful login.

        Raises:
            LocalProtocolError: ``value`` is False, or no mode was chosen yet.
        """
        if not value:
            raise LocalProtocolError("a chat connection cannot log out")
        if self.state is not State.LOGGED_IN:  # idempotent
            self._step("login")

    @property
    def codec(self) -> Codec:
        """The encoder for this connection's replies: text until JSON mode is chosen."""
        return JSON_CODEC if self.mode is Mode.JSON else TEXT_CODEC

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the peer (any split of the stream).

        Raises:
            LocalProtocolError: called after :meth:`receive_eof`.
        """
        self._framer.receive_data(data)

    def receive_eof(self) -> None:
        """Feed the end of the stream (an unterminated last line is still parsed). Idempotent."""
        self._framer.receive_eof()

    def expect_token(self, nick: str) -> None:
        """Text mode: take the next line as the token for ``nick`` (a :class:`Hello` with it).

        The line is not parsed as a command; an empty line gives ``auth_failed``.
        """
        self._step("expect_token")
        self._token_for = nick

    def next_event(self) -> Command | ErrorEvent | EndOfStream | None:
        """Return the next command, input error or end of stream; ``None`` if more bytes are needed.

        Never raises on peer input: every bad line becomes one :class:`ErrorEvent`.
        """
        pending = self._pending
        while True:
            if not pending:
                events = self._framer.events_received()
                if not events:
                    return None
                pending.extend(events)
            ev = pending.popleft()
            if isinstance(ev, Line):
                result = self._parse_line(ev.data)
                if result is not None:
                    return result
            elif isinstance(ev, LineOverflow):
                return ErrorEvent(
                    "line_too_long",
                    f"line longer than {ev.limit} bytes: it was dropped",
                )
            else:
                if self.state is not State.CLOSED:
                    self._step("eof")
                return ev

    def _parse_line(self, data: bytes) -> Command | ErrorEvent | None:
        if self.state is State.GREETING:  # the mode may be preset (a WebSocket is JSON)
            if self.mode is None:
                self.mode = Mode.JSON if data.lstrip(b" \t").startswith(b"{") else Mode.TEXT
            self._step("first_line")
        if self.mode is Mode.JSON:
            if not data.strip(b" \t"):
                return None  # blank lines between JSON objects are harmless
            return parse_json_line(data, max_text=self.max_text)
        if self._token_for is not None:
            nick, self._token_for = self._token_for, None
            self._step("token")
            token = data.strip(b" \t\r")
            if not 0 < len(token) <= MAX_TOKEN:
                return ErrorEvent("auth_failed", f"a token is 1-{MAX_TOKEN} bytes")
            try:
                return Hello(nick, None, token.decode("utf-8"))
            except UnicodeDecodeError:
                return ErrorEvent("auth_failed", "a token is UTF-8 text")
        return parse_text_line(data, registered=self.registered, max_text=self.max_text)
