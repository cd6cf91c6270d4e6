"""The protocol-agnostic chat core: members, rooms, messages, history, rate limits, hub.

Front-ends (text lines, JSON lines, later WebSocket) translate their wire format into the
commands of :mod:`wirecat.protocols.chat` and call :meth:`ChatCore.handle`; they give the
core a :class:`Sink` per connection: where to write bytes, and the encoder of their format.

Fan-out is built for large rooms: a room keeps its members grouped by encoder, so one event
is encoded **once per format**. Members whose sink can queue a shared write
(:meth:`Sink.send_shared`, a :class:`~wirecat.runtime.handler.SharedWrite`) cost nothing
per message: the room queues one shared write per format per loop iteration on each member,
appends every later event of that iteration to it, and each member's connection writes the
joined bytes once. Other sinks get the same ``bytes`` object through ``send``. Each
member's output is bounded by the runtime (slow consumers are cut), so one stuck member
never stalls a broadcast.

Events that other processes would need to see (room messages, joins, parts, nick changes,
direct messages) go through a :class:`~wirecat.chat.hub.Hub` (:mod:`wirecat.chat.hub`).
:class:`LocalHub` delivers them in-process and keeps each room's last ``history_size``
messages; :class:`~wirecat.chat.redis_hub.RedisHub` shares rooms between processes.

Everything here runs on the event loop thread and nothing blocks. With a local hub every
command completes synchronously; with a remote hub a command that needs the hub's answer
(an id, a nick claim, a room's history) returns an :class:`asyncio.Future` of its reply.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from ..auth import User, Users
from ..errors import ChatError
from ..protocols.chat import (
    Bye,
    CloseRoom,
    Command,
    Direct,
    Dm,
    Done,
    ErrorEvent,
    Hello,
    Help,
    HelpText,
    Join,
    Joined,
    Kick,
    Kicked,
    Message,
    Nick,
    NickChanged,
    NickSet,
    Notice,
    Part,
    Parted,
    Ping,
    Pong,
    Quit,
    Ref,
    RoomClosed,
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
    check_nick,
    check_room,
)
from ..protocols.chat.unicode import skeleton
from ..runtime.handler import SharedWrite
from ..runtime.limits import TokenBucket
from .hub import History, Hub, HubEvent, HubUnavailable, LocalHub, raise_if_failed

__all__ = [
    "ChatCore",
    "ChatError",
    "Encoder",
    "History",
    "Hub",
    "HubEvent",
    "HubUnavailable",
    "LocalHub",
    "Member",
    "RateLimit",
    "Room",
    "Sink",
    "TokenBucket",
]

_T = TypeVar("_T")
_R = TypeVar("_R")


def _then(fut: asyncio.Future[_T], fn: Callable[[_T], _R]) -> asyncio.Future[_R]:
    """A future of ``fn(fut's result)``; an exception of ``fut`` or ``fn`` fails it."""
    out: asyncio.Future[_R] = fut.get_loop().create_future()

    def done(f: asyncio.Future[_T]) -> None:
        if out.done():
            return
        if f.cancelled():
            out.set_exception(HubUnavailable("the hub request was cancelled"))
            return
        failed = f.exception()
        if failed is not None:
            out.set_exception(failed)
            return
        try:
            out.set_result(fn(f.result()))
        except Exception as exc:  # ChatError: a refusal; anything else reaches the handler
            out.set_exception(exc)

    fut.add_done_callback(done)
    return out


def _background(result: object) -> None:
    """A publish whose outcome nobody waits for (a part, a join notice)."""
    if isinstance(result, asyncio.Future):
        result.add_done_callback(raise_if_failed)


class Encoder(Protocol):
    """Turns an event into the bytes of one wire format (stateless, hashable)."""

    def encode(self, event: ServerEvent) -> bytes:
        """Return the bytes for ``event`` (``b""``: nothing to send in this format)."""
        ...


class Sink(Protocol):
    """Where the core writes a member's output: one per connection, given by the front-end."""

    @property
    def codec(self) -> Encoder:
        """The encoder of this connection's format (read when joining a room)."""
        ...

    def send(self, data: bytes) -> None:
        """Queue ``data`` for the peer without blocking (bounded by the runtime)."""
        ...

    # Optional, looked up when the member joins a room:
    # ``send_shared(shared: SharedWrite) -> bool`` queues a shared write whose bytes,
    # including those appended later, reach the peer in order with its other output (see
    # :class:`~wirecat.runtime.handler.SharedWrite`).


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Per-member message rate (say, me, dm): a token bucket.

    Attributes:
        rate: sustained messages per second (> 0).
        burst: messages that may be sent at once after a quiet period (>= 1).
        kick_after: consecutive dropped messages after which the member is disconnected
            (``0``: never).

    Raises:
        ValueError: on a non-positive rate or burst, or a negative ``kick_after``.
    """

    rate: float = 5.0
    burst: int = 10
    kick_after: int = 20

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError("rate must be > 0 messages per second")
        if self.burst < 1:
            raise ValueError("burst must be >= 1 message")
        if self.kick_after < 0:
            raise ValueError("kick_after must be >= 0")


class Member:
    """One connected participant (registered once :attr:`nick` is set).

    Attributes:
        id: unique per core.
        sink: where its output goes.
        nick: its nick, or ``None`` before :class:`~wirecat.protocols.chat.Hello`.
        user: the authenticated user (set by the front-end once its token was verified),
            or ``None`` for a guest.
        rooms: the rooms it is in, in join order; the last one is the *current* room.
        must_close: set by the core when the front-end must close the connection after
            sending the reply (after ``quit``, or when kicked for flooding).
    """

    __slots__ = ("_bucket", "_strikes", "id", "must_close", "nick", "rooms", "sink", "user")

    def __init__(self, member_id: int, sink: Sink, bucket: TokenBucket) -> None:
        self.id = member_id
        self.sink = sink
        self.nick: str | None = None
        self.user: User | None = None
        self.rooms: dict[str, Room] = {}
        self.must_close = False
        self._bucket = bucket
        self._strikes = 0

    @property
    def current_room(self) -> str | None:
        """The most recently joined room still joined, or ``None``."""
        return next(reversed(self.rooms), None) if self.rooms else None

    def __repr__(self) -> str:
        return f"<Member {self.id} {self.nick or '(unregistered)'}>"


class _Group:
    """One encoder's members in a room, and the shared write of this loop iteration."""

    __slots__ = ("open", "plain", "shared")

    def __init__(self) -> None:
        self.shared: dict[Member, Callable[[SharedWrite], object]] = {}  # send_shared
        self.plain: dict[Member, Callable[[bytes], None]] = {}  # send, per event
        self.open: SharedWrite | None = None  # appended to while is_open

    def close(self) -> None:
        """Stop appending to the current shared write (the receivers changed)."""
        if self.open is not None:
            self.open.join()  # frozen: those that queued it get exactly what it holds now
            self.open = None


class Room:
    """A room's local members, grouped by encoder for encode-once fan-out."""

    __slots__ = ("_groups", "members", "name", "source")

    def __init__(self, name: str, source: str | None = None) -> None:
        self.name = name
        self.source = source  # the address whose member created it (per-source room cap)
        self.members: dict[Member, None] = {}  # insertion-ordered set
        self._groups: dict[Encoder, _Group] = {}

    def __len__(self) -> int:
        return len(self.members)

    def add(self, member: Member) -> None:
        """Add ``member`` (its encoder is read now). Idempotent."""
        if member in self.members:
            return
        self.members[member] = None
        sink = member.sink
        group = self._groups.get(sink.codec)
        if group is None:
            group = self._groups[sink.codec] = _Group()
        group.close()  # the next event opens a shared write that includes the newcomer
        send_shared = getattr(sink, "send_shared", None)
        if send_shared is not None:
            group.shared[member] = send_shared
        else:
            group.plain[member] = sink.send

    def remove(self, member: Member) -> None:
        """Remove ``member`` if present."""
        if self.members.pop(member, 0) is None:
            for codec, group in self._groups.items():
                if (
                    group.shared.pop(member, None) is not None
                    or group.plain.pop(member, None) is not None
                ):
                    group.close()  # what it already holds is still its own; no more
                    if not group.shared and not group.plain:
                        del self._groups[codec]
                    break

    def nicks(self) -> tuple[str, ...]:
        """The members' nicks, sorted case-insensitively."""
        return tuple(sorted((m.nick or "?" for m in self.members), key=str.casefold))

    def broadcast(self, event: ServerEvent) -> None:
        """Encode ``event`` once per encoder and send the same bytes to every member.

        Members with ``send_shared``: the first event of a loop iteration queues one
        :class:`SharedWrite` on each; later ones are appended to it (no per-member work).
        """
        for codec, group in tuple(self._groups.items()):
            data = codec.encode(event)
            if not data:
                continue
            if group.plain:
                for send in tuple(group.plain.values()):
                    send(data)
            if group.shared:
                shared = group.open
                if shared is not None and shared.is_open:
                    shared.append(data)
                else:
                    group.open = shared = SharedWrite(data)
                    for send_shared in tuple(group.shared.values()):
                        send_shared(shared)


class ChatCore:
    """Rooms, members and messages, independent of any wire format.

    Args:
        hub: where events go; default a :class:`LocalHub` with ``history_size``.
        history_size: messages replayed on join (only used to build the default hub).
        default_room: the room text-mode members join after registering.
        motd: message of the day, sent in the welcome (may hold several lines).
        rate: the per-member message rate limit.
        max_rooms: rooms that may exist at once (a room exists while it has members).
        max_rooms_per_member: rooms one member may be in at once.
        max_rooms_per_source: rooms that members from one source address may have created
            and that still exist (a room is forgotten when its last member leaves); unix
            peers and sinks without a ``source`` are not counted.
        clock: wall-clock seconds since the epoch, for message timestamps.
        monotonic: monotonic seconds, for rate limits.
        server_name: sent in the welcome.
        users: the users file (:class:`~wirecat.auth.Users`): user names are owned nicks,
            rooms may be restricted, admins may kick and close rooms (``None``: everyone is a
            guest and the admin commands are refused).
        guests: with ``users``, whether members without a token may register (with a nick
            that is not a user name).

    Not thread-safe: call it from the event loop thread only.
    """

    def __init__(
        self,
        *,
        hub: Hub | None = None,
        history_size: int = 50,
        default_room: str = "#lobby",
        motd: str = "",
        rate: RateLimit | None = None,
        max_rooms: int = 1024,
        max_rooms_per_member: int = 32,
        max_rooms_per_source: int = 8,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        server_name: str = "wirecat",
        users: Users | None = None,
        guests: bool = True,
    ) -> None:
        if check_room(default_room) is not None:
            raise ValueError(f"invalid default room {default_room!r}")
        self.hub = hub if hub is not None else LocalHub(history_size=history_size)
        self.hub.bind(self._on_hub_event)
        self.hub.on_gap = self._on_gap
        self.hub.members_here = self._members_here
        self.users = users
        self.guests = guests or users is None
        self.closed_rooms: set[str] = set()
        self.default_room = default_room
        self.motd = motd
        self.rate = rate or RateLimit()
        self.max_rooms = max_rooms
        self.max_rooms_per_member = max_rooms_per_member
        if max_rooms < 1 or max_rooms_per_member < 1 or max_rooms_per_source < 1:
            raise ValueError("room limits must be >= 1")
        self.max_rooms_per_source = max_rooms_per_source
        self._rooms_by_source: Counter[str] = Counter()  # existing rooms each source created
        self.server_name = server_name
        self.rooms: dict[str, Room] = {}
        self.counters: Counter[str] = Counter()
        self._clock = clock
        self._monotonic = monotonic
        self._nicks: dict[str, Member] = {}  # casefolded nick -> member
        self._skeletons: dict[str, Member] = {}  # confusable skeleton of a nick -> member
        self._member_ids = itertools.count(1)
        # guest-N: with a shared hub each process counts from its own random start, so
        # that two processes rarely offer the same guest name (the hub refuses the second)
        self._guests = itertools.count(1 + secrets.randbelow(10**6) if self.hub.remote else 1)
        self._members: set[Member] = set()

    # -- membership --------------------------------------------------------------------------
    def connect(self, sink: Sink) -> Member:
        """Create an unregistered member writing to ``sink``."""
        rate = self.rate
        member = Member(
            next(self._member_ids), sink, TokenBucket(rate.rate, rate.burst, self._monotonic())
        )
        self._members.add(member)
        return member

    def disconnect(self, member: Member, reason: str | None = None) -> None:
        """Remove ``member`` from every room (telling the others) and free its nick. Idempotent.

        Args:
            reason: shown to the rooms in the part notice (``None``: no reason).
        """
        if member not in self._members:
            return
        self._members.discard(member)
        rooms = list(member.rooms.values())
        member.rooms.clear()
        for room in rooms:
            room.remove(member)
            if member.nick is not None:
                _background(
                    self.hub.publish(
                        Parted(self.hub.next_id(), self._clock(), room.name, member.nick, reason)
                    )
                )
            if not room.members:
                self._forget_room(room.name)
        if member.nick is not None:
            if self._nicks.get(member.nick.casefold()) is member:
                del self._nicks[member.nick.casefold()]
                self.hub.release_nick(member.nick, str(member.id))
            self._forget_skeleton(member)

    def _forget_room(self, name: str) -> None:
        """Drop an empty room from the table (and from its creator's count)."""
        room = self.rooms.pop(name, None)
        if room is not None:
            self.hub.unwatch(name)
        if room is not None and room.source is not None:
            left = self._rooms_by_source[room.source] - 1
            if left > 0:
                self._rooms_by_source[room.source] = left
            else:
                del self._rooms_by_source[room.source]

    def member(self, nick: str) -> Member | None:
        """Return the registered member named ``nick`` (case-insensitive), or ``None``."""
        return self._nicks.get(nick.casefold())

    def __len__(self) -> int:
        """Connected members, registered or not."""
        return len(self._members)

    # -- commands ----------------------------------------------------------------------------
    def handle(self, member: Member, cmd: Command) -> ServerEvent | asyncio.Future[ServerEvent]:
        """Run ``cmd`` for ``member`` and return the reply to send it (only to it).

        Events for others (and for ``member``, as a room member) are delivered through the
        hub before this returns (with a :class:`LocalHub`). Never raises for a refused
        command: the reply is then an :class:`~wirecat.protocols.chat.ErrorEvent` carrying
        the command's ``ref``. Check :attr:`Member.must_close` after sending the reply.

        Returns:
            The reply; with a remote hub, for a command that needs the hub's answer, a
            future of the reply (an ``error`` reply with ``hub_unavailable`` when the hub
            did not answer in time). Run the member's next command once it is done, so that
            its commands keep their order. It is never cancelled by the core.
        """
        try:
            if member.nick is None and not isinstance(cmd, Hello | Help | Ping | Quit):
                raise ChatError("not_registered", "say hello (choose a nick) first")
            reply = self._dispatch(member, cmd)
        except ChatError as exc:
            return self._refused(exc, cmd.ref)
        if isinstance(reply, asyncio.Future):
            return self._settle(reply, cmd.ref)
        return reply

    def _refused(self, exc: ChatError, ref: Ref) -> ErrorEvent:
        self.counters[f"error_{exc.code}"] += 1
        return ErrorEvent(exc.code, exc.reason, ref)

    def _settle(self, fut: asyncio.Future[ServerEvent], ref: Ref) -> asyncio.Future[ServerEvent]:
        """The reply future: a refusal (ChatError) becomes an ``error`` reply."""
        out: asyncio.Future[ServerEvent] = fut.get_loop().create_future()

        def done(f: asyncio.Future[Any]) -> None:
            if out.done():
                return
            exc: BaseException | None = None
            if f.cancelled():
                exc = HubUnavailable("the hub request was cancelled")
            else:
                exc = f.exception()
            if isinstance(exc, ChatError):
                out.set_result(self._refused(exc, ref))
            elif exc is not None:
                out.set_exception(exc)
            else:
                out.set_result(f.result())

        fut.add_done_callback(done)
        return out

    def hello(
        self, member: Member, nick: str | None, ref: str | int | None = None
    ) -> Welcome | asyncio.Future[Welcome]:
        """Register ``member`` as ``nick`` (``None``: the next free ``guest-N``).

        An authenticated member (:attr:`Member.user` set) gets its user name as nick (a
        different ``nick`` is refused). With a users file, a guest may not take a user's name,
        and is refused altogether when ``guests`` is off.

        Raises:
            ChatError: ``already_registered``, ``invalid_nick``, ``nick_taken``,
                ``auth_required``.
        """
        if member.nick is not None:
            raise ChatError("already_registered", f"you are already {member.nick}")
        user = member.user
        if user is not None:
            if nick is not None and nick.casefold() != user.name.casefold():
                raise ChatError("auth_required", f"your token is for {user.name}, not {nick}")
            nick = user.name
            if nick.casefold() in self._nicks:
                raise ChatError("nick_taken", f"{nick} is already connected")
        elif not self.guests:
            raise ChatError(
                "auth_required", "this server admits registered users only: send a user's token"
            )
        elif nick is None:
            nick = self._guest_nick()
        else:
            if self.users is not None and nick in self.users:
                raise ChatError("auth_required", f"{nick} is a registered user: send its token")
            self._check_free(nick)
        claim = self.hub.claim_nick(nick, str(member.id))
        if claim is True:
            return self._register(member, nick, ref)
        if claim is False:
            raise self._taken_elsewhere(nick)
        return _then(claim, lambda ok: self._register(member, nick, ref, claimed=ok))

    @staticmethod
    def _taken_elsewhere(nick: str) -> ChatError:
        return ChatError("nick_taken", f"nick {nick!r} is already taken: pick another")

    def _register(self, member: Member, nick: str, ref: Ref, *, claimed: bool = True) -> Welcome:
        """The hello's second half, once the hub gave ``nick`` to ``member``."""
        if not claimed:
            raise self._taken_elsewhere(nick)
        if member not in self._members or member.nick is not None:  # gone meanwhile
            self.hub.release_nick(nick, str(member.id))
            raise ChatError("already_registered", "this connection is gone or registered")
        if nick.casefold() in self._nicks:  # taken here while the hub answered
            self.hub.release_nick(nick, str(member.id))
            raise self._taken_elsewhere(nick)
        member.nick = nick
        self._nicks[nick.casefold()] = member
        self._skeletons.setdefault(skeleton(nick), member)
        user = member.user
        roles = tuple(sorted(user.roles)) if user is not None else ()
        return Welcome(
            nick, self.motd, self.default_room, self.server_name, ref,
            user.name if user is not None else None, roles,
        )  # fmt: skip

    def join(
        self,
        member: Member,
        room_name: str,
        ref: str | int | None = None,
        since: int | None = None,
    ) -> RoomJoined | asyncio.Future[RoomJoined]:
        """Add ``member`` to ``room_name`` (created if needed); it becomes the current room.

        Joining a room already joined only makes it current. The room hears a join event
        (the member too), and the reply holds the members and the room's history: its
        recent messages, or with ``since`` (the last id the member saw) only the later ones,
        with ``gap`` set when they are no longer all held. An admin joining a closed room
        reopens it. With a remote hub, the first member of a room in this process waits
        for the hub to load the room (the reply is then a future).

        Raises:
            ChatError: ``invalid_room``, ``too_many_rooms``, ``forbidden`` (a restricted
                room), ``room_closed``.
        """
        if (err := check_room(room_name)) is not None:
            raise ChatError(err.code, err.reason)
        self._nick(member)
        if self.users is not None and not self.users.may_join(member.user, room_name):
            raise ChatError("forbidden", f"{room_name} is restricted to its listed users")
        if room_name in self.closed_rooms:
            if not self._is_admin(member):
                raise ChatError("room_closed", f"{room_name} was closed by an admin")
            self.closed_rooms.discard(room_name)
        room = member.rooms.pop(room_name, None)
        if room is not None:  # already in: just make it current
            member.rooms[room_name] = room
            hist = self.hub.history(room_name, since)
            return RoomJoined(room_name, self._nicks_in(room), hist.messages, ref, hist.gap)
        self._check_room_slots(member)
        if room_name not in self.rooms:
            pending = self.hub.watch(room_name)
            if pending is not None:
                return _then(pending, lambda _: self._join_now(member, room_name, ref, since))
        return self._join_now(member, room_name, ref, since)

    def _check_room_slots(self, member: Member) -> None:
        if len(member.rooms) >= self.max_rooms_per_member:
            raise ChatError(
                "too_many_rooms", f"you are in {len(member.rooms)} rooms already: /part one"
            )

    def _join_now(self, member: Member, room_name: str, ref: Ref, since: int | None) -> RoomJoined:
        """The join's second half: the room's history and live events are at hand."""
        try:
            if member not in self._members or member.nick is None:
                raise ChatError("not_registered", "this connection is gone")
            if self.hub.is_closed(room_name) and not self._is_admin(member):
                self.closed_rooms.add(room_name)
                raise ChatError("room_closed", f"{room_name} was closed by an admin")
            if room_name in member.rooms:
                hist = self.hub.history(room_name, since)
                room = member.rooms[room_name]
                return RoomJoined(room_name, self._nicks_in(room), hist.messages, ref, hist.gap)
            self._check_room_slots(member)
            room = self._open_room(member, room_name)
        except ChatError:
            if room_name not in self.rooms:
                self.hub.unwatch(room_name)
            raise
        room.add(member)
        member.rooms[room_name] = room
        _background(
            self.hub.publish(Joined(self.hub.next_id(), self._clock(), room_name, member.nick))
        )
        hist = self.hub.history(room_name, since)
        return RoomJoined(room_name, self._nicks_in(room), hist.messages, ref, hist.gap)

    def _open_room(self, member: Member, room_name: str) -> Room:
        """The local room ``room_name``, created (and counted) if needed."""
        room = self.rooms.get(room_name)
        if room is None:
            if len(self.rooms) >= self.max_rooms:
                raise ChatError("too_many_rooms", "the server has too many rooms: join another")
            source = getattr(member.sink, "source", None)
            if isinstance(source, str) and source:
                if self._rooms_by_source[source] >= self.max_rooms_per_source:
                    raise ChatError(
                        "too_many_rooms",
                        f"your address has created {self.max_rooms_per_source} rooms that "
                        "still exist: join an existing one",
                    )
                self._rooms_by_source[source] += 1
            else:
                source = None
            room = self.rooms[room_name] = Room(room_name, source)
        return room

    def _nicks_in(self, room: Room) -> tuple[str, ...]:
        """The nicks in ``room``: here, and with a remote hub in every process."""
        everywhere = self.hub.members(room.name)
        if everywhere is None:
            return room.nicks()
        found = {n.casefold(): n for n in everywhere}
        found.update((m.nick.casefold(), m.nick) for m in room.members if m.nick)
        return tuple(sorted(found.values(), key=str.casefold))

    def part(
        self,
        member: Member,
        room_name: str | None,
        reason: str | None = None,
        ref: str | int | None = None,
    ) -> RoomParted:
        """Remove ``member`` from ``room_name`` (``None``: its current room).

        Raises:
            ChatError: ``not_in_room``.
        """
        nick = self._nick(member)
        room = self._my_room(member, room_name)
        _background(
            self.hub.publish(Parted(self.hub.next_id(), self._clock(), room.name, nick, reason))
        )
        room.remove(member)
        member.rooms.pop(room.name, None)
        if not room.members:
            self._forget_room(room.name)
        return RoomParted(room.name, ref)

    def say(
        self,
        member: Member,
        room_name: str | None,
        text: str,
        *,
        action: bool = False,
        ref: str | int | None = None,
    ) -> Sent | asyncio.Future[Sent]:
        """Send ``text`` to ``room_name`` (``None``: the current room).

        ``text`` must already be valid (see :func:`~wirecat.protocols.chat.check_text`).
        The reply (:class:`Sent`, with the message's id) comes once the hub holds the
        message: with a remote hub, a future of it.

        Raises:
            ChatError: ``not_in_room``, ``rate_limited``, ``flooding`` (then
                :attr:`Member.must_close` is set).
        """
        nick = self._nick(member)
        room = self._my_room(member, room_name)
        self._charge(member)
        msg = Message(self.hub.next_id(), self._clock(), room.name, nick, text, action)
        self.counters["messages"] += 1
        done = self.hub.publish(msg)
        if type(done) is int:  # a local hub (the fast path): the id was given before
            return Sent(msg, ref)
        return _then(done, lambda msg_id: Sent(replace(msg, id=msg_id), ref))  # type: ignore[arg-type]

    def _sent(self, msg: Message | Direct, ref: Ref) -> Sent | asyncio.Future[Sent]:
        done = self.hub.publish(msg)
        if isinstance(done, int):  # a local hub: the id was given before publishing
            return Sent(msg, ref)
        return _then(done, lambda msg_id: Sent(replace(msg, id=msg_id), ref))

    def dm(
        self, member: Member, to: str, text: str, ref: str | int | None = None
    ) -> Sent | asyncio.Future[Sent]:
        """Send ``text`` privately to the member named ``to`` (with a remote hub, in any
        process).

        Raises:
            ChatError: ``no_such_nick``, ``rate_limited``, ``flooding``.
        """
        nick = self._nick(member)
        target = self._nicks.get(to.casefold())
        if target is not None and target.nick is not None:
            to = target.nick
        elif not self.hub.remote:  # a remote hub knows the nicks of the other processes
            raise ChatError("no_such_nick", f"nobody is called {to!r} here")
        self._charge(member)
        msg = Direct(self.hub.next_id(), self._clock(), nick, to, text)
        self.counters["direct_messages"] += 1
        return self._sent(msg, ref)

    def who(
        self, member: Member, room_name: str | None, ref: str | int | None = None
    ) -> WhoList | asyncio.Future[WhoList]:
        """List the members of ``room_name`` (``None``: the current room).

        With a remote hub, a room nobody in this process is in is asked of the hub (the
        reply is then a future).

        Raises:
            ChatError: ``no_such_room`` (nobody is in it), ``not_in_room`` (no current room).
        """
        if room_name is None:
            room = self._my_room(member, None)
        else:
            found = self.rooms.get(room_name)
            if found is None:
                name = room_name
                elsewhere = self.hub.present(name) if self.hub.remote else None
                if elsewhere is None:
                    raise ChatError("no_such_room", f"nobody is in {room_name}")

                def listed(nicks: tuple[str, ...]) -> WhoList:
                    if not nicks:
                        raise ChatError("no_such_room", f"nobody is in {name}")
                    return WhoList(name, nicks, ref)

                return _then(elsewhere, listed)
            room = found
        return WhoList(room.name, self._nicks_in(room), ref)

    def list_rooms(self, ref: str | int | None = None) -> RoomList:
        """List the rooms with members, sorted by name, with their member counts."""
        return RoomList(tuple(sorted((n, len(r)) for n, r in self.rooms.items())), ref)

    def rename(
        self, member: Member, new: str, ref: str | int | None = None
    ) -> NickSet | asyncio.Future[NickSet]:
        """Change ``member``'s nick to ``new``; everyone sharing a room with it is told.

        Raises:
            ChatError: ``invalid_nick``, ``nick_taken``, ``nick_reserved`` (another user's
                name).
        """
        old = self._nick(member)
        if new == old:
            return NickSet(new, old, False, ref)
        if new.casefold() != old.casefold():
            own = member.user is not None and member.user.name.casefold() == new.casefold()
            if self.users is not None and new in self.users and not own:
                raise ChatError("nick_reserved", f"{new} is a registered user's name")
            self._check_free(new, member)
        claim = self.hub.claim_nick(new, str(member.id))
        if claim is True:
            return self._renamed(member, old, new, ref)
        if claim is False:
            raise self._taken_elsewhere(new)
        return _then(claim, lambda ok: self._renamed(member, old, new, ref, claimed=ok))

    def _renamed(
        self, member: Member, old: str, new: str, ref: Ref, *, claimed: bool = True
    ) -> NickSet:
        """The rename's second half, once the hub gave ``new`` to ``member``."""
        if not claimed:
            raise self._taken_elsewhere(new)
        owner = str(member.id)
        if member not in self._members or member.nick != old:
            self.hub.release_nick(new, owner)
            raise ChatError("not_registered", "this connection is gone")
        other = self._nicks.get(new.casefold())
        if other is not None and other is not member:  # taken here while the hub answered
            self.hub.release_nick(new, owner)
            raise self._taken_elsewhere(new)
        del self._nicks[old.casefold()]
        self._forget_skeleton(member)
        if old.casefold() != new.casefold():
            self.hub.release_nick(old, owner)
        member.nick = new
        self._nicks[new.casefold()] = member
        self._skeletons.setdefault(skeleton(new), member)
        announced = bool(member.rooms)
        if announced:
            _background(
                self.hub.publish(
                    NickChanged(self.hub.next_id(), self._clock(), old, new, tuple(member.rooms))
                )
            )
        return NickSet(new, old, announced, ref)

    def quit(self, member: Member, reason: str | None = None, ref: str | int | None = None) -> Bye:
        """Leave every room (with ``reason``) and mark ``member`` to be closed after the reply."""
        member.must_close = True
        self.disconnect(member, f"quit: {reason}" if reason else "quit")
        return Bye(reason, ref)

    def kick(
        self,
        member: Member,
        nick: str,
        room_name: str | None = None,
        reason: str | None = None,
        ref: str | int | None = None,
    ) -> Done | asyncio.Future[Done]:
        """Admins: remove ``nick`` from ``room_name`` (``None``: the admin's current room).

        The room (the kicked member included) hears a :class:`Kicked` event; the member stays
        connected and may join again (unless the room is restricted or closed).

        Raises:
            ChatError: ``forbidden`` (not an admin), ``no_such_nick``, ``not_in_room``.
        """
        by = self._admin(member)
        if room_name is None:
            room_name = self._my_room(member, None).name
        target = self._nicks.get(nick.casefold())
        if target is not None and target.nick is not None:
            if room_name not in target.rooms:
                raise ChatError("not_in_room", f"{target.nick} is not in {room_name}")
            nick = target.nick
        else:
            present = self.hub.members(room_name) if room_name in self.rooms else None
            cased = [n for n in present or () if n.casefold() == nick.casefold()]
            if not cased:  # nobody here (a local hub), or not in the room (a remote one)
                if present is None:
                    raise ChatError("no_such_nick", f"nobody is called {nick!r} here")
                raise ChatError("not_in_room", f"{nick} is not in {room_name}")
            nick = cased[0]
        self.counters["kicks"] += 1
        text = f"kicked {nick} from {room_name}"
        done = self.hub.publish(
            Kicked(self.hub.next_id(), self._clock(), room_name, nick, by, reason)
        )
        if isinstance(done, int):
            return Done(text, ref)
        return _then(done, lambda _: Done(text, ref))

    def close_room(
        self, member: Member, room_name: str | None = None, ref: str | int | None = None
    ) -> Done | asyncio.Future[Done]:
        """Admins: remove every member from ``room_name`` (``None``: the current room).

        The room hears a :class:`RoomClosed` event; joins are then refused with
        ``room_closed`` until an admin joins it (which reopens it).

        Raises:
            ChatError: ``forbidden`` (not an admin), ``not_in_room`` (no current room).
        """
        by = self._admin(member)
        if room_name is None:
            room_name = self._my_room(member, None).name
        self.counters["rooms_closed"] += 1
        text = f"closed {room_name}"
        done = self.hub.publish(RoomClosed(self.hub.next_id(), self._clock(), room_name, by))
        if isinstance(done, int):
            return Done(text, ref)
        return _then(done, lambda _: Done(text, ref))

    # -- internals ---------------------------------------------------------------------------
    def _is_admin(self, member: Member) -> bool:
        return member.user is not None and member.user.is_admin

    def _admin(self, member: Member) -> str:
        nick = self._nick(member)
        if not self._is_admin(member):
            raise ChatError("forbidden", "only admins may do that")
        return nick

    def _on_hub_event(self, event: HubEvent) -> None:
        """Hub callback: deliver ``event``, then apply its effect on this process's rooms."""
        self._deliver(event)  # the kicked member, and a closed room's members, hear it too
        if type(event) is Kicked:
            target = self._nicks.get(event.nick.casefold())
            if target is not None:
                self._leave(target, event.room)
        elif type(event) is Joined:  # only an admin joins a closed room: it is open again
            self.closed_rooms.discard(event.room)
        elif type(event) is RoomClosed:
            self.closed_rooms.add(event.room)
            room = self.rooms.get(event.room)
            for m in list(room.members) if room is not None else ():
                self._leave(m, event.room)

    def _on_gap(self, room_name: str, text: str) -> None:
        """Hub callback: events of ``room_name`` were lost; its members are told."""
        room = self.rooms.get(room_name)
        if room is not None:
            room.broadcast(Notice(text))

    def _members_here(self) -> Iterable[tuple[str, str]]:
        return ((r.name, m.nick) for r in self.rooms.values() for m in r.members if m.nick)

    def _leave(self, member: Member, room_name: str) -> None:
        """Take ``member`` out of ``room_name`` locally, without announcing it."""
        room = member.rooms.pop(room_name, None)
        if room is not None:
            room.remove(member)
            if not room.members:
                self._forget_room(room_name)

    def _dispatch(self, member: Member, cmd: Command) -> ServerEvent | asyncio.Future[Any]:
        match cmd:
            case Say(text, room, action, ref):
                return self.say(member, room, text, action=action, ref=ref)
            case Dm(to, text, ref):
                return self.dm(member, to, text, ref)
            case Join(room, ref, since):
                return self.join(member, room, ref, since)
            case Part(room, ref):
                return self.part(member, room, None, ref)
            case Who(room, ref):
                return self.who(member, room, ref)
            case Rooms(ref):
                return self.list_rooms(ref)
            case Nick(nick, ref):
                return self.rename(member, nick, ref)
            case Hello(nick, ref):
                return self.hello(member, nick, ref)
            case Quit(reason, ref):
                return self.quit(member, reason, ref)
            case Help(ref):
                return HelpText(ref)
            case Ping(ref):
                return Pong(ref)
            case Kick(nick, room, reason, ref):
                return self.kick(member, nick, room, reason, ref)
            case CloseRoom(room, ref):
                return self.close_room(member, room, ref)
        raise ChatError("unknown_command", f"unknown command {type(cmd).__name__}")

    def _nick(self, member: Member) -> str:
        if member.nick is None:
            raise ChatError("not_registered", "say hello (choose a nick) first")
        return member.nick

    def _my_room(self, member: Member, room_name: str | None) -> Room:
        if room_name is None:
            room_name = member.current_room
            if room_name is None:
                raise ChatError("not_in_room", "you are in no room: join one first")
        room = member.rooms.get(room_name)
        if room is None:
            raise ChatError("not_in_room", f"you are not in {room_name}: join it first")
        return room

    def _check_free(self, nick: str, member: Member | None = None) -> None:
        if (err := check_nick(nick)) is not None:
            raise ChatError(err.code, err.reason)
        if nick.casefold() in self._nicks:
            raise ChatError("nick_taken", f"nick {nick!r} is already taken: pick another")
        other = self._skeletons.get(skeleton(nick))
        if other is not None and other is not member:  # UTS #39: looks like a nick in use
            raise ChatError(
                "nick_taken", f"nick {nick!r} looks like {other.nick!r}, already here: pick another"
            )

    def _forget_skeleton(self, member: Member) -> None:
        if member.nick is not None:
            key = skeleton(member.nick)
            if self._skeletons.get(key) is member:
                del self._skeletons[key]

    def _guest_nick(self) -> str:
        while True:
            nick = f"guest-{next(self._guests)}"
            if nick.casefold() not in self._nicks and not (self.users and nick in self.users):
                return nick

    def _charge(self, member: Member) -> None:
        if member._bucket.take(self._monotonic()):
            member._strikes = 0
            return
        member._strikes += 1
        self.counters["rate_limited"] += 1
        kick = self.rate.kick_after
        if kick and member._strikes >= kick:
            member.must_close = True
            self.counters["kicked_flooding"] += 1
            raise ChatError(
                "flooding", f"{member._strikes} messages over the rate limit: disconnecting"
            )
        raise ChatError(
            "rate_limited",
            f"more than {self.rate.rate:g} messages per second: message dropped",
        )

    def _deliver(self, event: HubEvent) -> None:
        """Hub callback: hand ``event`` to this process's members."""
        if type(event) is Direct:
            target = self._nicks.get(event.to.casefold())
            if target is not None:
                target.sink.send(target.sink.codec.encode(event))
        elif type(event) is NickChanged:
            self._deliver_many(
                (m for name in event.rooms if (r := self.rooms.get(name)) for m in r.members),
                event,
            )
        else:
            room = self.rooms.get(event.room)  # type: ignore[union-attr]
            if room is not None:
                room.broadcast(event)

    @staticmethod
    def _deliver_many(members: Iterable[Member], event: ServerEvent) -> None:
        seen: set[Member] = set()
        encoded: dict[Encoder, bytes] = {}
        for m in members:
            if m in seen:
                continue
            seen.add(m)
            codec = m.sink.codec
            data = encoded.get(codec)
            if data is None:
                data = encoded[codec] = codec.encode(event)
            if data:
                m.sink.send(data)
