"""A chat hub on Redis: rooms shared by every ``wirecat serve`` process on one Redis.

``wirecat serve --hub redis://host:6379/0`` (also ``rediss://`` and ``unix:/path``). The
model is Centrifugo's Redis engine (``internal/redis`` of centrifugal/centrifuge): a stream
per channel with a per-channel offset, one Lua script that appends and publishes atomically,
pub/sub for live fan-out, recovery by ``XRANGE`` from the last offset seen, and presence as
a sorted set scored by expiry. What lives in Redis (``PREFIX`` is ``wirecat:``)::

    PREFIX{room}:log    stream: the room's events, entry id "<offset>-0", field e=payload
                        (XADD MAXLEN ~ stream_size); a room's keys expire history_ttl
                        (7 days) after its last event
    PREFIX{room}:meta   hash: seq, the room's last offset; closed=1 while an admin closed it
    PREFIX{room}:who    sorted set: nick -> expiry (ms since the epoch)
    PREFIX!nick:{skel}  string "process member": who holds a nick (SET NX PX, heartbeat,
                        compare-and-delete); keyed by the nick's confusable skeleton (UTS #39)
    PREFIX!dm           counter: ids of direct messages
    PREFIX!login:src:{address}, PREFIX!login:acc:{user}
                        hashes: failed-login token buckets shared by every process
    PREFIX!events       pub/sub channel: "<id>|<payload>" for every room event and DM

**Ids.** Each room counts on its own: an offset from ``HINCRBY`` in the append script. A
room's first offset is Redis's clock in microseconds, so a room recreated after Redis lost
its data (no persistence, a failover) never gives an id twice: its ids only grow.

**Order and recovery.** Every process subscribes to one channel and delivers a watched room's
events in offset order: an event whose offset is not the next one starts a catch-up by
``XRANGE`` from the last offset delivered (events that arrive meanwhile wait), so a dropped
connection or a slow subscriber costs latency, not messages. Entries the stream no longer
holds are a *gap*: the room's members get a notice. A process that (re)connects catches up
every watched room the same way.

**Acknowledgement.** :meth:`RedisHub.publish` resolves once the script ran: the event is in
the stream (and, with Redis persistence, on disk per its ``appendfsync``). Publishes from one
loop iteration go out pipelined in one write (one round trip for many messages), on a
connection of their own; the channel is read on another. Both are redis-py connections used
below its client layer (RESP2, no per-call pipeline object, retry or socket timeout: the hub
keeps its own deadlines), which is most of what a paced message costs in Python.

**Outage.** Every call has a deadline (``timeout``); while Redis is unreachable the hub is
``down``: publishes, joins of new rooms and nick claims fail at once with
:class:`~wirecat.chat.hub.HubUnavailable` (``hub_unavailable``), the hub reconnects with
exponential backoff and jitter, and logs each change of state once. Presence and nicks of a
process that dies expire after ``presence_ttl`` seconds: live processes renew theirs every
third of it and remove the expired members of their rooms (one ``part`` each, "timed out").

The password comes from ``$WIRECAT_REDIS_PASSWORD`` or the URL and is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import msgspec

from ..errors import ChatError, ConfigError
from ..protocols.chat import (
    Direct,
    Joined,
    Kicked,
    Message,
    NickChanged,
    Parted,
    RoomClosed,
)
from ..protocols.chat.unicode import skeleton
from .hub import History, Hub, HubEvent, HubUnavailable, RoomLog

__all__ = ["PASSWORD_ENV", "RedisHub", "redact_url"]

_T = TypeVar("_T")

#: The environment variable holding the Redis password (wins over one in the URL).
PASSWORD_ENV = "WIRECAT_REDIS_PASSWORD"

_log = logging.getLogger("wirecat.hub")

# Append one room event and publish it, atomically. KEYS: meta, log, who.
# ARGV: payload, maxlen, channel, presence op, nick, expiry (ms), new nick, keys' ttl (ms).
# Presence ops: "+" add nick, "-" remove nick, "x" remove nick or do nothing at all (expiry
# of a member: only one process announces it), "r" rename, "c" clear, "" none.
_APPEND = """
local op = ARGV[4]
if op == 'x' then
  if redis.call('ZREM', KEYS[3], ARGV[5]) == 0 then return false end
end
local off = redis.call('HINCRBY', KEYS[1], 'seq', 1)
if off == 1 then
  local t = redis.call('TIME')
  off = tonumber(t[1]) * 1000000 + tonumber(t[2])
  redis.call('HSET', KEYS[1], 'seq', string.format('%.0f', off))
end
local id = string.format('%.0f', off)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], id .. '-0', 'e', ARGV[1])
if op == '+' then
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[5])
  redis.call('HDEL', KEYS[1], 'closed')
