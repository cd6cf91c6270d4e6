"""An async client for the wirecat chat service (its JSON-lines mode).

::

    async with wirecat.ChatClient.connect("127.0.0.1:7070", nick="bot") as chat:
        await chat.join("#lobby")
        await chat.say("hello")
        async for event in chat:          # Message, Direct, Joined, Parted, ...
            if isinstance(event, Message) and event.text == "!time":
                await chat.say(time.strftime("%H:%M"), room=event.room)

The wire format is :class:`~wirecat.protocols.chat.ChatClientProtocol`'s; this module only
moves its bytes over a :class:`~wirecat.runtime.connection.Connection` and matches each
reply to the command that asked for it by ``ref``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from ssl import SSLContext
from typing import Any, TypeVar

from ..endpoints import Endpoint, parse_endpoint
from ..errors import (
    ChatError,
    ChatRefused,
    ConnectionClosed,
    ConnectionClosedError,
    InvalidEndpoint,
    RemoteProtocolError,
    WirecatError,
    WirecatTimeout,
)
from ..protocols.chat import (
    MAX_SERVER_LINE,
    Bye,
    ChatClientProtocol,
    CloseRoom,
    Command,
    Dm,
    Done,
    EndOfStream,
    ErrorEvent,
    Hello,
    Join,
    Kick,
    Nick,
    NickSet,
    Part,
    Ping,
    Pong,
    Quit,
    Ref,
    RoomJoined,
    RoomList,
    RoomParted,
    Rooms,
    Say,
    Sent,
    ServerEvent,
    Welcome,
    Who,
    WhoList,
)
from ..runtime.connection import Connection, connect

__all__ = ["ChatClient"]

_E = TypeVar("_E", bound=ServerEvent)


class ChatClient:
    """A logged-in chat session: awaitable commands, and the server's events by iteration.

    Make one with :meth:`connect`. Each command method sends one command and waits for its
    reply (matched by ``ref``); events that are not replies to a pending command
    (messages, joins, parts, DMs, notices, ``Shutdown``...) are queued for
    ``async for event in chat``. Iteration ends when the server closes the connection.

    Commands may be awaited concurrently from several tasks. Iterate from one task at a
    time. Past ``max_queue`` unread events the client stops reading from the socket (TCP
    backpressure): a program that never iterates should not expect replies after that.

    Attributes:
        welcome: the server's :class:`~wirecat.protocols.chat.Welcome` (``nick`` is ours).
        protocol: the sans-I/O :class:`~wirecat.protocols.chat.ChatClientProtocol`.
        connection: the underlying :class:`~wirecat.runtime.connection.Connection`.
    """

    def __init__(
        self,
        connection: Connection,
        *,
        max_line: int = MAX_SERVER_LINE,
        max_queue: int = 1024,
        on_line: Callable[[bytes], None] | None = None,
    ) -> None:
        """Wrap an open connection (not logged in yet: see :meth:`login`).

        Args:
            connection: a stream connection to a chat service.
            max_line: the longest server line accepted (bytes).
            max_queue: unread events kept before reading pauses.
            on_line: called with each raw line the server sends (for ``--json`` output).
        """
        self.connection = connection
        self.protocol = ChatClientProtocol(max_line=max_line, on_line=on_line)
        self.welcome: Welcome | None = None
        self._pending: dict[Ref, asyncio.Future[ServerEvent]] = {}
        self._events: asyncio.Queue[ServerEvent | EndOfStream] = asyncio.Queue(max_queue)
        self._reader: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._closed = False

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def connect(
        cls,
        endpoint: str | Endpoint,
        *,
        nick: str | None = None,
        token: str | None = None,
        room: str | None = None,
        timeout: float | None = 10.0,
        ssl: SSLContext | None = None,
        server_hostname: str | None = None,
        pin: str | None = None,
        handshake_timeout: float = 10.0,
        proxy: Any = None,
        max_line: int = MAX_SERVER_LINE,
        max_queue: int = 1024,
        on_line: Callable[[bytes], None] | None = None,
    ) -> _ChatOpening:
        """Connect to the chat service at ``endpoint`` and log in.

        Await the result or use it with ``async with`` (the session is closed on exit).

        Args:
            endpoint: a stream endpoint (``host:port``, ``tcp://``, ``tls://``, ``unix:``), or
                the chat WebSocket of a web listener (``ws://host:port/chat``, ``wss://``):
                the same JSON schema, one object per text message. Its members join no
                room on ``hello`` (the page joins its own), so the client sends the ``join``
                for ``room`` (or the server's default room) itself.
            nick: the nick to log in as (``None``: the server picks ``guest-N``).
            token: the user's token on servers with a users file (needs ``nick``).
            room: the room to land in once logged in (``None``: the server's default room,
                usually ``#lobby``); its ``RoomJoined`` arrives as the first event.
            timeout: seconds for connecting plus logging in (``None``: no limit).
            ssl, server_hostname, pin, handshake_timeout, proxy: as for
                :func:`wirecat.connect` (TLS context, SNI name, ``sha256:HEX`` certificate
                pin, TLS handshake deadline in seconds, SOCKS5/HTTP proxy).
            max_line, max_queue, on_line: as for the constructor.

        Returns:
            An awaitable giving a logged-in :class:`ChatClient`.

        Raises:
            InvalidEndpoint: not a stream endpoint.
            ChatRefused: the server refused the login (``code``: ``nick_taken``,
                ``invalid_nick``, ``auth_required``, ``auth_failed``...).
            RemoteProtocolError: the peer does not speak the chat protocol (the message
                quotes what it answered).
            WirecatTimeout: no welcome within ``timeout`` seconds.
            ConnectError, HandshakeError, ConnectionClosed: as for :func:`wirecat.connect`.
        """

        async def opener() -> ChatClient:
            ep = parse_endpoint(endpoint) if isinstance(endpoint, str) else endpoint
            if not ep.is_stream or ep.scheme == "stdio":
                raise InvalidEndpoint(f"chat needs a stream endpoint (tcp, tls, unix), not {ep}")
            conn = await connect(
                ep,
                timeout=timeout,
                ssl=ssl,
                server_hostname=server_hostname,
                pin=pin,
                handshake_timeout=handshake_timeout,
                proxy=proxy,
            )
            client = cls(conn, max_line=max_line, max_queue=max_queue, on_line=on_line)
            try:
                async with asyncio.timeout(timeout):
                    welcome = await client.login(nick, token, room)
                    if ep.scheme in ("ws", "wss"):  # its RoomJoined comes as the first event
                        await client.send_command(Join(room or welcome.default_room))
            except TimeoutError:
                await client.aclose()
                raise WirecatTimeout(
                    f"no welcome from the chat server at {ep} within {timeout} s"
                ) from None
            except BaseException:
                await client.aclose()
                raise
            return client

        return _ChatOpening(opener)

    async def login(
        self, nick: str | None = None, token: str | None = None, room: str | None = None
    ) -> Welcome:
        """Send ``hello`` and wait for the welcome (starts reading the connection).

        Raises:
            ChatRefused: the server answered with an error (``code``, ``reason``).
            RemoteProtocolError: the peer is not a chat server.
            ConnectionClosed: the server closed the connection first.
        """
        if self._reader is None:
            self._reader = asyncio.ensure_future(self._read_loop())
        try:
            welcome = await self.request(Hello(nick, None, token, room), Welcome)
        except ChatError as exc:
            raise ChatRefused(exc.code, exc.reason) from None
        self.welcome = welcome
        return welcome

    # -- commands ------------------------------------------------------------------------------
    async def request(self, command: Command, reply: type[_E]) -> _E:
        """Send ``command`` and return its reply, which must be a ``reply``.

        Args:
            command: any command (its ``ref`` is set here when ``None``).
            reply: the event class expected in answer.

        Raises:
            ChatError: the server answered with an ``error`` (``code``, ``reason``).
            RemoteProtocolError: the server answered with another event type.
            ConnectionClosed: the connection ended before the reply.
        """
        self._check_open()
        ref = self.protocol.send(command)
        fut: asyncio.Future[ServerEvent] = asyncio.get_running_loop().create_future()
        self._pending[ref] = fut
        try:
            for data in self.protocol.data_to_send():
                await self.connection.send(data)
            event = await fut
        finally:
            self._pending.pop(ref, None)
        if isinstance(event, ErrorEvent):
            raise ChatError(event.code, event.reason)
        if not isinstance(event, reply):
            raise RemoteProtocolError(
                f"the server answered {type(command).__name__} with {type(event).__name__}"
            )
        return event

    async def join(self, room: str) -> RoomJoined:
        """Join ``room`` (``#name``); it becomes the current room.

        Returns:
            The members now in the room and its recent history.

        Raises:
            ChatError: ``invalid_room``, ``too_many_rooms``, ``forbidden``, ``room_closed``...
        """
        return await self.request(Join(room), RoomJoined)

    async def part(self, room: str | None = None) -> RoomParted:
        """Leave ``room`` (``None``: the current room). Raises ChatError (``not_in_room``)."""
        return await self.request(Part(room), RoomParted)

    async def say(self, text: str, room: str | None = None, *, action: bool = False) -> Sent:
        """Say ``text`` in ``room`` (``None``: the current room); ``action`` for ``/me``.

        Returns:
            :class:`Sent` with the message's server ``id`` and ``ts`` (seconds since epoch).

        Raises:
            ChatError: ``empty_text``, ``text_too_long`` (over the server's byte limit),
                ``control_chars``, ``not_in_room``, ``rate_limited``...
        """
        return await self.request(Say(text, room, action), Sent)

    async def dm(self, to: str, text: str) -> Sent:
        """Send ``text`` privately to the member ``to``. Raises ChatError (``no_such_nick``)."""
        return await self.request(Dm(to, text), Sent)

    async def who(self, room: str | None = None) -> WhoList:
        """List the members of ``room`` (``None``: the current room)."""
        return await self.request(Who(room), WhoList)

    async def rooms(self) -> RoomList:
        """List the rooms with their member counts."""
        return await self.request(Rooms(), RoomList)

    async def nick(self, nick: str) -> NickSet:
        """Change nick. Raises ChatError (``nick_taken``, ``invalid_nick``, ``nick_reserved``)."""
        return await self.request(Nick(nick), NickSet)

    async def ping(self) -> Pong:
        """Round trip: when it returns, the server has handled every earlier command."""
        return await self.request(Ping(), Pong)

    async def kick(self, nick: str, room: str | None = None, reason: str | None = None) -> Done:
        """Admins: remove ``nick`` from ``room``. Raises ChatError (``forbidden``...)."""
        return await self.request(Kick(nick, room, reason), Done)

    async def close_room(self, room: str | None = None) -> Done:
        """Admins: remove everyone from ``room`` and close it."""
        return await self.request(CloseRoom(room), Done)

    async def quit(self, reason: str | None = None) -> Bye:
        """Leave: the server answers :class:`Bye` and closes; iteration then ends."""
        return await self.request(Quit(reason), Bye)

    async def send_command(self, command: Command) -> Ref:
        """Send ``command`` without waiting for its reply (it arrives as an event).

        Returns:
            The ``ref`` given to the command.
        """
        self._check_open()
        ref = self.protocol.send(command)
        for data in self.protocol.data_to_send():
            await self.connection.send(data)
        return ref

    # -- events --------------------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[ServerEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ServerEvent]:
        while True:
            event = await self._events.get()
            if isinstance(event, EndOfStream):
                self._events.put_nowait(event)  # later iterations end at once too
                if self._error is not None:
                    raise self._error
                return
            yield event

    async def _read_loop(self) -> None:
        proto = self.protocol
        try:
            while True:
                data = await self.connection.recv(65536)
                if data:
                    proto.receive_data(data)
                else:
                    proto.receive_eof()
                for event in proto.events_received():
                    if isinstance(event, EndOfStream):
                        self._finish(None)
                        return
                    ref = getattr(event, "ref", None)
                    fut = self._pending.get(ref) if ref is not None else None
                    if fut is not None and not fut.done():
                        fut.set_result(event)
                    else:
                        await self._events.put(event)
        except asyncio.CancelledError:
            self._finish(None)
            raise
        except WirecatError as exc:
            self._finish(exc)
        except OSError as exc:  # pragma: no cover - translated by the runtime already
            self._finish(ConnectionClosedError(str(exc)))

    def _finish(self, exc: BaseException | None) -> None:
        not_chat = exc is None or isinstance(exc, ConnectionClosed)
        if not_chat and self.welcome is None and self.protocol.greeting:
            said = " | ".join(self.protocol.greeting)[:120]
            exc = RemoteProtocolError(
                f"this does not look like a wirecat chat service (it answered {said!r})"
            )
        self._error = exc
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(
                    exc
                    or ConnectionClosedError(
                        f"the chat server at {self.connection.endpoint} closed the connection"
                    )
                )
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(EndOfStream())
        if self._events.full():  # make room for the end marker: the reader has stopped
            with contextlib.suppress(asyncio.QueueEmpty, asyncio.QueueFull):
                self._events.get_nowait()
                self._events.put_nowait(EndOfStream())

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionClosedError("this chat client was closed")
        if self._error is not None:
            raise self._error

    # -- closing -------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the connection (without ``quit``: call :meth:`quit` first to say goodbye).

        Idempotent; pending commands fail with ConnectionClosedError.
        """
        if self._closed:
            return
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        await self.connection.aclose()

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _ChatOpening:
    """What :meth:`ChatClient.connect` returns: awaitable, or an ``async with`` manager."""

    __slots__ = ("_client", "_opener")

    def __init__(self, opener: Callable[[], Coroutine[Any, Any, ChatClient]]) -> None:
        self._opener = opener
        self._client: ChatClient | None = None

    def __await__(self) -> Generator[Any, None, ChatClient]:
        return self._opener().__await__()

    async def __aenter__(self) -> ChatClient:
        self._client = await self._opener()
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()
