"""``wirecat connect`` as a subprocess against plain blocking-socket servers in a thread."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading

import pytest

from _peers import (
    WIRECAT,
    Running,
    TcpPeer,
    UdpEcho,
    one_line_error,
    recv_all,
    recv_until,
    timeout,
    wirecat,
)


def _echo_until_eof(conn: socket.socket) -> int:
    """Echo every byte; after the client's EOF, close (the client then exits)."""
    total = 0
    while data := conn.recv(65536):
        conn.sendall(data)
        total += len(data)
    return total


def test_both_directions_and_half_close(loop_kind: str) -> None:
    def handler(conn: socket.socket) -> bytes:
        conn.sendall(b"hello from server\n")
        got = recv_all(conn)  # returns only once wirecat half-closed (stdin ended)
        conn.sendall(b"got " + str(len(got)).encode() + b" bytes\n")  # still printed
        return got

    with TcpPeer(handler) as server:
        proc = wirecat("connect", "--loop", loop_kind, server.endpoint, input=b"one\ntwo\n")
        (got,) = server.join()
    assert got == b"one\ntwo\n"
    assert proc.stdout == b"hello from server\ngot 8 bytes\n"
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""


def test_host_and_port_as_two_arguments() -> None:
    with TcpPeer(lambda c: (c.sendall(b"hi\n"), recv_all(c))[1]) as server:
        proc = wirecat("connect", "127.0.0.1", str(server.port), input=b"x")
        assert server.join() == [b"x"]
    assert (proc.returncode, proc.stdout) == (0, b"hi\n")


def test_no_shutdown_keeps_write_side_open() -> None:
    def handler(conn: socket.socket) -> bool:
        assert recv_until(conn, b"\n") == b"ping\n"
        conn.settimeout(timeout(0.3))
        try:
            eof = conn.recv(1) == b""  # with --no-shutdown no EOF may arrive
        except TimeoutError:
            eof = False
        conn.sendall(b"pong\n")
        return eof  # then we close: wirecat must exit 0 after printing pong

    with TcpPeer(handler) as server:
        proc = wirecat("connect", "--no-shutdown", server.endpoint, input=b"ping\n")
        assert server.join() == [False]
    assert (proc.returncode, proc.stdout) == (0, b"pong\n")


def test_wait_bounds_the_time_after_stdin_eof() -> None:
    release = socket.socketpair()

    def handler(conn: socket.socket) -> bytes:
        got = recv_all(conn)  # the half-close arrives...
        conn.sendall(b"partial answer\n")
        release[1].recv(1)  # ...but we never close until the test says so
        return got

    try:
        with TcpPeer(handler) as server:
            proc = wirecat("connect", "--wait", "0.2", server.endpoint, input=b"req\n")
            release[0].send(b"x")
            assert server.join() == [b"req\n"]
    finally:
        for s in release:
            s.close()
    assert (proc.returncode, proc.stdout) == (0, b"partial answer\n")


def test_peer_closing_first_still_gets_the_rest_of_stdin() -> None:
    def handler(conn: socket.socket) -> bytes:
        conn.sendall(b"banner\n")
        conn.shutdown(socket.SHUT_WR)  # we are done talking, not done listening
        return recv_all(conn)

    data = os.urandom(300_000)
    with TcpPeer(handler) as server:
        proc = wirecat("connect", server.endpoint, input=data)
        assert server.join() == [data]
    assert (proc.returncode, proc.stdout) == (0, b"banner\n")


@pytest.mark.parametrize("stdin_kind", ["pipe", "file"])
def test_binary_1mib_round_trip(tmp_path: object, stdin_kind: str, loop_kind: str) -> None:
    data = os.urandom(1024 * 1024)
    with TcpPeer(_echo_until_eof) as server:
        if stdin_kind == "pipe":
            proc = wirecat("connect", "--loop", loop_kind, server.endpoint, input=data)
            out = proc.stdout
        else:
            path = os.path.join(str(tmp_path), "in.bin")
            out_path = os.path.join(str(tmp_path), "out.bin")
            with open(path, "wb") as f:
                f.write(data)
            with open(path, "rb") as fin, open(out_path, "wb") as fout:
                proc = subprocess.run(
                    [*WIRECAT, "connect", "--loop", loop_kind, server.endpoint],
                    stdin=fin,
                    stdout=fout,
                    stderr=subprocess.PIPE,
                    timeout=timeout(),
                    check=False,
                )
            with open(out_path, "rb") as f:
                out = f.read()
        assert server.join() == [len(data)]
    assert proc.returncode == 0, proc.stderr
    assert out == data


def test_stdin_dev_null_half_closes_at_once() -> None:
    with TcpPeer(lambda c: (recv_all(c), c.sendall(b"bye\n"))[0]) as server:
        proc = wirecat("connect", server.endpoint, input=None, stdin=subprocess.DEVNULL)
        assert server.join() == [b""]
    assert (proc.returncode, proc.stdout) == (0, b"bye\n")


def test_crlf_converts_bare_lf_only() -> None:
    with TcpPeer(recv_all) as server:
        proc = wirecat("connect", "--crlf", server.endpoint, input=b"a\nb\r\nc\n")
        assert server.join() == [b"a\r\nb\r\nc\r\n"]
    assert proc.returncode == 0


def test_verbose_names_both_ends() -> None:
    with TcpPeer(recv_all) as server:
        proc = wirecat("connect", "-v", server.endpoint, input=b"x")
        server.join()
    err = proc.stderr.decode()
    assert re.search(
        rf"^wirecat: connected to {re.escape(server.endpoint)} from 127\.0\.0\.1:\d+$", err, re.M
    ), err
    assert proc.returncode == 0


