"""The wirecat file-transfer protocol (sans-I/O): stat, list, get and resumable put.

Every message is a **header**: one JSON object on one line (UTF-8, ``\\n``-terminated, at most
``max_header`` bytes, default 8 KiB), sometimes followed by raw **body** bytes whose count the
conversation fixed beforehand, and after a file body by a **trailer** line carrying the digest
of the whole file. Requests and responses strictly alternate; see ``docs/files-protocol.md``
for the wire format and the state diagram.

::

    client                                   server
    {"op":"put","name":"a.iso","size":S,"offset":O,"digest":"blake3","overwrite":false}
                                     <-      {"ok":true,"ready":true,"offset":O}
    S-O raw bytes, then {"digest":"<hex>"}
                                     <-      {"ok":true,"name":"a.iso","size":S,...}

On a server started with a users file (``serve --users``) the first request must be
``{"op":"auth","user":NAME,"token":TOKEN}``, answered ``{"ok":true,"user":NAME,"roles":[...]}``
or ``auth_failed`` (then the connection closes); any other request before it gets
``auth_required``.

Resume works like tus (https://tus.io/protocols/resumable-upload): the server keeps what it
received of an interrupted upload; ``stat`` reports it as ``partial``; the client sends a
``put`` with that ``offset``; any other offset is a ``conflict`` that changes nothing.

Both roles share one conversation state (:class:`State`) moved only through the transition
table :data:`TRANSITIONS`. A step that is not in the table raises
:class:`~wirecat.errors.LocalProtocolError` when our side attempted it and
:class:`~wirecat.errors.RemoteProtocolError` when the peer did. Framing errors from the peer
(a header over ``max_header`` bytes, invalid JSON, a negative size, out-of-turn data) are fatal:
the state becomes :attr:`State.ERROR`, in which one error response may still be sent.

Body bytes are passed through without copying: a chunk that lies wholly inside the body is
delivered as the very ``bytes`` object given to :meth:`receive_data`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from ..errors import (
    InvalidMessage,
    LimitExceeded,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from . import MAX_TOKEN
from .buffer import StreamBuffer

__all__ = [
    "DIGESTS",
    "ERROR_CODES",
    "MAX_HEADER",
    "MAX_LIST_BODY",
    "MAX_NAME",
    "PART_PREFIX",
    "TRANSITIONS",
    "AuthRequest",
    "AuthResult",
    "BodyChunk",
    "BodyEnd",
    "EndOfStream",
    "Entry",
    "ErrorResponse",
    "FilesClientProtocol",
    "FilesEvent",
    "FilesServerProtocol",
    "GetRequest",
    "GetStart",
    "ListRequest",
    "ListResult",
    "PutRequest",
    "PutResult",
    "Ready",
    "StatRequest",
    "StatResult",
    "State",
    "Trailer",
    "check_name",
]

#: Longest header or trailer line, ``\n`` included (bytes).
MAX_HEADER = 8192
#: Longest ``list`` response body a client accepts by default (bytes).
MAX_LIST_BODY = 16 * 1024 * 1024
#: Longest file name, UTF-8 encoded (bytes); each path component is at most 255 bytes.
MAX_NAME = 1024
#: Digest algorithms, in order of preference.
DIGESTS: tuple[str, ...] = ("blake3", "sha256")
#: Names starting with this prefix are reserved for the server's part files.
PART_PREFIX = ".wcpart-"
#: Error codes a server sends in ``{"ok": false, "error": CODE, "message": TEXT}``.
ERROR_CODES: frozenset[str] = frozenset(
    {
        "bad_request",  # malformed header; the connection is closed after it
        "bad_name",  # path traversal, NUL, backslash, reserved prefix
        "not_found",  # no such file (get, stat of a directory, ...)
        "exists",  # the name is taken and overwrite was not asked for
        "conflict",  # offset differs from the bytes the server holds ("offset" says how many)
        "locked",  # another client is uploading the same name right now
        "too_large",  # size above the server's max file size
        "quota",  # the upload would exceed the server's quota
        "no_space",  # the disk is full (ENOSPC/EDQUOT); the part is kept for resume
        "digest_mismatch",  # the whole-file digest differs; the upload was discarded
        "read_only",  # the server refuses uploads
        "io_error",  # another server-side I/O failure
        "shutting_down",  # the server is draining
        "auth_required",  # the server has users: send auth first
        "auth_failed",  # wrong user or token; the connection is closed after it
        "timeout",  # a header deadline or the minimum body rate was missed; closed after it
    }
)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_INT = 2**63 - 1


# -- events --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AuthRequest:
    """Client authenticates as ``user`` with ``token`` (never shown in ``repr``)."""

    user: str
    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Answer to ``auth``: the client is ``user``, with ``roles``."""

    user: str
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StatRequest:
    """Client asks about ``name``: whether it exists, its size, how much of an upload is held."""

    name: str


