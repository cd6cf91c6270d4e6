"""Token authentication and roles: a TOML users file of scrypt-hashed tokens.

A users file maps user names to salted hashes of their tokens, gives users roles, and
restricts rooms to listed users::

    # wirecat users file (make entries with: wirecat users add FILE NAME)
    [users.ann]
    token = "$scrypt$ln=14,r=8,p=1$pGEi3l0Cyc4XSn0nQ5KMXg$0m1oZ..."
    roles = ["admin"]

    [users.bob]
    token = "$scrypt$ln=14,r=8,p=1$..."

    [rooms."#ops"]
    members = ["ann", "bob"]

Tokens are never stored: only ``$scrypt$ln=LOG2_N,r=R,p=P$SALT$HASH`` strings in the PHC
string format (salt and hash in unpadded standard base64), made by :func:`hash_token` with
:func:`hashlib.scrypt` (RFC 7914), a 16-byte random salt and a 32-byte key. Verification
recomputes the key and compares with :func:`hmac.compare_digest` (constant time); an unknown
user is checked against a dummy hash of the same cost, so the time taken does not tell
whether a name exists. One check costs about 16 MiB and tens of milliseconds of CPU with the
default ``ln=14``, so servers run it off the event loop (:meth:`Users.averify`), a few at a
time, and count failures per source (:class:`AuthFailures`).

Roles: ``admin`` may kick members and close rooms. A room listed under ``[rooms]`` admits
only its ``members`` (and admins).

mTLS: on a listener that requires client certificates (``serve --client-ca``), a verified
certificate whose subject commonName is a user's name authenticates as that user without a
token.

Limits checked before anything is allocated: the file is at most :data:`MAX_FILE` bytes, a
token at most :data:`MAX_TOKEN` bytes, and hash costs stay within bounds a server can afford
(``ln`` 10-20, ``r`` 1-16, ``p`` 1-4).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import tomlkit
import tomlkit.exceptions

from .errors import UsersFileError
from .protocols import MAX_TOKEN
from .runtime.limits import KeyedRateLimiter

T = TypeVar("T")

__all__ = [
    "MAX_FILE",
    "MAX_TOKEN",
    "ROLES",
    "AuthFailures",
    "User",
    "Users",
    "UsersFileError",
    "add_user",
    "audit_login",
    "hash_token",
    "new_token",
    "remove_user",
    "reset_user",
    "verify_token",
]

#: The largest users file read, in bytes.
MAX_FILE: Final = 1024 * 1024
#: The roles a user may have.
ROLES: Final = frozenset({"admin"})
#: Default scrypt cost: N = 2**14, r = 8, p = 1 (16 MiB, as recommended for interactive logins).
DEFAULT_LOG_N: Final = 14

_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,23}")  # = a chat nick
_ROOM_RE: Final = re.compile(r"#[A-Za-z0-9_-]{1,32}")
_HASH_RE: Final = re.compile(
    r"\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d)\$([A-Za-z0-9+/]{16,64})\$([A-Za-z0-9+/]{16,128})"
)
_KEY_LEN: Final = 32
_SALT_LEN: Final = 16


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(token: bytes, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    n = 1 << log_n
    return hashlib.scrypt(
        token, salt=salt, n=n, r=r, p=p, maxmem=128 * r * n * p + (1 << 20), dklen=_KEY_LEN
    )


def new_token() -> str:
    """Return a new random token: 32 bytes from :mod:`secrets`, URL-safe base64 (43 chars)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str, *, log_n: int = DEFAULT_LOG_N, r: int = 8, p: int = 1) -> str:
    """Hash ``token`` for a users file: ``$scrypt$ln=..,r=..,p=..$SALT$HASH``.

    Args:
        token: the secret (str; at most :data:`MAX_TOKEN` bytes of UTF-8).
        log_n: log2 of scrypt's CPU/memory cost N (10-20).
        r: block size (1-16). p: parallelism (1-4).

    Raises:
        ValueError: an empty or over-long token, or a cost out of bounds.
    """
    raw = token.encode()
    if not raw or len(raw) > MAX_TOKEN:
        raise ValueError(f"a token must be 1-{MAX_TOKEN} bytes")
    _check_cost(log_n, r, p)
    salt = os.urandom(_SALT_LEN)
    return f"$scrypt$ln={log_n},r={r},p={p}${_b64(salt)}${_b64(_scrypt(raw, salt, log_n, r, p))}"


