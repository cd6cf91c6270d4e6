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
