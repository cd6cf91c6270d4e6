"""Every command README.md shows works as shown (#14): each one is either run here, in the
scenario the README puts it in (the servers it starts, on their documented ports), or listed
in NOT_RUN with the reason. A new README command without either fails
``test_every_readme_command_is_accounted_for``.

The scenarios use the README's fixed loopback ports (7000, 7007, 7070, 7071, 7080, 9000...),
one server at a time, each stopped before the next starts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers import ports_in_use, scaled

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
T = scaled(30)

pytestmark = pytest.mark.interop


#: The fixed loopback ports the scenarios bind (the README's), by transport.
_TCP = "1080 3128 7000 7007 7009 7070 7071 7080 7443 9000 9001 9002 9080 9107 9443"
FIXED_PORTS: dict[str, tuple[int, ...]] = {
    "tcp": tuple(int(port) for port in _TCP.split()),
    "udp": (7007, 9000, 9053),
}


@pytest.fixture(scope="module", autouse=True)
def _fixed_ports_are_free() -> None:
    """Fail at once, naming the port, if another process holds a README port (a server
    left running, another run of this module): later failures would be confusing."""
    busy = ports_in_use(FIXED_PORTS)
    if busy:
        pytest.fail("README ports are not free: " + "; ".join(busy), pytrace=False)


def readme_commands() -> list[str]:
    """Every command line of README's ``sh`` blocks, comments stripped."""
    out: list[str] = []
    inside = False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```sh"
            continue
        if inside:
            text = re.sub(r"\s+#.*$", "", line).strip()
            if text and not text.startswith("#"):
                out.append(text)
    return out


#: Commands not run here, and why (each is covered in another way where it can be).
NOT_RUN = {
    "./scripts/test.sh": "this suite is what it runs (CI calls it)",
    "wirecat connect tls://example.com:443 --alpn http/1.1": "needs the internet; the same "
    "flags run against local TLS servers in test_tls.py and test_cli_connect.py",
    "wirecat serve --workers 2 --no-chat": "runs in test_files_workers.py (--workers 2)",
    "wirecat serve --web tcp://[::]:8080 --allow-origin https://chat.example.com": "binds "
    "every address; --allow-origin runs in test_websocket_service.py",
    "wirecat serve --no-chat --echo tcp://[::]:7007 --echo udp://[::]:7007": "binds every "
    "address; [::] listeners run in test_runtime.py",
    "wirecat serve --chat tls://[::]:7443 --self-signed --users users.toml": "binds every "
    "address; the same run on 127.0.0.1 below (users scenario)",
}

RUN: set[str] = set()  # filled by the scenarios as they run each command


def wirecat(args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        f"{BIN}/wirecat {args}", shell=True, capture_output=True, text=True, timeout=T, **kw
    )


def sh(command: str, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.update(kw.pop("env", {}))  # type: ignore[call-overload]
    return subprocess.run(
        command, shell=True, capture_output=True, text=True, timeout=T, env=env, **kw
    )


def ran(command: str) -> str:
    RUN.add(command)
    return command


def wait_port(port: int, host: str = "127.0.0.1", udp: bool = False) -> None:
    kind = "-Hulnp" if udp else "-Htlnp"
    deadline = time.monotonic() + T
    while time.monotonic() < deadline:
        out = subprocess.run(["ss", kind], capture_output=True, text=True).stdout
        if re.search(rf"{re.escape(host)}:{port}\b", out):
            return
        time.sleep(0.05)  # polling the socket table for a process we started
    raise AssertionError(f"nothing listens on {host}:{port}")


@contextmanager
def background(
    command: str, cwd: Path | None = None, **env: str
) -> Iterator[subprocess.Popen[str]]:
    ran(command)
    runnable = command.replace("wirecat ", f"{BIN}/wirecat ", 1)
    proc = subprocess.Popen(
        "exec " + runnable,  # the shell becomes the command: signals reach it
        shell=True,
        cwd=cwd or ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(T)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=T)


def test_quickstart_and_clients_against_the_default_server() -> None:
    with background(ran("./scripts/serve.sh")):
        for port in (7000, 7007, 7070, 7080):
            wait_port(port)
        assert sh(ran("nc 127.0.0.1 7000"), input="").stdout == "Thank you for connecting\n"
        assert sh(ran("nc 127.0.0.1 7007") + " -N", input="hi\n").stdout == "hi\n"
        chat = sh(ran("nc 127.0.0.1 7070") + " -N", input="ann\nhello\n/quit\n").stdout
        assert "ann" in chat and "#lobby" in chat
        out = sh(ran(".venv/bin/wirecat connect udp://127.0.0.1:7007"), cwd=ROOT, input="dgram\n")
        assert out.stdout == "dgram\n"
        assert sh(ran("echo hello | wirecat connect 127.0.0.1:7007")).stdout == "hello\n"
        assert sh(ran("wirecat connect udp://127.0.0.1:7007"), input="u\n").stdout == "u\n"
        ws = sh(ran("wirecat connect ws://127.0.0.1:7080/chat"), input='{"type":"ping"}\n')
        assert ws.returncode == 0 and '"pong"' in ws.stdout
        bot = sh(ran("wirecat chat 127.0.0.1:7070 --nick ann"), input="hello from a pipe\n")
        assert bot.returncode == 0 and "hello from a pipe" in bot.stdout
        assert "7007/tcp  open" in sh(ran("wirecat scan 127.0.0.1 7000-7100")).stdout
        assert sh(ran("wirecat ping 127.0.0.1 -c 3")).returncode == 0
        with background("wirecat relay socks5://127.0.0.1:1080"):
            ran("wirecat relay socks5://127.0.0.1:1080 &")
            wait_port(1080)
            out = sh(
                ran("wirecat connect 127.0.0.1:7007 --proxy socks5://127.0.0.1:1080"), input="p\n"
            )
            assert out.stdout == "p\n"
            health = sh(ran("curl --socks5-hostname 127.0.0.1:1080 http://127.0.0.1:7080/healthz"))
            assert json.loads(health.stdout)["status"] == "ok"
        with background(ran("wirecat relay http-proxy://127.0.0.1:3128")):
            wait_port(3128)
            health = sh(
                ran(
                    "curl --proxytunnel --proxy http://127.0.0.1:3128 http://127.0.0.1:7080/healthz"
                )
            )
            assert json.loads(health.stdout)["status"] == "ok"
        with background(ran("wirecat relay ws://127.0.0.1:9080/ tcp://127.0.0.1:7007 --ws-text")):
            wait_port(9080)
            # --no-shutdown: a WebSocket has no half-close (stdin's EOF would close it
            # before the echo is back); --wait bounds the wait for the reply.
            out = sh("wirecat connect ws://127.0.0.1:9080/ --no-shutdown -w 2", input="relayed\n")
            assert out.stdout == "relayed\n", out
        with background(
            ran("wirecat relay tcp://127.0.0.1:9002 ws://127.0.0.1:7080/chat --ws-text")
        ):
            wait_port(9002)
            out = sh("nc -N 127.0.0.1 9002", input='{"type":"ping"}\n')
            assert '"pong"' in out.stdout, out
        seq = "wirecat relay unix+seqpacket:/tmp/echo.seq tcp://127.0.0.1:7007"
        with background(ran(seq)) as proc:
            assert proc.stderr is not None and "relaying" in proc.stderr.readline()
            out = sh("socat - UNIX-CONNECT:/tmp/echo.seq,type=5", input="packet\n")
            assert out.stdout == "packet\n", out
        for relay, port, check in (
            (
                "wirecat relay tcp://127.0.0.1:9000 tcp://127.0.0.1:7007",
                9000,
                "nc -N 127.0.0.1 9000",
            ),
            ("wirecat relay tcp://127.0.0.1:9001 exec:'tr a-z A-Z'", 9001, "nc -N 127.0.0.1 9001"),
            (
                "wirecat relay udp://127.0.0.1:9053 udp://127.0.0.1:7007",
                9053,
                "nc -u -w1 127.0.0.1 9053",
            ),
        ):
            with background(relay):
                wait_port(port, udp="udp" in relay)
                out = sh(check, input="relayed\n").stdout
                assert out in ("relayed\n", "RELAYED\n"), (relay, out)
        with background(
            "wirecat relay tls://127.0.0.1:9443 tcp://127.0.0.1:7070 --self-signed"
        ) as p:
            assert p.stderr is not None
            fingerprint = re.search(r"sha256:[0-9a-f]{64}", p.stderr.readline())
            assert fingerprint
            wait_port(9443)
            out = wirecat(
                f"chat tls://127.0.0.1:9443 --nick tlsann --pin {fingerprint.group()}",
                input="over tls\n",
            )
            assert out.returncode == 0 and "over tls" in out.stdout


def test_serve_variants_start_and_drain() -> None:
    for command in (
        "wirecat serve",
        "wirecat serve --chat tcp://127.0.0.1:7070 --chat unix:/tmp/chat.sock --history 100",
        "wirecat serve --config examples/wirecat.toml --history 20",
        "wirecat serve --log-format json -v",
        "wirecat serve --metrics tcp://127.0.0.1:9107",
        "wirecat serve --echo ws://127.0.0.1:7009",
    ):
        with background(command) as proc:
            wait_port(7007 if "ws://" not in command else 7009)
            if "metrics" in command:
                wait_port(9107)
                assert "wirecat_up" in sh("curl -s http://127.0.0.1:9107/metrics").stdout
            if "unix:/tmp/chat.sock" in command:
                assert sh("nc -U -N /tmp/chat.sock", input="ann\n/quit\n").stdout
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(T) == 0, (command, proc.stderr.read() if proc.stderr else "")


def test_tls_serve_and_pinned_connect() -> None:
    with background("wirecat serve --chat tls://127.0.0.1:7443 --self-signed") as proc:
        assert proc.stdout is not None
        text = ""
        while "sha256:" not in text:
            line = proc.stdout.readline()
            assert line, "no fingerprint printed"
            text += line
        pin = re.search(r"sha256:[0-9a-f]{64}", text)
        assert pin
        wait_port(7443)
        ran("wirecat connect tls://127.0.0.1:7443 --pin sha256:3f1c...")
        out = wirecat(f"connect tls://127.0.0.1:7443 --pin {pin.group()}", input="nick\n")
        assert out.returncode == 0, out.stderr


def test_bench_against_a_load_test_server() -> None:
    with background("wirecat serve --load-test"):
        wait_port(7007)
        wait_port(7070)
        echo = wirecat(ran("wirecat bench 127.0.0.1:7007 -c 100 -d 10")[8:])
        assert echo.returncode == 0 and "round trips" in echo.stdout, echo.stderr
        chat = wirecat(ran("wirecat bench 127.0.0.1:7070 -m chat -c 100 --json")[8:])
        assert chat.returncode == 0 and json.loads(chat.stdout)["deliveries"] > 0, chat.stderr


def test_files_send_get_ls(tmp_path: Path) -> None:
    (tmp_path / "big.iso").write_bytes(os.urandom(3_000_000))
    with background(
        "wirecat serve --files ./shared --files-create --quota 10000000000", cwd=tmp_path
    ):
        wait_port(7071)
        assert sh(ran("wirecat send big.iso 127.0.0.1:7071"), cwd=tmp_path).returncode == 0
        got = sh(ran("wirecat get big.iso 127.0.0.1:7071 -o /tmp/big.iso --digest sha256 --json"))
        assert got.returncode == 0 and json.loads(got.stdout)["ok"], got.stderr
        assert Path("/tmp/big.iso").read_bytes() == (tmp_path / "big.iso").read_bytes()
        assert "big.iso" in sh(ran("wirecat ls 127.0.0.1:7071")).stdout
    os.unlink("/tmp/big.iso")


def test_users_and_authenticated_clients(tmp_path: Path) -> None:
    add = sh(ran("wirecat users add users.toml ann --role admin"), cwd=tmp_path)
    token = add.stdout.strip().split()[-1]
    assert add.returncode == 0 and token
    assert sh(ran("wirecat users check users.toml"), cwd=tmp_path).returncode == 0
    assert sh(ran("wirecat users add users.toml bob"), cwd=tmp_path).returncode == 0
    with background("wirecat serve --users users.toml --guests", cwd=tmp_path):
        wait_port(7070)
    command = "wirecat serve --chat tls://127.0.0.1:7443 --self-signed --users users.toml"
    with background(command, cwd=tmp_path) as proc:
        assert proc.stdout is not None
        text = ""
        while "sha256:" not in text:
            text += proc.stdout.readline()
        pin = re.search(r"sha256:[0-9a-f]{64}", text)
        assert pin
        wait_port(7443)
        ran("WIRECAT_TOKEN=... wirecat chat tls://host:7443 -n ann --pin sha256:...")
        out = sh(
            f"wirecat chat tls://localhost:7443 -n ann --pin {pin.group()}",
            input="hi as ann\n",
            env={"WIRECAT_TOKEN": token},
        )
        assert out.returncode == 0 and "authenticated" in out.stdout, out.stderr
    (tmp_path / "big.iso").write_bytes(b"x" * 1000)
    with background(
        "wirecat serve --users users.toml --files ./shared --files-create", cwd=tmp_path
    ):
        wait_port(7071)
        ran("WIRECAT_TOKEN=... wirecat send big.iso 127.0.0.1:7071 --user ann")
        out = sh(
            "wirecat send big.iso 127.0.0.1:7071 --user ann",
            cwd=tmp_path,
            env={"WIRECAT_TOKEN": token},
        )
        assert out.returncode == 0, out.stderr


def test_listen_examples() -> None:
    with background("wirecat listen tcp://127.0.0.1:9000") as proc:
        wait_port(9000)
        sh("nc -N 127.0.0.1 9000", input="to stdout\n")
        assert proc.stdout is not None and proc.stdout.readline() == "to stdout\n"
    with background("wirecat listen tcp://127.0.0.1:9000 -k --exec 'cat'"):
        wait_port(9000)
        assert sh("nc -N 127.0.0.1 9000", input="cat me\n").stdout == "cat me\n"
    with background("wirecat listen udp://127.0.0.1:9000") as proc:
        wait_port(9000, udp=True)
        sh("nc -u -w1 127.0.0.1 9000", input="datagram\n")
        assert proc.stdout is not None and proc.stdout.readline() == "datagram\n"


def test_every_readme_command_is_accounted_for() -> None:
    # Runs last in this file (pytest keeps file order): every command was run or excused.
    commands = readme_commands()
    assert len(commands) > 30
    missing = [c for c in commands if c not in RUN and c not in NOT_RUN]
    assert not missing, f"README commands neither run nor excused: {missing}"
