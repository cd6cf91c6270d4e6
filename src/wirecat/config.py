"""One validated, immutable configuration for ``wirecat serve`` and :class:`wirecat.Server`.

::

    config = wirecat.ServeConfig(echo=["tcp://127.0.0.1:0"], greeting=[], chat=[])
    config = wirecat.ServeConfig.from_toml("wirecat.toml")          # the same, from a file
    config = config.replace(workers=2)                             # validated again

Every field has the default ``wirecat serve`` uses; ``wirecat serve``'s flags only build one of
these (flags override a ``--config`` file). A bad field raises :class:`~wirecat.errors.ConfigError`
naming it, before anything is opened. The TOML file holds the same names (``-`` or ``_``), with
the TLS settings in a ``[tls]`` table and the limits in ``[limits]`` (the fields of
:class:`~wirecat.runtime.limits.Limits`)::

    echo = ["tcp://[::]:7007", "udp://[::]:7007"]
    chat = ["tls://127.0.0.1:7443"]
    history = 100
    users = "users.toml"

    [tls]
    self_signed = true

    [limits]
    max_conns = 4096
    idle_timeout = 60.0

Model: uvicorn ``config.py`` (one ``Config`` for ``run()`` and the CLI alike).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .endpoints import Endpoint, parse_endpoint
from .errors import ConfigError, InvalidEndpoint
from .runtime.limits import AccessList, Limits
from .runtime.loop import LoopKind
from .runtime.tls import TLSProfile
from .runtime.websocket import WebSocketSettings
from .services.files import (
    HEADER_TIMEOUT,
    MIN_RATE,
    PART_EXPIRY,
    RATE_WINDOW,
    TRANSFER_THREADS,
)

__all__ = ["DEFAULT_ENDPOINTS", "MAX_CONFIG_FILE", "SERVE_LIMITS", "ServeConfig", "TLSConfig"]

#: Default endpoints of each service: loopback only.
DEFAULT_ENDPOINTS: dict[str, tuple[str, ...]] = {
    "greeting": ("tcp://127.0.0.1:7000",),
    "echo": ("tcp://127.0.0.1:7007", "udp://127.0.0.1:7007"),
    "chat": ("tcp://127.0.0.1:7070",),
    "files": ("tcp://127.0.0.1:7071",),
    "web": ("tcp://127.0.0.1:7080",),
}

#: The limits of ``wirecat serve``: the library's, plus a per-source connection rate.
SERVE_LIMITS = Limits(conn_rate=20.0)

#: Largest configuration file read, in bytes (checked before parsing).
MAX_CONFIG_FILE = 1024 * 1024

LogFormat = Literal["text", "json"]


def _defaults(name: str) -> tuple[Endpoint, ...]:
    return tuple(parse_endpoint(e) for e in DEFAULT_ENDPOINTS[name])


@dataclass(frozen=True, kw_only=True, slots=True)
class TLSConfig:
    """Server certificate settings for every ``tls://`` listener.

    Attributes:
        cert: path to a PEM certificate chain (may hold the key too).
        key: path to the PEM private key, when not in ``cert``.
        self_signed: make a throwaway certificate in memory at start (development); its
            SHA-256 fingerprint is on :attr:`wirecat.Server.fingerprint`, for clients' pins.
        profile: ``intermediate`` (TLS 1.2+, ECDHE + AEAD; Mozilla) or ``modern`` (TLS 1.3).
        client_ca: PEM CAs; when set, clients must present a certificate chaining to one of
            them (mTLS), and a certificate whose commonName is a user logs in as that user.
    """

    cert: str | None = None
    key: str | None = None
    self_signed: bool = False
    profile: TLSProfile = "intermediate"
    client_ca: str | None = None

    def __post_init__(self) -> None:
        if self.profile not in get_args(TLSProfile):
            raise ConfigError(
                f"unknown TLS profile {self.profile!r}: expected intermediate or modern",
                field="tls.profile",
            )
        if self.cert and self.self_signed:
            raise ConfigError("a certificate and self_signed exclude each other", field="tls")
        if self.key and not self.cert:
            raise ConfigError("a TLS key needs its certificate", field="tls.key")

    @property
    def configured(self) -> bool:
        """True when a certificate is given or will be made."""
        return bool(self.cert or self.self_signed)


def _endpoints(value: Any, name: str) -> tuple[Endpoint, ...]:
    if isinstance(value, str | Endpoint):
        value = [value]
    if not isinstance(value, Iterable):
        raise ConfigError(f"{name}: expected a list of endpoints", field=name)
    out = []
    for item in value:
        if isinstance(item, Endpoint):
            out.append(item)
            continue
        if not isinstance(item, str):
            raise ConfigError(f"{name}: expected endpoint strings, got {item!r}", field=name)
        try:
            out.append(parse_endpoint(item, default_host="127.0.0.1"))
        except InvalidEndpoint as exc:
            raise ConfigError(f"{name}: {exc}", field=name) from None
    return tuple(out)


@dataclass(frozen=True, kw_only=True, slots=True)
class ServeConfig:
    """Everything ``wirecat serve`` runs, validated once. Sizes are bytes, times seconds.

    Attributes:
        greeting: greeting listeners (stream endpoints); ``()`` turns the service off.
        echo: echo listeners, stream or datagram (RFC 862); ``()`` turns it off.
        chat: chat listeners (stream endpoints); ``()`` turns it off.
        files: files listeners; used only when :attr:`files_root` is set.
        web: web listeners: the chat page over HTTP, ``/healthz``, and the chat over a
            WebSocket at ``/chat`` (``tcp``/``ws``: http://, ``tls``/``wss``: https://).
            ``None`` (default): ``tcp://127.0.0.1:7080`` when chat runs on its default
            endpoint, else none (see :meth:`web_endpoints`); ``()`` turns it off. Needs
            the chat service.
        metrics: Prometheus ``GET /metrics`` listeners (``()``: off); keep them private.
        files_root: the directory the files service serves; ``None``: no files service.
        files_readonly: refuse uploads.
        files_create: create :attr:`files_root` when it does not exist (else refused).
        max_file_size: largest upload in bytes (``None``: any).
        quota: most bytes the file store may hold (``None``: any); shared by every worker.
        files_header_timeout: seconds from the first byte of a files request header (or
            trailer) until its end; then ``timeout`` and the connection closes.
        files_min_rate: slowest upload body accepted, bytes per second averaged over each
            :attr:`files_rate_window` (``None`` or 0: any); a slower upload is cut and its
            quota reservation released (the part is kept for a resume).
        files_rate_window: seconds of each :attr:`files_min_rate` window (the first is a
            grace period).
        files_transfer_threads: file transfers on threads of their own at once (``sendfile``
            downloads, uploads read straight from the socket); the others run on the event
            loop (per process).
        files_part_expiry: seconds after which a part file of an abandoned upload is
            deleted (``None`` or 0: never); it counts against the quota until then.
        banner: the greeting line (one line).
        history: chat messages kept per room and replayed on join (0-10000).
        chat_rate: chat messages per second per member (``None``: no limit).
        chat_burst: messages a member may send at once after a quiet period.
        chat_rooms: chat rooms that may exist at once (the room table).
        chat_rooms_per_source: rooms that members from one source address may have created
            and that still exist (one source cannot fill the table).
        udp_rate: datagrams answered per second per source address (``None``: no limit).
        users: path of a users file (``wirecat users add``): chat and files then need a token.
        users_insecure_ok: accept a users file that others may read or write, that another
            user owns, or that is a symbolic link (refused by default, like OpenSSH's
            ``StrictModes``); a file that is not regular is refused regardless.
        guests: with :attr:`users`, also admit chat members without a token (other nicks).
        auth_failures: failed logins per source address before it is refused unchecked.
        auth_failure_rate: failed logins per second a source earns back.
        allow: only accept peers in these networks (CIDR strings); empty: everyone.
        deny: refuse peers in these networks (checked before any byte is read).
        proxy_protocol: stream listeners (not metrics) read a PROXY protocol header (v1 or
            v2, HAProxy's spec) first; the client address in it drives limits, access
            lists, logs and chat ``who``. The header must arrive within
            ``limits.handshake_timeout`` seconds.
        proxy_from: the balancers (CIDR) allowed to send it; anyone else is refused.
        tls: the certificate of ``tls://`` listeners (:class:`TLSConfig`).
        limits: connection caps, rates, deadlines and sizes (:class:`Limits`).
        websocket: WebSocket hygiene of ``web`` and ``ws://`` listeners: message size,
            keepalive, close timeout, compression, allowed origins
            (:class:`~wirecat.runtime.websocket.WebSocketSettings`).
        workers: processes sharing the inet listeners (``SO_REUSEPORT``); Unix listeners run
            in the first, and so does chat unless a :attr:`hub` shares its rooms (then
            every worker serves chat). ``workers > 1`` needs :func:`wirecat.run`.
        hub: where chat rooms live: ``None`` in this process (the default), or a Redis URL
            (``redis://host:6379/0``, ``rediss://...``, ``unix:/path/redis.sock``) shared
            by every worker and every ``wirecat serve`` on that Redis. The password comes
            from ``$WIRECAT_REDIS_PASSWORD`` or the URL (never logged).
        hub_timeout: seconds a hub call may take before chat commands get
            ``hub_unavailable``.
        hub_presence_ttl: seconds after which the members and nicks of a process that
            died (SIGKILL, a lost host) expire from the hub.
        log_format: ``text`` or ``json`` (one object per line).
        verbosity: 0 warnings, 1 info, 2 debug.
        loop: ``auto`` (uvloop when installed), ``asyncio`` or ``uvloop``.

    Raises:
        ConfigError: a field is invalid, or fields contradict each other (``field`` names
            the culprit).
    """

    greeting: tuple[Endpoint, ...] = field(default_factory=lambda: _defaults("greeting"))
    echo: tuple[Endpoint, ...] = field(default_factory=lambda: _defaults("echo"))
    chat: tuple[Endpoint, ...] = field(default_factory=lambda: _defaults("chat"))
    files: tuple[Endpoint, ...] = field(default_factory=lambda: _defaults("files"))
    web: tuple[Endpoint, ...] | None = None
    metrics: tuple[Endpoint, ...] = ()
    files_root: str | None = None
    files_readonly: bool = False
    files_create: bool = False
    max_file_size: int | None = None
    quota: int | None = None
    files_header_timeout: float = HEADER_TIMEOUT
    files_min_rate: int | None = MIN_RATE
    files_rate_window: float = RATE_WINDOW
    files_transfer_threads: int = TRANSFER_THREADS
    files_part_expiry: float | None = PART_EXPIRY
    banner: str = "Thank you for connecting"
    history: int = 50
    chat_rate: float | None = 5.0
    chat_burst: int = 10
    chat_rooms: int = 1024
    chat_rooms_per_source: int = 8
    udp_rate: float | None = 1000.0
    users: str | None = None
    users_insecure_ok: bool = False
    guests: bool = False
    auth_failures: int = 5
    auth_failure_rate: float = 0.1
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    proxy_protocol: bool = False
    proxy_from: tuple[str, ...] = ()
    tls: TLSConfig = field(default_factory=TLSConfig)
    limits: Limits = SERVE_LIMITS
    websocket: WebSocketSettings = field(default_factory=WebSocketSettings)
    workers: int = 1
    hub: str | None = None
    hub_timeout: float = 2.0
    hub_presence_ttl: float = 30.0
    log_format: LogFormat = "text"
    verbosity: int = 0
    loop: LoopKind = "auto"

    def __post_init__(self) -> None:
        fix = object.__setattr__
        for name in ("greeting", "echo", "chat", "files", "metrics"):
            fix(self, name, _endpoints(getattr(self, name), name))
        if self.web is not None:
            fix(self, "web", _endpoints(self.web, "web"))
        for name in ("allow", "deny", "proxy_from"):
            value = getattr(self, name)
            fix(self, name, (value,) if isinstance(value, str) else tuple(value))
        # 0 means no limit, as on the command line
        for name in ("chat_rate", "udp_rate", "files_min_rate", "files_part_expiry"):
            if getattr(self, name) == 0:
                fix(self, name, None)
        if self.files_root is not None:
            fix(self, "files_root", os.fspath(self.files_root))
        self._validate()

    # -- validation ------------------------------------------------------------------------
    def _validate(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{name}: {why}", field=name)

        for name in ("greeting", "chat", "files", "metrics", "web"):
            for ep in self.web_endpoints() if name == "web" else getattr(self, name):
                if not ep.is_stream or ep.scheme == "stdio":
                    raise bad(name, f"{ep} is not a stream endpoint (tcp, tls or unix)")
                if name not in ("web", "metrics") and ep.scheme in ("ws", "wss"):
                    raise bad(name, f"{ep}: WebSocket chat is served by the web listener")
        for ep in self.echo:
            if ep.scheme in ("stdio", "unix+seqpacket"):
                raise bad("echo", f"cannot serve echo on {ep}")
        if self.web and not self.chat:  # given explicitly (the default follows chat)
            raise bad("web", "the web page is the chat's: it needs a chat listener")
        if "\n" in self.banner or "\r" in self.banner:
            raise bad("banner", "must be one line")
        if not 0 <= self.history <= 10000:
            raise bad("history", "must be 0-10000 messages")
        if not 1 <= self.workers <= 256:
            raise bad("workers", "must be 1-256 processes")
        if self.workers > 1 and self.metrics:  # each worker's metrics on port + its index
            from .services.metrics import worker_endpoint

            for ep in self.metrics:
                worker_endpoint(ep, self.workers - 1)  # ConfigError past port 65535
        if self.hub is not None:
            from .chat.redis_hub import check_url  # the one check (redis-py not needed)

            check_url(self.hub)
        for name in ("hub_timeout", "hub_presence_ttl"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise bad(name, "must be > 0 seconds")
        if self.chat_burst < 1:
            raise bad("chat_burst", "must be >= 1")
        if self.chat_rooms < 1 or self.chat_rooms_per_source < 1:
            raise bad("chat_rooms", "the room limits must be >= 1")
        for name in ("chat_rate", "udp_rate"):
            rate = getattr(self, name)
            if rate is not None and not (rate > 0 and math.isfinite(rate)):
                raise bad(name, "must be > 0 per second (or none)")
        for name in ("max_file_size", "quota"):
            size = getattr(self, name)
            if size is not None and size < 1:
                raise bad(name, "must be >= 1 byte (or none)")
        for name in ("files_header_timeout", "files_rate_window", "files_part_expiry"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise bad(name, "must be > 0 seconds")
        if self.files_min_rate is not None and self.files_min_rate < 0:
            raise bad("files_min_rate", "must be >= 0 bytes per second")
        if self.files_transfer_threads < 0:
            raise bad("files_transfer_threads", "must be >= 0")
        if self.auth_failures < 1:
            raise bad("auth_failures", "must be >= 1")
        if not self.auth_failure_rate > 0:
            raise bad("auth_failure_rate", "must be > 0 per second")
        if self.log_format not in get_args(LogFormat):
            raise bad("log_format", "must be text or json")
        if self.loop not in ("auto", "asyncio", "uvloop"):
            raise bad("loop", "must be auto, asyncio or uvloop")
        if self.guests and not self.users:
            raise bad("guests", "needs a users file (without one everyone is a guest)")
        try:
            AccessList(self.allow, self.deny)
        except ValueError as exc:
            raise bad("allow" if self._bad_rule(self.allow) else "deny", str(exc)) from None
        if self.proxy_protocol and not self.proxy_from:
            raise bad("proxy_from", "the PROXY protocol needs its trusted balancers (CIDR)")
        if self.proxy_from and not self.proxy_protocol:
            raise bad("proxy_from", "trusted balancers are set but the PROXY protocol is off")
        try:
            AccessList(self.proxy_from)
        except ValueError as exc:
            raise bad("proxy_from", str(exc)) from None
        wants_tls = any(ep.scheme in ("tls", "wss") for ep in self.listening())
        if wants_tls and not self.tls.configured:
            raise ConfigError(
                "tls:// listeners need a certificate and key (or a self-signed certificate)",
                field="tls",
            )
        if self.tls.configured and not wants_tls:
            raise ConfigError(
                "a TLS certificate is set but no listener is tls:// "
                "(e.g. chat tls://127.0.0.1:7443)",
                field="tls",
            )
        if self.tls.client_ca and not wants_tls:
            raise ConfigError("client certificates (mTLS) need a tls:// listener", field="tls")
        if not any(eps for name, eps in self.services().items() if name != "metrics"):
            raise ConfigError("nothing to serve: every service is turned off")

    @staticmethod
    def _bad_rule(rules: tuple[str, ...]) -> bool:
        try:
            AccessList(rules)
        except ValueError:
            return True
        return False

    # -- views -----------------------------------------------------------------------------
    def services(self) -> dict[str, tuple[Endpoint, ...]]:
        """The enabled services and their endpoints (files only with a root)."""
        out = {"greeting": self.greeting, "echo": self.echo, "chat": self.chat}
        if self.files_root is not None:
            out["files"] = self.files
        out["metrics"] = self.metrics
        out["web"] = self.web_endpoints()
        return {name: eps for name, eps in out.items() if eps}

    def web_endpoints(self) -> tuple[Endpoint, ...]:
        """The web listeners: :attr:`web`, or by default ``tcp://127.0.0.1:7080`` when chat
        runs on its default endpoint (a chat moved elsewhere takes its page along only
        when told where)."""
        if self.web is not None:
            return self.web
        return _defaults("web") if self.chat == _defaults("chat") else ()

    def listening(self) -> list[Endpoint]:
        """Every endpoint that will be listened on."""
        return [ep for eps in self.services().values() for ep in eps]

    def replace(self, **changes: Any) -> ServeConfig:
        """Return a copy with ``changes`` applied (validated again).

        Raises:
            ConfigError: the result is invalid.
        """
        try:
            return dataclasses.replace(self, **changes)
        except TypeError as exc:
            raise ConfigError(str(exc)) from None

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, base: ServeConfig | None = None
    ) -> ServeConfig:
        """Build a config from plain data (a parsed TOML document), over ``base``'s values.

        Keys are field names (``-`` or ``_``); ``tls`` and ``limits`` are tables whose keys
        are :class:`TLSConfig` and :class:`Limits` fields, merged over ``base``'s.

        Raises:
            ConfigError: an unknown key, a value of the wrong type, or an invalid config.
        """
        base = base or cls()
        known = {f.name: f for f in dataclasses.fields(cls)}
        changes: dict[str, Any] = {}
        for raw_key, value in data.items():
            key = str(raw_key).replace("-", "_")
            if key not in known:
                raise ConfigError(f"unknown setting {raw_key!r}", field=str(raw_key))
            if key in ("tls", "limits", "websocket"):
                changes[key] = _table(getattr(base, key), value, key)
            else:
                changes[key] = _check_type(key, value, known[key].type)
        return base.replace(**changes)

    @classmethod
    def from_toml(
        cls, path: str | os.PathLike[str], *, base: ServeConfig | None = None
    ) -> ServeConfig:
        """Read a TOML file (at most :data:`MAX_CONFIG_FILE` bytes) into a config.

        Raises:
            ConfigError: the file cannot be read, is too large, is not TOML, or is invalid
                (the message names the file).
        """
        name = os.fspath(path)
        try:
            with open(name, "rb") as fh:
                raw = fh.read(MAX_CONFIG_FILE + 1)
        except OSError as exc:
            raise ConfigError(
                f"cannot read {name}: {exc.strerror or exc}", field="config"
            ) from None
        if len(raw) > MAX_CONFIG_FILE:
            raise ConfigError(f"{name} is larger than {MAX_CONFIG_FILE} bytes", field="config")
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{name} is not valid TOML: {exc}", field="config") from None
        try:
            return cls.from_mapping(data, base=base)
        except ConfigError as exc:
            raise ConfigError(f"{name}: {exc}", field=exc.field) from None


#: Accepted Python types per annotation string (the dataclass annotations are strings).
_TYPES: dict[str, tuple[type, ...]] = {
    "bool": (bool,),
    "int": (int,),
    "float": (int, float),
    "str": (str,),
}


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    text = str(annotation)
    if "Endpoint" in text:
        return value  # parsed (and checked) by __post_init__
    if text.startswith("tuple[str"):
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{key}: expected a list of strings", field=key)
    optional = "None" in text
    if value is None and optional:
        return None
    for name, types in _TYPES.items():
        if text.startswith(name) or (name == "str" and text.startswith(("LogFormat", "LoopKind"))):
            if isinstance(value, bool) and name != "bool":
                break
            if isinstance(value, types):
                return float(value) if name == "float" else value  # type: ignore[arg-type]
            break
    else:
        return value
    raise ConfigError(f"{key}: expected {text.replace(' | None', '')}, got {value!r}", field=key)


def _table(base: Any, value: Any, key: str) -> Any:
    if isinstance(value, TLSConfig | Limits | WebSocketSettings):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a table", field=key)
    fields = {f.name: f for f in dataclasses.fields(base)}
    changes = {}
    for raw, item in value.items():
        name = str(raw).replace("-", "_")
        if name not in fields:
            raise ConfigError(f"unknown setting {key}.{raw}", field=f"{key}.{raw}")
        changes[name] = _check_type(f"{key}.{name}", item, fields[name].type)
    try:
        return dataclasses.replace(base, **changes)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}", field=key) from None
