"""Two real `nc` users talk in one chat room, as a person would from two terminals."""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from _peers import Services, host_port, peer, timeout
from wirecat.endpoints import parse_endpoint
from wirecat.services.chat import ChatService

pytestmark = pytest.mark.interop


class NcUser:
    """An `nc` process: what we type goes to its stdin, what it prints we read."""

    def __init__(self, host: str, port: str) -> None:
        self.proc = subprocess.Popen(
            [peer("nc"), "-N", host, port],  # -N: half-close on stdin EOF
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.seen = b""

    def type(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def until(self, text: bytes) -> bytes:
        """Read stdout until ``text`` was printed (bounded); return everything so far."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout(10)
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"never saw {text!r}; saw {self.seen!r}"
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                assert chunk, f"nc exited before {text!r}; saw {self.seen!r}"
                self.seen += chunk
        return self.seen

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout(5))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout(5))
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextmanager
def nc_user(host: str, port: str) -> Iterator[NcUser]:
    user = NcUser(host, port)
    try:
        yield user
    finally:
        user.close()


def test_two_nc_users_chat_in_the_lobby() -> None:
    with Services(ChatService([parse_endpoint("tcp://127.0.0.1:0")])) as running:
        host, port = host_port(running.endpoint("chat"))
        with nc_user(host, port) as ann, nc_user(host, port) as bob:
            ann.type(b"ann")
            ann.until(b"*** ann joined #lobby")
            bob.type(b"bob")
            bob.until(b"*** bob joined #lobby")
            ann.until(b"*** bob joined #lobby")
            ann.type(b"hello bob")
            bob.until(b"#lobby <ann> hello bob\n")
            bob.type(b"hi ann!")
            ann.until(b"#lobby <bob> hi ann!\n")
            ann.type(b"/who")
            ann.until(b"ann bob")
            ann.type(b"/quit")
            ann.until(b"*** bye")
            bob.until(b"*** ann left #lobby")
