"""The client side of the chat JSON-lines mode, without I/O.

:class:`ChatClientProtocol` builds commands (each with a ``ref``, so that its reply can be
matched) and turns the server's lines into typed events. It is what
:class:`wirecat.ChatClient`, ``wirecat chat`` and the chat load generator speak::

    proto = ChatClientProtocol()
    ref = proto.hello("ann")              # bytes to send are now in data_to_send()
    sock.sendall(b"".join(proto.data_to_send()))
    proto.receive_data(sock.recv(65536))
    for event in proto.events_received():  # Welcome(nick="ann", ref=1), ...
        ...
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from enum import IntEnum
from typing import Final

from ...errors import InvalidMessage, LocalProtocolError, RemoteProtocolError
from ..lines import EndOfStream, Line, LineFramer, LineOverflow
from .events import (
    CloseRoom,
    Command,
    Dm,
    ErrorEvent,
    Hello,
    Help,
    Join,
    Kick,
    Nick,
    Part,
    Ping,
    Quit,
    Ref,
    Rooms,
    Say,
    ServerEvent,
    Welcome,
    Who,
)
from .jsonl import decode_json_event, encode_json_command

__all__ = ["MAX_SERVER_LINE", "ChatClientProtocol", "ClientState"]

#: Default longest server line accepted, in bytes: a ``joined`` reply holds a room's members
#: and its history.
MAX_SERVER_LINE: Final = 1 << 20
_MAX_GREETING = 4  # non-JSON lines kept from before the welcome (to tell the user what answered)


class ClientState(IntEnum):
    """Where the client side of a chat connection stands."""

    CONNECTED = 0  # nothing sent yet (the server's banner may arrive)
    HELLO_SENT = 1  # hello sent; welcome or an error is next (commands may be pipelined)
    LOGGED_IN = 2  # welcome received
    CLOSED = 3  # end of stream received, or quit sent


#: ``(state, step) -> next state``. Steps: ``hello``, ``command`` (any other command),
#: ``quit`` (local); ``welcome``, ``refused`` (the hello's error reply), ``eof`` (remote).
CLIENT_TRANSITIONS: Final[dict[tuple[ClientState, str], ClientState]] = {
    (ClientState.CONNECTED, "hello"): ClientState.HELLO_SENT,
    (ClientState.HELLO_SENT, "welcome"): ClientState.LOGGED_IN,
    (ClientState.HELLO_SENT, "refused"): ClientState.CONNECTED,
    (ClientState.HELLO_SENT, "command"): ClientState.HELLO_SENT,
    (ClientState.LOGGED_IN, "command"): ClientState.LOGGED_IN,
    (ClientState.CONNECTED, "quit"): ClientState.CLOSED,
    (ClientState.HELLO_SENT, "quit"): ClientState.CLOSED,
    (ClientState.LOGGED_IN, "quit"): ClientState.CLOSED,
    (ClientState.CONNECTED, "eof"): ClientState.CLOSED,
    (ClientState.HELLO_SENT, "eof"): ClientState.CLOSED,
    (ClientState.LOGGED_IN, "eof"): ClientState.CLOSED,
    (ClientState.CLOSED, "eof"): ClientState.CLOSED,
}


class ChatClientProtocol:
    """Client side of one chat connection in JSON-lines mode (sans-I/O).

    Commands are queued as bytes by :meth:`send` (or the helpers :meth:`hello`,
    :meth:`join`, :meth:`say`, ...), which return the ``ref`` they put on the command;
    the server echoes it in the reply. Bytes from the server go in with
    :meth:`receive_data` / :meth:`receive_eof`; typed events come out of
    :meth:`events_received`, and the bytes to write out of :meth:`data_to_send`.

    Lines that are not JSON before the ``welcome`` (a server banner) are not events: they
    are kept in :attr:`greeting` (at most 4) so a caller can tell the user what answered
    when the peer turns out not to be a chat server.

    Args:
        max_line: the longest server line accepted, newline included (bytes).
        on_line: called with every complete line received, as it is (e.g. to show it raw).

    Attributes:
        state: the :class:`ClientState`.
        welcome: the server's :class:`Welcome`, once received.
        greeting: the non-JSON lines received before the welcome (decoded, replaced errors).
    """

    def __init__(
        self, *, max_line: int = MAX_SERVER_LINE, on_line: Callable[[bytes], None] | None = None
    ) -> None:
        self._on_line = on_line
        self._framer = LineFramer(max_line=max_line)
        self._refs = itertools.count(1)
        self._out: list[bytes] = []
        self._hello_ref: Ref = None
        self.state = ClientState.CONNECTED
        self.welcome: Welcome | None = None
        self.greeting: list[str] = []

    def _step(self, step: str) -> None:
        new = CLIENT_TRANSITIONS.get((self.state, step))
        if new is None:
            raise LocalProtocolError(f"cannot {step} in state {self.state.name}")
        self.state = new

    # -- commands ------------------------------------------------------------------------------
    def send(self, command: Command) -> Ref:
        """Queue ``command`` for sending; give it the next integer ``ref`` if it has none.

        Returns:
            The command's ``ref`` (the reply carries it).

        Raises:
            LocalProtocolError: a second ``hello``, any command after ``quit`` or the end of
                the stream, or a value the encoder cannot take.
        """
        step = "command"
        if isinstance(command, Hello | Quit):
            step = "hello" if isinstance(command, Hello) else "quit"
        if (self.state, step) not in CLIENT_TRANSITIONS:
            raise LocalProtocolError(f"cannot send {step} in state {self.state.name}")
        if command.ref is None:
            command = dataclasses.replace(command, ref=next(self._refs))
        data = encode_json_command(command)
        self._step(step)
        if isinstance(command, Hello):
            self._hello_ref = command.ref
        self._out.append(data)
        return command.ref

    def hello(self, nick: str | None = None, token: str | None = None) -> Ref:
        """Queue a login as ``nick`` (``None``: a ``guest-N`` name) with an optional ``token``."""
        return self.send(Hello(nick, None, token))

    def join(self, room: str) -> Ref:
        """Queue a join of ``room`` (``#name``); the reply is a ``RoomJoined``."""
        return self.send(Join(room))

    def part(self, room: str | None = None) -> Ref:
        """Queue leaving ``room`` (``None``: the current room)."""
        return self.send(Part(room))

    def say(self, text: str, room: str | None = None, *, action: bool = False) -> Ref:
        """Queue ``text`` to ``room`` (``None``: the current room); ``action`` for ``/me``."""
        return self.send(Say(text, room, action))

    def dm(self, to: str, text: str) -> Ref:
        """Queue a private message to the member named ``to``."""
        return self.send(Dm(to, text))

    def who(self, room: str | None = None) -> Ref:
        """Queue a request for the members of ``room`` (``None``: the current room)."""
        return self.send(Who(room))

    def rooms(self) -> Ref:
        """Queue a request for the list of rooms."""
        return self.send(Rooms())

    def nick(self, nick: str) -> Ref:
        """Queue a nick change."""
        return self.send(Nick(nick))

    def ping(self) -> Ref:
        """Queue a ping (its ``Pong`` means every earlier command was handled)."""
        return self.send(Ping())

    def help(self) -> Ref:
        """Queue a request for the list of commands."""
        return self.send(Help())

    def kick(self, nick: str, room: str | None = None, reason: str | None = None) -> Ref:
        """Admins: queue removing ``nick`` from ``room``."""
        return self.send(Kick(nick, room, reason))

    def close_room(self, room: str | None = None) -> Ref:
        """Admins: queue closing ``room``."""
        return self.send(CloseRoom(room))

    def quit(self, reason: str | None = None) -> Ref:
        """Queue leaving the server; the server answers ``Bye`` and closes."""
        return self.send(Quit(reason))

    # -- bytes in, events out ------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the server (any split).

        Raises:
            LocalProtocolError: called after :meth:`receive_eof`.
        """
        self._framer.receive_data(data)

    def receive_eof(self) -> None:
        """Feed the end of the server's stream. Idempotent."""
        self._framer.receive_eof()

    def events_received(self) -> list[ServerEvent | EndOfStream]:
        """Return the events parsed since the last call, in order; :class:`EndOfStream` last.

        Raises:
            RemoteProtocolError: the server sent a line longer than ``max_line`` bytes, or
                a line after the welcome that is not a valid event (:class:`InvalidMessage`).
        """
        out: list[ServerEvent | EndOfStream] = []
        for ev in self._framer.events_received():
            if isinstance(ev, Line):
                if self._on_line is not None:
                    self._on_line(ev.data)
                event = self._parse(ev.data)
                if event is not None:
                    out.append(event)
            elif isinstance(ev, LineOverflow):
                raise RemoteProtocolError(f"the server sent a line longer than {ev.limit} bytes")
            else:
                self._step("eof")
                out.append(ev)
        return out

    def _parse(self, data: bytes) -> ServerEvent | None:
        if not data.strip():
            return None
        if self.welcome is None and not data.lstrip().startswith(b"{"):
            if len(self.greeting) < _MAX_GREETING:
                self.greeting.append(data.decode("utf-8", "replace").rstrip("\r\n"))
            return None
        try:
            event = decode_json_event(data)
        except InvalidMessage as exc:
            raise InvalidMessage(f"the server sent an invalid line: {exc}") from exc
        if isinstance(event, Welcome) and self.state is ClientState.HELLO_SENT:
            self.welcome = event
            self._step("welcome")
        elif (
            isinstance(event, ErrorEvent)
            and self.state is ClientState.HELLO_SENT
            and event.ref == self._hello_ref
        ):
            self._step("refused")
        return event

    def data_to_send(self) -> list[bytes]:
        """Return the bytes queued by commands since the last call (one item per command)."""
        out, self._out = self._out, []
        return out