def test_connection_refused_is_one_line_and_exit_69() -> None:
    with socket.socket() as holder:  # bound, not listening: connecting is refused
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        proc = wirecat("connect", f"127.0.0.1:{port}")
    assert proc.returncode == 69
    assert one_line_error(proc) == (
        f"wirecat: connection refused by tcp://127.0.0.1:{port} (is a server listening there?)"
    )


@pytest.mark.parametrize(
    "endpoint",
    ["tcp://[::1", "udp://127.0.0.1", "bogus://127.0.0.1:1", "127.0.0.1:99999", "tcp:/x"],
)
def test_bad_endpoint_exits_64(endpoint: str) -> None:
    proc = wirecat("connect", endpoint)
    assert proc.returncode == 64, proc.stderr
    one_line_error(proc)


def test_udp_one_datagram_per_line(loop_kind: str) -> None:
    with UdpEcho() as server:
        proc = wirecat(
            "connect", "--loop", loop_kind, "--wait", "1", server.endpoint, input=b"one\ntwo\nend"
        )
        received = list(server.received)
    assert received == [b"one\n", b"two\n", b"end"]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"one\ntwo\nend"


def test_udp_refused_exits_69() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = wirecat("connect", "--wait", "2", f"udp://127.0.0.1:{port}", input=b"anyone?\n")
    assert proc.returncode == 69
    assert "connection refused" in one_line_error(proc)


def test_unix_stream_round_trip(unix_dir: str, loop_kind: str) -> None:
    path = os.path.join(unix_dir, "s.sock")
    with TcpPeer(_echo_until_eof, family=socket.AF_UNIX, path=path) as server:
        proc = wirecat("connect", "--loop", loop_kind, f"unix:{path}", input=b"over unix\n")
        assert server.join() == [10]
    assert (proc.returncode, proc.stdout) == (0, b"over unix\n")


def test_unix_dgram_round_trip(unix_dir: str) -> None:
    path = os.path.join(unix_dir, "d.sock")
    with UdpEcho(socket.AF_UNIX, path) as server:
        proc = wirecat("connect", "--wait", "1", server.endpoint, input=b"a\nb\n")
        received = list(server.received)
    assert received == [b"a\n", b"b\n"]
    assert (proc.returncode, proc.stdout) == (0, b"a\nb\n")


def test_unix_missing_socket_is_refused(unix_dir: str) -> None:
    proc = wirecat("connect", f"unix:{unix_dir}/nobody.sock")
    assert proc.returncode == 69
    one_line_error(proc)


def test_stdout_closed_by_reader_exits_quietly() -> None:
    def handler(conn: socket.socket) -> None:
        try:
            while True:
                conn.sendall(b"y" * 65536)
        except OSError:
            return  # wirecat went away

    with TcpPeer(handler) as server:
        run = Running([*WIRECAT, "connect", server.endpoint])
        assert run.proc.stdout is not None
        run.proc.stdout.read(1000)
        run.proc.stdout.close()  # like `| head -c 1000`
        code, _, err = run.finish()
        server.join()
    assert code == 0, err
    assert err == ""


def test_ctrl_c_exits_130_quietly() -> None:
    got_line = threading.Event()

    def handler(conn: socket.socket) -> bytes:
        line = recv_until(conn, b"\n")
        got_line.set()
        return line + recv_all(conn)

    with TcpPeer(handler) as server, Running([*WIRECAT, "connect", server.endpoint]) as run:
        run.write(b"typed\n")
        assert got_line.wait(timeout())
        run.signal(signal.SIGINT)
        code, _, err = run.finish()
        assert server.join() == [b"typed\n"]
    assert code == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_terminal_stdin_exits_when_peer_closes() -> None:
    """On a terminal nobody types into a closed connection: exit at once, no Enter needed."""
    primary, secondary = os.openpty()
    try:
        with TcpPeer(lambda c: c.sendall(b"banner\n")) as server:
            proc = wirecat("connect", server.endpoint, input=None, stdin=secondary)
            server.join()
    finally:
        os.close(primary)
        os.close(secondary)
    assert (proc.returncode, proc.stdout) == (0, b"banner\n"), proc.stderr


def test_pipe_stdin_kept_open_after_peer_closes_is_still_read() -> None:
    def handler(conn: socket.socket) -> bytes:
        conn.sendall(b"banner\n")
        conn.shutdown(socket.SHUT_WR)
        return recv_all(conn)

    with TcpPeer(handler) as server, Running([*WIRECAT, "connect", server.endpoint]) as run:
        assert run.proc.stdout is not None
        assert run.proc.stdout.readline() == b"banner\n"
        run.write(b"late but delivered\n", close=True)
        code, _, err = run.finish()
        assert server.join() == [b"late but delivered\n"]
    assert code == 0, err


def test_stdio_pipes_are_left_blocking(loop_kind: str) -> None:
    """O_NONBLOCK belongs to the open file description, shared with our parent: restore it."""
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        with TcpPeer(lambda c: (c.sendall(b"x"), recv_all(c))[1]) as server:
            os.close(stdin_w)
            proc = subprocess.run(
                [*WIRECAT, "connect", "--loop", loop_kind, server.endpoint],
                stdin=stdin_r,
                stdout=out_w,
                stderr=subprocess.PIPE,
                timeout=timeout(),
                check=False,
            )
            server.join()
        assert proc.returncode == 0, proc.stderr
        assert os.get_blocking(stdin_r)
        assert os.get_blocking(out_w)
        assert os.read(out_r, 10) == b"x"
    finally:
        for fd in (stdin_r, out_r, out_w):
            os.close(fd)
