"""Hardening II (#13): peer text cannot forge log lines; a mistyped files root is refused."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from wirecat import ConfigError, ServeConfig
from wirecat.app import build_services, prepare
from wirecat.runtime.logs import _TextFormatter

HOSTILE = "ann\n12:00:00 WARNING forged line\x1b]0;pwned\x07\u202e"


def _format(msg: str, *args: object, **extra: object) -> str:
    record = logging.LogRecord("wirecat", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return _TextFormatter("%(levelname)s %(message)s").format(record)


@pytest.mark.parametrize("field", ["user", "peer", "reason", "service"])
def test_context_fields_are_escaped(field: str) -> None:
    line = _format("refused", **{field: HOSTILE})
    assert "\n" not in line and "\x1b" not in line and "\u202e" not in line
    assert "\\x0a12:00:00 WARNING forged line\\x1b]0;pwned\\x07\\u202e" in line


def test_message_arguments_are_escaped_but_numbers_stay_numbers() -> None:
    line = _format("auth failed for %s after %d tries in %.1f s", HOSTILE, 3, 1.25)
    assert line.count("\n") == 0 and "\x1b" not in line
    assert "after 3 tries in 1.2 s" in line


def test_missing_files_root_is_refused(tmp_path: Path) -> None:
    config = ServeConfig(greeting=[], echo=[], chat=[], files_root=str(tmp_path / "typo"))
    with pytest.raises(ConfigError) as info:
        build_services(config, prepare(config))
    assert info.value.field == "files_root" and "typo" in str(info.value)
    assert not (tmp_path / "typo").exists()  # nothing created
    ok = config.replace(files_create=True)
    assert build_services(ok, prepare(ok))
    assert (tmp_path / "typo").is_dir()


def test_serve_files_typo_exits_78_with_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "wirecat",
            "serve",
            "--no-greeting",
            "--no-echo",
            "--no-chat",
            "--files",
            str(missing),
            "--files-endpoint",
            "tcp://127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 78, r.stderr
    assert str(missing) in r.stderr and "--files-create" in r.stderr
    assert "Traceback" not in r.stderr and not missing.exists()


async def test_an_uploader_that_leaves_after_its_last_byte_gets_a_committed_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio
    import json

    import wirecat
    from helpers import scaled, wait_for
    from wirecat.files.digest import new_hasher

    data = b"payload " * 4096
    h = new_hasher("blake3")
    h.update(data)
    config = ServeConfig(
        greeting=[], echo=[], chat=[], files_root=str(tmp_path), files=["tcp://127.0.0.1:0"]
    )
    caplog.set_level(logging.INFO, logger="wirecat")
    async with wirecat.Server(config) as server:
        ep = server.endpoint("files")
        reader, writer = await asyncio.open_connection(ep.host, ep.port)
        header = {"op": "put", "name": "a.bin", "size": len(data), "digest": "blake3"}
        writer.write(json.dumps(header).encode() + b"\n")
        assert json.loads(await asyncio.wait_for(reader.readline(), scaled(10)))["ok"]
        writer.write(data + json.dumps({"digest": h.hexdigest()}).encode() + b"\n")
        await writer.drain()
        writer.transport.abort()  # put, body, trailer, gone
        await wait_for(lambda: (tmp_path / "a.bin").exists(), scaled(10), what="committed")
        await wait_for(lambda: server.ctx.metrics["files_puts"] == 1, scaled(10))
    assert (tmp_path / "a.bin").read_bytes() == data
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_deeply_nested_files_header_is_a_clear_error() -> None:
    from wirecat import InvalidMessage
    from wirecat.protocols.files import FilesClientProtocol, FilesServerProtocol

    server = FilesServerProtocol()
    with pytest.raises(InvalidMessage, match="nested too deeply"):
        server.receive_data(b"[" * 8000 + b"\n")
        server.events_received()
    client = FilesClientProtocol()
    client.send_list("")
    with pytest.raises(InvalidMessage, match="nested too deeply"):
        client.receive_data(b"[" * 8000 + b"\n")
        client.events_received()


def _serve_json(*args: str) -> tuple[subprocess.Popen[str], dict[str, list[str]]]:
    from helpers import read_ready

    proc = subprocess.Popen(
        [sys.executable, "-m", "wirecat", "serve", "--json", "--no-greeting", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc, read_ready(proc.stdout, 30)["endpoints"]


def test_files_clients_say_what_to_type_and_spot_the_wrong_service(tmp_path: Path) -> None:
    from wirecat.auth import add_user

    users = tmp_path / "users.toml"
    add_user(users, "ann", log_n=10)
    proc, eps = _serve_json(
        *("--no-chat", "--echo", "tcp://127.0.0.1:0", "--users", str(users)),
        *("--files", str(tmp_path), "--files-endpoint", "tcp://127.0.0.1:0"),
    )
    try:
        for target, words in (
            (eps["files"][0], "run again with --user NAME and the token in $WIRECAT_TOKEN"),
            (eps["echo"][0], "does not look like a wirecat files service"),
        ):
            r = subprocess.run(
                [sys.executable, "-m", "wirecat", "ls", target],
                capture_output=True,
                text=True,
                timeout=30,
                env={k: v for k, v in __import__("os").environ.items() if k != "WIRECAT_TOKEN"},
            )
            assert r.returncode != 0 and words in r.stderr, r.stderr
            assert "Traceback" not in r.stderr
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_ctrl_c_during_send_says_how_far_it_got(tmp_path: Path) -> None:
    import json
    import signal
    import socket

    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (64 * 1024 * 1024))
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(30)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wirecat",
                "send",
                str(big),
                f"127.0.0.1:{srv.getsockname()[1]}",
                "--retries",
                "0",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        conn, _ = srv.accept()
        with conn:
            reader = conn.makefile("rb")
            header = json.loads(reader.readline())
            assert header["op"] == "stat"  # resume: what does the server hold? nothing
            conn.sendall(
                b'{"ok": true, "name": "big.bin", "exists": false, "size": null,'
                b' "mtime": null, "partial": null}\n'
            )
            assert json.loads(reader.readline())["op"] == "put"
            conn.sendall(b'{"ok": true, "ready": true, "offset": 0}\n')
            got = 0
            while got < 1024 * 1024:  # the body is flowing; then this peer stops reading
                got += len(conn.recv(65536))
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted after" in err and "run the same command again to resume" in err
    assert "Traceback" not in err


def test_serve_hints_run_as_printed_and_contradictions_are_refused() -> None:
    import os
    import re
    import signal

    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wirecat",
            "serve",
            "--no-chat",
            "--no-web",
            "--greeting",
            "tcp://[::1]:0",
            "--echo",
            "tcp://127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        hints: dict[str, str] = {}
        while len(hints) < 2:
            line = proc.stdout.readline()
            assert line, "no table"
            m = re.search(r"(greeting|echo)\s.*?(nc \S+ \d+)", line)
            if m:
                hints[m.group(1)] = m.group(2)
        assert hints["greeting"].startswith("nc ::1 ")  # Debian's nc refuses [::1]
        out = subprocess.run(hints["greeting"].split(), capture_output=True, text=True, timeout=30)
        assert out.stdout == "Thank you for connecting\n"
        out = subprocess.run(
            [*hints["echo"].split(), "-N"],
            input="as printed\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.stdout == "as printed\n"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    r = subprocess.run(
        [sys.executable, "-m", "wirecat", "serve", "--no-echo", "--echo", "tcp://127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 64 and "contradict" in r.stderr


def test_missing_unix_socket_says_so() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "wirecat", "connect", "unix:/tmp/wirecat-no-such.sock"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 69 and "no such socket file" in r.stderr
