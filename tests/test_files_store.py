"""The file store: jail, part files, resume offsets, locks, quota (shared by processes), ENOSPC,
atomic commit."""

from __future__ import annotations

import errno
import fcntl
import os
import select
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from helpers import scaled
from wirecat.files.client import hash_file
from wirecat.files.digest import new_hasher
from wirecat.files.store import LEDGER, FileStore, FileStoreError, Upload


def digest_of(data: bytes, algo: str = "blake3") -> str:
    h = new_hasher(algo)
    h.update(data)
    return h.hexdigest()


def upload(store: FileStore, name: str, data: bytes, **kw: object) -> str:
    up = store.begin_upload(name, size=len(data), offset=0, **kw)  # type: ignore[arg-type]
    up.write(data)
    return up.commit(digest_of(data, up.digest_name))


@pytest.mark.parametrize("algo", ["blake3", "sha256"])
def test_upload_commit_and_read(tmp_path: Path, algo: str) -> None:
    store = FileStore(tmp_path)
    assert upload(store, "d/e/f.bin", b"hello", digest=algo) == digest_of(b"hello", algo)
    assert (tmp_path / "d/e/f.bin").read_bytes() == b"hello"
    assert not any(p.name.startswith(".wcpart-") for p in tmp_path.rglob("*"))
    with store.open_read("d/e/f.bin") as h:
        assert h.size == 5 and h.cached_digest(algo) == digest_of(b"hello", algo)
    assert [e.name for e in store.listdir("d/e")] == ["f.bin"]
    assert store.stat("d/e/f.bin").exists


def test_name_clash_refused_unless_overwrite(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    upload(store, "a", b"one")
    with pytest.raises(FileStoreError) as e:
        store.begin_upload("a", size=3, offset=0)
    assert e.value.code == "exists"
    upload(store, "a", b"two", overwrite=True)
    assert (tmp_path / "a").read_bytes() == b"two"


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "a\x00", "a\\b", ".wcpart-a"])
def test_traversal_refused(tmp_path: Path, name: str) -> None:
    store = FileStore(tmp_path / "root")
    for call in (
        lambda: store.begin_upload(name, size=1, offset=0),
        lambda: store.open_read(name),
        lambda: store.stat(name),
    ):
        with pytest.raises(FileStoreError) as e:
            call()
        assert e.value.code == "bad_name"


def test_planted_symlinks_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s3cret")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    (root / "file-link").symlink_to(outside / "secret")
    store = FileStore(root)
    with pytest.raises(FileStoreError) as e:
        store.open_read("link/secret")
    assert e.value.code == "bad_name"
    with pytest.raises(FileStoreError) as e:
        store.open_read("file-link")
    assert e.value.code == "bad_name"
    with pytest.raises(FileStoreError):
        store.begin_upload("link/new", size=1, offset=0)
    assert not (outside / "new").exists()
    assert [e.name for e in store.listdir()] == []  # symlinks are not listed