def _check_cost(log_n: int, r: int, p: int) -> None:
    if not (10 <= log_n <= 20 and 1 <= r <= 16 and 1 <= p <= 4):
        raise ValueError(f"scrypt cost out of bounds (ln={log_n}, r={r}, p={p})")


@dataclass(frozen=True, slots=True)
class _Hash:
    log_n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    @classmethod
    def parse(cls, text: str) -> _Hash:
        m = _HASH_RE.fullmatch(text)
        if m is None:
            raise ValueError("not a '$scrypt$ln=N,r=R,p=P$SALT$HASH' string")
        log_n, r, p = int(m[1]), int(m[2]), int(m[3])
        _check_cost(log_n, r, p)
        try:
            salt, key = _unb64(m[4]), _unb64(m[5])
        except (binascii.Error, ValueError):
            raise ValueError("bad base64 in the salt or hash") from None
        return cls(log_n, r, p, salt, key)

    def matches(self, token: bytes) -> bool:
        candidate = _scrypt(token, self.salt, self.log_n, self.r, self.p)
        return hmac.compare_digest(candidate[: len(self.key)], self.key) and len(self.key) > 0


def verify_token(token: str, hashed: str) -> bool:
    """Return whether ``token`` matches ``hashed`` (from :func:`hash_token`), in constant time.

    A token over :data:`MAX_TOKEN` bytes never matches (and is not hashed).

    Raises:
        ValueError: ``hashed`` is malformed.
    """
    parsed = _Hash.parse(hashed)
    raw = token.encode()
    return 0 < len(raw) <= MAX_TOKEN and parsed.matches(raw)


@dataclass(frozen=True, slots=True)
class User:
    """An authenticated identity.

    Attributes:
        name: the user name (also the chat nick it owns).
        roles: e.g. ``{"admin"}``.
    """

    name: str
    roles: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        """Whether this user has the ``admin`` role."""
        return "admin" in self.roles


@dataclass(frozen=True, slots=True)
class _Entry:
    user: User
    hash: _Hash


