"""``wirecat listen`` with nc, ncat, socat and ``wirecat connect`` as clients."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

import pytest

from _peers import (
    WIRECAT,
    Running,
    host_port,
    one_line_error,
    peer,
    recv_all,
    recv_until,
    timeout,
    wirecat,
)

pytestmark = pytest.mark.interop


def _listen(*args: str, stdin: object = subprocess.PIPE) -> Running:
    return Running([*WIRECAT, "listen", *args], stdin=stdin)


def test_prints_real_port_and_bridges_wirecat_connect(loop_kind: str) -> None:
    with _listen("--loop", loop_kind, "tcp://127.0.0.1:0") as server:
        endpoint = server.wait_listening()
        assert re.fullmatch(r"tcp://127\.0\.0\.1:[1-9]\d*", endpoint), endpoint
        server.write(b"from server\n", close=True)
        client = wirecat("connect", "--loop", loop_kind, endpoint, input=b"from client\n")
        code, out, err = server.finish()
    assert (client.returncode, client.stdout) == (0, b"from server\n"), client.stderr
    assert (code, out) == (0, b"from client\n"), err


def _client_cmd(name: str, host: str, port: str) -> list[str]:
    if name == "nc":
        return [peer("nc"), "-N", host, port]  # -N: shutdown(SHUT_WR) on stdin EOF
    if name == "ncat":
        return [peer("ncat"), host, port]  # ncat half-closes on stdin EOF by default
    return [peer("socat"), "-t", str(timeout(5)), "-", f"TCP:{host}:{port}"]


@pytest.mark.parametrize("client", ["nc", "ncat", "socat"])
def test_real_clients_both_directions(client: str) -> None:
    with _listen("tcp://127.0.0.1:0") as server:
        host, port = host_port(server.wait_listening())
        server.write(b"hello " + client.encode() + b"\n", close=True)
        proc = subprocess.run(
            _client_cmd(client, host, port),
            input=b"hi wirecat\n",
            capture_output=True,
            timeout=timeout(),
            check=False,
        )
        code, out, err = server.finish()
    assert (proc.returncode, proc.stdout) == (0, b"hello " + client.encode() + b"\n"), proc.stderr
    assert (code, out) == (0, b"hi wirecat\n"), err


def test_binary_from_a_file_with_nc(tmp_path: object) -> None:
    data = os.urandom(512 * 1024)
    path = os.path.join(str(tmp_path), "payload.bin")
    with open(path, "wb") as f:
        f.write(data)
    with open(path, "rb") as fin, _listen("tcp://127.0.0.1:0", stdin=fin) as server:
        host, port = host_port(server.wait_listening())
        proc = subprocess.run(
            [peer("nc"), "-N", host, port],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout(),
            check=False,
        )
        code, out, err = server.finish()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data
    assert (code, out) == (0, b""), err


def test_unix_with_nc_and_wirecat(unix_dir: str) -> None:
    path = os.path.join(unix_dir, "l.sock")
    with _listen(f"unix:{path}") as server:
        assert server.wait_listening() == f"unix:{path}"
        server.write(b"to nc\n", close=True)
        proc = subprocess.run(
            [peer("nc"), "-N", "-U", path],
            input=b"from nc\n",
            capture_output=True,
            timeout=timeout(),
            check=False,
        )
        code, out, err = server.finish()
    assert (proc.returncode, proc.stdout) == (0, b"to nc\n"), proc.stderr
    assert (code, out) == (0, b"from nc\n"), err
    assert not os.path.exists(path)  # the socket file is removed

    with _listen(f"unix:{path}") as server:
        server.wait_listening()
        server.write(b"", close=True)
        client = wirecat("connect", f"unix:{path}", input=b"from wirecat\n")
        code, out, err = server.finish()
    assert client.returncode == 0, client.stderr
    assert (code, out) == (0, b"from wirecat\n"), err


def test_one_peer_mode_refuses_a_second_peer() -> None:
    with _listen("-v", "tcp://127.0.0.1:0") as server:
        endpoint = server.wait_listening()
        host, port = host_port(endpoint)
        first = socket.create_connection((host, int(port)), timeout=timeout())
        with first:
            server.wait_line(r"^wirecat: connection from 127\.0\.0\.1:\d+$")
            second = wirecat("connect", endpoint)
            assert second.returncode == 69, second.stderr
            first.sendall(b"only me\n")
            first.shutdown(socket.SHUT_WR)
            server.write(b"", close=True)
            assert recv_all(first) == b""
        code, out, err = server.finish()
    assert (code, out) == (0, b"only me\n"), err


def test_keep_open_serves_peers_in_turn_and_broadcasts_stdin() -> None:
    with _listen("-k", "-v", "tcp://127.0.0.1:0") as server:
        host, port = host_port(server.wait_listening())
        conn_from = r"^wirecat: connection from 127\.0\.0\.1:\d+$"
        # peers in turn: each one's output reaches stdout, the listener stays open
        for name in (b"first", b"second"):
            c = wirecat("connect", f"{host}:{port}", input=name + b"\n")
            assert c.returncode == 0, c.stderr
        # two peers at once: a stdin line reaches both
        a = socket.create_connection((host, int(port)), timeout=timeout())
        b = socket.create_connection((host, int(port)), timeout=timeout())
        with a, b:
            for _ in range(4):  # 2 earlier + a + b
                server.wait_line(conn_from)
            server.write(b"to everyone\n")
            assert recv_until(a, b"\n") == b"to everyone\n"
            assert recv_until(b, b"\n") == b"to everyone\n"
            # stdin EOF: every peer reads EOF
            assert server.proc.stdin is not None
            server.proc.stdin.close()
            assert recv_all(a) == b""
            assert recv_all(b) == b""
        server.signal(signal.SIGINT)
        code, out, err = server.finish()
    assert code == 130, err
    assert sorted(out.splitlines()) == [b"first", b"second"]
    assert "Traceback" not in err


@pytest.mark.parametrize("client", ["nc", "ncat", "socat"])
def test_exec_cat_is_an_echo_server(client: str) -> None:
    with _listen("--exec", "cat", "tcp://127.0.0.1:0", stdin=subprocess.DEVNULL) as server:
        host, port = host_port(server.wait_listening())
        proc = subprocess.run(
            _client_cmd(client, host, port),
            input=b"echo me\n",
            capture_output=True,
            timeout=timeout(),
            check=False,
        )
        code, out, err = server.finish()
    assert (proc.returncode, proc.stdout) == (0, b"echo me\n"), proc.stderr
    assert (code, out) == (0, b""), err


def test_keep_open_sh_exec_per_peer() -> None:
    with _listen("-k", "--sh-exec", "echo hello; cat", "tcp://127.0.0.1:0") as server:
        endpoint = server.wait_listening()
        for word in (b"one", b"two"):
            c = wirecat("connect", endpoint, input=word + b"\n")
            assert (c.returncode, c.stdout) == (0, b"hello\n" + word + b"\n"), c.stderr
        server.signal(signal.SIGTERM)
        code, _, err = server.finish()
    assert code == 143, err  # SIGTERM: a quiet, clean stop


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_exec_children_are_stopped_with_the_listener() -> None:
    # The shell starts a grandchild and reports its pid; stopping wirecat must stop both.
    cmd = "sleep 60 & echo $!; wait"
    with _listen("-k", "--sh-exec", cmd, "tcp://127.0.0.1:0") as server:
        host, port = host_port(server.wait_listening())
        with socket.create_connection((host, int(port)), timeout=timeout()) as c:
            pid = int(recv_until(c, b"\n"))
            assert _alive(pid)
            server.signal(signal.SIGINT)
            assert recv_all(c) == b""  # the bridge ended and the connection closed
        code, _, err = server.finish()
    assert code == 130, err
    deadline = time.monotonic() + timeout(5)
    while _alive(pid):  # killed at once; reaping by init is asynchronous
        assert time.monotonic() < deadline, f"grandchild {pid} outlived wirecat listen"
        time.sleep(0.01)


def test_exec_missing_command_is_a_usage_error() -> None:
    proc = wirecat("listen", "--exec", "no-such-program-xyz", "tcp://127.0.0.1:0")
    assert proc.returncode == 64
    assert "command not found" in one_line_error(proc)


def test_bad_endpoint_and_address_in_use() -> None:
    bad = wirecat("listen", "tcp://127.0.0.1:notaport")
    assert bad.returncode == 64
    one_line_error(bad)
    websocket = wirecat("listen", "ws://127.0.0.1:0/")  # relay ws:// FROM publishes a service
    assert websocket.returncode == 64
    one_line_error(websocket)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        busy = wirecat("listen", f"tcp://127.0.0.1:{port}")
    assert busy.returncode == 71
    assert "address already in use" in one_line_error(busy)