def test_interrupted_upload_resumes_at_the_held_offset(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    data = os.urandom(10_000)
    up = store.begin_upload("r.bin", size=len(data), offset=0)
    up.write(data[:3000])
    up.release()  # connection cut: keep the part
    assert not (tmp_path / "r.bin").exists()
    assert store.stat("r.bin").partial == 3000
    with pytest.raises(FileStoreError) as e:
        store.begin_upload("r.bin", size=len(data), offset=1000)
    assert e.value.code == "conflict" and e.value.offset == 3000
    assert store.stat("r.bin").partial == 3000  # a conflict changes nothing
    up = store.begin_upload("r.bin", size=len(data), offset=3000)
    up.hash_prefix()
    up.write(data[3000:])
    up.commit(digest_of(data))
    assert (tmp_path / "r.bin").read_bytes() == data
    assert store.stat("r.bin").partial is None


def test_restart_drops_the_part(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    up = store.begin_upload("r", size=10, offset=0)
    up.write(b"xxxx")
    up.release()
    up = store.begin_upload("r", size=3, offset=0, restart=True)
    up.write(b"abc")
    up.commit(digest_of(b"abc"))
    assert (tmp_path / "r").read_bytes() == b"abc"


def test_second_uploader_is_locked_out(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    first = store.begin_upload("same", size=4, offset=0)
    with pytest.raises(FileStoreError) as e:
        store.begin_upload("same", size=4, offset=0)
    assert e.value.code == "locked"
    first.write(b"abcd")
    first.commit(digest_of(b"abcd"))


def test_digest_mismatch_discards(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    up = store.begin_upload("m", size=3, offset=0)
    up.write(b"abc")
    with pytest.raises(FileStoreError) as e:
        up.commit(digest_of(b"abd"))
    assert e.value.code == "digest_mismatch"
    assert list(tmp_path.iterdir()) == []


def test_limits_checked_before_any_body(tmp_path: Path) -> None:
    store = FileStore(tmp_path, max_file_size=100, quota=150)
    with pytest.raises(FileStoreError) as e:
        store.begin_upload("big", size=101, offset=0)
    assert e.value.code == "too_large"
    upload(store, "a", b"x" * 100)
    with pytest.raises(FileStoreError) as e:
        store.begin_upload("b", size=51, offset=0)
    assert e.value.code == "quota"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    ro = FileStore(tmp_path, readonly=True)
    with pytest.raises(FileStoreError) as e:
        ro.begin_upload("c", size=1, offset=0)
    assert e.value.code == "read_only"


def test_enospc_keeps_the_part_for_resume(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    budget = [1000]

    def full_disk(fd: int, data: bytes | memoryview) -> int:
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = os.write(fd, memoryview(data)[: budget[0]])
        budget[0] -= n
        return n

    store.write_hook = full_disk
    data = os.urandom(3000)
    up = store.begin_upload("f", size=3000, offset=0)
    with pytest.raises(FileStoreError) as e:
        up.write(data)
    assert e.value.code == "no_space"
    up.release()
    assert store.stat("f").partial == 1000
    store.write_hook = os.write  # space freed
    up = store.begin_upload("f", size=3000, offset=1000)
    up.hash_prefix()
    up.write(data[1000:])
    up.commit(digest_of(data))
    assert hash_file(tmp_path / "f") == digest_of(data)


# -- one quota for every process sharing a root ---------------------------------------------


def test_two_stores_on_one_root_share_the_quota(tmp_path: Path) -> None:
    a = FileStore(tmp_path, quota=100)  # two stores = two processes: separate descriptors,
    b = FileStore(tmp_path, quota=100)  # so separate flocks, no shared memory
    up_a = a.begin_upload("a", size=60, offset=0)
    with pytest.raises(FileStoreError) as e:
        b.begin_upload("b", size=41, offset=0)  # 60 reserved by the other store
    assert e.value.code == "quota"
    assert a.usage == b.usage == 60  # the reservation, before any byte is written
    up_b = b.begin_upload("b", size=40, offset=0)
    with pytest.raises(FileStoreError) as e:
        a.begin_upload("c", size=1, offset=0)
    assert e.value.code == "quota"
    up_b.write(b"y" * 40)
    up_b.commit(digest_of(b"y" * 40))
    up_a.write(b"x" * 25)
    up_a.release()  # cut: the part keeps 25 bytes, the rest of the reservation is freed
    assert b.usage == 65
    up_c = b.begin_upload("c", size=35, offset=0)
    with pytest.raises(FileStoreError) as e:
        a.begin_upload("a", size=60, offset=25)  # the resume needs 35 more
    assert e.value.code == "quota"
    up_c.discard()
    up_a = a.begin_upload("a", size=60, offset=25)
    up_a.hash_prefix()
    up_a.write(b"x" * 35)
    up_a.commit(digest_of(b"x" * 60))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no ledger left at rest
    assert a.usage == b.usage == 100


def test_concurrent_admissions_from_many_stores_never_exceed_the_quota(tmp_path: Path) -> None:
    quota, size, tries = 1000, 150, 12  # room for 6 of the 12
    stores = [FileStore(tmp_path, quota=quota) for _ in range(tries)]
    start = threading.Barrier(tries, timeout=scaled(10))
    results: list[Upload | FileStoreError] = [FileStoreError("io_error", "not run")] * tries

    def admit(i: int) -> None:
        start.wait()
        try:
            results[i] = stores[i].begin_upload(f"f{i}", size=size, offset=0)
        except FileStoreError as exc:
            results[i] = exc

    threads = [threading.Thread(target=admit, args=(i,)) for i in range(tries)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(scaled(10))
    admitted = [r for r in results if isinstance(r, Upload)]
    refused = [r for r in results if isinstance(r, FileStoreError)]
    assert len(admitted) == quota // size
    assert {r.code for r in refused} == {"quota"}
    for up in admitted:
        up.write(b"z" * size)
        up.commit(digest_of(b"z" * size))
    held = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert held == len(admitted) * size <= quota


def test_the_ledger_is_hidden_and_exists_only_while_uploads_are_live(tmp_path: Path) -> None:
    store = FileStore(tmp_path, quota=100)
    up = store.begin_upload("x", size=10, offset=0)
    assert (tmp_path / LEDGER).is_file()
    assert [e.name for e in store.listdir()] == []  # neither the part nor the ledger
    for call in (lambda: store.stat(LEDGER), lambda: store.open_read(LEDGER)):
        with pytest.raises(FileStoreError) as e:
            call()
        assert e.value.code == "bad_name"
    up.write(b"0123456789")
    up.commit(digest_of(b"0123456789"))
    assert not (tmp_path / LEDGER).exists()
    assert store.usage == 10  # the ledger itself is never counted


def test_a_ledger_entry_for_a_part_nobody_holds_does_not_count(tmp_path: Path) -> None:
    store = FileStore(tmp_path, quota=100)
    up = store.begin_upload("x", size=90, offset=0)
    up.write(b"a" * 5)
    # a crash in this process: the descriptors go away without _finish (kernel drops the lock)
    os.close(up._fd)
    os.close(up._dir_fd)
    up._done = True
    assert (tmp_path / LEDGER).is_file()
    assert store.usage == 5  # the part's bytes only, not its 90-byte reservation
    up = store.begin_upload("y", size=95, offset=0)
    up.discard()
    assert not (tmp_path / LEDGER).exists()


def test_writing_body_chunks_takes_no_lock_and_opens_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(tmp_path, quota=1000)
    up = store.begin_upload("hot", size=300, offset=0)
    ledger = (tmp_path / LEDGER).stat()

    def forbidden(*args: object, **kw: object) -> None:
        raise AssertionError("a system call on the hot path")

    with monkeypatch.context() as m:
        for mod, attr in ((os, "open"), (os, "stat"), (os, "lstat"), (fcntl, "flock")):
            m.setattr(mod, attr, forbidden)
        for _ in range(3):
            up.write(b"q" * 100)
    assert (tmp_path / LEDGER).stat().st_mtime_ns == ledger.st_mtime_ns
    up.commit(digest_of(b"q" * 300))


CRASHER = """
import sys
from wirecat.files.store import FileStore
up = FileStore(sys.argv[1], quota=100).begin_upload("x", size=80, offset=0)
up.write(b"c" * 10)
print("holding", flush=True)
sys.stdin.read()  # until killed
"""


def test_a_killed_process_reservation_is_dropped(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], scaled(10))
        assert ready and proc.stdout.readline() == "holding\n"
        store = FileStore(tmp_path, quota=100)
        with pytest.raises(FileStoreError) as e:
            store.begin_upload("y", size=21, offset=0)  # 80 reserved by the other process
        assert e.value.code == "quota"
        proc.kill()  # SIGKILL: no cleanup at all
        proc.wait(scaled(10))
        assert (tmp_path / LEDGER).is_file()  # the dead entry is still written down...
        up = store.begin_upload("y", size=90, offset=0)  # ...but no longer counts
        assert store.usage == 100  # the dead upload's 10 bytes on disk + this 90
        up.discard()
        up = store.begin_upload("x", size=80, offset=10)  # and the part resumes
        up.hash_prefix()
        up.write(b"c" * 70)
        up.commit(digest_of(b"c" * 80))
        assert not (tmp_path / LEDGER).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(scaled(10))
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()


# -- issue 13 items 7 and 8: long names, names that are not UTF-8, leftovers ---------------
@pytest.mark.parametrize("length", [247, 248, 250, 255])
def test_a_name_component_of_up_to_255_bytes_uploads_stats_and_resumes(
    tmp_path: Path, length: int
) -> None:
    """The part file of a 248-255 byte name no longer passes the 255-byte limit (before:
    ENAMETOOLONG escaped stat as a traceback and put failed with io_error)."""
    store = FileStore(tmp_path)
    name = "d/" + "n" * length
    assert store.stat(name).exists is False
    up = store.begin_upload(name, size=6, offset=0)
    up.write(b"abc")
    up.release()
    assert store.stat(name).partial == 3
    assert store.stat("d/" + "m" * length).partial is None  # another long name: no clash
    up = store.begin_upload(name, size=6, offset=3)
    up.hash_prefix()
    up.write(b"def")
    up.commit(digest_of(b"abcdef"))
    assert (tmp_path / name).read_bytes() == b"abcdef"
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["n" * length]


def test_long_name_parts_count_in_a_shared_quota(tmp_path: Path) -> None:
    name = "q" * 255
    a, b = FileStore(tmp_path, quota=100), FileStore(tmp_path, quota=100)
    up = a.begin_upload(name, size=80, offset=0)
    with pytest.raises(FileStoreError) as e:
        b.begin_upload("other", size=30, offset=0)
    assert e.value.code == "quota"  # the long name's reservation is live in the ledger
    up.write(b"x" * 80)
    up.commit(digest_of(b"x" * 80))


def test_a_name_that_is_not_utf8_is_left_out_of_list(tmp_path: Path) -> None:
    """Before: the listing raised UnicodeEncodeError and list failed for every client."""
    (tmp_path / "ok.txt").write_bytes(b"1")
    with open(os.path.join(os.fsencode(tmp_path), b"bad\xff\xfe.bin"), "wb") as f:
        f.write(b"2")
    store = FileStore(tmp_path)
    assert [e.name for e in store.listdir()] == ["ok.txt"]


@pytest.mark.parametrize(
    ("kw", "name", "size", "offset", "code"),
    [
        ({"quota": 10}, "new/dir/f", 11, 0, "quota"),
        ({}, "new/dir/f", 10, 5, "conflict"),
        ({"quota": 10}, "new/dir/f", 10, 5, "conflict"),
        ({"max_file_size": 5}, "new/dir/f", 6, 0, "too_large"),
        ({}, "new/.wcpart-x/f", 1, 0, "bad_name"),
    ],
)
def test_a_refused_put_creates_no_directory(
    tmp_path: Path, kw: dict[str, int], name: str, size: int, offset: int, code: str
) -> None:
    store = FileStore(tmp_path, **kw)  # type: ignore[arg-type]
    with pytest.raises(FileStoreError) as e:
        store.begin_upload(name, size=size, offset=offset)
    assert e.value.code == code
    assert list(tmp_path.iterdir()) == []


def test_a_failed_part_open_removes_the_directories_it_made(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    (tmp_path / "keep").mkdir()
    orig = store._open_part

    def failing(*a: object) -> int:
        raise FileStoreError("io_error", "boom")

    store._open_part = failing  # type: ignore[method-assign]
    with pytest.raises(FileStoreError):
        store.begin_upload("keep/a/b/f", size=1, offset=0)
    assert [p.name for p in tmp_path.rglob("*")] == ["keep"]
    store._open_part = orig  # type: ignore[method-assign]
    upload(store, "keep/a/b/f", b"z")


def test_a_put_that_left_before_its_first_byte_leaves_no_part(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.begin_upload("d/empty", size=10, offset=0).release()
    assert [p.name for p in (tmp_path / "d").iterdir()] == []
    assert store.stat("d/empty").partial is None


def test_abandoned_parts_expire_held_ones_stay(tmp_path: Path) -> None:
    store = FileStore(tmp_path, quota=1000)
    old = store.begin_upload("a/old", size=100, offset=0)
    old.write(b"x" * 10)
    old.release()
    fresh = store.begin_upload("fresh", size=100, offset=0)
    fresh.write(b"y" * 10)
    fresh.release()
    held = store.begin_upload("held", size=100, offset=0)
    held.write(b"z" * 10)
    long = store.begin_upload("l" * 255, size=100, offset=0)
    long.write(b"w" * 10)
    long.release()
    for p in tmp_path.rglob(".wcpart-*"):
        if p.name != ".wcpart-fresh":
            os.utime(p, (1, 1))  # written long ago (the held one too)
    assert store.usage == 10 + 10 + 100 + 10  # parts count until they expire
    assert store.sweep_parts(3600) == 2  # a/old and the long name's part
    assert store.stat("a/old").partial is None
    assert store.stat("l" * 255).partial is None
    assert store.stat("fresh").partial == 10
    assert store.stat("held").partial == 10  # locked by its uploader: kept
    assert store.usage == 10 + 100
    held.write(b"z" * 90)
    held.commit(digest_of(b"z" * 100))


def test_a_multibyte_255_byte_component(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    name = "é" * 127 + "x"  # 255 bytes of UTF-8
    upload(store, name, b"ok")
    assert store.stat(name).size == 2