@dataclass(frozen=True, slots=True)
class ListRequest:
    """Client asks for the entries of directory ``path`` (``""`` is the root)."""

    path: str


@dataclass(frozen=True, slots=True)
class GetRequest:
    """Client asks for ``name`` from byte ``offset`` on, with the whole-file digest ``digest``."""

    name: str
    offset: int
    digest: str


@dataclass(frozen=True, slots=True)
class PutRequest:
    """Client offers ``size`` bytes for ``name``, starting at ``offset`` (bytes already held).

    Attributes:
        name: the target name, relative to the server's root (not yet jail-checked).
        size: total file size in bytes.
        offset: where the body starts; ``size - offset`` body bytes follow ``ready``.
        digest: the digest algorithm of the trailer (one of :data:`DIGESTS`).
        overwrite: replace an existing file of that name.
        restart: drop any bytes the server holds of an earlier upload (``offset`` is 0).
    """

    name: str
    size: int
    offset: int
    digest: str
    overwrite: bool
    restart: bool = False


@dataclass(frozen=True, slots=True)
class Ready:
    """Server accepted a put; the client now sends ``size - offset`` body bytes."""

    offset: int


@dataclass(frozen=True, slots=True)
class BodyChunk:
    """Some body bytes (``data`` is the received object itself when possible; never empty)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class BodyEnd:
    """The declared body length was received in full; a trailer line follows (file bodies)."""


@dataclass(frozen=True, slots=True)
class Trailer:
    """The whole-file digest, lowercase hex (64 characters for both algorithms)."""

    digest: str


@dataclass(frozen=True, slots=True)
class StatResult:
    """Answer to ``stat``.

    Attributes:
        name: the name asked about.
        exists: a committed file of that name exists.
        size: its size in bytes, or ``None``.
        mtime: its modification time (seconds since the epoch), or ``None``.
        partial: bytes held of an interrupted upload of that name, or ``None`` if none.
    """

    name: str
    exists: bool
    size: int | None
    mtime: float | None
    partial: int | None


@dataclass(frozen=True, slots=True)
class Entry:
    """One ``list`` entry: ``kind`` is ``"file"`` or ``"dir"``; ``size`` in bytes."""

    name: str
    kind: str
    size: int
    mtime: float


@dataclass(frozen=True, slots=True)
class ListResult:
    """Answer to ``list``: the entries of the directory, sorted by name."""

    path: str
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class GetStart:
    """Answer to ``get``: ``length`` body bytes follow (``size - offset``), then a trailer."""

    name: str
    size: int
    offset: int
    length: int
    digest: str


@dataclass(frozen=True, slots=True)
class PutResult:
    """Final answer to ``put``: the file is committed (fsynced, renamed, directory fsynced)."""

    name: str
    size: int
    digest_name: str
    digest: str


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """A refusal: ``code`` is one of :data:`ERROR_CODES`; ``offset`` is set on ``conflict``."""

    code: str
    message: str
    offset: int | None = None


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The peer half-closed. ``clean`` is False when it stopped inside a message."""

    clean: bool


FilesEvent = (
    AuthRequest
    | AuthResult
    | StatRequest
    | ListRequest
    | GetRequest
    | PutRequest
    | Ready
    | BodyChunk
    | BodyEnd
    | Trailer
    | StatResult
    | ListResult
    | GetStart
    | PutResult
    | ErrorResponse
    | EndOfStream
)


# -- the state machine ---------------------------------------------------------------------
class State(IntEnum):
    """Where one connection's conversation stands (the same for both roles)."""

    IDLE = 0  # no request outstanding; the client may send one
    AWAIT_STAT = 1  # stat sent; a stat result or an error is next
    AWAIT_LIST = 2  # list sent; a list header or an error is next
    LIST_BODY = 3  # list header received; its body (JSON lines) is flowing
    AWAIT_GET = 4  # get sent; a get header or an error is next
    DOWNLOAD = 5  # get header sent; file body flowing server -> client
    DOWNLOAD_TRAILER = 6  # file body complete; the digest trailer is next
    AWAIT_READY = 7  # put sent; ready or an error is next (no body before ready)
    UPLOAD = 8  # ready sent; file body flowing client -> server
    UPLOAD_TRAILER = 9  # body complete; the client's digest trailer is next
    AWAIT_RESULT = 10  # trailer sent; the server verifies, commits and answers
    ERROR = 11  # a fatal protocol error; one error response may still be sent
    CLOSED = 12  # nothing more may be sent or received
    AWAIT_AUTH = 13  # auth sent; an auth result or an error is next


_AWAITING = (
    State.AWAIT_STAT, State.AWAIT_LIST, State.AWAIT_GET, State.AWAIT_READY, State.AWAIT_AUTH
)  # fmt: skip