@dataclass(slots=True)
class Users:
    """The users, roles and restricted rooms of a users file.

    Build one with :meth:`load` (from a path) or :meth:`parse` (from TOML text). Names are
    matched case-insensitively, like chat nicks.

    Attributes:
        rooms: restricted room name -> the user names (casefolded) allowed in it.
        max_concurrent: token checks run at once by :meth:`averify`; the others wait.
    """

    _entries: dict[str, _Entry] = field(default_factory=dict)
    rooms: dict[str, frozenset[str]] = field(default_factory=dict)
    max_concurrent: int = 2
    _dummy: _Hash | None = None
    _sem: asyncio.Semaphore | None = None

    # -- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike[str], *, insecure_ok: bool = False) -> Users:
        """Read a users file, refusing one that others could read or change.

        The file is opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked with ``fstat`` on the
        open descriptor (no race between check and read): anything but a regular file (a
        FIFO, which would hang a blocking open, a directory, a device) is refused, and so,
        like OpenSSH's ``StrictModes``, is a file that is world-readable (its hashes would
        be open to offline guessing), group- or world-writable, owned by another user than
        the reader or root, or a symbolic link. ``insecure_ok`` accepts those (a symbolic
        link is then followed); it never accepts a file that is not regular.

        Args:
            path: the users file.
            insecure_ok: skip the mode, owner and symbolic-link checks.

        Raises:
            UsersFileError: unreadable, not a regular file, unsafe permissions (the message
                names the mode and the fix, ``chmod 600``), larger than :data:`MAX_FILE`, or
                malformed.
        """
        data = _read_private(path, insecure_ok=insecure_ok)
        try:
            return cls.parse(data.decode("utf-8"), source=str(path))
        except UnicodeDecodeError:
            raise UsersFileError(f"users file {path} is not UTF-8") from None

    @classmethod
    def parse(cls, text: str, *, source: str = "users file") -> Users:
        """Parse users-file TOML (see the module docstring).

        Raises:
            UsersFileError: bad TOML, unknown keys, bad names, roles, hashes or rooms.
        """
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UsersFileError(f"{source}: {exc}") from None
        users = cls()
        _only_keys(doc, {"users", "rooms"}, source)
        for name, spec in _table(doc, "users", source).items():
            where = f"{source}: [users.{name}]"
            if not _NAME_RE.fullmatch(name):
                raise UsersFileError(
                    f"{where}: a name is a letter or _ then 0-23 of A-Z a-z 0-9 _ -"
                )
            if not isinstance(spec, dict):
                raise UsersFileError(f"{where}: expected a table")
            _only_keys(spec, {"token", "roles"}, where)
            token = spec.get("token")
            if not isinstance(token, str):
                raise UsersFileError(f'{where}: token = "$scrypt$..." is required')
            try:
                hashed = _Hash.parse(token)
            except ValueError as exc:
                raise UsersFileError(f"{where}: token: {exc}") from None
            roles = spec.get("roles", [])
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                raise UsersFileError(f"{where}: roles must be a list of strings")
            if unknown := set(roles) - ROLES:
                raise UsersFileError(f"{where}: unknown roles {sorted(unknown)} (known: admin)")
            key = name.casefold()
            if key in users._entries:
                raise UsersFileError(f"{where}: the name is given twice (case-insensitively)")
            users._entries[key] = _Entry(User(name, frozenset(roles)), hashed)
        for room, spec in _table(doc, "rooms", source).items():
            where = f'{source}: [rooms."{room}"]'
            if not _ROOM_RE.fullmatch(room):
                raise UsersFileError(f"{where}: a room is # then 1-32 of A-Z a-z 0-9 _ -")
            if not isinstance(spec, dict):
                raise UsersFileError(f"{where}: expected a table")
            _only_keys(spec, {"members"}, where)
            members = spec.get("members")
            if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
                raise UsersFileError(f'{where}: members = ["name", ...] is required')
            if unknown := {m for m in members if m.casefold() not in users._entries}:
                raise UsersFileError(f"{where}: members not in [users]: {sorted(unknown)}")
            users.rooms[room] = frozenset(m.casefold() for m in members)
        return users

    # -- queries -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` (case-insensitive) is a user: that nick is owned."""
        return isinstance(name, str) and name.casefold() in self._entries

    def get(self, name: str) -> User | None:
        """The user called ``name`` (case-insensitive), without checking anything.

        For identities proven otherwise, e.g. the subject of a verified client certificate.
        """
        entry = self._entries.get(name.casefold())
        return entry.user if entry is not None else None

    def users(self) -> list[User]:
        """The users, in file order."""
        return [e.user for e in self._entries.values()]

    def may_join(self, user: User | None, room: str) -> bool:
        """Whether ``user`` (``None``: a guest) may be in ``room``."""
        allowed = self.rooms.get(room)
        if allowed is None:
            return True
        return user is not None and (user.is_admin or user.name.casefold() in allowed)

    def verify(self, name: str, token: str) -> User | None:
        """Check ``token`` for ``name``; return the :class:`User`, or ``None`` (CPU-bound).

        Takes about as long for an unknown name as for a known one.
        """
        entry = self._entries.get(name.casefold())
        raw = token.encode("utf-8", "replace")
        if not 0 < len(raw) <= MAX_TOKEN:
            return None
        if entry is None:
            self._dummy_hash().matches(raw)
            return None
        return entry.user if entry.hash.matches(raw) else None

    async def averify(self, name: str, token: str) -> User | None:
        """:meth:`verify` in a worker thread, at most :attr:`max_concurrent` at once."""
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_concurrent)
        async with self._sem:
            return await asyncio.get_running_loop().run_in_executor(None, self.verify, name, token)

    def _dummy_hash(self) -> _Hash:
        if self._dummy is None:
            costs = [(e.hash.log_n, e.hash.r, e.hash.p) for e in self._entries.values()]
            log_n, r, p = max(costs) if costs else (DEFAULT_LOG_N, 8, 1)
            self._dummy = _Hash(log_n, r, p, os.urandom(_SALT_LEN), os.urandom(_KEY_LEN))
        return self._dummy


