"""Running wirecat's services from Python: :class:`Server`, :func:`serve` and :func:`run`.

::

    config = wirecat.ServeConfig(echo=["tcp://127.0.0.1:0"], greeting=[], chat=[])
    async with wirecat.Server(config) as server:
        print(server.endpoint("echo"))            # tcp://127.0.0.1:40123 (the real port)
        await server.serve_forever()              # until server.shutdown() or cancelled

    wirecat.run(config)                           # blocking, with signals and --workers

``wirecat serve`` is :func:`run` with a config built from its flags. Model: uvicorn's
``Config`` -> ``Server`` -> ``run``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import ServeConfig, TLSConfig
from .endpoints import Endpoint
from .errors import ConfigError, TLSError, WirecatError
from .runtime.handler import ServerContext
from .runtime.limits import AccessList, Limits, read_rules
from .runtime.logs import configure_logging
from .runtime.logs import logger as _log
from .runtime.loop import run as run_loop
from .runtime.proxyheader import ProxyPolicy
from .runtime.server import Server as _ServiceRunner
from .runtime.server import Service, run_until_signal

if TYPE_CHECKING:
    from .auth import Users

__all__ = ["Prepared", "Server", "build_services", "prepare", "run", "serve", "tls_context"]


@dataclass(frozen=True, slots=True)
class Prepared:
    """What a config needs loaded once per process tree, before worker processes fork.

    Attributes:
        tls: the server ``SSLContext`` of ``tls://`` listeners (``None`` without any).
        fingerprint: ``sha256:HEX`` of a self-signed certificate, for clients' pins.
        users: the users file, loaded (``None`` without one).
        access: the allow/deny rules.
    """

    tls: ssl.SSLContext | None
    fingerprint: str | None
    users: Users | None
    access: AccessList


def prepare(config: ServeConfig) -> Prepared:
    """Load the TLS certificate (or make a self-signed one), the users file and the rules.

    Raises:
        TLSError: the certificate, key or CA file cannot be used.
        UsersFileError: the users file cannot be read or is invalid.
        ConfigError: an allow/deny file cannot be read.
    """
    tls_ctx, fingerprint = tls_context(config.tls) if config.tls.configured else (None, None)
    users = None
    if config.users:
        from .auth import Users

        users = Users.load(config.users, insecure_ok=config.users_insecure_ok)
        _warn_if_empty(config.users, users)
    return Prepared(tls_ctx, fingerprint, users, AccessList(config.allow, config.deny))


def _warn_if_empty(path: str, users: Users) -> None:
    if not len(users):
        _log.warning(
            "users file %s has no users: nobody can log in to chat or files "
            "(add one with: wirecat users add %s NAME)",
            path,
            path,
        )


def tls_context(t: TLSConfig) -> tuple[ssl.SSLContext, str | None]:
    """The server ``SSLContext`` of ``t`` and, for a self-signed certificate made now, its
    ``sha256:HEX`` fingerprint.

    Raises:
        TLSError: no certificate configured, or it cannot be loaded or made.
    """
    from .runtime.tls import self_signed, server_context

    if t.cert:
        return server_context(t.cert, t.key, profile=t.profile, client_ca=t.client_ca), None
    if not t.self_signed:
        raise TLSError("tls:// listeners need a certificate and key (or a self-signed one)")
    made = self_signed()
    ctx = server_context(made.cert_pem, made.key_pem, profile=t.profile, client_ca=t.client_ca)
    return ctx, made.fingerprint


def load_rules(paths: Sequence[str]) -> tuple[str, ...]:
    """Read CIDR rules from files (one per line, ``#`` comments), for ``allow``/``deny``.

    Raises:
        ConfigError: a file cannot be read.
    """
    rules: list[str] = []
    for path in paths:
        try:
            rules.extend(read_rules(path))
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}", field="allow") from None
    return tuple(rules)


def build_services(config: ServeConfig, prepared: Prepared, *, worker: int = 0) -> list[Service]:
    """The services of ``config`` for worker process ``worker``.

    Worker 0 runs everything; the others only the inet listeners of the services that keep
    no state in memory: greeting, echo and files (files' locks and quota live in the file
    system, see :mod:`wirecat.files.store`), and chat with its web page when a hub
    (``config.hub``, Redis) holds its rooms. Unix listeners stay in worker 0.
    Every worker serves its own metrics: worker ``i`` on the metrics port plus ``i`` (see
    :func:`wirecat.services.metrics.worker_endpoint`), logged when it opens.

    Raises:
        ConfigError: a service refuses its settings.
        OSError: the files root cannot be opened.
    """
    from .services.echo import EchoService
    from .services.greeting import GreetingService

    def eps(name: str) -> list[Endpoint]:
        found = list(config.services().get(name, ()))
        return found if worker == 0 else [ep for ep in found if ep.is_inet]

    users = prepared.users
    failures = None
    if users is not None:
        from .auth import AuthFailures

        failures = AuthFailures(config.auth_failure_rate, config.auth_failures)
    services: list[Service] = []
    try:
        if found := eps("greeting"):
            services.append(GreetingService(found, banner=config.banner))
        if found := eps("echo"):
            plain = [ep for ep in found if ep.scheme not in ("ws", "wss")]
            if plain:
                services.append(EchoService(plain, datagram_rate=config.udp_rate))
            if ws_eps := [ep for ep in found if ep.scheme in ("ws", "wss")]:
                from .services.web import WebSocketEchoService

                services.append(WebSocketEchoService(ws_eps, settings=config.websocket))
        if (found := eps("chat")) and (worker == 0 or config.hub is not None):
            from .services.chat import ChatService

            hub = None
            if config.hub is not None:
                from .chat.redis_hub import RedisHub

                hub = RedisHub(
                    config.hub,
                    history_size=config.history,
                    timeout=config.hub_timeout,
                    presence_ttl=config.hub_presence_ttl,
                )
            unlimited = config.chat_rate is None  # trusted programs, benchmarks
            services.append(
                chat := ChatService(
                    found,
                    history=config.history,
                    max_rate=config.chat_rate or 1e9,
                    burst=10**9 if unlimited else config.chat_burst,
                    kick_after=0 if unlimited else 20,
                    users=users,
                    guests=config.guests,
                    max_rooms=config.chat_rooms,
                    max_rooms_per_source=config.chat_rooms_per_source,
                    auth_failures=failures,
                    hub=hub,
                )
            )
            if web := eps("web"):  # the chat page and the chat over a WebSocket
                from .services.web import WebService

                services.append(WebService(web, chat=chat, settings=config.websocket))
        if (found := eps("files")) and config.files_root is not None:
            from .services.files import FilesService

            if not config.files_create and not os.path.isdir(config.files_root):
                raise ConfigError(
                    f"the files root {config.files_root} does not exist (or is not a "
                    "directory); create it, or allow creating it (files_create)",
                    field="files_root",
                )

            services.append(
                FilesService(
                    found,
                    root=config.files_root,
                    readonly=config.files_readonly,
                    max_file_size=config.max_file_size,
                    quota=config.quota,
                    users=users,
                    auth_failures=failures,
                    header_timeout=config.files_header_timeout,
                    min_rate=config.files_min_rate,
                    rate_window=config.files_rate_window,
                    transfer_threads=config.files_transfer_threads,
                    part_expiry=config.files_part_expiry,
                )
            )
        if found := list(config.services().get("metrics", ())):
            # Every worker: its own counters on its own listener (port + worker index).
            from .services.metrics import MetricsService, worker_endpoint

            mine = [worker_endpoint(ep, worker) for ep in found]
            services.append(MetricsService(mine, worker=worker))
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return services


class Server(_ServiceRunner):
    """wirecat's server: runs a :class:`ServeConfig`'s services (or services you built).

    ::

        async with wirecat.Server(config) as server:
            server.endpoints                     # {"echo": [Endpoint(...), ...], ...}
            await server.serve_forever()

    Args:
        config: a :class:`ServeConfig`, or a list of :class:`Service` objects (your own).
        limits: with services: the server-wide limits (a config carries its own).
        ctx: with services: a :class:`ServerContext` to share (tests).
        tls: with services: the ``SSLContext`` of every ``tls://`` listener.
        reuse_port: bind with ``SO_REUSEPORT`` (several processes share a port).
        worker: the worker process index (0 runs every service; see :func:`build_services`).
        prepared: what :func:`prepare` loaded (default: loaded at :meth:`start`).

    :meth:`start` opens every listener (or none: a failure closes those already open);
    :meth:`shutdown` drains within ``limits.shutdown_grace`` seconds; both are idempotent.
    Not safe to use from several event loops.
    """

    def __init__(
        self,
        config: ServeConfig | Sequence[Service],
        *,
        limits: Limits | None = None,
        ctx: ServerContext | None = None,
        tls: ssl.SSLContext | None = None,
        reuse_port: bool = False,
        worker: int = 0,
        prepared: Prepared | None = None,
    ) -> None:
        self.config: ServeConfig | None = None
        self.fingerprint: str | None = None
        self._worker = worker
        self._prepared = prepared
        if isinstance(config, ServeConfig):
            if limits is not None or tls is not None:
                raise ConfigError("limits and tls come from the ServeConfig")
            self.config = config
            proxy = None
            if config.proxy_protocol:
                proxy = ProxyPolicy(
                    trusted=config.proxy_from, timeout=config.limits.handshake_timeout
                )
            super().__init__(
                [],
                ctx=ctx,
                limits=config.limits,
                reuse_port=reuse_port or config.workers > 1,
                proxy=proxy,
            )
        else:
            super().__init__(config, limits=limits, ctx=ctx, tls=tls, reuse_port=reuse_port)

    @property
    def users(self) -> Users | None:
        """The loaded users file (``wirecat.auth.Users``), once started with one."""
        return self._prepared.users if self._prepared is not None else None

    async def start(self) -> None:
        """Load what the config needs, build its services and open every listener.

        Raises:
            ConfigError, TLSError, UsersFileError: the config cannot be put to work.
            AddressInUse, PermissionDenied, ListenError: a listener could not be opened.
        """
        config = self.config
        if config is not None and not self.services:
            prepared = self._prepared
            if prepared is None:
                prepared = self._prepared = await asyncio.to_thread(prepare, config)
            self.tls = prepared.tls
            self.fingerprint = prepared.fingerprint
            self.ctx.access = prepared.access
            self.services = build_services(config, prepared, worker=self._worker)
        await super().start()
        if self._worker == 0:
            from .runtime.systemd import unclaimed

            for what in unclaimed():  # worker 0 runs every listener: nobody will take it
                self.ctx.log.warning(
                    "systemd passed the socket %s but no listener is configured for it: "
                    "connections to it will wait unanswered (add that endpoint to a "
                    "service, or remove it from the socket unit)",
                    what,
                )
        if config is not None and self._worker > 0:
            for ep in self.endpoints.get("metrics", ()):
                self.ctx.log.warning("worker %d: metrics on %s", self._worker, ep)

    async def reload(self) -> None:
        """Re-read the users file and the TLS certificate and key (SIGHUP).

        A file that fails to load is refused with a log line and the old one stays in force;
        established connections are untouched (a new certificate serves new handshakes).
        Idempotent; safe while serving.
        """
        config, prepared = self.config, self._prepared
        if config is None or prepared is None:
            return
        log = self.ctx.log
        if config.users:
            from .auth import Users

            try:
                users = await asyncio.to_thread(
                    Users.load, config.users, insecure_ok=config.users_insecure_ok
                )
            except WirecatError as exc:
                log.error("reload: keeping the old users file: %s", exc)
            else:
                for svc in self.services:
                    for holder in (svc, getattr(svc, "core", None)):
                        if getattr(holder, "users", None) is not None:
                            holder.users = users  # type: ignore[union-attr]
                self._prepared = prepared = dataclasses.replace(prepared, users=users)
                log.warning("reload: users file %s: %d users", config.users, len(users))
                _warn_if_empty(config.users, users)
        t = config.tls
        if t.cert and self.tls is not None:
            from .runtime.tls import server_context

            try:
                fresh = await asyncio.to_thread(
                    server_context, t.cert, t.key, profile=t.profile, client_ca=t.client_ca
                )
            except WirecatError as exc:
                log.error("reload: keeping the old TLS certificate: %s", exc)
            else:
                # Listeners hold the first context; each new handshake is moved to the
                # newest one (the callback runs for every ClientHello, SNI or not).
                def use_fresh(obj: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
                    obj.context = fresh

                self.tls.sni_callback = use_fresh
                log.warning("reload: TLS certificate %s loaded", t.cert)


async def serve(config: ServeConfig | None = None, *, handle_signals: bool = True) -> Server:
    """Run ``config``'s services until SIGINT/SIGTERM (or until cancelled); return the server.

    Args:
        config: what to serve; ``None`` means ``ServeConfig()``: greeting, echo and chat on
            their loopback defaults, as ``wirecat serve``.
        handle_signals: install SIGINT/SIGTERM handlers (main thread only): the first drains,
            a second aborts. With False, run until the calling task is cancelled, then drain.

    Raises:
        ConfigError: ``config.workers > 1`` (forking needs :func:`run`, outside any loop).
        TLSError, UsersFileError: the certificate or users file cannot be loaded.
        AddressInUse, PermissionDenied, ListenError: a listener could not be opened.
    """
    config = config if config is not None else ServeConfig()
    if config.workers > 1:
        raise ConfigError(
            "worker processes cannot be forked from a running event loop: use wirecat.run()",
            field="workers",
        )
    server = Server(config)
    if handle_signals:
        await run_until_signal(server)
        return server
    await server.start()
    try:
        await server.serve_forever()
    finally:
        await server.shutdown()
    return server


def run(
    config: ServeConfig | None = None,
    *,
    on_ready: Callable[[Server], None] | None = None,
    on_worker_error: Callable[[WirecatError], int] | None = None,
    configure_logs: bool = True,
) -> int:
    """Serve ``config`` until SIGINT/SIGTERM, in this process or ``config.workers`` processes.

    Blocking: creates its own event loop (``config.loop``). Call it from synchronous code.

    Args:
        config: what to serve (``None``: the defaults of ``wirecat serve``).
        on_ready: called in the first process once every listener is open (e.g. to print
            :attr:`Server.bound` and :attr:`Server.fingerprint`).
        on_worker_error: with several workers, called in a worker process that fails; its
            return value is that process's exit code (default: log the error, exit 1).
        configure_logs: send wirecat's logs to stderr in ``config.log_format`` at
            ``config.verbosity`` (False: leave logging to the caller).

    Returns:
        0 after a clean shutdown; with workers, the first non-zero worker exit code.

    Raises:
        ConfigError, TLSError, UsersFileError, AddressInUse, PermissionDenied, ListenError:
        in the calling process (single worker, or anything that fails before forking).
    """
    from .runtime.systemd import adopt_listen_fds
    from .runtime.workers import run_workers

    config = config if config is not None else ServeConfig()
    if configure_logs:
        configure_logging(config.log_format, config.verbosity)
    adopt_listen_fds()  # systemd socket activation: listeners use the sockets passed
    prepared = prepare(config)

    async def main(worker: int) -> int:
        server = Server(config, worker=worker, prepared=prepared)
        ready = on_ready if worker == 0 else None
        return await run_until_signal(server, ready)  # type: ignore[arg-type]

    if config.workers == 1:
        return run_loop(main(0), loop=config.loop)

    def worker_main(index: int) -> int:
        try:
            return run_loop(main(index), loop=config.loop)
        except WirecatError as exc:
            if on_worker_error is not None:
                return on_worker_error(exc)
            _log.error("worker %d: %s", index, exc)
            return 1
        except KeyboardInterrupt:
            return 130

    return run_workers(config.workers, worker_main, grace=config.limits.shutdown_grace)