#: ``(state, step) -> next state``. Steps: requests (``auth``, ``stat``, ``list``, ``get``,
#: ``put``), responses (``auth_result``, ``stat_result``, ``list_result``, ``get_result``,
#: ``ready``, ``put_result``, ``error``), framing (``body_end``, ``trailer``), and
#: ``fatal`` / ``eof``.
TRANSITIONS: dict[tuple[State, str], State] = {
    (State.IDLE, "auth"): State.AWAIT_AUTH,
    (State.AWAIT_AUTH, "auth_result"): State.IDLE,
    (State.IDLE, "stat"): State.AWAIT_STAT,
    (State.IDLE, "list"): State.AWAIT_LIST,
    (State.IDLE, "get"): State.AWAIT_GET,
    (State.IDLE, "put"): State.AWAIT_READY,
    (State.AWAIT_STAT, "stat_result"): State.IDLE,
    (State.AWAIT_LIST, "list_result"): State.LIST_BODY,
    (State.LIST_BODY, "body_end"): State.IDLE,
    (State.AWAIT_GET, "get_result"): State.DOWNLOAD,
    (State.DOWNLOAD, "body_end"): State.DOWNLOAD_TRAILER,
    (State.DOWNLOAD_TRAILER, "trailer"): State.IDLE,
    (State.AWAIT_READY, "ready"): State.UPLOAD,
    (State.UPLOAD, "body_end"): State.UPLOAD_TRAILER,
    (State.UPLOAD_TRAILER, "trailer"): State.AWAIT_RESULT,
    (State.AWAIT_RESULT, "put_result"): State.IDLE,
    **{(s, "error"): State.IDLE for s in (*_AWAITING, State.AWAIT_RESULT)},
    # an error during an upload (disk full, shutdown) ends the connection
    (State.UPLOAD, "error"): State.CLOSED,
    (State.UPLOAD_TRAILER, "error"): State.CLOSED,
    (State.ERROR, "error"): State.CLOSED,
    **{(s, "fatal"): State.ERROR for s in State if s not in (State.ERROR, State.CLOSED)},
    **{(s, "eof"): State.CLOSED for s in State},
}


def check_name(name: str, *, allow_empty: bool = False) -> str:
    """Validate a file name sent by a peer and return it in canonical form.

    A name is a relative POSIX path: components separated by ``/``, none empty, ``.``,
    ``..`` or starting with :data:`PART_PREFIX`; no NUL, no backslash, no control characters;
    at most :data:`MAX_NAME` bytes as UTF-8 and 255 bytes per component. This is syntax only;
    the store additionally refuses symlinks on the way (see :mod:`wirecat.files.store`).

    Args:
        name: the name as received (str).
        allow_empty: accept ``""`` (the root directory, for ``list``).

    Returns:
        The name unchanged (it is already canonical when valid).

    Raises:
        ValueError: the name is not acceptable; the message says why.
    """
    if name == "" and allow_empty:
        return name
    if not name:
        raise ValueError("empty name")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME:
        raise ValueError(f"name longer than {MAX_NAME} bytes")
    if "\x00" in name:
        raise ValueError("name contains NUL")
    if "\\" in name:
        raise ValueError("name contains a backslash")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError("name contains a control character")
    if name.startswith("/"):
        raise ValueError("absolute names are not allowed")
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"name component {part!r} is not allowed")
        if len(part.encode("utf-8", "surrogatepass")) > 255:
            raise ValueError("name component longer than 255 bytes")
        if part.startswith(PART_PREFIX):
            raise ValueError(f"names starting with {PART_PREFIX!r} are reserved")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("name is not valid Unicode") from None
    return name


# -- field helpers -------------------------------------------------------------------------
def _int(obj: dict[str, Any], key: str, *, default: int | None = None) -> int:
    value = obj.get(key, default)
    if value is None:
        raise InvalidMessage(f"{key!r} is required")
    if type(value) is not int or not 0 <= value <= _MAX_INT:
        raise InvalidMessage(f"{key!r} must be an integer from 0 to 2**63-1, got {value!r}")
    return value


def _opt_int(obj: dict[str, Any], key: str) -> int | None:
    return None if obj.get(key) is None else _int(obj, key)