#: Mode bits that make a users file unsafe: group or world write, world read.
_UNSAFE_MODE: Final = stat.S_IWGRP | stat.S_IWOTH | stat.S_IROTH

_KINDS: Final = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _read_private(path: str | os.PathLike[str], *, insecure_ok: bool) -> bytes:
    """The bytes of the users file at ``path`` (see :meth:`Users.load` for the checks)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if insecure_ok else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not insecure_ok:
            raise UsersFileError(
                f"users file {path} is a symbolic link: give the file it points to "
                "(or accept it with users_insecure_ok)"
            ) from None
        if exc.errno == errno.ENXIO:  # a Unix socket
            raise UsersFileError(f"users file {path} is a socket, not a regular file") from None
        raise UsersFileError(f"cannot read users file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _KINDS.get(stat.S_IFMT(st.st_mode), "a special file")
            raise UsersFileError(f"users file {path} is {kind}, not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if not insecure_ok and mode & _UNSAFE_MODE:
            risks = []
            if mode & (stat.S_IWGRP | stat.S_IWOTH):
                risks.append("change it")
            if mode & stat.S_IROTH:
                risks.append("read its token hashes")
            raise UsersFileError(
                f"users file {path} has mode {mode:04o}: others can {' and '.join(risks)}; "
                f"run 'chmod 600 {path}' (or accept it with users_insecure_ok)"
            )
        if not insecure_ok and st.st_uid not in (0, os.geteuid()):
            raise UsersFileError(
                f"users file {path} is owned by uid {st.st_uid}, neither this user nor root: "
                f"run 'chown {os.geteuid()} {path}' (or accept it with users_insecure_ok)"
            )
        if st.st_size > MAX_FILE:
            raise UsersFileError(f"users file {path} is larger than {MAX_FILE} bytes")
        chunks, left = [], MAX_FILE + 1
        while left and (chunk := os.read(fd, min(left, 1 << 16))):
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise UsersFileError(f"cannot read users file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_FILE:  # it grew after fstat
        raise UsersFileError(f"users file {path} is larger than {MAX_FILE} bytes")
    return data


def _table(doc: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise UsersFileError(f"{source}: [{key}] must be a table")
    return value


def _only_keys(table: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    if unknown := set(table) - set(allowed):
        raise UsersFileError(f"{where}: unknown keys {sorted(unknown)}")


def audit_login(
    log: logging.Logger | logging.LoggerAdapter[Any],
    metrics: MutableMapping[str, int],
    user: str,
    *,
    refused: str | None = None,
    how: str = "token",
) -> None:
    """Count and log one login (never the token): ``auth_ok``, or ``auth_failures`` with the
    ``refused`` reason. Log records carry ``event`` (``auth`` / ``auth_failed``) and ``user``."""
    if refused is None:
        metrics["auth_ok"] += 1
        what = "authenticated" if how == "token" else f"authenticated by {how}"
        log.info(what, extra={"event": "auth", "user": user})
    else:
        metrics["auth_failures"] += 1
        log.warning(
            "login refused: %s",
            refused,
            extra={"event": "auth_failed", "user": user, "reason": "auth_failed"},
        )


class AuthFailures:
    """Failed logins per source address and per account, counted *before* the check.

    Each verification goes through :meth:`begin` (before scrypt runs) and :meth:`end`
    (after). ``begin`` counts the attempt as a failure up front, so parallel guesses cannot
    slip past the count while their checks run, and refuses without checking when:

    - the source has no failures left (a token bucket each: ``burst``, then ``rate`` per s;
      default 5, then 1 per 10 s: 6 guesses in the first minute, 6 a minute after);
    - the source already has a check in flight (one at a time per address);
    - the account has no attempts left (``account_burst``, then ``account_rate`` per s;
      default 20, then 1 per s): guesses spread over many addresses are slowed too, yet a
      real user is never locked out for more than about a second (fail2ban-style: a
      penalty that refills, never a hard lock);
    - ``max_pending`` checks are already running or queued (like OpenSSH's MaxStartups).

    A successful login gives back the failure ``begin`` counted. Not thread-safe; one per
    event loop.
    """

    def __init__(
        self,
        rate: float = 0.1,
        burst: int = 5,
        *,
        account_rate: float = 1.0,
        account_burst: int = 20,
        max_pending: int = 64,
    ) -> None:
        self._limiter = KeyedRateLimiter(rate, burst)
        self._accounts = KeyedRateLimiter(account_rate, account_burst)
        self._inflight: set[str] = set()
        self.max_pending = max_pending

    @property
    def limits(self) -> tuple[float, float, float, float]:
        """``(rate, burst, account_rate, account_burst)``: what a shared counter (the chat's
        Redis hub, across processes) applies too."""
        a, b = self._limiter, self._accounts
        return a.rate, a.burst, b.rate, b.burst

    def begin(self, source: str, account: str, now: float) -> str | None:
        """Take a verification slot for ``account`` from ``source``; return ``None`` to go
        on with the check, else the reason to refuse it unchecked."""
        if len(self._inflight) >= self.max_pending:
            return "too many logins in progress: try later"
        if source in self._inflight:
            return "a login from your address is already being checked: wait for it"
        if not self._limiter.allow(source, now):
            return "too many failed logins from your address: try later"
        if not self._accounts.allow(account.casefold(), now):
            self._limiter.refund(source)
            return "too many failed logins for this user: try again in a moment"
        self._inflight.add(source)
        return None

    def end(self, source: str, account: str, ok: bool) -> None:
        """Release the slot of :meth:`begin`; a success gives back the counted failure."""
        self._inflight.discard(source)
        if ok:
            self._limiter.refund(source)
            self._accounts.refund(account.casefold())

    def blocked(self, source: str, now: float) -> bool:
        """Whether ``source`` has no failures left (check before verifying)."""
        return self._limiter.exhausted(source, now)

    def failed(self, source: str, now: float) -> None:
        """Record a failed login from ``source`` (``now``: monotonic seconds)."""
        self._limiter.allow(source, now)


def _write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace the file at ``path`` with ``text`` atomically (a temporary file in the same
    directory, fsynced, renamed over it, the directory fsynced): a crash leaves the old file
    or the new one, never a truncated one. The file is mode 0600."""
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=".users-", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_for_edit(path: str | os.PathLike[str]) -> tuple[Users, str]:
    """The users file at ``path``, parsed, and its text, for an edit. Its mode and owner are
    not checked (the edit writes it back with mode 0600); a file that is not regular is
    refused, as by :meth:`Users.load`.

    Raises:
        UsersFileError: unreadable, not a regular file, too large, or malformed.
    """
    data = _read_private(path, insecure_ok=True)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsersFileError(f"users file {path} is not UTF-8") from None
    return Users.parse(text, source=str(path)), text


def _edit(path: str | os.PathLike[str], change: Callable[[tomlkit.TOMLDocument], T]) -> T:
    """Apply ``change`` to the users file as a ``tomlkit`` document (comments, order and
    formatting kept), check that the result is a valid users file, write it atomically."""
    existing = ""
    if os.path.lexists(path):
        existing = _read_for_edit(path)[1]  # refuse to edit a malformed (or oversized) file
    try:
        doc = tomlkit.parse(existing)
    except tomlkit.exceptions.TOMLKitError as exc:
        raise UsersFileError(f"{path}: not valid TOML: {exc}") from None
    result = change(doc)
    text = tomlkit.dumps(doc)
    Users.parse(text, source=str(path))
    _write_atomic(path, text)
    return result


def _users_table(doc: tomlkit.TOMLDocument) -> Any:
    users = doc.get("users")
    if users is None:
        users = tomlkit.table(is_super_table=True)
        doc.add("users", users)
    return users


def _key_of(users: Any, name: str) -> str | None:
    return next((k for k in users if str(k).casefold() == name.casefold()), None)


def add_user(
    path: str | os.PathLike[str],
    name: str,
    *,
    token: str | None = None,
    roles: Iterable[str] = (),
    log_n: int = DEFAULT_LOG_N,
) -> str:
    """Add ``name`` to the users file at ``path`` (created with mode 0600); return its token.

    The file is edited with ``tomlkit`` (comments and order kept) and replaced atomically;
    the result is parsed before it is written, so a file never ends up malformed.

    Args:
        token: the token to store (``None``: a new random one from :func:`new_token`).
        roles: e.g. ``["admin"]``.

    Raises:
        UsersFileError: the name exists, is invalid, a role is unknown, or the existing file
            is malformed.
        OSError: the file cannot be written.
    """
    if not _NAME_RE.fullmatch(name):
        raise UsersFileError(f"invalid user name {name!r}")
    roles = sorted(set(roles))
    if unknown := set(roles) - ROLES:
        raise UsersFileError(f"unknown roles {sorted(unknown)} (known: admin)")
    token = token if token is not None else new_token()
    hashed = hash_token(token, log_n=log_n)

    def change(doc: tomlkit.TOMLDocument) -> None:
        users = _users_table(doc)
        if _key_of(users, name) is not None:
            raise UsersFileError(f"user {name!r} exists in {path}")
        table = tomlkit.table()
        table.add("token", hashed)
        if roles:
            table.add("roles", roles)
        users.add(name, table)

    _edit(path, change)
    return token


def reset_user(
    path: str | os.PathLike[str], name: str, *, token: str | None = None, log_n: int = DEFAULT_LOG_N
) -> tuple[User, str]:
    """Give ``name`` a new token (roles kept) in one atomic edit; return the user and token.

    Raises:
        UsersFileError: no such user, or the file is malformed.
        OSError: the file cannot be written.
    """
    user = _read_for_edit(path)[0].get(name)
    if user is None:
        raise UsersFileError(f"no user {name!r} in {path}")
    token = token if token is not None else new_token()
    hashed = hash_token(token, log_n=log_n)

    def change(doc: tomlkit.TOMLDocument) -> None:
        users = _users_table(doc)
        key = _key_of(users, name)
        if key is None:
            raise UsersFileError(f"no user {name!r} in {path}")
        users[key]["token"] = hashed

    _edit(path, change)
    return user, token


_TABLE_RE: Final = re.compile(r"\s*\[\s*([^\]]*?)\s*\]\s*(#.*)?")


def remove_user(path: str | os.PathLike[str], name: str) -> User:
    """Remove ``name``'s ``[users.NAME]`` table from the users file at ``path``; return it.

    The rest of the file (comments, other tables) is kept as it is; the result is parsed
    before it is written, atomically.

    Raises:
        UsersFileError: no such user, the file is malformed, or the user is still listed in
            a restricted room (edit that room first).
        OSError: the file cannot be written.
    """
    users, text = _read_for_edit(path)
    user = users.get(name)
    if user is None:
        raise UsersFileError(f"no user {name!r} in {path}")
    in_rooms = sorted(r for r, members in users.rooms.items() if name.casefold() in members)
    if in_rooms:
        raise UsersFileError(f"{user.name} is listed in {', '.join(in_rooms)}: edit those first")

    # Line by line rather than through tomlkit: comments that head the next table (which
    # tomlkit attaches to the removed one) must stay.
    lines = text.splitlines(keepends=True)
    kept: list[str] = []
    skipping = False
    pending: list[str] = []  # comments and blanks while skipping: they may head the next table
    for line in lines:
        m = _TABLE_RE.fullmatch(line.rstrip("\r\n"))
        if m is not None:
            key = m[1].replace('"', "").replace("'", "").replace(" ", "")
            skipping = key.casefold() == f"users.{user.name}".casefold()
            if not skipping:
                kept.extend(pending)
            pending = []
        if not skipping:
            kept.append(line)
        elif not line.strip() or line.lstrip().startswith("#"):
            pending.append(line)
        else:
            pending = []  # they were inside the removed table
    text = "".join(kept)
    if user.name in Users.parse(text, source=str(path)):
        raise UsersFileError(f"cannot remove {user.name}: its table is not a plain [users.NAME]")
    _write_atomic(path, text)
    return user
