"""The file store behind ``wirecat serve --files DIR``: a jailed root, part files, atomic commit.

Guarantees:

- **Jail.** Names are relative paths checked by :func:`~wirecat.protocols.files.check_name`,
  then walked one component at a time with ``O_NOFOLLOW`` relative to a directory descriptor:
  no ``..``, no absolute path, and no symlink is ever followed, so nothing escapes the root
  even if someone plants a symlink inside it.
- **Part files.** An upload of ``dir/name`` is written to ``dir/.wcpart-name`` (hidden from
  ``list``, unreachable by clients). An interrupted upload keeps it; ``stat`` reports its size
  as ``partial`` and a ``put`` at exactly that offset continues it (tus-style resume). A put at
  any other offset is a conflict and changes nothing.
- **Locks.** The part file is held with ``flock(LOCK_EX | LOCK_NB)`` for the whole upload, so
  a second uploader of the same name (in this process or another worker) gets ``locked``.
  The kernel drops the lock if the process dies.
- **Atomic commit.** Once the whole-file digest matches: ``fsync`` the part, ``link`` it to the
  final name (``rename`` when overwriting), ``fsync`` the directory; only then is the upload
  confirmed. Readers see the old file or the new one, never a partial one, even after
  ``kill -9`` of the server.
- **Limits.** ``max_file_size`` and ``quota`` (bytes) are checked before any body is read.

All methods block (file system calls): run them in a thread from async code.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import WirecatError
from ..protocols.files import PART_PREFIX, Entry, check_name
from .digest import DIGESTS, Hasher, hash_fd, new_hasher

__all__ = ["FileStore", "FileStoreError", "ReadHandle", "StatInfo", "Upload"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class FileStoreError(WirecatError):
    """A store operation was refused.

    Attributes:
        code: the protocol error code (see :data:`wirecat.protocols.files.ERROR_CODES`).
        offset: for ``conflict``, the bytes the store holds of that upload.
    """

    def __init__(self, code: str, message: str, *, offset: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.offset = offset


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
        quota: the most bytes the root may hold, part files included (``None``: no limit).
            Counted per process; a scan at start-up gives the initial usage.

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
        self._lock = threading.Lock()
        self._reserved = 0
        self._usage = self._scan_usage() if quota is not None else 0
        self._digests: OrderedDict[tuple[int, int, int, int, str], str] = OrderedDict()

    # -- bookkeeping ---------------------------------------------------------------------
    @property
    def usage(self) -> int:
        """Bytes held under the root (files and parts) as far as this store knows."""
        return self._usage

    def _scan_usage(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_size
        return total

    def _account(self, delta: int) -> None:
        with self._lock:
            self._usage += delta

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
                    pst = os.stat(PART_PREFIX + base, dir_fd=dfd, follow_symlinks=False)
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
                if de.name.startswith(PART_PREFIX):
                    continue
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
        with self._dir(dirs, create=True) as dfd:
            dir_fd = os.dup(dfd)
        try:
            self._check_target(dir_fd, base, name, overwrite)
            fd = self._open_part(dir_fd, PART_PREFIX + base, name)
        except BaseException:
            os.close(dir_fd)
            raise
        try:
            held = os.fstat(fd).st_size
            if restart and offset == 0 and held:
                os.ftruncate(fd, 0)
                self._account(-held)
                held = 0
            if offset != held or held > size:
                raise FileStoreError(
                    "conflict",
                    f"offset {offset} does not match the {held} bytes held for {name!r}",
                    offset=held,
                )
            need = size - offset
            with self._lock:
                if self.quota is not None and self._usage + self._reserved + need > self.quota:
                    raise FileStoreError(
                        "quota",
                        f"{need} more bytes would exceed the quota of {self.quota} bytes "
                        f"({self._usage + self._reserved} in use)",
                    )
                self._reserved += need
        except BaseException:
            if os.fstat(fd).st_size == 0:
                with contextlib.suppress(OSError):
                    os.unlink(PART_PREFIX + base, dir_fd=dir_fd)
            os.close(fd)
            os.close(dir_fd)
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
        )

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
    ) -> None:
        self.name = name
        self._overwrite = overwrite
        self.size = size
        self.offset = offset
        self.received = offset
        self.digest_name = digest
        self._store = store
        self._base = base
        self._part = PART_PREFIX + base
        self._dir_fd = dir_fd
        self._fd = fd
        self._hasher: Hasher = new_hasher(digest)
        self._reserved = size - offset
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
        finally:
            self._store._account(pos)

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
            old = 0
            with contextlib.suppress(FileNotFoundError):
                old_st = os.stat(self._base, dir_fd=dfd, follow_symlinks=False)
                old = old_st.st_size if stat.S_ISREG(old_st.st_mode) else 0
            self._publish(old)
            os.fsync(dfd)
        except OSError as exc:
            raise FileStoreError("io_error", f"commit failed: {exc.strerror}") from None
        st = os.fstat(self._fd)
        store._digest_cache_put(
            (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, self.digest_name), actual
        )
        self._finish()
        return actual

    def _publish(self, old: int) -> None:
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
        self._store._account(-old)

    def discard(self) -> None:
        """Delete the part file and release the lock (blocking). Idempotent."""
        if self._done:
            return
        with contextlib.suppress(OSError):
            os.unlink(self._part, dir_fd=self._dir_fd)
        self._store._account(-self.received)
        self._finish()

    def release(self) -> None:
        """Keep the part file for a later resume and release the lock. Idempotent."""
        if self._done:
            return
        self._finish()

    def _finish(self) -> None:
        self._done = True
        with self._store._lock:
            self._store._reserved -= self._reserved
        self._reserved = 0
        os.close(self._fd)
        os.close(self._dir_fd)
