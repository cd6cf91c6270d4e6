"""The chat service: one stream port, text lines for people, JSON lines for programs.

A thin front-end: bytes go through :class:`~wirecat.protocols.chat.ChatServerProtocol`
(line framing, mode choice, parsing), commands go to the shared
:class:`~wirecat.chat.core.ChatCore`, replies and fan-out come back encoded once per format.
Each connection is the core's :class:`~wirecat.chat.core.Sink`: the runtime bounds its
output (a member that stops reading is cut as a slow consumer, never stalling the room).

What a peer sees (text mode, e.g. ``nc 127.0.0.1 7070``)::

    *** Welcome to wirecat chat.
    *** Type a nick (letters, digits, _ or -), or an empty line for a guest name.
    ann
    *** you are ann
    *** ann joined #lobby
    *** in #lobby (1): ann
    hello
    #lobby <ann> hello

Programs send a JSON object as their first line instead (see :mod:`wirecat.protocols.chat`
for the JSON-lines protocol); the banner lines before it do not start with ``{``.

Bad input never costs the connection or anyone else's service: every rejected line gets an
``error`` reply and is dropped. Only persistent flooding (``kick_after`` messages over the
rate in a row) disconnects.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Sequence

from ..auth import AuthFailures, Users, audit_login
from ..chat.core import ChatCore, Member, RateLimit
from ..chat.hub import Hub, LocalHub
from ..endpoints import Endpoint
from ..errors import ChatError
from ..protocols.chat import (
    MAX_TEXT,
    ChatServerProtocol,
    Codec,
    Command,
    Dm,
    EndOfStream,
    ErrorEvent,
    Hello,
    Join,
    Mode,
    Notice,
    Ping,
    Ref,
    Say,
    ServerEvent,
    Shutdown,
    Welcome,
)
from ..runtime.handler import ServerContext, StreamHandler
from ..runtime.limits import Limits
from ..runtime.server import Service

__all__ = ["DEFAULT_BANNER", "MAX_UNACKNOWLEDGED", "ChatHandler", "ChatService"]

#: Messages one member may have sent that the hub has not acknowledged yet; its next lines
#: wait beyond that (a remote hub; a local one acknowledges at once).
MAX_UNACKNOWLEDGED = 64

DEFAULT_BANNER = (
    "Welcome to wirecat chat.\n"
    "Type a nick (letters, digits, _ or -), or an empty line for a guest name.\n"
    'Programs: send JSON lines, starting with {"type":"hello","nick":"bot"}.'
)


class ChatHandler(StreamHandler):
    """One chat connection: frames and parses its lines, runs them on the core.

    Also the core's sink for this member (:attr:`codec`, :meth:`send`). Until the peer
    registers (a nick, or a JSON ``hello``), the runtime's ``login_timeout`` applies.
    """

    coalesce_writes = True  # one write per member per loop iteration, however many messages

    needs_login = True

    #: Put a member that just logged in into a room (the hello's, else the default room),
    #: in text and JSON mode alike. Front-ends whose clients join rooms themselves (the web
    #: page) turn it off.
    join_on_hello = True

    #: Text and JSON lines: a line must end within ``limits.line_timeout`` of its first byte.
    line_framed = True

    def __init__(self, ctx: ServerContext, service: ChatService) -> None:
        super().__init__(ctx, service)
        self.chat = service
        self.proto = ChatServerProtocol(max_line=self.limits.max_line, max_text=service.max_text)
        self.member: Member | None = None  # set once accepted (not for refused peers)
        self._auth: asyncio.Task[None] | None = None  # a token being checked: input waits
        self._waiting: asyncio.Future[ServerEvent] | None = None  # a reply from the hub
        # Messages (say, me, dm) whose acknowledgement the hub owes, and the replies queued
        # behind them, in command order: a member's messages are pipelined to the hub.
        self._acks: deque[tuple[Command, ServerEvent | asyncio.Future[ServerEvent]]] = deque()
        self._held: Command | None = None  # another command, waiting for those acks
        self._eof = False  # the peer half-closed while its token was being checked
        self._banner_timer: asyncio.TimerHandle | None = None  # the banner, not yet sent

    # -- Sink --------------------------------------------------------------------------------
    @property
    def codec(self) -> Codec:
        """Text until the peer's first line chose JSON."""
        return self.proto.codec

    def send(self, data: bytes) -> None:
        """Queue bytes for the peer (dropped if closing; a slow consumer is cut)."""
        if data and not self.closing:
            self.write(data)
            if self.writing_paused:
                self.pause_reading()  # the peer does not read: stop taking its commands

    #: Rooms queue one shared write per loop iteration here instead of calling :meth:`send`
    #: per message (see :class:`~wirecat.runtime.handler.SharedWrite`).
    send_shared = StreamHandler.write_shared

    def pause_writing(self) -> None:
        """The peer does not read fast enough: stop taking its commands until it does
        (room traffic reaches the transport at flush time, not through :meth:`send`)."""
        super().pause_writing()
        self.pause_reading()

    # -- hooks ---------------------------------------------------------------------------------
    def on_connect(self) -> None:
        self.member = self.chat.core.connect(self)
        if self.chat.banner_bytes:
            # Programs send their JSON hello at once: wait that long for it, so that JSON
            # mode is JSON from its first byte; people (nc) get the banner after the delay.
            delay = self.chat.banner_delay
            if delay > 0:
                loop = asyncio.get_running_loop()
                self._banner_timer = loop.call_later(delay, self._send_banner)
            else:
                self.write(self.chat.banner_bytes)

    def _send_banner(self) -> None:
        self._banner_timer = None
        if not self.closing:
            self.write(self.chat.banner_bytes)

    def on_data(self, data: bytes) -> None:
        if self._banner_timer is not None:  # the first bytes, before the banner went out
            self._banner_timer.cancel()
            self._banner_timer = None
            if not data.lstrip(b" \t").startswith(b"{"):
                self.write(self.chat.banner_bytes)  # text mode: the banner, then the replies
        self.proto.receive_data(data)
        self._pump()

    def on_eof(self) -> bool:
        self.proto.receive_eof()
        if self._busy():  # finish the lines after the token check or the hub's answers
            self._eof = True
            return True
        self._pump(drain=True)
        return False  # flush our replies, then close

    def on_writable(self) -> None:
        self.resume_reading()
        self._pump()

    def on_close(self, exc: Exception | None) -> None:
        if self._banner_timer is not None:
            self._banner_timer.cancel()
        if self._auth is not None:
            self._auth.cancel()
        if self.member is not None:
            if self.close_reason:
                reason = self.close_reason.replace("_", " ")  # "slow consumer", "idle timeout"...
            else:
                reason = "connection lost" if exc is not None else "left"
            self.chat.core.disconnect(self.member, reason)

    def on_shutdown(self) -> None:
        self.send(self.codec.encode(Shutdown()))
        self.close("server shutdown")

    def on_login_timeout(self) -> None:
        """The login deadline passed: said in the peer's framing (a JSON peer gets an
        ``error`` event with code ``timeout``, a text peer ``!!! timeout: ...``), then closed."""
        reason = f"login not completed within {self.limits.login_timeout:g} s"
        self.send(self.codec.encode(ErrorEvent("timeout", reason)))
        self.close("login timeout")

    def on_line_timeout(self) -> None:
        reason = f"line not completed within {self.limits.line_timeout:g} s"
        self.send(self.codec.encode(ErrorEvent("timeout", reason)))
        self.close("line timeout")

    # -- internals -----------------------------------------------------------------------------
    def _pump(self, *, drain: bool = False) -> None:
        """Run the complete lines received; pause while the peer does not read.

        With ``drain`` (end of stream) every pending line is run regardless. Nothing runs
        while a token is being checked: the lines after a login wait for its outcome.
        """
        proto, member = self.proto, self.member
        if member is None:
            return
        while (
            not self.closing
            and self._auth is None
            and self._waiting is None
            and self._held is None
            and len(self._acks) < MAX_UNACKNOWLEDGED
            and (drain or not self.writing_paused)
        ):
            ev = proto.next_event()
            if ev is None or isinstance(ev, EndOfStream):
                return
            if isinstance(ev, ErrorEvent):
                if ev.code == "auth_failed":  # an unusable token line
                    self._auth_failed(None, ev.reason)
                    return
                if ev.code == "line_too_long":  # a limit: logged and counted like the others
                    self.ctx.metrics["chat_lines_too_long"] += 1
                    self.log.info(
                        "line longer than %d bytes dropped",
                        self.limits.max_line,
                        extra={"event": "limit", "reason": "line_too_long"},
                    )
                self.ctx.metrics["chat_bad_input"] += 1
                if self._acks:  # after the replies still owed
                    self._acks.append((Ping(), ev))
                else:
                    self.send(proto.codec.encode(ev))
                continue
            if isinstance(ev, Hello) and member.nick is None and not self._login(ev):
                continue
            self._run(member, ev)

    def _run(self, member: Member, cmd: Command) -> None:
        """Run one command on the core and send the reply (and what follows from it).

        A reply that needs the hub (a remote hub: ``sent`` once Redis holds the message)
        comes later: the member's next lines wait for it, so they keep their order.
        """
        pipelined = isinstance(cmd, Say | Dm)
        if self._acks and not pipelined:  # its effects may depend on those messages
            self._held = cmd
            return
        reply = self.chat.core.handle(member, cmd)
        if isinstance(reply, asyncio.Future):
            if pipelined:  # the next message goes to the hub at once; replies keep order
                self._acks.append((cmd, reply))
                reply.add_done_callback(lambda fut: self._acked(member))
                return
            self._waiting = reply
            reply.add_done_callback(lambda fut: self._replied(member, cmd, fut))
            return
        if self._acks:
            self._acks.append((cmd, reply))
            return
        self._answer(member, cmd, reply)

    def _busy(self) -> bool:
        """Commands are in flight: the end of the stream waits for their replies."""
        return (
            self._auth is not None
            or self._waiting is not None
            or self._held is not None
            or bool(self._acks)
        )

    def _acked(self, member: Member) -> None:
        """A pipelined message was acknowledged: send the replies now due, in order."""
        acks = self._acks
        while acks:
            cmd, reply = acks[0]
            if isinstance(reply, asyncio.Future):
                if not reply.done():
                    return  # an earlier message is still owed: its reply goes first
                if reply.cancelled() or reply.exception() is not None:
                    acks.clear()
                    exc = None if reply.cancelled() else reply.exception()
                    self.log.error(
                        "chat command failed: %r", exc, extra={"event": "internal_error"}
                    )
                    self.abort("internal error")
                    return
                reply = reply.result()
            acks.popleft()
            if self.closing:
                acks.clear()
                return
            self._answer(member, cmd, reply)
        self._resume(member)

    def _resume(self, member: Member) -> None:
        """Nothing owed any more: run the held command, then the lines that waited."""
        if self.closing or self._acks or self._waiting is not None:
            return
        held, self._held = self._held, None
        if held is not None:
            self._run(member, held)
        if not self._busy() or (self._acks and self._held is None):
            self._pump(drain=self._eof)
        if self._eof and not self._busy() and not self.closing:
            self.close("eof")

    def _replied(self, member: Member, cmd: Command, fut: asyncio.Future[ServerEvent]) -> None:
        self._waiting = None
        if self.closing or fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:  # a bug, not the peer's doing: logged, the connection dropped
            self.log.error("chat command failed: %r", exc, extra={"event": "internal_error"})
            self.abort("internal error")
            return
        self._answer(member, cmd, fut.result())
        self._resume(member)

    def _answer(self, member: Member, cmd: Command, reply: ServerEvent) -> None:
        core, proto = self.chat.core, self.proto
        codec = proto.codec
        self.send(codec.encode(reply))
        if isinstance(reply, Welcome):
            proto.registered = True
            self.login_complete()
            if self.join_on_hello:  # the hello's room, else the default (a reply without ref)
                room = cmd.room if isinstance(cmd, Hello) and cmd.room else core.default_room
                self._run(member, Join(room))
        if member.must_close:
            if isinstance(reply, ErrorEvent):
                self.ctx.metrics["chat_kicked"] += 1
                self.log.info("disconnecting: %s", reply.reason, extra={"event": "kick"})
            core.disconnect(member, "flooding" if isinstance(reply, ErrorEvent) else None)
            self.close(reply.code if isinstance(reply, ErrorEvent) else "quit")

    # -- authentication ------------------------------------------------------------------------
    def _login(self, hello: Hello) -> bool:
        """A hello before registration: return True to run it on the core as it is.

        A token is checked off the event loop (input waits meanwhile); in text mode a user's
        name (or any name, without guests) is answered with a prompt for the token. A verified
        client certificate whose commonName is a user's name logs in as that user.
        """
        users, proto, member = self.chat.core.users, self.proto, self.member
        if users is None or member is None:
            return True
        subject = self.peer_subject  # a verified client certificate (mTLS) names a user
        cert_user = users.get(subject) if subject is not None else None
        if (
            cert_user is not None
            and hello.token is None
            and (hello.nick is None or hello.nick.casefold() == cert_user.name.casefold())
        ):
            member.user = cert_user
            audit_login(self.log, self.ctx.metrics, cert_user.name, how="certificate")
            return True
        if hello.token is not None:
            source = self.source or "unix"
            loop = asyncio.get_running_loop()
            refusal = self.chat.auth_failures.begin(source, hello.nick or "", loop.time())
            if refusal is not None:
                self._auth_failed(hello.nick, refusal, hello.ref)
            else:
                self.pause_reading()
                self._auth = loop.create_task(self._verify(hello, source))
            return False
        owned = hello.nick is not None and hello.nick in users
        if proto.mode is not Mode.TEXT or (self.chat.core.guests and not owned):
            return True  # the core answers: a guest, or auth_required (JSON: no token)
        if hello.nick is None:
            self.send(proto.codec.encode(Notice("this server admits registered users only: name?")))
        else:
            proto.expect_token(hello.nick)
            self.send(proto.codec.encode(Notice(f"token for {hello.nick}:")))
        return False

    async def _verify(self, hello: Hello, source: str) -> None:
        users, member = self.chat.core.users, self.member
        assert users is not None and member is not None
        refusal = None
        try:
            user = None
            if hello.nick is not None and hello.token is not None:
                refusal = await self._shared_limit(source, hello.nick)
                if refusal is None:
                    user = await users.averify(hello.nick, hello.token)
        except Exception as exc:  # e.g. the executor is gone at shutdown: not the peer's fault
            self.log.error("token check failed: %r", exc, extra={"event": "auth_error"})
            self.abort("internal error")
            return
        finally:
            self._auth = None
            self.chat.auth_failures.end(source, hello.nick or "", ok=user is not None)
        if self.closing:
            return
        if refusal is not None:
            self._auth_failed(hello.nick, refusal, hello.ref)
            return
        if user is None:
            self._auth_failed(hello.nick, ref=hello.ref)
            return
        self.chat.hub.login_ok(source, user.name)
        member.user = user
        audit_login(self.log, self.ctx.metrics, user.name)
        self._run(member, Hello(hello.nick, hello.ref, None, hello.room))
        self.resume_reading()
        self._pump(drain=self._eof)
        if self._eof and not self._busy():
            self.close("eof")

    async def _shared_limit(self, source: str, account: str) -> str | None:
        """The failed-login limits every process shares (a remote hub): ``None`` to go on,
        else why the login is refused unchecked (the hub down: refused, never unlimited)."""
        check = self.chat.hub.check_login(source, account)
        if check is True:
            return None
        try:
            ok = check if isinstance(check, bool) else await check
        except ChatError:
            return "the chat hub is unavailable: try again shortly"
        return (
            None if ok else "too many failed logins from your address or for this user: try later"
        )

    def _auth_failed(
        self, name: str | None, reason: str = "wrong user name or token", ref: Ref = None
    ) -> None:
        """Count, log (never the token) and refuse a login; the connection is closed."""
        audit_login(self.log, self.ctx.metrics, name or "", refused=reason)
        self.send(self.proto.codec.encode(ErrorEvent("auth_failed", reason, ref)))
        self.close("auth_failed")


