"""A SOCKS5 server (RFC 1928 CONNECT; RFC 1929 username/password): ``wirecat relay
socks5://127.0.0.1:1080``.

Safe by default: it listens where told (loopback in every example), and a destination
policy (:class:`SocksPolicy`, ``--socks-allow CIDR[:PORTS]``) decides where it may connect:
by default only loopback destinations, so it is never an open proxy. Names are resolved by
the server and the *resolved* address is checked, so a name cannot smuggle a connection to
a denied network. Refusals are answered with the RFC's reply code and logged.

With a users file, clients must authenticate (RFC 1929: the password is the user's token),
checked with the same constant-time, rate-limited login as chat and files. The negotiation
must finish within ``limits.handshake_timeout`` seconds; then the tunnel is a relay
(:func:`wirecat.services.relay.bridge`): half-close, backpressure and the idle timeout apply,
and bytes the client sent right after its request are forwarded first, never lost.

UDP ASSOCIATE and BIND are answered "command not supported" (0x07).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..endpoints import Endpoint, parse_endpoint
from ..errors import (
    ConnectionClosed,
    ConnectionRefused,
    LimitExceeded,
    NetworkError,
    ProtocolError,
    WirecatError,
    WirecatTimeout,
)
from ..protocols import socks
from ..runtime.connection import Connection, connect
from ..runtime.handler import ServerContext, StreamHandler
from ..runtime.limits import AccessList, Limits
from ..runtime.server import HandlerService, Server
from .relay import RelayStats, SpliceHandler, bridge

if TYPE_CHECKING:
    from ..auth import AuthFailures, User, Users

__all__ = ["SocksPolicy", "socks_server"]

_MAX_NEGOTIATION = 1024  # bytes: greeting + auth + request never need more


@dataclass(frozen=True, slots=True)
class _Rule:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    ports: tuple[tuple[int, int], ...]  # inclusive ranges; () means any port

    def matches(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
        if ip.version != self.network.version or ip not in self.network:
            return False
        return not self.ports or any(lo <= port <= hi for lo, hi in self.ports)


def _ports(text: str, rule: str) -> tuple[tuple[int, int], ...]:
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"invalid ports in {rule!r}: expected e.g. 80,443,8000-9000") from None
        if not 0 <= a <= b <= 65535:
            raise ValueError(f"invalid port range {part!r} in {rule!r}")
        out.append((a, b))
    return tuple(out)


def _rule(text: str) -> _Rule:
    text = text.strip()
    ports: tuple[tuple[int, int], ...] = ()
    if text.startswith("["):  # [2001:db8::/32]:443
        net, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"invalid rule {text!r}: expected [CIDR]:PORTS")
            ports = _ports(rest[1:], text)
    elif text.count(":") == 1:  # 10.0.0.0/8:80,443
        net, port_text = text.split(":")
        ports = _ports(port_text, text)
    else:
        net = text
    try:
        network = ipaddress.ip_network(net, strict=False)
    except ValueError:
        raise ValueError(f"invalid network in {text!r}: expected CIDR[:PORTS]") from None
    return _Rule(network, ports)


_PARSED_MAX = 4096  # destinations whose parsed address SocksPolicy keeps


class SocksPolicy:
    """Where the SOCKS server may connect: ``CIDR[:PORTS]`` rules (any matches: allowed).

    Args:
        allow: rules like ``127.0.0.0/8``, ``10.0.0.0/8:80,443``, ``[::1/128]:8000-9000``.
            Default: loopback only (``127.0.0.0/8`` and ``::1``).

    Raises:
        ValueError: a rule does not parse.
    """

    def __init__(self, allow: Sequence[str] = ("127.0.0.0/8", "::1/128")) -> None:
        self.rules = [_rule(r) for r in allow]
        # IP text -> parsed address: a client reaches the same few destinations again and
        # again; parsing one is most of a check (bounded: cleared when full).
        self._parsed: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}

    def permits(self, host: str, port: int) -> bool:
        """Whether a connection to the IP ``host``, port ``port`` is allowed."""
        ip = self._parsed.get(host)
        if ip is None:
            try:
                ip = ipaddress.ip_address(host.partition("%")[0])
            except ValueError:
                return False
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if len(self._parsed) >= _PARSED_MAX:
                self._parsed.clear()
            self._parsed[host] = ip
        for rule in self.rules:  # noqa: SIM110 - per tunnel: no generator
            if rule.matches(ip, port):
                return True
        return False


class _Refused(Exception):
    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


async def _negotiate(
    conn: Connection,
    buf: bytearray,
    users: Users | None,
    failures: AuthFailures | None,
    ctx: ServerContext,
) -> socks.Request:
    async def need(parse: Callable[[bytearray], Any]) -> Any:
        while True:
            parsed = parse(buf)
            if parsed is not None:
                del buf[: parsed[-1]]
                return parsed
            if len(buf) >= _MAX_NEGOTIATION:
                raise LimitExceeded("SOCKS negotiation too long", limit=_MAX_NEGOTIATION)
            data = await conn.recv(_MAX_NEGOTIATION)
            if not data:
                raise ConnectionClosed("client left during the SOCKS negotiation")
            buf.extend(data)

    methods, _ = await need(socks.parse_methods)
    wanted = socks.METHOD_USERPASS if users is not None else socks.METHOD_NONE
    if wanted not in methods:
        await conn.send(socks.build_method(socks.METHOD_NO_ACCEPTABLE))
        raise _Refused(-1, "no acceptable authentication method")
    await conn.send(socks.build_method(wanted))
    if users is not None:
        name, password, _ = await need(socks.parse_userpass)
        if await proxy_login(conn, users, failures, ctx, name, password, how="socks") is None:
            await conn.send(socks.build_userpass_status(False))
            raise _Refused(-1, f"authentication failed for {name!r}")
        await conn.send(socks.build_userpass_status(True))
    request, _ = await need(socks.parse_request)
    return request  # type: ignore[no-any-return]


async def proxy_login(
    conn: Connection,
    users: Users,
    failures: AuthFailures | None,
    ctx: ServerContext,
    name: str,
    password: str,
    *,
    how: str,
) -> User | None:
    """Check a proxy client's login (the password is the user's token) with the same
    constant-time, rate-limited check as chat and files; audited either way.

    Returns:
        The user, or ``None`` when refused (wrong login, or too many failures).
    """
    from ..auth import audit_login

    source = conn.peer_address.rsplit(":", 1)[0].strip("[]")
    user = None
    refusal = failures.begin(source, name, time.monotonic()) if failures is not None else None
    if refusal is None:
        try:
            user = await users.averify(name, password)
        finally:
            if failures is not None:
                failures.end(source, name, ok=user is not None)
    if user is None:
        audit_login(ctx.log, ctx.metrics, name, refused="auth_failed", how=how)
        return None
    audit_login(ctx.log, ctx.metrics, name, how=how)
    return user


async def destination(host: str, port: int, *, policy: SocksPolicy, resolve: bool) -> str:
    """The IP a proxy client's ``host:port`` goes to: ``host`` resolved (when ``resolve``),
    then the first address the policy allows (checked on the resolved address).

    Raises:
        _Refused: 0x04 a name that does not resolve, 0x02 no allowed address.
    """
    if resolve:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError:
            raise _Refused(0x04, f"cannot resolve {host!r}") from None
        addresses = [str(info[4][0]) for info in infos]
    else:
        addresses = [host]
    allowed = [a for a in addresses if policy.permits(a, port)]
    if not allowed:
        raise _Refused(0x02, f"destination {host}:{port} not allowed by policy")
    return allowed[0]


async def reach(
    host: str, port: int, *, policy: SocksPolicy, connect_timeout: float, resolve: bool = True
) -> Connection:
    """Connect to ``host:port`` for a proxy client, after checking the policy on the
    *resolved* address (a name cannot smuggle a connection to a denied network).

    Args:
        host: an IP literal, or a name (resolved here when ``resolve``).
        port: the destination port.
        policy: where connections may go.
        connect_timeout: seconds allowed to connect.
        resolve: resolve ``host`` as a name (SOCKS5 ATYP 3; HTTP CONNECT targets).

    Raises:
        _Refused: with the SOCKS5 reply code (0x02 not allowed, 0x04 unreachable or
            unresolvable, 0x05 refused, 0x01 other).
    """
    ip = await destination(host, port, policy=policy, resolve=resolve)
    target = f"tcp://[{ip}]:{port}" if ":" in ip else f"tcp://{ip}:{port}"
    try:
        return await connect(target, timeout=connect_timeout)
    except ConnectionRefused:
        raise _Refused(0x05, f"{target} refused the connection") from None
    except WirecatTimeout:
        raise _Refused(0x04, f"{target} did not answer in time") from None
    except (NetworkError, WirecatError) as exc:
        raise _Refused(0x04 if "reach" in str(exc) else 0x01, str(exc)) from None


def socks_server(
    endpoints: str | Endpoint | Sequence[str | Endpoint],
    *,
    policy: SocksPolicy | None = None,
    users: Users | None = None,
    auth_failures: AuthFailures | None = None,
    limits: Limits | None = None,
    access: AccessList | None = None,
    tls: Any = None,
    idle_timeout: float | None = 300.0,
    connect_timeout: float = 10.0,
    on_end: Callable[[RelayStats], None] | None = None,
    reuse_port: bool = False,
) -> Server:
    """A SOCKS5 server on ``endpoints`` (not started: use ``async with``).

    Args:
        endpoints: where to listen (stream endpoints; keep them private).
        policy: allowed destinations (default: loopback only).
        users: require RFC 1929 authentication against this users file.
        auth_failures: the failed-login limiter (shared with other services).
        limits: limits of the listening side; ``handshake_timeout`` bounds the negotiation.
        access: allow/deny rules for clients.
        tls: a server ``SSLContext`` for ``tls://`` endpoints (SOCKS over TLS).
        idle_timeout: end a tunnel after this many seconds with no byte either way.
        connect_timeout: seconds allowed to reach a destination.
        on_end: called with each tunnel's :class:`RelayStats`.
        reuse_port: bind with ``SO_REUSEPORT`` (several processes share the port).
    """
    raw = [endpoints] if isinstance(endpoints, str | Endpoint) else list(endpoints)
    eps = [parse_endpoint(e) if isinstance(e, str) else e for e in raw]
    policy = policy or SocksPolicy()
    base = limits or Limits()
    lim = dataclasses.replace(base, idle_timeout=None)
    ctx = ServerContext(lim, access=access)
    if users is not None and auth_failures is None:
        from ..auth import AuthFailures

        auth_failures = AuthFailures()

    async def handler(conn: Connection) -> None:
        buf = bytearray()
        stats = RelayStats(peer=conn.peer_address)
        try:
            async with asyncio.timeout(lim.handshake_timeout):
                request = await _negotiate(conn, buf, users, auth_failures, ctx)
                out = await _open(request)
        except _Refused as refusal:
            ctx.metrics["socks_refused"] += 1
            ctx.log.warning(
                "socks: refused %s: %s",
                conn.peer_address,
                refusal,
                extra={"event": "refused", "reason": "socks"},
            )
            if refusal.code >= 0:
                await conn.send(socks.build_reply(refusal.code))
            return
        except ProtocolError as exc:
            ctx.metrics["socks_bad_requests"] += 1
            ctx.log.info("socks: bad request from %s: %s", conn.peer_address, exc)
            code = 0x08 if "address type" in str(exc) else 0x01
            if "greeting" not in str(exc) and "methods" not in str(exc):
                await conn.send(socks.build_reply(code))
            return
        except (TimeoutError, ConnectionClosed):
            ctx.metrics["socks_incomplete"] += 1
            return
        async with out:
            host, _, port = out.local_address.rpartition(":")
            await conn.send(socks.build_reply(0, host.strip("[]"), int(port)))
            if buf:  # sent right after the request: forwarded first
                await out.send(bytes(buf))
                stats.up += len(buf)
            stats.target = f"{request.host}:{request.port}"
            await bridge(conn, out, idle_timeout=idle_timeout, stats=stats)
        ended(stats)

    async def _open(request: socks.Request) -> Connection:
        if request.command != socks.CMD_CONNECT:
            raise _Refused(0x07, f"command {request.command} not supported")
        return await reach(
            request.host,
            request.port,
            policy=policy,
            connect_timeout=connect_timeout,
            resolve=request.atyp == socks.ATYP_DOMAIN,
        )

    def ended(stats: RelayStats) -> None:
        ctx.metrics["socks_tunnels"] += 1
        if on_end is not None:
            on_end(stats)

    service = _SocksService(eps, handler, policy, users, idle_timeout, connect_timeout, ended)
    return Server([service], ctx=ctx, tls=tls, reuse_port=reuse_port)


class _SocksService(HandlerService):
    """SOCKS5 on plain TCP/Unix listeners without authentication runs as callbacks
    (:class:`_SocksHandler`); TLS listeners and RFC 1929 logins take ``handler``."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        handler: Callable[[Connection], Any],
        policy: SocksPolicy,
        users: Users | None,
        idle_timeout: float | None,
        connect_timeout: float,
        ended: Callable[[RelayStats], None],
    ) -> None:
        super().__init__(endpoints, handler, name="socks")
        self.policy = policy
        self.users = users
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.ended = ended

    def stream_handler(self, ctx: ServerContext) -> StreamHandler:
        return _SocksHandler(ctx, self)


