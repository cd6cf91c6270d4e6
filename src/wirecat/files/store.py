"""The file store behind ``wirecat serve --files DIR``: a jailed root, part files, atomic commit.

Guarantees:

- **Jail.** Names are relative paths checked by :func:`~wirecat.protocols.files.check_name`,
  then walked one component at a time with ``O_NOFOLLOW`` relative to a directory descriptor:
  no ``..``, no absolute path, and no symlink is ever followed, so nothing escapes the root
  even if someone plants a symlink inside it.
- **Part files.** An upload of ``dir/name`` is written to ``dir/.wcpart-name`` (hidden from
  ``list``, unreachable by clients); when that would pass the 255-byte limit of a file name
  (a ``name`` of 248-255 bytes), to ``dir/.wcpart-.wcpart-h-SHA256`` instead, the SHA-256 of
  ``name`` in hex (:func:`part_name`). An interrupted upload keeps it; ``stat`` reports its
  size as ``partial`` and a ``put`` at exactly that offset continues it (tus-style resume). A
  put at any other offset is a conflict and changes nothing. A part nobody has written to
  for ``part_expiry`` seconds and that no uploader holds is deleted by
  :meth:`FileStore.sweep_parts` (the files service runs it at start and periodically); it
  counts against the quota until then.
- **Nothing before admission.** A ``put`` into directories that do not exist yet creates
  them only once every check passed (name, size, exists, offset, quota): a refused ``put``
  leaves no trace.
- **Locks.** The part file is held with ``flock(LOCK_EX | LOCK_NB)`` for the whole upload, so
  a second uploader of the same name (in this process or another worker) gets ``locked``.
  The kernel drops the lock if the process dies.
- **Atomic commit.** Once the whole-file digest matches: ``fsync`` the part, ``link`` it to the
  final name (``rename`` when overwriting), ``fsync`` the directory; only then is the upload
  confirmed. Readers see the old file or the new one, never a partial one, even after
  ``kill -9`` of the server.
- **Limits.** ``max_file_size`` and ``quota`` (bytes) are checked before any body is read.
- **One quota for every process sharing a root** (``wirecat serve --workers K``, or several
  servers on one directory). A ``put`` is admitted under an exclusive ``flock`` of the root
  directory itself (no lock file), which serialises admissions across processes:

  1. usage is computed afresh: the sizes of the regular files under the root (each inode
     once, so a part being linked to its final name is not counted twice), plus, for every
     *live* upload, its declared final size instead of its part's current size;
  2. the uploads in flight are in the **reservation ledger** :data:`LEDGER`, a small JSON
     object ``{part path: [declared size, st_dev, st_ino]}`` at the root, replaced
     atomically (write a temporary file, ``rename``) under the same lock and deleted once
     empty. An entry is live only while its part file (same inode) is ``flock``-ed by its
     uploader: probing takes ``LOCK_SH | LOCK_NB`` on it, which fails exactly then. The
     kernel drops an uploader's lock when its process dies, so the reservations of a crashed
     (``kill -9``) process stop counting at the next admission, with no pid bookkeeping
     (pids are reused); what its part holds still counts, as bytes on disk;
  3. the upload is admitted if usage + its declared size fits, and its entry is written
     before the lock is released; the entry is removed when the upload ends (commit,
     discard, release), under the lock again, only if it still names this part's inode.

  Part files are opened (and ``flock``-ed) under the root lock too, so a probe never makes
  an uploader see ``locked``. Writing body chunks makes no extra system call and takes no
  lock: the declared size was reserved up front. Admission costs a walk of the root
  (``O(files)``). Every process sharing a root must be given the same ``quota``; without a
  quota none of this happens (no lock, no ledger, no walk).

All methods block (file system calls): run them in a thread from async code.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import FileStoreError
from ..protocols.files import PART_PREFIX, Entry, check_name
from .digest import DIGESTS, Hasher, hash_fd, new_hasher

__all__ = [
    "LEDGER",
    "PART_EXPIRY",
    "FileStore",
    "FileStoreError",
    "ReadHandle",
    "StatInfo",
    "Upload",
    "part_name",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

#: The reservation ledger at the root (see the module docstring). Named like the part file
#: of ``.wcpart-quota``, a name :func:`~wirecat.protocols.files.check_name` refuses, so no
#: upload's part can collide with it; like every part file it is hidden from listings and
#: unreachable by clients, and it is not counted as usage.
LEDGER = PART_PREFIX + PART_PREFIX + "quota"
_LEDGER_TMP = LEDGER + ".tmp"
#: Part files of names too long for ``PART_PREFIX + name`` are this plus a SHA-256 in hex (the
#: same reserved namespace as :data:`LEDGER`, so it collides with no other part).
_LONG_PART = PART_PREFIX + PART_PREFIX + "h-"
_LONG_PART_RE = re.compile(re.escape(_LONG_PART) + "[0-9a-f]{64}")
#: Default age (seconds without a write) after which an abandoned part file is deleted.
PART_EXPIRY = 24 * 3600.0


def part_name(base: str) -> str:
    """The part file's name for the last component ``base`` of an upload's name.

    ``PART_PREFIX + base`` while that fits in 255 bytes (UTF-8), else ``_LONG_PART`` and the
    SHA-256 of ``base`` in hex (85 bytes), so every name :func:`check_name` accepts (each
    component up to 255 bytes) can be uploaded.
    """
    name = PART_PREFIX + base
    if len(name.encode("utf-8", "surrogatepass")) <= 255:
        return name
    return _LONG_PART + hashlib.sha256(base.encode("utf-8", "surrogatepass")).hexdigest()


#: One ledger entry: declared size in bytes, then the part's ``st_dev`` and ``st_ino``.
_Entry = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class StatInfo:
    """What ``stat`` reports: sizes in bytes, ``mtime`` in seconds since the epoch."""

    exists: bool
    size: int | None
    mtime: float | None
    partial: int | None


class ReadHandle:
    """An open, regular file to serve (``get``). Close it when done (also a context manager).

    Attributes:
        fd: the open descriptor (read-only).
        size: its size in bytes when opened.
        name: the name it was opened under.
    """

    def __init__(self, store: FileStore, name: str, fd: int, st: os.stat_result) -> None:
        self.name = name
        self.fd = fd
        self.size = st.st_size
        self._key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        self._store = store

    def cached_digest(self, algo: str) -> str | None:
        """The digest remembered from the upload that created this file, if any."""
        return self._store._digest_cache_get((*self._key, algo))

    def digest(self, algo: str) -> str:
        """Hash the whole file (blocking; cached per inode, size and mtime) and return hex."""
        cached = self.cached_digest(algo)
        if cached is not None:
            return cached
        hasher = new_hasher(algo)
        hash_fd(self.fd, hasher, 0, self.size)
        value = hasher.hexdigest()
        self._store._digest_cache_put((*self._key, algo), value)
        return value

    def close(self) -> None:
        """Close the descriptor. Idempotent."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> ReadHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileStore:
    """A directory that files are uploaded to and served from.

    Args:
        root: the directory (created if missing). Nothing outside it is ever touched.
        readonly: refuse every upload (``read_only``).
        max_file_size: the largest file accepted, in bytes (``None``: no limit).
        quota: the most bytes the root may hold, part files and the rest of every upload in
            flight included (``None``: no limit). Holds across all the processes sharing
            ``root`` (give them all the same quota).

    Raises:
        OSError: ``root`` cannot be created or opened.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        readonly: bool = False,
        max_file_size: int | None = None,
        quota: int | None = None,
    ) -> None:
        os.makedirs(root, exist_ok=True)
        self.root = os.path.realpath(root)
        self.readonly = readonly
        self.max_file_size = max_file_size
        self.quota = quota
        #: ``write(fd, data) -> n``; tests replace it to simulate ENOSPC and short writes.
        self.write_hook: Callable[[int, bytes | memoryview], int] = os.write
        self._lock = threading.Lock()  # guards the digest cache
        self._digests: OrderedDict[tuple[int, int, int, int, str], str] = OrderedDict()

    # -- quota: usage, reservation ledger, root lock (see the module docstring) ----------
    @property
    def usage(self) -> int:
        """Bytes counted against the quota now, by every process sharing the root.

        The regular files under the root (part files included), with each live upload
        counted at its declared size. Blocking: takes the root lock and walks the tree.

        Raises:
            FileStoreError: ``io_error`` (the root cannot be locked or read).
        """
        with self._root_locked() as rfd:
            try:
                ledger = self._read_ledger(rfd)
                total, pruned = self._usage_locked(ledger)
            except OSError as exc:
                raise FileStoreError("io_error", f"cannot count usage: {exc.strerror}") from None
            if pruned:
                with contextlib.suppress(OSError):  # pruning again later is harmless
                    self._write_ledger(rfd, ledger)
        return total

    @contextlib.contextmanager
    def _root_locked(self) -> Iterator[int]:
        """Hold an exclusive ``flock`` of the root directory (all processes); yield its fd."""
        try:
            fd = os.open(self.root, _DIR_FLAGS)
        except OSError as exc:
            raise FileStoreError("io_error", f"cannot open the root: {exc.strerror}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                raise FileStoreError("io_error", f"cannot lock the root: {exc.strerror}") from None
            yield fd
        finally:
            os.close(fd)  # drops the lock

    @staticmethod
    def _read_ledger(rfd: int) -> dict[str, _Entry]:
        try:
            fd = os.open(LEDGER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=rfd)
        except FileNotFoundError:
            return {}
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
        finally:
            os.close(fd)
        try:
            raw = json.loads(b"".join(chunks))
        except ValueError:
            # only a power loss between write and rename can leave this (it is replaced
            # atomically); then no upload is live any more and an empty ledger is right
            return {}
        ledger: dict[str, _Entry] = {}
        if isinstance(raw, dict):
            for key, value in raw.items():
                if (
                    _valid_part_path(key)
                    and isinstance(value, list)
                    and len(value) == 3
                    and all(type(v) is int and v >= 0 for v in value)
                ):
                    ledger[key] = (value[0], value[1], value[2])
        return ledger

    @staticmethod
    def _write_ledger(rfd: int, ledger: dict[str, _Entry]) -> None:
        """Replace the ledger atomically (or delete it when empty). Call under the root lock."""
        if not ledger:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(LEDGER, dir_fd=rfd)
            return
        data = json.dumps({k: list(v) for k, v in ledger.items()}).encode()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(_LEDGER_TMP, flags, 0o644, dir_fd=rfd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.rename(_LEDGER_TMP, LEDGER, src_dir_fd=rfd, dst_dir_fd=rfd)

    def _is_live(self, path: str, entry: _Entry) -> bool:
        """Is the part ``path`` (the same inode as ``entry``) locked by an uploader now?"""
        dirs, base = self._split(path)
        try:
            with self._dir(dirs) as dfd:
                fd = os.open(
                    base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd
                )
        except (FileStoreError, OSError):
            return False  # committed, discarded or removed: nothing reserved any more
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != entry[1:]:
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False
        finally:
            os.close(fd)  # also drops our LOCK_SH at once

    def _usage_locked(
        self, ledger: dict[str, _Entry], skip: tuple[int, int] | None = None
    ) -> tuple[int, bool]:
        """Usage in bytes (see :attr:`usage`) and whether stale entries were dropped from
        ``ledger``. The inode ``skip`` (the caller's own part) is left out. Root lock held."""
        pruned = False
        live: set[tuple[int, int]] = set()
        total = 0
        for path, entry in list(ledger.items()):
            if entry[1:] == skip:
                continue
            if self._is_live(path, entry):
                live.add(entry[1:])
                total += entry[0]
            else:
                del ledger[path]
                pruned = True
        seen = set(live)
        if skip is not None:
            seen.add(skip)
        for dirpath, _dirs, files in os.walk(self.root):
            at_root = dirpath == self.root
            for name in files:
                if at_root and name in (LEDGER, _LEDGER_TMP):
                    continue
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                ino = (st.st_dev, st.st_ino)
                if stat.S_ISREG(st.st_mode) and ino not in seen:
                    seen.add(ino)
                    total += st.st_size
        return total, pruned

    def _unreserve(self, path: str, entry: _Entry) -> None:
        """Drop ``path`` from the ledger if it is still this upload's entry (blocking)."""
        with self._root_locked() as rfd:
            ledger = self._read_ledger(rfd)
            if ledger.get(path, (0, -1, -1))[1:] == entry[1:]:
                del ledger[path]
                self._write_ledger(rfd, ledger)

    def _digest_cache_get(self, key: tuple[int, int, int, int, str]) -> str | None:
        with self._lock:
            value = self._digests.get(key)
            if value is not None:
                self._digests.move_to_end(key)
            return value

    def _digest_cache_put(self, key: tuple[int, int, int, int, str], value: str) -> None:
        with self._lock:
            self._digests[key] = value
            while len(self._digests) > 4096:
                self._digests.popitem(last=False)

    # -- the jail ------------------------------------------------------------------------
    def _check(self, name: str, *, allow_empty: bool = False) -> str:
        try:
            return check_name(name, allow_empty=allow_empty)
        except ValueError as exc:
            raise FileStoreError("bad_name", f"bad name {name!r}: {exc}") from None

    @contextlib.contextmanager
    def _dir(self, parts: list[str], *, create: bool = False) -> Iterator[int]:
        """Yield a descriptor of root/parts..., never following a symlink."""
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for part in parts:
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise FileStoreError("not_found", f"no directory {part!r}") from None
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                    nfd = self._open_dir_component(part, fd)
                except OSError as exc:
                    raise self._jail_error(part, exc) from None
                os.close(fd)
                fd = nfd
            yield fd
        finally:
            os.close(fd)

    def _open_dir_component(self, part: str, fd: int) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            raise self._jail_error(part, exc) from None

    @staticmethod
    def _jail_error(part: str, exc: OSError) -> FileStoreError:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return FileStoreError(
                "bad_name", f"{part!r} is a symlink or not a directory (symlinks are not followed)"
            )
        if exc.errno == errno.ENOENT:
            return FileStoreError("not_found", f"no directory {part!r}")
        return FileStoreError("io_error", f"cannot open directory {part!r}: {exc.strerror}")

    @staticmethod
    def _split(name: str) -> tuple[list[str], str]:
        parts = name.split("/")
        return parts[:-1], parts[-1]

    # -- read side -----------------------------------------------------------------------
    def stat(self, name: str) -> StatInfo:
        """Report on ``name``: the committed file and any partial upload.

        Raises:
            FileStoreError: ``bad_name``.
        """
        dirs, base = self._split(self._check(name))
        try:
            with self._dir(dirs) as dfd:
                size = mtime = partial = None
                exists = False
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(base, dir_fd=dfd, follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode):
                        exists, size, mtime = True, st.st_size, st.st_mtime
                with contextlib.suppress(FileNotFoundError):
                    pst = os.stat(part_name(base), dir_fd=dfd, follow_symlinks=False)
                    if stat.S_ISREG(pst.st_mode):
                        partial = pst.st_size
        except FileStoreError as exc:
            if exc.code != "not_found":
                raise
            return StatInfo(False, None, None, None)
        return StatInfo(exists, size, mtime, partial)

    def listdir(self, path: str = "") -> list[Entry]:
        """Return the entries of directory ``path`` (``""``: the root), sorted by name.

        Part files and symlinks are left out.

        Raises:
            FileStoreError: ``bad_name``, ``not_found``.
        """
        path = self._check(path, allow_empty=True)
        parts = path.split("/") if path else []
        entries: list[Entry] = []
        with self._dir(parts) as dfd, os.scandir(dfd) as it:
            for de in it:
                if de.name.startswith(PART_PREFIX) or not _utf8(de.name):
                    continue  # a name that is not UTF-8 cannot be sent nor asked for
                try:
                    st = de.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    entries.append(Entry(de.name, "file", st.st_size, st.st_mtime))
                elif stat.S_ISDIR(st.st_mode):
                    entries.append(Entry(de.name, "dir", 0, st.st_mtime))
        entries.sort(key=lambda e: e.name)
        return entries

    def sweep_parts(self, max_age: float, *, now: float | None = None) -> int:
        """Delete the part files of abandoned uploads; return how many were deleted.

        A part is abandoned when nothing was written to it for ``max_age`` seconds (its
        ``mtime``) and no uploader holds it (``flock(LOCK_EX | LOCK_NB)`` succeeds). The tree is
        walked through directory descriptors without following symlinks. Until deleted, a
        part counts against the quota like any file. Blocking.

        Args:
            max_age: seconds without a write (> 0).
            now: the time to compare ``mtime`` with (seconds since the epoch; tests).
        """
        now = time.time() if now is None else now
        removed = 0
        for _path, _dirs, files, dfd in os.fwalk(self.root):
            for name in files:
                if not name.startswith(PART_PREFIX) or name in (LEDGER, _LEDGER_TMP):
                    continue
                with contextlib.suppress(OSError):
                    removed += _remove_if_abandoned(dfd, name, now - max_age)
        return removed

    def open_read(self, name: str) -> ReadHandle:
        """Open the committed file ``name`` for reading.

        Raises:
            FileStoreError: ``bad_name``, ``not_found`` (missing, a directory, a symlink).
        """
        dirs, base = self._split(self._check(name))
        with self._dir(dirs) as dfd:
            try:
                fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise FileStoreError("bad_name", f"{name!r} is a symlink") from None
                raise FileStoreError("not_found", f"no file {name!r}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise FileStoreError("not_found", f"{name!r} is not a regular file")
        return ReadHandle(self, name, fd, st)

    # -- write side ----------------------------------------------------------------------
    def begin_upload(
        self,
        name: str,
        *,
        size: int,
        offset: int,
        digest: str = "blake3",
        overwrite: bool = False,
        restart: bool = False,
    ) -> Upload:
        """Open (or continue) the upload of ``name`` and lock it.

        Args:
            name: target name relative to the root.
            size: total size in bytes.
            offset: bytes the client believes the store already holds (0 for a new upload).
            digest: one of :data:`~wirecat.files.digest.DIGESTS`.
            overwrite: allow replacing an existing file.
            restart: drop any part held and start from 0 (``offset`` must be 0).

        Returns:
            An :class:`Upload` holding the lock; hash its prefix with
            :meth:`Upload.hash_prefix` before writing.

        Raises:
            FileStoreError: ``read_only``, ``bad_name``, ``too_large``, ``exists``, ``locked``,
                ``conflict`` (with ``offset``: the bytes held), ``quota``, ``io_error``.
        """
        if self.readonly:
            raise FileStoreError("read_only", "this server does not accept uploads")
        if digest not in DIGESTS:
            raise FileStoreError("bad_request", f"unknown digest {digest!r}")
        dirs, base = self._split(self._check(name))
        if self.max_file_size is not None and size > self.max_file_size:
            raise FileStoreError(
                "too_large", f"{size} bytes is above this server's limit of {self.max_file_size}"
            )
        with self._root_locked() if self.quota is not None else contextlib.nullcontext(-1) as rfd:
            dir_fd, made = self._admit_dirs(rfd, dirs, name, size, offset)
            try:
                return self._begin_locked(
                    rfd, name, dirs, base, dir_fd, size, offset, digest, overwrite, restart
                )
            except BaseException:
                os.close(dir_fd)
                self._unmake_dirs(dirs, made)
                raise

    def _admit_dirs(
        self, rfd: int, dirs: list[str], name: str, size: int, offset: int
    ) -> tuple[int, int]:
        """Open the upload's directory; create missing ones only once the upload is admitted.

        Returns the directory's descriptor and how many directories were created. Missing
        directories mean a new upload: the offset must be 0 and the quota must hold
        ``size`` (checked here, before anything is made; :meth:`_reserve` records it).
        """
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            done = 0
            for part in dirs:
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    break
                except OSError as exc:
                    raise self._jail_error(part, exc) from None
                os.close(fd)
                fd, done = nfd, done + 1
            if done == len(dirs):
                return fd, 0
            if offset:
                raise FileStoreError(
                    "conflict",
                    f"offset {offset} does not match the 0 bytes held for {name!r}",
                    offset=0,
                )
            if self.quota is not None:
                try:
                    ledger = self._read_ledger(rfd)
                    used, _ = self._usage_locked(ledger)
                except OSError as exc:
                    raise FileStoreError(
                        "io_error", f"quota bookkeeping failed: {exc.strerror}"
                    ) from None
                if used + size > self.quota:
                    raise self._over_quota(size, offset, used)
            for part in dirs[done:]:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise self._jail_error(part, exc) from None
                nfd = self._open_dir_component(part, fd)
                os.close(fd)
                fd = nfd
            return fd, len(dirs) - done
        except BaseException:
            os.close(fd)
            raise

    def _unmake_dirs(self, dirs: list[str], made: int) -> None:
        """Remove the ``made`` last directories of ``dirs`` if still empty (best effort)."""
        for depth in range(len(dirs), len(dirs) - made, -1):
            with contextlib.suppress(OSError, FileStoreError), self._dir(dirs[: depth - 1]) as pfd:
                os.rmdir(dirs[depth - 1], dir_fd=pfd)

    def _over_quota(self, size: int, offset: int, used: int) -> FileStoreError:
        return FileStoreError(
            "quota",
            f"{size - offset} more bytes would exceed the quota of {self.quota} "
            f"bytes ({used + offset} in use or reserved)",
        )

    def _begin_locked(
        self,
        rfd: int,
        name: str,
        dirs: list[str],
        base: str,
        dir_fd: int,
        size: int,
        offset: int,
        digest: str,
        overwrite: bool,
        restart: bool,
    ) -> Upload:
        """The rest of :meth:`begin_upload`, under the root lock (``rfd``) with a quota."""
        self._check_target(dir_fd, base, name, overwrite)
        part = part_name(base)
        fd = self._open_part(dir_fd, part, name)
        reservation: tuple[str, _Entry] | None = None
        try:
            st = os.fstat(fd)
            held = st.st_size
            if restart and offset == 0 and held:
                os.ftruncate(fd, 0)
                held = 0
            if offset != held or held > size:
                raise FileStoreError(
                    "conflict",
                    f"offset {offset} does not match the {held} bytes held for {name!r}",
                    offset=held,
                )
            if self.quota is not None:
                reservation = self._reserve(rfd, dirs, base, st, size, offset)
        except BaseException:
            if os.fstat(fd).st_size == 0:
                with contextlib.suppress(OSError):
                    os.unlink(part, dir_fd=dir_fd)
            os.close(fd)
            raise
        return Upload(
            self,
            name,
            base,
            dir_fd,
            fd,
            size=size,
            offset=offset,
            digest=digest,
            overwrite=overwrite,
            reservation=reservation,
        )

    def _reserve(
        self, rfd: int, dirs: list[str], base: str, st: os.stat_result, size: int, offset: int
    ) -> tuple[str, _Entry]:
        """Admit ``size`` bytes for the part ``st`` or refuse; record it. Root lock held."""
        assert self.quota is not None
        own = (st.st_dev, st.st_ino)
        try:
            ledger = self._read_ledger(rfd)
            used, pruned = self._usage_locked(ledger, skip=own)
            if used + size > self.quota:
                if pruned:
                    with contextlib.suppress(OSError):
                        self._write_ledger(rfd, ledger)
                raise self._over_quota(size, offset, used)
            key, entry = "/".join([*dirs, part_name(base)]), (size, *own)
            ledger[key] = entry
            self._write_ledger(rfd, ledger)
        except OSError as exc:
            raise FileStoreError("io_error", f"quota bookkeeping failed: {exc.strerror}") from None
        return key, entry

    def _check_target(self, dir_fd: int, base: str, name: str, overwrite: bool) -> None:
        try:
            st = os.stat(base, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise FileStoreError("exists", f"{name!r} is a directory")
        if not overwrite:
            raise FileStoreError("exists", f"{name!r} exists (ask to overwrite to replace it)")

    def _open_part(self, dir_fd: int, part: str, name: str) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        for _ in range(5):
            try:
                fd = os.open(part, flags, 0o644, dir_fd=dir_fd)
            except OSError as exc:
                raise FileStoreError("io_error", f"cannot open part file: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FileStoreError(
                    "locked", f"{name!r} is being uploaded by another client"
                ) from None
            # the holder before us may have committed or discarded (unlinked) this inode
            try:
                same = (
                    os.stat(part, dir_fd=dir_fd, follow_symlinks=False).st_ino
                    == os.fstat(fd).st_ino
                )
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)
        raise FileStoreError("locked", f"{name!r} is busy, try again")


class Upload:
    """One locked upload in progress. Not thread-safe: use it from one thread at a time.

    Attributes:
        name: the target name.
        size: the total size in bytes.
        offset: bytes held when the upload (re)started.
        received: bytes now in the part file.
        digest_name: ``"blake3"`` or ``"sha256"``.
    """

    def __init__(
        self,
        store: FileStore,
        name: str,
        base: str,
        dir_fd: int,
        fd: int,
        *,
        size: int,
        offset: int,
        digest: str,
        overwrite: bool = False,
        reservation: tuple[str, _Entry] | None = None,
    ) -> None:
        self.name = name
        self._overwrite = overwrite
        self.size = size
        self.offset = offset
        self.received = offset
        self.digest_name = digest
        self._store = store
        self._base = base
        self._part = part_name(base)
        self._dir_fd = dir_fd
        self._fd = fd
        self._hasher: Hasher = new_hasher(digest)
        self._reservation = reservation
        self._done = False
        os.lseek(fd, offset, os.SEEK_SET)

    def hash_prefix(self) -> None:
        """Hash the bytes already held (``[0, offset)``), blocking. Call once, first."""
        hash_fd(self._fd, self._hasher, 0, self.offset)

    def digest_update(self, data: bytes | memoryview) -> None:
        """Feed ``data`` to the running digest; for writes made with ``digest=False``, in the
        same order (blocking; may run on another thread than :meth:`write`, one at a time)."""
        self._hasher.update(data)

    def write(self, data: bytes | memoryview, *, digest: bool = True) -> None:
        """Append ``data`` to the part file and, unless ``digest`` is False, to the running
        digest (blocking). With ``digest=False`` the caller feeds :meth:`digest_update`.

        Raises:
            FileStoreError: ``no_space`` (ENOSPC/EDQUOT; what was written is kept for a
                resume), ``io_error``, or ``bad_request`` past the declared size.
        """
        n = len(data)
        if self.received + n > self.size:
            raise FileStoreError("bad_request", "more body bytes than the declared size")
        view = memoryview(data)
        write = self._store.write_hook
        pos = 0
        try:
            while pos < n:
                w = write(self._fd, view[pos:])
                if digest:
                    self._hasher.update(view[pos : pos + w])
                pos += w
                self.received += w
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise FileStoreError(
                    "no_space",
                    f"server disk full after {self.received} of {self.size} bytes; "
                    "the part is kept, resume when space is freed",
                ) from None
            raise FileStoreError("io_error", f"write failed: {exc.strerror}") from None

    def commit(self, expected: str) -> str:
        """Verify the whole-file digest, then make the file durable and visible (blocking).

        Args:
            expected: the client's digest, 64 lowercase hex characters.

        Returns:
            The verified digest (hex).

        Raises:
            FileStoreError: ``bad_request`` (the body is incomplete), ``digest_mismatch`` (the
                part was discarded), ``exists`` (someone else committed the name meanwhile
                and overwrite was not asked; the part is kept), ``io_error``.
        """
        if self.received != self.size:
            raise FileStoreError(
                "bad_request", f"body incomplete: {self.received} of {self.size} bytes"
            )
        actual = self._hasher.hexdigest()
        if actual != expected:
            self.discard()
            raise FileStoreError(
                "digest_mismatch",
                f"{self.digest_name} mismatch: received {actual}, client sent {expected}; "
                "the upload was discarded",
            )
        store, dfd = self._store, self._dir_fd
        try:
            os.fsync(self._fd)
            self._publish()
            os.fsync(dfd)
        except OSError as exc:
            raise FileStoreError("io_error", f"commit failed: {exc.strerror}") from None
        st = os.fstat(self._fd)
        store._digest_cache_put(
            (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, self.digest_name), actual
        )
        self._finish()
        return actual

    def _publish(self) -> None:
        dfd = self._dir_fd
        overwrite = self._overwrite
        if not overwrite:
            try:
                os.link(self._part, self._base, src_dir_fd=dfd, dst_dir_fd=dfd)
            except FileExistsError:
                raise FileStoreError(
                    "exists", f"{self.name!r} was created meanwhile; the part is kept"
                ) from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                # no hard links here (e.g. vfat): check, then rename
                with contextlib.suppress(FileNotFoundError):
                    os.stat(self._base, dir_fd=dfd, follow_symlinks=False)
                    raise FileStoreError("exists", f"{self.name!r} was created meanwhile") from None
                os.rename(self._part, self._base, src_dir_fd=dfd, dst_dir_fd=dfd)
                return
            os.unlink(self._part, dir_fd=dfd)
            return
        os.rename(self._part, self._base, src_dir_fd=dfd, dst_dir_fd=dfd)

    def discard(self) -> None:
        """Delete the part file and release the lock (blocking). Idempotent."""
        if self._done:
            return
        with contextlib.suppress(OSError):
            os.unlink(self._part, dir_fd=self._dir_fd)
        self._finish()

    def release(self) -> None:
        """Keep the part file for a later resume and release the lock. Idempotent.

        A part that holds nothing (the client left before its first byte) is deleted: there
        is nothing to resume.
        """
        if self._done:
            return
        if self.received == 0:
            with contextlib.suppress(OSError):
                os.unlink(self._part, dir_fd=self._dir_fd)
        self._finish()

    def _finish(self) -> None:
        self._done = True
        try:
            if self._reservation is not None:
                # while the part is still locked: a prober sees it live until this returns
                with contextlib.suppress(OSError, FileStoreError):
                    self._store._unreserve(*self._reservation)
                self._reservation = None
        finally:
            os.close(self._fd)
            os.close(self._dir_fd)


def _remove_if_abandoned(dfd: int, name: str, before: float) -> int:
    """Unlink the part ``name`` in ``dfd`` if unlocked and last written before ``before``."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    fd = os.open(name, flags, dir_fd=dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_mtime >= before:
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # an uploader holds it
        # under our lock nobody can take it over; it must still be the same file
        if os.stat(name, dir_fd=dfd, follow_symlinks=False).st_ino != st.st_ino:
            return 0
        os.unlink(name, dir_fd=dfd)
        return 1
    finally:
        os.close(fd)


def _utf8(name: str) -> bool:
    """Is ``name`` (from the file system, surrogate-escaped) valid UTF-8?"""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _valid_part_path(path: str) -> bool:
    """Is ``path`` (from the ledger) a part file's path under the root, jail rules kept?"""
    dirs, _, base = path.rpartition("/")
    if not base.startswith(PART_PREFIX):
        return False
    try:
        if not _LONG_PART_RE.fullmatch(base):
            check_name(base.removeprefix(PART_PREFIX))
        if dirs:
            check_name(dirs)
    except ValueError:
        return False
    return True
