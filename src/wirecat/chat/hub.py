"""The hub: what carries chat events between the members of a room, in one process or many.

The chat core (:class:`~wirecat.chat.core.ChatCore`) keeps the members connected to *this*
process; everything other processes would need to see goes through a :class:`Hub`: room
events (messages, joins, parts, kicks, closes), nick changes, direct messages, and the
registry of nicks. Two hubs ship:

- :class:`LocalHub` (the default): in-process, immediate delivery, history in bounded
  deques. Every call completes synchronously: no future, no task, nothing per message.
- :class:`~wirecat.chat.redis_hub.RedisHub` (``serve --hub redis://...``): a Redis stream
  per room, pub/sub for live fan-out, nick ownership and presence with expiry, shared by
  every ``wirecat serve`` process on that Redis.

**Sync fast path, async when remote.** The calls that a remote hub can only answer after a
round trip (:meth:`Hub.publish`, :meth:`Hub.watch`, :meth:`Hub.claim_nick`) return either
their result (done now) or an :class:`asyncio.Future` of it. The core continues at once on
a result and chains a callback on a future, so a :class:`LocalHub` costs what it cost when
the interface was synchronous. A future fails with :class:`HubUnavailable` (code
``hub_unavailable``) when the backend cannot be reached within the hub's timeout, or with
:class:`~wirecat.errors.ChatError` for a refusal only the backend can decide (a nick owned
by another process).

**Ids and history.** The hub assigns ids: :meth:`Hub.next_id` gives the id now (local) or
``0``, meaning "assigned by :meth:`Hub.publish`" (remote: a per-room offset from Redis).
Ids increase per room. :meth:`Hub.history` is synchronous on purpose: a room is
:meth:`watched <Hub.watch>` while this process has members in it, and its recent history is
then held here, in step with delivery, so a joining member gets the history up to exactly
the point where live delivery starts (nothing missed, nothing twice).
"""

from __future__ import annotations

import abc
import asyncio
import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeAlias

from ..errors import ChatError
from ..protocols.chat import (
    Direct,
    Joined,
    Kicked,
    Message,
    NickChanged,
    Parted,
    RoomClosed,
)

__all__ = [
    "History",
    "Hub",
    "HubEvent",
    "HubUnavailable",
    "LocalHub",
    "RoomLog",
]

HubEvent: TypeAlias = Message | Direct | Joined | Parted | NickChanged | Kicked | RoomClosed
"""Events that travel through the hub (what another server process would need)."""


class HubUnavailable(ChatError):
    """The hub's backend (Redis) cannot be reached within its timeout: nothing was done.

    Its ``code`` is ``hub_unavailable``; members get it as an ``error`` reply.
    """

    def __init__(self, reason: str = "the chat hub is unavailable: try again shortly") -> None:
        super().__init__("hub_unavailable", reason)


@dataclass(frozen=True, slots=True)
class History:
    """A room's held messages after some point.

    Attributes:
        messages: oldest first.
        gap: True when messages after the point asked for are no longer held (trimmed, or
            lost by the backend): ``messages`` starts later than asked.
    """

    messages: tuple[Message, ...] = ()
    gap: bool = False


class RoomLog:
    """The recent messages of one room, and how far back they reach.

    Args:
        size: messages kept (the oldest is dropped first; ``0``: none).
        floor: ids up to ``floor`` may exist but are not held (``0``: nothing before).
    """

    __slots__ = ("floor", "messages")

    def __init__(self, size: int, floor: int = 0) -> None:
        self.messages: deque[Message] = deque(maxlen=size)
        self.floor = floor

    def append(self, msg: Message) -> None:
        """Hold ``msg`` (its id must be above every id held)."""
        held = self.messages
        if len(held) == held.maxlen:
            self.floor = held[0].id if held else msg.id
        held.append(msg)

    def since(self, since: int | None) -> History:
        """The held messages after id ``since`` (``None``: all held)."""
        held = self.messages
        if since is None:
            return History(tuple(held))
        return History(tuple(m for m in held if m.id > since), since < self.floor)


