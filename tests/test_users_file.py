"""Issue #13 item 9: the users file is refused, like OpenSSH's StrictModes, when others could
read or change it, when it is a symbolic link, or when it is not a regular file (a FIFO used
to hang start-up); an empty one starts with a warning; SIGHUP reload applies the same checks.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import read_ready, scaled
from wirecat import ServeConfig
from wirecat.app import Server, prepare
from wirecat.auth import Users, UsersFileError, add_user, hash_token

T = scaled(10.0)
WIRECAT = [sys.executable, "-m", "wirecat.cli.main"]


def _users(tmp_path: Path, mode: int = 0o600, name: str = "users.toml") -> Path:
    path = tmp_path / name
    path.write_text(f'[users.ann]\ntoken = "{hash_token("ann-token", log_n=10)}"\n')
    path.chmod(mode)
    return path


# -- modes -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "risk"),
    [
        (0o644, "others can read its token hashes"),
        (0o604, "others can read its token hashes"),
        (0o602, "others can change it"),
        (0o666, "others can change it and read its token hashes"),
        (0o620, "others can change it"),  # group-writable
    ],
)
def test_a_file_others_may_read_or_change_is_refused(tmp_path: Path, mode: int, risk: str) -> None:
    path = _users(tmp_path, mode)
    with pytest.raises(UsersFileError) as info:
        Users.load(path)
    text = str(info.value)
    assert str(path) in text and f"mode {mode:04o}" in text and risk in text
    assert f"chmod 600 {path}" in text and "users_insecure_ok" in text
    assert len(Users.load(path, insecure_ok=True)) == 1  # the override accepts it


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640])  # group-readable is allowed
def test_private_modes_are_accepted(tmp_path: Path, mode: int) -> None:
    assert len(Users.load(_users(tmp_path, mode))) == 1


def test_a_file_owned_by_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _users(tmp_path)
    if os.geteuid() == 0:
        os.chown(path, 65534, -1)
    else:  # owned by us: pretend to be someone else
        monkeypatch.setattr("wirecat.auth.os.geteuid", lambda: os.getuid() + 1)
    with pytest.raises(UsersFileError, match="is owned by uid"):
        Users.load(path)
    assert len(Users.load(path, insecure_ok=True)) == 1


# -- not a regular file ------------------------------------------------------------------------
def test_a_symbolic_link_is_refused_unless_allowed(tmp_path: Path) -> None:
    real = _users(tmp_path, name="real.toml")
    link = tmp_path / "users.toml"
    link.symlink_to(real)
    with pytest.raises(UsersFileError, match="is a symbolic link") as info:
        Users.load(link)
    assert str(link) in str(info.value)
    assert len(Users.load(link, insecure_ok=True)) == 1  # followed when allowed


@pytest.mark.parametrize("insecure_ok", [False, True])
def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path: Path, insecure_ok: bool) -> None:
    fifo = tmp_path / "users.toml"
    os.mkfifo(fifo, 0o600)
    # A blocking open of a FIFO without a writer never returns: this test would hang.
    with pytest.raises(UsersFileError, match="is a FIFO, not a regular file"):
        Users.load(fifo, insecure_ok=insecure_ok)


def test_a_directory_and_a_device_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsersFileError, match="is a directory, not a regular file"):
        Users.load(tmp_path, insecure_ok=True)
    with pytest.raises(UsersFileError, match="is a character device, not a regular file"):
        Users.load("/dev/zero", insecure_ok=True)  # never read: it has no end


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(UsersFileError, match=r"cannot read users file .*No such file"):
        Users.load(tmp_path / "missing.toml")


# -- editing ---------------------------------------------------------------------------------
def test_users_add_creates_0600_and_tightens_an_open_file(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    add_user(path, "ann", log_n=10)
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)
    add_user(path, "bob", log_n=10)  # an edit may read an open file, and writes it back 0600
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(Users.load(path)) == 2
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(UsersFileError, match="FIFO"):
        add_user(fifo, "ann", log_n=10)


# -- empty file --------------------------------------------------------------------------------
def test_an_empty_users_file_starts_with_a_warning(
    tmp_path: Path, wirecat_logs: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "users.toml"
    path.write_text("# nobody yet\n")
    path.chmod(0o600)
    config = ServeConfig(greeting=[], echo=[], chat=["tcp://127.0.0.1:0"], users=str(path))
    prepared = prepare(config)
    assert prepared.users is not None and len(prepared.users) == 0
    warned = [r.getMessage() for r in wirecat_logs.records if r.levelno == logging.WARNING]
    assert any("has no users: nobody can log in" in m and str(path) in m for m in warned)


# -- reload ----------------------------------------------------------------------------------
async def test_reload_refuses_a_file_with_bad_modes_and_keeps_the_old_one(
    tmp_path: Path, wirecat_logs: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "users.toml"
    add_user(path, "ann", log_n=10)
    config = ServeConfig(greeting=[], echo=[], chat=["tcp://127.0.0.1:0"], users=str(path))
    async with Server(config) as server:
        first = server.users
        assert first is not None and "ann" in first
        add_user(path, "bob", log_n=10)
        path.chmod(0o666)
        await server.reload()
        assert server.users is first  # the old file stays in force
        errors = [r.getMessage() for r in wirecat_logs.records if r.levelno == logging.ERROR]
        assert any("keeping the old users file" in m and "mode 0666" in m for m in errors)
        path.unlink()
        os.mkfifo(path, 0o600)  # a FIFO is refused, not waited on
        await server.reload()
        assert server.users is first
        path.unlink()
        path.write_text("")
        path.chmod(0o600)
        await server.reload()  # an empty file is accepted, with a warning
        assert server.users is not None and len(server.users) == 0
        warned = [r.getMessage() for r in wirecat_logs.records if r.levelno == logging.WARNING]
        assert any("has no users" in m for m in warned)


async def test_reload_with_the_override_accepts_open_modes(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    add_user(path, "ann", log_n=10)
    config = ServeConfig(
        greeting=[], echo=[], chat=["tcp://127.0.0.1:0"], users=str(path), users_insecure_ok=True
    )
    async with Server(config) as server:
        add_user(path, "bob", log_n=10)
        path.chmod(0o644)
        await server.reload()
        assert server.users is not None and "bob" in server.users


# -- the command line --------------------------------------------------------------------------
def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WIRECAT, *args], capture_output=True, text=True, timeout=T, stdin=subprocess.DEVNULL
    )


def test_serve_refuses_an_open_users_file_with_exit_78(tmp_path: Path) -> None:
    path = _users(tmp_path, 0o644)
    r = _run("serve", "--users", str(path), "--chat", "tcp://127.0.0.1:0", "--no-greeting")
    assert r.returncode == 78, r.stderr
    assert str(path) in r.stderr and "mode 0644" in r.stderr and "chmod 600" in r.stderr
    assert "--users-insecure-ok" in r.stderr and "Traceback" not in r.stderr


def test_serve_refuses_a_fifo_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "users.toml"
    os.mkfifo(fifo, 0o600)
    r = _run("serve", "--users", str(fifo), "--chat", "tcp://127.0.0.1:0", "--no-greeting")
    assert r.returncode == 78 and "is a FIFO, not a regular file" in r.stderr, r.stderr


def test_serve_with_the_override_starts(tmp_path: Path) -> None:
    path = _users(tmp_path, 0o644)
    argv = [*WIRECAT, "serve", "--json", "--users", str(path), "--users-insecure-ok",
            "--chat", "tcp://127.0.0.1:0", "--no-greeting", "--no-echo"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert read_ready(proc.stdout, T)["ready"] is True
    finally:
        proc.terminate()
        proc.communicate(timeout=T)


def test_users_check_applies_the_same_checks(tmp_path: Path) -> None:
    path = _users(tmp_path, 0o644)
    r = _run("users", "check", str(path))
    assert r.returncode == 78 and "mode 0644" in r.stderr and "--insecure-ok" in r.stderr
    assert "--users-insecure-ok" not in r.stderr
    assert _run("users", "check", "--insecure-ok", str(path)).returncode == 0
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    empty.chmod(0o600)
    r = _run("users", "check", str(empty))
    assert r.returncode == 0 and "has no users" in r.stderr


def test_relay_socks_applies_the_same_checks(tmp_path: Path) -> None:
    path = _users(tmp_path, 0o644)
    r = _run("relay", "socks5://127.0.0.1:0", "--users", str(path))
    assert r.returncode == 78 and "mode 0644" in r.stderr and "--users-insecure-ok" in r.stderr
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo, 0o600)
    r = _run("relay", "socks5://127.0.0.1:0", "--users", str(fifo), "--users-insecure-ok")
    assert r.returncode == 78 and "is a FIFO" in r.stderr


def test_users_add_says_when_it_tightened_the_mode(tmp_path: Path) -> None:
    path = _users(tmp_path, 0o644)
    r = _run("users", "add", str(path), "bob")
    assert r.returncode == 0 and "was mode 0644; it is now 0600" in r.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    r = _run("users", "reset", str(path), "bob")
    assert r.returncode == 0 and "now 0600" not in r.stderr  # nothing to say
