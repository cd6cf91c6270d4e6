"""Thin services: each wires a sans-I/O protocol and a core to the runtime.

:func:`build_services` assembles the services of ``wirecat serve`` (library and CLI alike).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..endpoints import Endpoint, parse_endpoint
from ..runtime.server import Service

if TYPE_CHECKING:
    from ..auth import Users

__all__ = ["DEFAULTS", "build_services"]

#: Default endpoints of each service: loopback only.
DEFAULTS: dict[str, tuple[str, ...]] = {
    "greeting": ("tcp://127.0.0.1:7000",),
    "echo": ("tcp://127.0.0.1:7007", "udp://127.0.0.1:7007"),
    "chat": ("tcp://127.0.0.1:7070",),
    "files": ("tcp://127.0.0.1:7071",),
}


def build_services(
    *,
    greeting: Sequence[Endpoint] | None,
    echo: Sequence[Endpoint] | None,
    chat: Sequence[Endpoint] | None,
    banner: str,
    history: int = 50,
    files_dir: str | None = None,
    files: Sequence[Endpoint] | None = None,
    files_readonly: bool = False,
    max_file_size: int | None = None,
    quota: int | None = None,
    udp_rate: float | None = None,
    chat_rate: float | None = 5.0,
    chat_burst: int = 10,
    users: Users | None = None,
    guests: bool = False,
    auth_failures: tuple[float, int] = (0.1, 5),
) -> list[Service]:
    """Return the services to run; ``None`` for a service means "not enabled".

    ``users`` (a users file) makes chat and files require a token (chat: unless
    ``guests``); ``auth_failures`` is ``(rate per second, burst)`` of failed logins allowed
    per source IP, shared by both.

    Raises:
        ValueError: an option is invalid (e.g. a multi-line banner).
    """
    from ..services.echo import EchoService
    from ..services.greeting import GreetingService

    services: list[Service] = []
    failures = None
    if users is not None:
        from ..auth import AuthFailures

        failures = AuthFailures(*auth_failures)  # one table for chat and files
    if greeting:
        services.append(GreetingService(greeting, banner=banner))
    if echo:
        services.append(EchoService(echo, datagram_rate=udp_rate))
    if chat:
        from ..services.chat import ChatService

        unlimited = not chat_rate  # no per-member limit (benchmarks, trusted programs)
        services.append(
            ChatService(
                chat,
                history=history,
                max_rate=chat_rate or 1e9,
                burst=10**9 if unlimited else chat_burst,
                kick_after=0 if unlimited else 20,
                users=users,
                guests=guests,
                auth_failures=failures,
            )
        )
    if files_dir is not None:
        from ..services.files import FilesService

        services.append(
            FilesService(
                files or [parse_endpoint(e) for e in DEFAULTS["files"]],
                root=files_dir,
                readonly=files_readonly,
                max_file_size=max_file_size,
                quota=quota,
                users=users,
                auth_failures=failures,
            )
        )
    return services
