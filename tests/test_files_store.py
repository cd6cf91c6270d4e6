"""The file store: jail, part files, resume offsets, locks, quota, ENOSPC, atomic commit."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from wirecat.files.client import hash_file
from wirecat.files.digest import new_hasher
from wirecat.files.store import FileStore, FileStoreError


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