def _str(obj: dict[str, Any], key: str, *, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise InvalidMessage(f"{key!r} must be a string, got {value!r}")
    return value


def _bool(obj: dict[str, Any], key: str, default: bool = False) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise InvalidMessage(f"{key!r} must be true or false, got {value!r}")
    return value


def _float(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidMessage(f"{key!r} must be a number, got {value!r}")
    return float(value)


def _digest_name(obj: dict[str, Any]) -> str:
    algo = _str(obj, "digest", default="blake3")
    if algo not in DIGESTS:
        raise InvalidMessage(f"unknown digest {algo!r}; expected one of {', '.join(DIGESTS)}")
    return algo


def _hex(obj: dict[str, Any]) -> str:
    value = _str(obj, "digest")
    if not _HEX64.fullmatch(value):
        raise InvalidMessage("digest must be 64 lowercase hex characters")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _decode(line: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"header is not valid UTF-8: {exc.reason}") from None
    except ValueError as exc:  # JSONDecodeError, and ints over the str->int digit limit
        raise InvalidMessage(f"header is not valid JSON: {exc}") from None
    except RecursionError:  # e.g. 8000 "[": nested deeper than the parser goes
        raise InvalidMessage("header is not valid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise InvalidMessage("header must be a JSON object")
    return obj


def _encode(obj: dict[str, Any], max_header: int) -> bytes:
    line = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"
    if len(line) > max_header:
        raise LocalProtocolError(f"header of {len(line)} bytes exceeds max_header={max_header}")
    return line


# -- the shared core -----------------------------------------------------------------------
class _FilesProtocol:
    """State, buffering and body accounting shared by both roles."""

    _peer_body_states: frozenset[State] = frozenset()
    _peer_line_states: frozenset[State] = frozenset()

    def __init__(self, *, max_header: int = MAX_HEADER) -> None:
        if max_header < 64:
            raise ValueError("max_header must be >= 64 bytes")
        self.max_header = max_header
        self._state = State.IDLE
        self._buffer = StreamBuffer()
        self._events: list[FilesEvent] = []
        self._out: list[bytes] = []
        self._body_left = 0  # bytes of the current body not yet received / sent
        self._deferred: ProtocolError | None = None
        self._eof = False

    @property
    def state(self) -> State:
        """The conversation's current :class:`State`."""
        return self._state

    @property
    def buffered(self) -> int:
        """Bytes received but not yet parsed into events (a partial line, early data)."""
        return len(self._buffer)

    @property
    def body_left(self) -> int:
        """Bytes of the current body still to be received or sent (0 outside a body)."""
        return self._body_left

    def _step(self, step: str, *, local: bool) -> None:
        new = TRANSITIONS.get((self._state, step))
        if new is None:
            who = "cannot" if local else "peer cannot"
            msg = f"{who} {step.replace('_', ' ')} in state {self._state.name}"
            if local:
                raise LocalProtocolError(msg)
            self._state = State.ERROR
            raise RemoteProtocolError(msg)
        self._state = new

    def _fail(self, exc: ProtocolError) -> ProtocolError:
        if self._state not in (State.ERROR, State.CLOSED):
            self._state = State.ERROR
        return exc

    # -- input ---------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the peer; any split of the stream gives the same events.

        Raises:
            RemoteProtocolError: the peer broke the protocol (the state becomes ``ERROR``).
            InvalidMessage: a header is not a well-formed JSON object of the expected shape.
            LimitExceeded: a header over ``max_header`` bytes, or out-of-turn data beyond it.
            LocalProtocolError: called after :meth:`receive_eof`.
        """
        if self._eof:
            raise LocalProtocolError("receive_data() after receive_eof()")
        self._raise_deferred()
        if not data or self._state is State.CLOSED:
            return
        left = self._body_left
        if left and self._state in self._peer_body_states and not len(self._buffer):
            # fast path: body bytes straight through, no copy unless the body ends inside
            if len(data) <= left:
                self._body_left = left - len(data)
                self._on_body(data)
                if self._body_left == 0:
                    self._end_body()
                return
            self._body_left = 0
            self._on_body(data[:left])
            self._end_body()
            data = data[left:]
        self._buffer.feed(data)
        self._parse()

    def body_received(self, n: int) -> None:
        """Record ``n`` body bytes the caller read from the peer itself (e.g. on a thread).

        The counterpart of :meth:`body_sent` for the peer's body: only while that body is
        flowing and nothing is buffered here (drain :meth:`events_received` first, and read
        no further than :attr:`body_left`). Emits :class:`BodyEnd` when the body is complete.

        Raises:
            LocalProtocolError: not inside the peer's body, bytes still buffered here, or
                more bytes than the body has left.
        """
        if n == 0:
            return
        if self._state not in self._peer_body_states or len(self._buffer):
            raise LocalProtocolError(f"cannot take body bytes in state {self._state.name}")
        if n < 0 or n > self._body_left:
            raise LocalProtocolError(f"body overrun: {n} bytes, {self._body_left} left")
        self._body_left -= n
        if self._body_left == 0:
            self._end_body()

    def receive_eof(self) -> None:
        """Feed the end of the peer's stream; emits :class:`EndOfStream`. Idempotent.

        Never raises: a peer error still held from pipelined input stays in
        :meth:`take_error`.
        """
        if self._eof:
            return
        self._eof = True
        clean = self._state is State.IDLE and not len(self._buffer)
        self._state = State.CLOSED
        self._events.append(EndOfStream(clean))

    def events_received(self) -> list[FilesEvent]:
        """Return and clear the events parsed so far."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[bytes]:
        """Return and clear the chunks to write, in order."""
        out, self._out = self._out, []
        return out

    def _parse(self) -> None:
        buf = self._buffer
        try:
            while len(buf) and self._state is not State.CLOSED:
                state = self._state
                if state in self._peer_body_states and self._body_left:
                    chunk = buf.read_some(self._body_left)
                    self._body_left -= len(chunk)
                    self._on_body(chunk)
                    if self._body_left == 0:
                        self._end_body()
                elif state in self._peer_line_states:
                    line = buf.read_line(self.max_header)
                    if line is None:
                        return
                    if line.strip() == b"" and state is State.IDLE:
                        continue  # tolerate blank lines between requests (nc users)
                    self._on_line(_decode(line))
                elif state is State.ERROR:
                    buf.read_some()  # the conversation is over; drop input
                else:
                    if len(buf) > self.max_header:
                        raise LimitExceeded(
                            f"peer sent {len(buf)} bytes out of turn in state {state.name}",
                            limit=self.max_header,
                        )
                    return
        except ProtocolError as exc:
            raise self._fail(exc) from None

    def _on_body(self, data: bytes) -> None:
        self._events.append(BodyChunk(data))

    def _end_body(self) -> None:
        self._step("body_end", local=False)
        self._events.append(BodyEnd())

    def _on_line(self, obj: dict[str, Any]) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- output helpers ------------------------------------------------------------------
    def _send_header(self, obj: dict[str, Any]) -> None:
        self._out.append(_encode(obj, self.max_header))

    def _after_local_step(self) -> None:
        # Pipelined peer input is parsed now, but a peer's error must not surface from our
        # own send_*() call: keep it for the next receive_*() and for take_error().
        if len(self._buffer) and self._deferred is None:
            try:
                self._parse()
            except ProtocolError as exc:
                if isinstance(exc, LocalProtocolError):
                    raise
                self._deferred = exc

    def take_error(self) -> ProtocolError | None:
        """Return (and clear) a peer error found while a ``send_*`` call parsed pipelined
        input; the caller should answer it as if ``receive_data`` had raised it."""
        exc, self._deferred = self._deferred, None
        return exc

    def _raise_deferred(self) -> None:
        if self._deferred is not None:
            exc, self._deferred = self._deferred, None
            raise exc

    def send_body(self, data: bytes) -> None:
        """Queue body bytes (no copy). The total must equal the declared body length.

        Raises:
            LocalProtocolError: not in a body we send, or more bytes than declared.
        """
        if not data:
            return
        if self._state not in self._local_body_states():
            raise LocalProtocolError(f"cannot send body in state {self._state.name}")
        if len(data) > self._body_left:
            raise LocalProtocolError(
                f"body overrun: {len(data)} bytes given, {self._body_left} left to send"
            )
        self._out.append(data)
        self.body_sent(len(data))

    def body_sent(self, n: int) -> None:
        """Record ``n`` body bytes written by the caller itself (e.g. with ``sendfile``).

        Flush :meth:`data_to_send` before writing them so the order on the wire is kept.

        Raises:
            LocalProtocolError: not in a body we send, or more bytes than declared.
        """
        if n == 0:
            return
        if self._state not in self._local_body_states():
            raise LocalProtocolError(f"cannot send body in state {self._state.name}")
        if n < 0 or n > self._body_left:
            raise LocalProtocolError(f"body overrun: {n} bytes, {self._body_left} left")
        self._body_left -= n
        if self._body_left == 0:
            self._step("body_end", local=True)

    def _local_body_states(self) -> tuple[State, ...]:  # pragma: no cover - overridden
        return ()

    def send_trailer(self, digest: str) -> None:
        """Queue the trailer with the whole-file ``digest`` (64 lowercase hex characters).

        Raises:
            LocalProtocolError: the body is not complete, or ``digest`` is malformed.
        """
        if not _HEX64.fullmatch(digest):
            raise LocalProtocolError("digest must be 64 lowercase hex characters")
        if self._state not in self._local_trailer_states():
            raise LocalProtocolError(f"cannot send trailer in state {self._state.name}")
        self._step("trailer", local=True)
        self._send_header({"digest": digest})
        self._after_local_step()

    def _local_trailer_states(self) -> tuple[State, ...]:  # pragma: no cover - overridden
        return ()


# -- server role ---------------------------------------------------------------------------
class FilesServerProtocol(_FilesProtocol):
    """Server side: parses requests, produces responses.

    Args:
        max_header: the longest request header or trailer line, ``\\n`` included (bytes).

    Events: :class:`StatRequest`, :class:`ListRequest`, :class:`GetRequest`,
    :class:`PutRequest`, then for an accepted put :class:`BodyChunk` ... :class:`BodyEnd`
    :class:`Trailer`; and :class:`EndOfStream`.
    """

    _peer_body_states = frozenset({State.UPLOAD})
    _peer_line_states = frozenset({State.IDLE, State.UPLOAD_TRAILER})

    def __init__(self, *, max_header: int = MAX_HEADER) -> None:
        super().__init__(max_header=max_header)
        self._put: PutRequest | None = None

    def _local_body_states(self) -> tuple[State, ...]:
        return (State.DOWNLOAD,)

    def _local_trailer_states(self) -> tuple[State, ...]:
        return (State.DOWNLOAD_TRAILER,)

    def _on_line(self, obj: dict[str, Any]) -> None:
        if self._state is State.UPLOAD_TRAILER:
            if set(obj) - {"digest"} or "digest" not in obj:
                raise InvalidMessage("expected the digest trailer after the body")
            digest = _hex(obj)
            self._step("trailer", local=False)
            self._events.append(Trailer(digest))
            return
        op = obj.get("op")
        event: FilesEvent
        if op == "auth":
            token = _str(obj, "token")
            if not 0 < len(token.encode(errors="replace")) <= MAX_TOKEN:
                raise InvalidMessage(f"token must be 1-{MAX_TOKEN} bytes")
            user = _str(obj, "user")
            if not 0 < len(user) <= 64:
                raise InvalidMessage("user must be 1-64 characters")
            event = AuthRequest(user, token)
        elif op == "stat":
            event = StatRequest(_str(obj, "name"))
        elif op == "list":
            event = ListRequest(_str(obj, "path", default=""))
        elif op == "get":
            event = GetRequest(_str(obj, "name"), _int(obj, "offset", default=0), _digest_name(obj))
        elif op == "put":
            size = _int(obj, "size")
            offset = _int(obj, "offset", default=0)
            if offset > size:
                raise InvalidMessage(f"offset {offset} is beyond size {size}")
            restart = _bool(obj, "restart")
            if restart and offset:
                raise InvalidMessage("restart needs offset 0")
            event = PutRequest(
                _str(obj, "name"),
                size,
                offset,
                _digest_name(obj),
                _bool(obj, "overwrite"),
                restart,
            )
            self._put = event
        else:
            raise InvalidMessage(f"unknown op {op!r}; expected auth, stat, list, get or put")
        self._step(str(op), local=False)
        self._events.append(event)

    # -- responses -----------------------------------------------------------------------
    def send_error(self, code: str, message: str, *, offset: int | None = None) -> None:
        """Refuse the pending request (or report a fatal error) with ``code`` and ``message``.

        In :attr:`State.ERROR`, :attr:`State.UPLOAD` and :attr:`State.UPLOAD_TRAILER` this
        ends the conversation (:attr:`State.CLOSED`): close the connection after flushing.

        Args:
            code: one of :data:`ERROR_CODES`.
            message: a one-line human explanation (str).
            offset: for ``conflict``, the bytes the server holds.

        Raises:
            LocalProtocolError: no request is pending, or ``code`` is unknown.
        """
        if code not in ERROR_CODES:
            raise LocalProtocolError(f"unknown error code {code!r}")
        self._step("error", local=True)
        obj: dict[str, Any] = {"ok": False, "error": code, "message": message[:1024]}
        if offset is not None:
            obj["offset"] = offset
        while True:  # the message is shortened to fit max_header (it cannot be refused)
            try:
                self._send_header(obj)
                break
            except LocalProtocolError:
                if not obj["message"]:
                    raise
                obj["message"] = obj["message"][: len(obj["message"]) // 2]
        self._put = None
        self._after_local_step()

    def send_fatal(self, code: str, message: str) -> None:
        """End the conversation from any state with one error response (``code``, e.g.
        ``timeout`` when the peer missed a deadline); close the connection after flushing.

        The state becomes :attr:`State.CLOSED`. Does nothing once closed.

        Raises:
            LocalProtocolError: ``code`` is unknown.
        """
        if code not in ERROR_CODES:
            raise LocalProtocolError(f"unknown error code {code!r}")
        if self._state is State.CLOSED:
            return
        if self._state is not State.ERROR:
            self._step("fatal", local=True)
        self.send_error(code, message)

    @property
    def line_pending(self) -> bool:
        """The peer has sent part of a header or trailer line that we wait for (the
        caller's deadline for completing it should run)."""
        return self._state in self._peer_line_states and len(self._buffer) > 0

    def send_auth_result(self, user: str, roles: Iterable[str] = ()) -> None:
        """Accept the pending :class:`AuthRequest`: the client is now ``user``."""
        self._step("auth_result", local=True)
        self._send_header({"ok": True, "user": user, "roles": sorted(roles)})
        self._after_local_step()

    def send_stat(
        self,
        name: str,
        *,
        exists: bool,
        size: int | None,
        mtime: float | None,
        partial: int | None,
    ) -> None:
        """Answer a :class:`StatRequest` (sizes in bytes, ``mtime`` in seconds)."""
        self._step("stat_result", local=True)
        self._send_header(
            {
                "ok": True,
                "name": name,
                "exists": exists,
                "size": size,
                "mtime": mtime,
                "partial": partial,
            }
        )
        self._after_local_step()

    def send_list(self, path: str, entries: Iterable[Entry]) -> None:
        """Answer a :class:`ListRequest`: a header, then one JSON line per entry."""
        self._step("list_result", local=True)
        lines = [
            json.dumps(
                {"name": e.name, "type": e.kind, "size": e.size, "mtime": e.mtime},
                separators=(",", ":"),
                ensure_ascii=False,
            ).encode("utf-8")
            + b"\n"
            for e in entries
        ]
        body = b"".join(lines)
        self._send_header({"ok": True, "path": path, "count": len(lines), "length": len(body)})
        if body:
            self._out.append(body)
        self._step("body_end", local=True)
        self._after_local_step()

    def send_get(self, name: str, *, size: int, offset: int, digest: str) -> None:
        """Start answering a :class:`GetRequest`: ``size - offset`` body bytes must follow
        (:meth:`send_body` or :meth:`body_sent`), then :meth:`send_trailer`.

        Raises:
            LocalProtocolError: no get is pending, or ``offset > size``.
        """
        if not 0 <= offset <= size:
            raise LocalProtocolError(f"offset {offset} outside 0..{size}")
        self._step("get_result", local=True)
        length = size - offset
        self._send_header(
            {
                "ok": True,
                "name": name,
                "size": size,
                "offset": offset,
                "length": length,
                "digest": digest,
            }
        )
        self._body_left = length
        if length == 0:
            self._step("body_end", local=True)

    def send_ready(self) -> None:
        """Accept the pending :class:`PutRequest`; its body may now arrive.

        Raises:
            LocalProtocolError: no put is pending.
        """
        if self._put is None or self._state is not State.AWAIT_READY:
            raise LocalProtocolError(f"cannot accept a put in state {self._state.name}")
        self._step("ready", local=True)
        self._send_header({"ok": True, "ready": True, "offset": self._put.offset})
        self._body_left = self._put.size - self._put.offset
        if self._body_left == 0:
            self._end_body()
        self._after_local_step()

    def send_put_result(self, name: str, *, size: int, digest_name: str, digest: str) -> None:
        """Confirm a committed upload; call only once the file is durable and visible."""
        self._step("put_result", local=True)
        self._send_header(
            {"ok": True, "name": name, "size": size, "algo": digest_name, "digest": digest}
        )
        self._put = None
        self._after_local_step()


# -- client role ---------------------------------------------------------------------------
class FilesClientProtocol(_FilesProtocol):
    """Client side: produces requests, parses responses.

    Args:
        max_header: the longest response header or trailer line, ``\\n`` included (bytes).
        max_list_body: the largest ``list`` body accepted (bytes).

    Events: :class:`StatResult`, :class:`ListResult`, :class:`GetStart` then
    :class:`BodyChunk` ... :class:`BodyEnd` :class:`Trailer`, :class:`Ready`,
    :class:`PutResult`, :class:`ErrorResponse`, :class:`EndOfStream`.
    """

    _peer_body_states = frozenset({State.DOWNLOAD, State.LIST_BODY})
    _peer_line_states = frozenset(
        {*_AWAITING, State.AWAIT_RESULT, State.DOWNLOAD_TRAILER, State.UPLOAD, State.UPLOAD_TRAILER}
    )

    def __init__(self, *, max_header: int = MAX_HEADER, max_list_body: int = MAX_LIST_BODY) -> None:
        super().__init__(max_header=max_header)
        self.max_list_body = max_list_body
        self._put_size = 0
        self._put_offset = 0
        self._list_path = ""
        self._list_body = bytearray()

    def _local_body_states(self) -> tuple[State, ...]:
        return (State.UPLOAD,)

    def _local_trailer_states(self) -> tuple[State, ...]:
        return (State.UPLOAD_TRAILER,)

    # -- requests ------------------------------------------------------------------------
    def _request(self, op: str, obj: dict[str, Any]) -> None:
        if self._state is not State.IDLE:
            raise LocalProtocolError(f"cannot send {op} in state {self._state.name}")
        header = _encode({"op": op, **obj}, self.max_header)
        self._step(op, local=True)
        self._out.append(header)

    def send_auth(self, user: str, token: str) -> None:
        """Authenticate as ``user`` with ``token`` (servers with a users file ask it first).

        Raises:
            LocalProtocolError: a request is pending, or the token is empty or too long.
        """
        if not 0 < len(token.encode()) <= MAX_TOKEN:
            raise LocalProtocolError(f"a token is 1-{MAX_TOKEN} bytes")
        self._request("auth", {"user": user, "token": token})

    def send_stat(self, name: str) -> None:
        """Ask about ``name``. Raises LocalProtocolError if a request is pending."""
        self._request("stat", {"name": name})

    def send_list(self, path: str = "") -> None:
        """Ask for the entries of directory ``path`` (``""``: the root)."""
        self._list_path = path
        self._request("list", {"path": path})

    def send_get(self, name: str, *, offset: int = 0, digest: str = "blake3") -> None:
        """Ask for ``name`` from byte ``offset``; the trailer carries the ``digest`` of it all."""
        if digest not in DIGESTS or offset < 0:
            raise LocalProtocolError("bad digest name or negative offset")
        self._request("get", {"name": name, "offset": offset, "digest": digest})

    def send_put(
        self,
        name: str,
        *,
        size: int,
        offset: int = 0,
        digest: str = "blake3",
        overwrite: bool = False,
        restart: bool = False,
    ) -> None:
        """Offer ``size`` bytes for ``name`` starting at ``offset``; wait for :class:`Ready`
        before sending the body (:meth:`send_body` / :meth:`body_sent`) and trailer.
        ``restart`` asks the server to drop any part it holds (``offset`` must be 0).

        Raises:
            LocalProtocolError: a request is pending, or sizes or ``digest`` are invalid.
        """
        if digest not in DIGESTS or not 0 <= offset <= size or (restart and offset):
            raise LocalProtocolError("bad digest name, offset outside 0..size, or restart")
        self._request(
            "put",
            {
                "name": name,
                "size": size,
                "offset": offset,
                "digest": digest,
                "overwrite": overwrite,
                **({"restart": True} if restart else {}),
            },
        )
        self._put_size, self._put_offset = size, offset

    # -- responses -----------------------------------------------------------------------
    def _on_body(self, data: bytes) -> None:
        if self._state is State.LIST_BODY:
            self._list_body += data
        else:
            self._events.append(BodyChunk(data))

    def _end_body(self) -> None:
        if self._state is State.LIST_BODY:
            self._step("body_end", local=False)
            self._events.append(ListResult(self._list_path, self._parse_entries()))
            self._list_body = bytearray()
        else:
            super()._end_body()

    def _parse_entries(self) -> tuple[Entry, ...]:
        entries = []
        for line in bytes(self._list_body).splitlines():
            obj = _decode(line)
            kind = _str(obj, "type")
            if kind not in ("file", "dir"):
                raise InvalidMessage(f"unknown entry type {kind!r}")
            entries.append(
                Entry(_str(obj, "name"), kind, _int(obj, "size"), _float(obj, "mtime") or 0.0)
            )
        return tuple(entries)

    def _on_line(self, obj: dict[str, Any]) -> None:
        state = self._state
        if state is State.DOWNLOAD_TRAILER:
            digest = _hex(obj)
            self._step("trailer", local=False)
            self._events.append(Trailer(digest))
            return
        ok = obj.get("ok")
        if ok is False:
            code = _str(obj, "error")
            message = _str(obj, "message", default="")
            offset = _opt_int(obj, "offset")
            self._step("error", local=False)
            self._events.append(ErrorResponse(code, message, offset))
            return
        if ok is not True:
            raise InvalidMessage('response must have "ok": true or false')
        event: FilesEvent
        if state is State.AWAIT_AUTH:
            roles = obj.get("roles", [])
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                raise InvalidMessage("roles must be a list of strings")
            event = AuthResult(_str(obj, "user"), tuple(roles))
            self._step("auth_result", local=False)
        elif state is State.AWAIT_STAT:
            if "exists" not in obj:
                raise InvalidMessage('stat result without "exists"')
            event = StatResult(
                _str(obj, "name"),
                _bool(obj, "exists"),
                _opt_int(obj, "size"),
                _float(obj, "mtime"),
                _opt_int(obj, "partial"),
            )
            self._step("stat_result", local=False)
        elif state is State.AWAIT_LIST:
            length = _int(obj, "length")
            if length > self.max_list_body:
                raise LimitExceeded(
                    f"list body of {length} bytes exceeds {self.max_list_body}",
                    limit=self.max_list_body,
                )
            self._list_path = _str(obj, "path", default=self._list_path)
            self._step("list_result", local=False)
            self._body_left = length
            if length == 0:
                self._end_body()
            return
        elif state is State.AWAIT_GET:
            size, offset, length = _int(obj, "size"), _int(obj, "offset"), _int(obj, "length")
            if offset + length != size:
                raise InvalidMessage("get header: offset + length != size")
            event = GetStart(_str(obj, "name"), size, offset, length, _digest_name(obj))
            self._step("get_result", local=False)
            self._events.append(event)
            self._body_left = length
            if length == 0:
                self._end_body()
            return
        elif state is State.AWAIT_READY:
            offset = _int(obj, "offset")
            if offset != self._put_offset or obj.get("ready") is not True:
                raise InvalidMessage(f"ready for offset {offset}, asked {self._put_offset}")
            self._step("ready", local=False)
            self._body_left = self._put_size - self._put_offset
            event = Ready(offset)
            self._events.append(event)
            if self._body_left == 0:
                self._step("body_end", local=True)
            return
        elif state is State.AWAIT_RESULT:
            event = PutResult(
                _str(obj, "name"),
                _int(obj, "size"),
                _digest_name({"digest": obj.get("algo")}),
                _hex(obj),
            )
            self._step("put_result", local=False)
        else:  # UPLOAD / UPLOAD_TRAILER: only an error may interrupt us
            raise RemoteProtocolError(f"unexpected response in state {state.name}")
        self._events.append(event)