class _SocksHandler(SpliceHandler):
    """One SOCKS5 client, callbacks only: the greeting and the request are parsed as they
    arrive (sans-I/O :mod:`wirecat.protocols.socks`), the destination is dialled without
    blocking, and the tunnel is the splice engine, whose first bytes to the client are the
    reply (and first bytes to the destination whatever the client sent after its
    request). Everything up to the reply must happen within ``handshake_timeout``."""

    def __init__(self, ctx: ServerContext, service: _SocksService) -> None:
        super().__init__(ctx, service)
        self.socks = service
        self.idle_timeout = service.idle_timeout
        self.buf = bytearray()
        self.greeted = False
        self.request: socks.Request | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.resolving: asyncio.Task[None] | None = None

    def on_connect(self) -> None:
        if self.socks.users is not None or not self.can_splice():
            super().on_connect()  # logins (scrypt off the loop) and TLS: the general path
            return
        self.direct = True
        self.stats.peer = self.peer
        self.deadline = self._loop.call_later(  # type: ignore[union-attr]
            self.limits.handshake_timeout, self._too_slow
        )

    def on_data(self, data: bytes) -> None:
        if not self.direct or self.request is not None:
            super().on_data(data)  # after the request: kept for the destination
            return
        buf = self.buf
        buf += data
        try:
            if not self.greeted:
                parsed = socks.parse_methods(buf)
                if parsed is None:
                    return self._check_size()
                methods, used = parsed
                del buf[:used]
                if socks.METHOD_NONE not in methods:
                    self.write(socks.build_method(socks.METHOD_NO_ACCEPTABLE))
                    return self._refuse(_Refused(-1, "no acceptable authentication method"))
                self.greeted = True
                self.write(socks.build_method(socks.METHOD_NONE))
            req = socks.parse_request(buf)
            if req is None:
                return self._check_size()
            self.request, used = req
            self.pending = bytes(buf[used:])
            buf.clear()
        except ProtocolError as exc:
            self.ctx.metrics["socks_bad_requests"] += 1
            self.log.info("socks: bad request from %s: %s", self.peer, exc)
            if self.greeted:
                self.write(socks.build_reply(0x08 if "address type" in str(exc) else 0x01))
            self.close("bad request")
            return
        self.stats.target = f"{self.request.host}:{self.request.port}"
        if self.request.command != socks.CMD_CONNECT:
            self._refuse(_Refused(0x07, f"command {self.request.command} not supported"))
            return
        if self.request.atyp == socks.ATYP_DOMAIN:
            self.resolving = asyncio.ensure_future(self._resolve(self.request))
            return
        ip = self.request.host
        if not self.socks.policy.permits(ip, self.request.port):
            self._refuse(_Refused(0x02, f"destination {self.stats.target} not allowed by policy"))
            return
        self._dial(ip)

    def _check_size(self) -> None:
        if len(self.buf) >= _MAX_NEGOTIATION:
            self.ctx.metrics["socks_incomplete"] += 1
            self.close("SOCKS negotiation too long")

    async def _resolve(self, request: socks.Request) -> None:
        try:
            ip = await destination(
                request.host, request.port, policy=self.socks.policy, resolve=True
            )
        except _Refused as refusal:
            self._refuse(refusal)
            return
        if not self.closing:
            self._dial(ip)

    def _dial(self, ip: str) -> None:
        assert self.request is not None
        if ":" in ip:
            self.dial(socket.AF_INET6, (ip, self.request.port, 0, 0), self.socks.connect_timeout)
        else:
            self.dial(socket.AF_INET, (ip, self.request.port), self.socks.connect_timeout)

    def _refuse(self, refusal: _Refused) -> None:
        self.ctx.metrics["socks_refused"] += 1
        self.log.warning(
            "socks: refused %s: %s",
            self.peer,
            refusal,
            extra={"event": "refused", "reason": "socks"},
        )
        if refusal.code >= 0:
            self.write(socks.build_reply(refusal.code))
        self.close("refused")

    def _too_slow(self) -> None:
        self.deadline = None
        if not self.closing and self.engine is None:
            self.ctx.metrics["socks_incomplete"] += 1
            self.close("SOCKS handshake timeout")

    def on_dialled(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        out = self.out
        assert out is not None
        host, port = out.getsockname()[:2]
        self.splice(socks.build_reply(0, host, port))

    def on_dial_failed(self, why: str, err: int | None) -> None:
        code = 0x05 if err == errno.ECONNREFUSED else 0x04
        self._refuse(_Refused(code, f"{self.stats.target}: {why}"))

    def on_spliced(self, stats: RelayStats) -> None:
        self.socks.ended(stats)

    def on_close(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self.resolving is not None:
            self.resolving.cancel()
        super().on_close(exc)