elseif op == '-' then
  redis.call('ZREM', KEYS[3], ARGV[5])
elseif op == 'r' then
  if redis.call('ZREM', KEYS[3], ARGV[5]) == 1 then
    redis.call('ZADD', KEYS[3], ARGV[6], ARGV[7])
  end
elseif op == 'c' then
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[1], 'closed', '1')
end
redis.call('PEXPIRE', KEYS[1], ARGV[8])
redis.call('PEXPIRE', KEYS[2], ARGV[8])
if op ~= 'c' then redis.call('PEXPIRE', KEYS[3], ARGV[8]) end
redis.call('PUBLISH', ARGV[3], id .. '|' .. ARGV[1])
return id
"""

# A direct message to the holder of a nick. KEYS: the nick's key, the DM counter.
# ARGV: payload, channel. Returns the id, or false when nobody holds the nick.
_DIRECT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local off = redis.call('INCR', KEYS[2])
if off == 1 then
  local t = redis.call('TIME')
  off = tonumber(t[1]) * 1000000 + tonumber(t[2])
  redis.call('SET', KEYS[2], string.format('%.0f', off))
end
local id = string.format('%.0f', off)
redis.call('PUBLISH', ARGV[2], id .. '|' .. ARGV[1])
return id
"""

# Take or renew a nick. KEYS: the nick's key. ARGV: owner, ttl (ms). 1: held by owner.
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# Give a nick back if still held by owner (compare-and-delete). KEYS: key. ARGV: owner.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Failed-login limits shared by every process: a token bucket per source and per account.
# KEYS: source key, account key. ARGV: source rate, burst, account rate, burst, ttl (ms).
# Returns 1 (go on: one token taken from each), 0 (source exhausted), -1 (account exhausted).
_LOGIN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function level(key, rate, burst)
  local v = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(v[1]) or burst
  local ts = tonumber(v[2]) or now
  return math.min(burst, tokens + (now - ts) * rate)