def _hub_figure(hub: Hub, name: str) -> float:
    value = hub.stats().get(name, 0)
    return float(value) if isinstance(value, int | float) else 0.0


class ChatService(Service):
    """Chat rooms over stream endpoints (tcp, tls, unix), text and JSON-lines modes.

    Args:
        endpoints: where to listen (stream endpoints).
        history: messages kept per room and replayed on join (``0``: none).
        max_rate: sustained messages (say, me, dm) per second per connection.
        burst: messages a connection may send at once after a quiet period.
        kick_after: consecutive messages over the rate after which the connection is
            closed (``0``: never).
        banner: text sent on connect, before the mode is chosen (``""``: none); each line
            is prefixed with ``*** ``.
        banner_delay: seconds to wait for the peer's first bytes before sending the banner;
            a JSON ``hello`` within it gets no banner (JSON mode is JSON from its first
            byte), anything else gets the banner first, as on time (``0``: send at once).
        motd: message of the day, sent in the welcome (text lines, or the JSON ``motd``).
        default_room: the room text-mode members are put in after choosing a nick.
        max_text: the longest message text, in bytes of UTF-8.
        hub: the hub carrying events between processes (default: a :class:`LocalHub`).
        limits: limits for this service's connections (``None``: the server's);
            ``max_line`` bounds incoming lines.
        users: a users file (:class:`~wirecat.auth.Users`): its names are nicks only their
            token unlocks, its rooms are restricted, its admins may kick and close rooms.
        guests: with ``users``, let members without a token in under other nicks.
        auth_failures: failed logins allowed per source address (default: 5, then 1 per
            10 s); the server keeps one table for all its services.
        max_rooms: rooms that may exist at once (the room table; a room exists while it
            has members).
        max_rooms_per_source: rooms created by members from one source address that may
            exist at once, so one address cannot fill the room table.

    Attributes:
        core: the :class:`ChatCore` shared by every connection of this service.

    Raises:
        ValueError: an invalid ``default_room``, rate, burst or history size.
    """

    name = "chat"

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        history: int = 50,
        max_rate: float = 5.0,
        burst: int = 10,
        kick_after: int = 20,
        banner: str = DEFAULT_BANNER,
        banner_delay: float = 0.1,
        motd: str = "",
        default_room: str = "#lobby",
        max_text: int = MAX_TEXT,
        hub: Hub | None = None,
        limits: Limits | None = None,
        users: Users | None = None,
        guests: bool = False,
        auth_failures: AuthFailures | None = None,
        max_rooms: int = 1024,
        max_rooms_per_source: int = 8,
    ) -> None:
        super().__init__(endpoints, limits=limits)
        if max_text < 1:
            raise ValueError("max_text must be >= 1 byte")
        self.max_text = max_text
        self.hub = hub if hub is not None else LocalHub(history_size=history)
        self.core = ChatCore(
            hub=self.hub,
            default_room=default_room,
            motd=motd,
            rate=RateLimit(rate=max_rate, burst=burst, kick_after=kick_after),
            users=users,
            guests=guests,
            max_rooms=max_rooms,
            max_rooms_per_source=max_rooms_per_source,
        )
        self.auth_failures = auth_failures if auth_failures is not None else AuthFailures()
        if hasattr(self.hub, "login_limits"):  # the limits are shared through the hub
            self.hub.login_limits = self.auth_failures.limits
        if banner_delay < 0:
            raise ValueError("banner_delay must be >= 0 seconds")
        self.banner_delay = banner_delay
        self.banner_bytes = b""
        if banner:
            self.banner_bytes = ChatServerProtocol().codec.encode(Notice(banner))

    def stream_handler(self, ctx: ServerContext) -> StreamHandler:
        return ChatHandler(ctx, self)

    async def start(self, ctx: ServerContext) -> None:
        hub = self.hub
        ctx.gauges["chat_hub_up"] = lambda: 1.0 if hub.state in ("up", "local") else 0.0
        for name in ("published", "delivered", "recovered", "gaps", "reconnects", "failures"):
            if name in hub.stats():
                ctx.gauges[f"chat_hub_{name}"] = functools.partial(_hub_figure, hub, name)
        await self.hub.start()

    async def stop(self) -> None:
        await self.hub.aclose()