class Hub(abc.ABC):
    """Carries room events between members, possibly across processes, and keeps history.

    The core calls :meth:`publish` for every :data:`HubEvent`; the hub then calls the
    delivery callback given to :meth:`bind` with it, in every process that watches the
    room (for a :class:`LocalHub`, at once, before :meth:`publish` returns). A remote hub
    delivers a process's own events back to it too, so that every process sees one order.

    Attributes:
        remote: True when other processes share this hub: the core then asks it about
            nicks and members it does not hold (DMs, kicks, ``who``).
        state: ``"local"``, or for a remote hub ``"connecting"``, ``"up"``, ``"down"``.
    """

    remote = False
    state = "local"
    #: Set by the core: tell a room's local members that the hub lost events of it
    #: ``(room, text)``.
    on_gap: Callable[[str, str], None] = staticmethod(lambda room, text: None)
    #: Set by the core: the ``(room, nick)`` pairs of this process's members (a remote hub
    #: renews their presence).
    members_here: Callable[[], Iterable[tuple[str, str]]] = staticmethod(lambda: ())

    @abc.abstractmethod
    def bind(self, deliver: Callable[[HubEvent], None]) -> None:
        """Set the callback that delivers events to this process's members."""

    @abc.abstractmethod
    def next_id(self) -> int:
        """Return a new event id now, or ``0`` when :meth:`publish` assigns it."""

    @abc.abstractmethod
    def publish(self, event: HubEvent) -> int | asyncio.Future[int]:
        """Record ``event`` (a room event goes to its room's log) and fan it out.

        Returns:
            The event's id (``event.id``, or assigned by the hub when it was ``0``), or a
            future of it, resolved once the hub holds the event.

        Raises (the future):
            HubUnavailable: the backend did not answer in time.
            ChatError: ``no_such_nick`` (a :class:`Direct` to a nick nobody holds),
                ``not_in_room`` (a :class:`Kicked` whose target is not in the room).
        """

    @abc.abstractmethod
    def history(self, room: str, since: int | None = None) -> History:
        """Return the messages of a watched ``room`` after id ``since``, oldest first.

        ``since=None``: the recent history. Answers from what this process holds (see
        :meth:`watch`); the room must be watched for a remote hub to hold anything.
        """

    def watch(self, room: str) -> asyncio.Future[None] | None:
        """Start following ``room`` (this process has a member joining it).

        Returns:
            ``None`` when the room's history and live events are available now, else a
            future resolved once they are (a remote hub loads the room's recent history).
            Idempotent: watching a watched room returns ``None``.
        """
        return None

    def unwatch(self, room: str) -> None:  # noqa: B027 - optional hook
        """Stop following ``room`` (its last local member left). Idempotent."""

    def is_closed(self, room: str) -> bool:
        """Whether an admin closed a watched ``room`` (as the hub knows it: a remote hub
        remembers it for processes that were not watching). A local hub: False (the core
        keeps its own set)."""
        return False

    def members(self, room: str) -> tuple[str, ...] | None:
        """The nicks in ``room`` across every process, sorted case-insensitively, or
        ``None``: ask the core (a local hub: the core knows every member)."""
        return None

    def present(self, room: str) -> asyncio.Future[tuple[str, ...]] | None:
        """The nicks in a room this process does not watch, sorted case-insensitively, as
        the backend knows them (a future), or ``None``: nobody else could know (a local
        hub)."""
        return None

    def claim_nick(self, nick: str, owner: str) -> bool | asyncio.Future[bool]:
        """Take ``nick`` for ``owner`` (a member of this process) across processes.

        Returns:
            True (or a future of it) when taken; False when another process holds it (or
            one that looks like it). A local hub always returns True: the core checks the
            nicks it holds.
        """
        return True

    def release_nick(self, nick: str, owner: str) -> None:  # noqa: B027 - optional hook
        """Give ``nick`` back, if ``owner`` still holds it. Never blocks."""

    def check_login(self, source: str, account: str) -> bool | asyncio.Future[bool]:
        """Count a login attempt from ``source`` for ``account`` in the limits shared by
        every process (before the token is checked): False (or a future of it) when either
        has no attempts left. A local hub: True (the process's own
        :class:`~wirecat.auth.AuthFailures` is the whole count)."""
        return True

    def login_ok(self, source: str, account: str) -> None:  # noqa: B027 - optional hook
        """Give back the attempt :meth:`check_login` counted (the login succeeded)."""

    def stats(self) -> dict[str, object]:
        """Figures for ``/healthz`` and metrics: at least ``state``."""
        return {"state": self.state}

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect to the backend, if any. Called once before serving."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Disconnect from the backend, if any. Idempotent."""


class LocalHub(Hub):
    """An in-process hub: immediate delivery, history in bounded deques.

    Args:
        history_size: messages kept per room (``0``: no history).
        max_rooms: rooms whose history is kept; the least recently used is forgotten first.
    """

    def __init__(self, *, history_size: int = 50, max_rooms: int = 1024) -> None:
        if history_size < 0 or max_rooms < 1:
            raise ValueError("need history_size >= 0 and max_rooms >= 1")
        self.history_size = history_size
        self.max_rooms = max_rooms
        self._ids = itertools.count(1)
        self._logs: OrderedDict[str, RoomLog] = OrderedDict()
        self._forgotten = 0  # the highest id of a room log forgotten (LRU)
        self._deliver: Callable[[HubEvent], None] = lambda event: None

    def bind(self, deliver: Callable[[HubEvent], None]) -> None:
        self._deliver = deliver

    def next_id(self) -> int:
        return next(self._ids)

    def publish(self, event: HubEvent) -> int:
        if type(event) is Message and self.history_size:
            log = self._logs.get(event.room)
            if log is None:
                log = self._logs[event.room] = RoomLog(self.history_size, self._forgotten)
                if len(self._logs) > self.max_rooms:
                    _, old = self._logs.popitem(last=False)
                    if old.messages:
                        self._forgotten = max(self._forgotten, old.messages[-1].id)
            else:
                self._logs.move_to_end(event.room)
            held = log.messages  # RoomLog.append, inlined: this runs for every message
            if len(held) == self.history_size:
                log.floor = held[0].id
            held.append(event)
        self._deliver(event)
        return event.id

    def history(self, room: str, since: int | None = None) -> History:
        log = self._logs.get(room)
        if log is None:
            # Nothing held: a gap if ids after ``since`` were given out and maybe forgotten.
            return History((), since is not None and since < self._forgotten)
        return log.since(since)


def raise_if_failed(fut: asyncio.Future[object]) -> None:
    """Done callback for fire-and-forget futures: retrieve the exception (no log noise)."""
    if not fut.cancelled():
        fut.exception()