end
local s = level(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
if s < 1 then return 0 end
local a = level(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
if a < 1 then return -1 end
redis.call('HSET', KEYS[1], 'tokens', s - 1, 'ts', now)
redis.call('HSET', KEYS[2], 'tokens', a - 1, 'ts', now)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
"""

# A successful login gives its token back. KEYS: source key, account key. ARGV: bursts.
_LOGIN_OK = """
for i = 1, 2 do
  local tokens = tonumber(redis.call('HGET', KEYS[i], 'tokens'))
  if tokens then
    redis.call('HSET', KEYS[i], 'tokens', math.min(tonumber(ARGV[i]), tokens + 1))
  end
end
return 1
"""

# The state of a room when a process starts following it (one atomic snapshot).
# KEYS: meta, log, who. ARGV: entries to read, now (ms). Returns seq, entries, nicks, closed.
_LOAD = """
local seq = redis.call('HGET', KEYS[1], 'seq') or '0'
local entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[1])
local who = redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[2], '+inf')
local closed = redis.call('HGET', KEYS[1], 'closed') or '0'
return {seq, entries, who, closed}
"""

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def _payload(event: HubEvent) -> tuple[str, bytes]:
    """``(room, payload)`` of an event (``room`` is ``""`` for a direct message)."""
    match event:
        case Message(_, ts, room, nick, text, action):
            return room, _encode(["m", room, ts, nick, text, int(action)])
        case Joined(_, ts, room, nick):
            return room, _encode(["j", room, ts, nick])
        case Parted(_, ts, room, nick, reason):
            return room, _encode(["p", room, ts, nick, reason])
        case Kicked(_, ts, room, nick, by, reason):
            return room, _encode(["k", room, ts, nick, by, reason])
        case RoomClosed(_, ts, room, by):
            return room, _encode(["c", room, ts, by])
        case NickChanged(_, ts, old, new, rooms):
            room = rooms[0] if rooms else ""
            return room, _encode(["n", room, ts, old, new])
        case Direct(_, ts, sender, to, text):
            return "", _encode(["d", "", ts, sender, to, text])
    raise TypeError(f"not a hub event: {event!r}")


def _event(event_id: int, data: bytes) -> HubEvent:
    """Decode a payload (raises ValueError, TypeError, msgspec errors on a bad one)."""
    f = _decode(data)
    kind, room, ts = f[0], f[1], float(f[2])
    if kind == "m":
        return Message(event_id, ts, room, f[3], f[4], bool(f[5]))
    if kind == "j":
        return Joined(event_id, ts, room, f[3])
    if kind == "p":
        return Parted(event_id, ts, room, f[3], f[4])
    if kind == "k":
        return Kicked(event_id, ts, room, f[3], f[4], f[5])
    if kind == "c":
        return RoomClosed(event_id, ts, room, f[3])
    if kind == "n":
        return NickChanged(event_id, ts, f[3], f[4], (room,))
    if kind == "d":
        return Direct(event_id, ts, f[3], f[4], f[5])
    raise ValueError(f"unknown event kind {kind!r}")


def redact_url(url: str) -> str:
    """``url`` without its password (for logs): ``redis://:***@host:6379/0``; a
    ``?password=`` option (redis-py takes one) is masked too."""
    parts = urlsplit(url)
    if parts.password is not None:
        userinfo, _, hostport = parts.netloc.rpartition("@")  # as written: even a bad port
        parts = parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{hostport}")
    if parts.query:
        options = parts.query.split("&")
        masked = ["password=***" if o.lower().startswith("password=") else o for o in options]
        parts = parts._replace(query="&".join(masked))
    return url if parts == urlsplit(url) else urlunsplit(parts)


def _client_url(url: str) -> str:
    """``unix:/path`` (wirecat's endpoint spelling) -> ``unix:///path`` (redis-py's)."""
    if url.startswith("unix:") and not url.startswith("unix://"):
        return "unix://" + url[len("unix:") :]
    return url


def check_url(url: str) -> str:
    """Return ``url`` if it is a Redis URL wirecat can hand to redis-py (no I/O, no import
    of redis-py): ``redis://[user:password@]host[:port][/db]``, ``rediss://...`` (TLS) or
    ``unix:/path/to/redis.sock``; query options go to redis-py as they are.

    Raises:
        ConfigError (field ``hub``): another scheme, a port outside 0-65535, a database
            that is not a number, or ``unix:`` without a path; the message never holds
            the password.
    """
    scheme = url.split(":", 1)[0].lower()
    why = None
    if scheme not in ("redis", "rediss", "unix") or ":" not in url:
        why = "use redis://host:port/db, rediss://host:port/db or unix:/path"
    elif scheme == "unix":
        if not urlsplit(_client_url(url)).path:
            why = "unix: needs the socket's path (unix:/path/to/redis.sock)"
    else:
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 -- ValueError when not a number in 0-65535
        except ValueError:
            why = "the port must be a number in 0-65535"
        db = parts.path.lstrip("/")
        if why is None and db and not db.isdigit():
            why = f"the database must be a number (redis://host:port/0), not {db!r}"
    if why is not None:
        raise ConfigError(f"hub: {why} (got {redact_url(url)!r})", field="hub")
    return url


@dataclass(slots=True)
class _Room:
    """A watched room: its delivery position, recent history and presence."""

    log: RoomLog
    pos: int = 0  # the offset of the last event delivered (0: none yet)
    who: dict[str, str] = field(default_factory=dict)  # casefolded nick -> nick
    ready: asyncio.Future[None] | None = None  # loading (events wait in ``pending``)
    closed: bool = False  # an admin closed it (until an admin joins it again)
    fetching: bool = False  # a catch-up is reading the stream
    pending: list[tuple[int, HubEvent]] = field(default_factory=list)


class RedisHub(Hub):
    """The chat hub on Redis (redis-py asyncio, hiredis parser when installed).

    Args:
        url: ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS) or
            ``unix:/path/to/redis.sock``. The password of ``$WIRECAT_REDIS_PASSWORD`` wins.
        history_size: messages replayed on join (and the most a ``since`` can reach back).
        stream_size: entries kept per room stream (approximate, ``XADD MAXLEN ~``).
        timeout: seconds any Redis call may take before ``hub_unavailable``.
        presence_ttl: seconds after which a dead process's members and nicks expire.
        prefix: key prefix (several chats on one Redis: different prefixes).
        history_ttl: seconds a room's keys live after its last event (a room nobody uses
            is forgotten by Redis; its ids still only grow if it comes back).
        backoff: ``(first, most)`` seconds between reconnection attempts (doubling, +-25%
            jitter).

    Not thread-safe; one event loop.
    """

    remote = True

    def __init__(
        self,
        url: str,
        *,
        history_size: int = 50,
        stream_size: int = 1000,
        timeout: float = 2.0,
        presence_ttl: float = 30.0,
        prefix: str = "wirecat:",
        backoff: tuple[float, float] = (0.1, 5.0),
        history_ttl: float = 7 * 24 * 3600.0,
    ) -> None:
        check_url(url)
        import importlib.util

        if importlib.util.find_spec("redis") is None:
            raise ConfigError(
                "the Redis hub needs redis-py: pip install 'wirecat[redis]'", field="hub"
            )
        if history_size < 0 or stream_size < 1 or timeout <= 0 or presence_ttl <= 0:
            raise ValueError("need history_size >= 0, stream_size >= 1, timeout > 0, ttl > 0")
        self.url = url
        self.history_size = history_size
        self.stream_size = max(stream_size, history_size)
        self.timeout = timeout
        self.presence_ttl = presence_ttl
        self.prefix = prefix
        if not history_ttl > 0:
            raise ValueError("history_ttl must be > 0 seconds")
        self._keys_ttl = int(history_ttl * 1000)
        self.backoff = backoff
        self.state = "connecting"
        self.process = secrets.token_hex(6)  # this process, in nick ownership values
        self.counters: dict[str, int] = {
            "published": 0, "delivered": 0, "recovered": 0, "gaps": 0, "reconnects": 0,
            "failures": 0, "expired": 0,
        }  # fmt: skip
        self._fault_reason = ""
        self._deliver: Callable[[HubEvent], None] = lambda event: None
        self._channel = f"{prefix}!events"
        self._rooms: dict[str, _Room] = {}
        self._nicks: dict[str, str] = {}  # key -> owner value, the nicks held here
        self._redis: Any = None  # the client for everything but the two hot paths
        self._sub: Any = None  # the client owning the two connections below
        self._wconn: Any = None  # the connection publishes and other calls go out on
        self._sconn: Any = None  # the connection subscribed to the channel
        self._shas: dict[str, str] = {}
        self._batch: list[tuple[Sequence[Any], asyncio.Future[Any]]] = []
        self._batch_wake = asyncio.Event()
        self._fault = asyncio.Event()
        self._up = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._password = os.environ.get(PASSWORD_ENV) or None
        #: Failed-login limits shared by every process: (rate, burst, account rate, account
        #: burst), as :attr:`wirecat.auth.AuthFailures.limits` (the chat service sets them).
        self.login_limits: tuple[float, float, float, float] = (0.1, 5, 1.0, 20)

    # -- Hub -----------------------------------------------------------------------------------
    def bind(self, deliver: Callable[[HubEvent], None]) -> None:
        self._deliver = deliver

    def next_id(self) -> int:
        return 0  # the append script gives the room's next offset

    def publish(self, event: HubEvent) -> asyncio.Future[int]:
        if type(event) is NickChanged and len(event.rooms) > 1:  # one entry in each room
            first, *others = (
                self.publish(NickChanged(0, event.ts, event.old, event.new, (room,)))
                for room in event.rooms
            )
            for fut in others:
                fut.add_done_callback(_quiet)
            return first
        room, payload = _payload(event)
        if type(event) is Direct:
            call: Sequence[Any] = ("dm", self._nick_key(event.to), f"{self.prefix}!dm", payload)
        else:
            op, nick, new = "", "", ""
            match event:
                case Joined(nick=nick):
                    op = "+"
                case Parted(nick=nick) | Kicked(nick=nick):
                    op = "-"
                case NickChanged(old=nick, new=new):
                    op = "r"
                case RoomClosed():
                    op = "c"
            call = ("append", room, payload, op, nick, self._expiry(), new)
        return self._queue(call)

    def history(self, room: str, since: int | None = None) -> History:
        st = self._rooms.get(room)
        if st is None or st.ready is not None:
            return History((), since is not None)
        return st.log.since(since)

    def watch(self, room: str) -> asyncio.Future[None] | None:
        st = self._rooms.get(room)
        if st is not None:
            return st.ready
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        if self.state != "up":
            ready.set_exception(HubUnavailable())
            return ready
        st = self._rooms[room] = _Room(RoomLog(self.history_size), ready=ready)
        task = loop.create_task(self._load(room, st))
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)
        return ready

    def unwatch(self, room: str) -> None:
        st = self._rooms.get(room)
        if st is not None and st.ready is None:
            del self._rooms[room]

    def is_closed(self, room: str) -> bool:
        st = self._rooms.get(room)
        return st is not None and st.closed

    def present(self, room: str) -> asyncio.Future[tuple[str, ...]]:
        def nicks(raw: Any) -> tuple[str, ...]:
            names = (n.decode() if isinstance(n, bytes) else str(n) for n in raw)
            return tuple(sorted(names, key=str.casefold))

        return _then(self._queue(("present", room)), nicks)

    def members(self, room: str) -> tuple[str, ...] | None:
        st = self._rooms.get(room)
        if st is None:
            return None
        return tuple(sorted(st.who.values(), key=str.casefold))

    def claim_nick(self, nick: str, owner: str) -> asyncio.Future[bool]:
        key, value = self._nick_key(nick), f"{self.process} {owner}"

        def held(ok: int) -> bool:
            if ok:
                self._nicks[key] = value
            return bool(ok)

        return _then(self._queue(("claim", key, value)), held)

    def release_nick(self, nick: str, owner: str) -> None:
        key, value = self._nick_key(nick), f"{self.process} {owner}"
        if self._nicks.get(key) == value:
            del self._nicks[key]
        if self.state == "up":
            self._queue(("release", key, value)).add_done_callback(_quiet)

    def check_login(self, source: str, account: str) -> asyncio.Future[bool]:
        fut = self._queue(("login", *self._login_keys(source, account)))
        return _then(fut, lambda taken: int(taken) == 1)

    def login_ok(self, source: str, account: str) -> None:
        if self.state == "up":
            self._queue(("login_ok", *self._login_keys(source, account))).add_done_callback(_quiet)

    def _login_keys(self, source: str, account: str) -> tuple[str, str]:
        return f"{self.prefix}!login:src:{source}", f"{self.prefix}!login:acc:{account.casefold()}"

    def stats(self) -> dict[str, object]:
        return {"state": self.state, "rooms": len(self._rooms), **self.counters}

    async def start(self) -> None:
        """Start connecting; wait up to ``timeout`` for Redis (serving starts either way:
        chat commands get ``hub_unavailable`` until it answers)."""
        if self._tasks:
            return
        self._batch_wake = asyncio.Event()
        self._fault, self._up = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._supervise()), loop.create_task(self._writer())]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout):
                await self._up.wait()

    async def aclose(self) -> None:
        """Give back this process's nicks, stop the tasks, close the connections."""
        if self._closing:
            return
        self._closing = True
        redis = self._redis
        if redis is not None and self.state == "up" and self._nicks:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.timeout):
                    pipe = redis.pipeline(transaction=False)
                    for key, value in self._nicks.items():
                        pipe.evalsha(self._shas["release"], 1, key, value)
                    await pipe.execute()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        self._fail_batch(HubUnavailable("the server is shutting down"))
        await self._disconnect()

    # -- internals: calls ---------------------------------------------------------------------
    def _nick_key(self, nick: str) -> str:
        return f"{self.prefix}!nick:{skeleton(nick)}"

    def _keys(self, room: str) -> tuple[str, str, str]:
        p = f"{self.prefix}{room}"
        return f"{p}:meta", f"{p}:log", f"{p}:who"

    def _expiry(self) -> int:
        return int((time.time() + self.presence_ttl) * 1000)

    def _queue(self, call: Sequence[Any]) -> asyncio.Future[Any]:
        """Queue one scripted call for the next pipeline; fails at once while down."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.state != "up":
            self.counters["failures"] += 1
            fut.set_exception(HubUnavailable())
            return fut
        self._batch.append((call, fut))
        self._batch_wake.set()
        return fut

    def _fail_batch(self, exc: Exception) -> None:
        batch, self._batch = self._batch, []
        for _, fut in batch:
            if not fut.done():
                fut.set_exception(exc)

    async def _writer(self) -> None:
        """Send the queued calls, one pipeline per wake-up (many messages, one round trip)."""
        while True:
            await self._batch_wake.wait()
            self._batch_wake.clear()
            batch, self._batch = self._batch, []
            if not batch:
                continue
            conn = self._wconn
            if conn is None or self.state != "up":
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(HubUnavailable())
                continue
            try:
                async with asyncio.timeout(self.timeout):
                    results = await self._run_batch(conn, [c for c, _ in batch])
            except Exception as exc:  # a timeout, a lost connection: Redis is down
                self.counters["failures"] += len(batch)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(HubUnavailable())
                self._failed(exc)
                continue
            for (call, fut), result in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, Exception):
                    _log.error("hub call %s failed: %s", call[0], result)
                    fut.set_exception(HubUnavailable(f"the hub refused the call: {result}"))
                elif call[0] == "dm" and result is None:
                    fut.set_exception(ChatError("no_such_nick", "nobody is called that here"))
                elif call[0] in ("append", "dm"):
                    self.counters["published"] += 1
                    fut.set_result(int(result) if result is not None else 0)
                else:
                    fut.set_result(result)

    async def _run_batch(self, conn: Any, calls: list[Sequence[Any]]) -> list[Any]:
        """Send ``calls`` in one write, read their replies in order (a reply that is an
        error is returned, not raised). The caller bounds the time; a timeout or a lost
        connection leaves ``conn`` unusable, and the hub reconnects."""
        from redis.exceptions import NoScriptError, ResponseError

        for attempt in (0, 1):
            await conn.send_packed_command(
                conn.pack_commands([self._command(call) for call in calls]), check_health=False
            )
            results: list[Any] = []
            read = conn.read_response
            for _ in calls:
                try:
                    results.append(await read(timeout=math.inf))
                except ResponseError as exc:  # the reply was read whole: go on
                    results.append(exc)
            if attempt or not any(isinstance(r, NoScriptError) for r in results):
                return results
            redis = self._redis
            if redis is None:
                raise ConnectionError("the hub is disconnected")
            await self._load_scripts(redis)  # Redis restarted without our scripts
        raise AssertionError("unreachable")

    def _command(self, call: Sequence[Any]) -> tuple[Any, ...]:
        """The Redis command of one queued call."""
        kind, shas = call[0], self._shas
        if kind == "append":
            _, room, payload, op, nick, expiry, new = call
            p = f"{self.prefix}{room}"
            return (
                "EVALSHA", shas["append"], 3, f"{p}:meta", f"{p}:log", f"{p}:who", payload,
                self.stream_size, self._channel, op, nick, expiry, new, self._keys_ttl,
            )  # fmt: skip
        if kind == "dm":
            _, key, counter, payload = call
            return ("EVALSHA", shas["dm"], 2, key, counter, payload, self._channel)
        if kind == "claim":
            _, key, value = call
            return ("EVALSHA", shas["claim"], 1, key, value, int(self.presence_ttl * 1000))
        if kind == "release":
            _, key, value = call
            return ("EVALSHA", shas["release"], 1, key, value)
        if kind == "present":
            now = int(time.time() * 1000)
            return ("ZRANGEBYSCORE", self._keys(call[1])[2], now, "+inf")
        if kind == "login":
            _, src, acc = call
            rate, burst, arate, aburst = self.login_limits
            ttl = int(max(burst / rate, aburst / arate) * 1000) + 1000  # until full again
            return ("EVALSHA", shas["login"], 2, src, acc, rate, burst, arate, aburst, ttl)
        if kind == "login_ok":
            _, src, acc = call
            limits = self.login_limits
            return ("EVALSHA", shas["login_ok"], 2, src, acc, limits[1], limits[3])
        raise ValueError(kind)

    async def _load_scripts(self, redis: Any) -> None:
        for name, text in (
            ("append", _APPEND), ("dm", _DIRECT), ("claim", _CLAIM), ("release", _RELEASE),
            ("load", _LOAD), ("login", _LOGIN), ("login_ok", _LOGIN_OK),
        ):  # fmt: skip
            self._shas[name] = await redis.script_load(text)

    # -- internals: connection ----------------------------------------------------------------
    def _set_state(self, state: str, why: str = "") -> None:
        if state == self.state:
            return
        old, self.state = self.state, state
        shown = redact_url(self.url)
        if state == "up":
            self._up.set()
            _log.warning("hub %s: connected (%s)", shown, "was " + old)
        else:
            self._up.clear()
            _log.warning("hub %s: %s (%s)", shown, state, why or "was " + old)

    def _failed(self, exc: BaseException) -> None:
        """A call failed for want of Redis: reconnect (logged once, by the supervisor)."""
        self._fault_reason = _why(exc)
        self._fault.set()

    async def _supervise(self) -> None:
        """Connect, serve, and on any failure reconnect with backoff and jitter."""
        first, most = self.backoff
        delay = first
        while True:
            self._fault.clear()
            self._fault_reason = ""
            try:
                async with asyncio.timeout(self.timeout * 2):
                    await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._set_state("down", _why(exc))
            else:
                if self.state != "connecting":
                    self.counters["reconnects"] += 1
                self._set_state("up")
                delay = first
                try:
                    await self._serve()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._fault_reason = self._fault_reason or _why(exc)
                self._set_state("down", self._fault_reason or "connection lost")
            self._fail_batch(HubUnavailable())
            for st in self._rooms.values():  # loads in flight fail with the connection
                if st.ready is not None and not st.ready.done():
                    st.ready.set_exception(HubUnavailable())
            await self._disconnect()
            await asyncio.sleep(delay * random.uniform(0.75, 1.25))
            delay = min(delay * 2, most)

    async def _connect(self) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        kwargs: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        if self._password is not None:
            kwargs["password"] = self._password
        redis = aioredis.from_url(_client_url(self.url), **kwargs)
        self._redis = redis
        await redis.ping()
        await self._load_scripts(redis)
        # The hot paths use two connections of their own, without redis-py's per-call
        # layers (pipeline objects, retries, a socket timeout per read: the writer and the
        # reader keep their own deadlines): one for the queued calls, one subscribed. RESP2:
        # a channel message is then a plain reply, not a push notification through handlers.
        hot = {**kwargs, "socket_timeout": None, "protocol": 2}
        sub = aioredis.from_url(_client_url(self.url), **hot)
        self._sub = sub
        pool: Any = sub.connection_pool
        self._wconn = await pool.get_connection()
        sconn = await pool.get_connection()
        await sconn.send_command("SUBSCRIBE", self._channel, check_health=False)
        reply = await sconn.read_response(timeout=math.inf)
        if not (isinstance(reply, list) and reply and reply[0] in (b"subscribe", "subscribe")):
            raise ConnectionError(f"unexpected reply to SUBSCRIBE: {reply!r}")
        self._sconn = sconn
        # Subscribed: whatever is published from now on reaches us; catch up on the rest.
        for room, st in list(self._rooms.items()):
            if st.ready is None:
                self._catch_up(room, st)

    async def _disconnect(self) -> None:
        redis, self._redis = self._redis, None
        sub, self._sub = self._sub, None
        self._wconn = self._sconn = None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.connection_pool.disconnect()  # in use ones too: ours
            with contextlib.suppress(Exception):
                await sub.aclose()
        if redis is not None:
            with contextlib.suppress(Exception):
                await redis.aclose()

    async def _serve(self) -> None:
        """Read the channel and beat the heart until either fails or a call faults."""
        loop = asyncio.get_running_loop()
        reader = loop.create_task(self._read())
        beat = loop.create_task(self._heartbeat())
        fault = loop.create_task(self._fault.wait())
        try:
            done, _ = await asyncio.wait({reader, beat, fault}, return_when="FIRST_COMPLETED")
            for task in done:
                if task is not fault and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in (reader, beat, fault):
                task.cancel()
            await asyncio.gather(reader, beat, fault, return_exceptions=True)

    async def _read(self) -> None:
        conn = self._sconn
        assert conn is not None
        read = conn.read_response
        while True:
            msg = await read(timeout=math.inf)  # [b"message", channel, data]
            if type(msg) is list and len(msg) == 3 and msg[0] == b"message":
                self._on_message(msg[2])

    async def _heartbeat(self) -> None:
        """Every third of ``presence_ttl``: check Redis answers, renew this process's nicks
        and presence (re-taking what a Redis that lost its data forgot), expire the dead."""
        every = self.presence_ttl / 3
        while True:
            await asyncio.sleep(every)
            redis = self._redis
            assert redis is not None
            now = int(time.time() * 1000)
            expiry = now + int(self.presence_ttl * 1000)
            async with asyncio.timeout(self.timeout):
                pipe = redis.pipeline(transaction=False)
                pipe.ping()
                ttl = int(self.presence_ttl * 1000)
                held = list(self._nicks.items())  # the replies come in this order
                for key, value in held:
                    pipe.evalsha(self._shas["claim"], 1, key, value, ttl)
                for room, nick in self.members_here():
                    pipe.zadd(self._keys(room)[2], {nick: expiry})
                rooms = list(self._rooms)
                for room in rooms:  # rooms with members are kept, however quiet
                    for key in self._keys(room):
                        pipe.pexpire(key, self._keys_ttl)
                for room in rooms:
                    pipe.zrangebyscore(self._keys(room)[2], "-inf", now)
                results = await pipe.execute()
            lost = [k for (k, _), ok in zip(held, results[1:], strict=False) if ok == 0]
            for key in lost:
                _log.error("hub: nick %s was taken by another process meanwhile", key)
            expired = results[len(results) - len(rooms) :]
            for room, nicks in zip(rooms, expired, strict=True):
                for raw in nicks:
                    nick = raw.decode() if isinstance(raw, bytes) else str(raw)
                    self.counters["expired"] += 1
                    _, payload = _payload(Parted(0, time.time(), room, nick, "timed out"))
                    call = ("append", room, payload, "x", nick, 0, "")  # only one announces it
                    self._queue(call).add_done_callback(_quiet)

    # -- internals: delivery ------------------------------------------------------------------
    def _on_message(self, data: bytes) -> None:
        head, _, payload = data.partition(b"|")
        try:
            event = _event(int(head), payload)
        except Exception as exc:  # not ours (another program on the channel): skipped
            _log.error("hub: undecodable event skipped: %r", exc)
            return
        if type(event) is Direct:
            self._deliver(event)
            return
        room = event.room  # type: ignore[union-attr]
        st = self._rooms.get(room)
        if st is None:
            if type(event) in (Joined, RoomClosed):  # a room closed or reopened elsewhere
                self._deliver(event)
            return
        if st.ready is not None or st.fetching:
            st.pending.append((event.id, event))
            return
        if event.id <= st.pos:
            return  # delivered already (a catch-up got it first)
        if st.pos and event.id != st.pos + 1:  # missed some: read them from the stream
            st.pending.append((event.id, event))
            self._catch_up(room, st)
            return
        self._apply(room, st, event)

    def _apply(self, room: str, st: _Room, event: HubEvent) -> None:
        st.pos = event.id
        who = st.who
        match event:
            case Message():
                st.log.append(event)
            case Joined(nick=nick):
                who[nick.casefold()] = nick
                st.closed = False
            case Parted(nick=nick) | Kicked(nick=nick):
                who.pop(nick.casefold(), None)
            case NickChanged(old=old, new=new):
                if who.pop(old.casefold(), None) is not None:
                    who[new.casefold()] = new
            case RoomClosed():
                who.clear()
                st.closed = True
        self.counters["delivered"] += 1
        self._deliver(event)

    def _catch_up(self, room: str, st: _Room) -> None:
        if st.fetching:
            return
        st.fetching = True
        task = asyncio.get_running_loop().create_task(self._fetch(room, st))
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _fetch(self, room: str, st: _Room) -> None:
        """Read what ``room`` missed from its stream, then what waited, in offset order."""
        entries: list[tuple[int, HubEvent]] = []
        try:
            redis = self._redis
            if redis is None:
                return  # the reconnection catches up
            async with asyncio.timeout(self.timeout):
                raw = await redis.xrange(self._keys(room)[1], f"{st.pos + 1}-0", "+")
            entries = [(e.id, e) for e in self._entries(raw)]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(exc)
        finally:
            st.fetching = False
        if self._rooms.get(room) is not st:
            return
        self.counters["recovered"] += len(entries)
        self._drain(room, st, entries, fetched=True)

    def _drain(
        self, room: str, st: _Room, entries: list[tuple[int, HubEvent]], *, fetched: bool
    ) -> None:
        """Deliver ``entries`` and the events that waited, in offset order. A hole in them
        is read from the stream first (``fetched``: it was just read: the hole is a loss)."""
        waiting, st.pending = st.pending, []
        merged = dict(entries)
        merged.update(waiting)
        order = sorted(merged)
        for i, off in enumerate(order):
            if off <= st.pos:
                continue
            if st.pos and off != st.pos + 1 and not fetched:
                st.pending = [(o, merged[o]) for o in order[i:]]
                self._catch_up(room, st)
                return
            if st.pos and off != st.pos + 1:
                missed = "some events" if off - st.pos > 10**6 else f"{off - st.pos - 1} events"
                self.counters["gaps"] += 1
                _log.warning("hub: %s of %s are no longer in Redis", missed, room)
                self.on_gap(room, f"{missed} in {room} were lost by the hub")
                st.log.floor = max(st.log.floor, off - 1)
            self._apply(room, st, merged[off])
            if self._rooms.get(room) is not st:
                return

    def _entries(self, raw: list[Any]) -> list[HubEvent]:
        out = []
        for entry_id, fields in raw:
            eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            if isinstance(fields, dict):  # XRANGE through redis-py
                data: Any = fields.get(b"e", fields.get("e"))
            else:  # raw from a script: [field, value, ...]
                data = dict(zip(fields[::2], fields[1::2], strict=True)).get(b"e")
            try:
                out.append(_event(int(eid.split("-", 1)[0]), data))
            except Exception as exc:
                _log.error("hub: undecodable stream entry skipped: %r", exc)
        return out

    async def _load(self, room: str, st: _Room) -> None:
        """Snapshot a room (offset, recent entries, presence), then deliver what waited."""
        ready = st.ready
        assert ready is not None
        try:
            redis = self._redis
            if redis is None:
                raise HubUnavailable()
            count = self.history_size * 4 + 16
            now = int(time.time() * 1000)
            async with asyncio.timeout(self.timeout):
                seq, raw, who, closed = await redis.evalsha(
                    self._shas["load"], 3, *self._keys(room), count, now
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._rooms.get(room) is st:
                del self._rooms[room]
            if not isinstance(exc, HubUnavailable):
                self._failed(exc)
            if not ready.done():
                ready.set_exception(HubUnavailable())
            return
        entries = self._entries(list(reversed(raw)))
        st.pos = int(seq)
        st.closed = int(closed) == 1
        st.log.floor = entries[0].id - 1 if entries else st.pos
        for ev in entries:
            if type(ev) is Message:
                st.log.append(ev)
        for raw_nick in who:
            nick = raw_nick.decode() if isinstance(raw_nick, bytes) else str(raw_nick)
            st.who[nick.casefold()] = nick
        st.ready = None
        if not ready.done():
            ready.set_result(None)
        self._drain(room, st, [], fetched=False)


def _then(fut: asyncio.Future[Any], convert: Callable[[Any], _T]) -> asyncio.Future[_T]:
    """A future of ``convert(result)`` once *fut* (a queued Redis call) is done.

    *fut* cancelled (the hub went down with the call queued) gives HubUnavailable;
    its exception is passed on as it is; *convert* runs in the done callback.
    """
    out: asyncio.Future[_T] = fut.get_loop().create_future()

    def done(f: asyncio.Future[Any]) -> None:
        if f.cancelled():
            out.set_exception(HubUnavailable())
        elif (exc := f.exception()) is not None:
            out.set_exception(exc)
        else:
            out.set_result(convert(f.result()))

    fut.add_done_callback(done)
    return out


def _quiet(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    text = str(exc) or type(exc).__name__
    return text.split("\n", 1)[0][:200]
