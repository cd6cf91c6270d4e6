"""Running wirecat's services from Python: :func:`serve`."""

from __future__ import annotations

from collections.abc import Sequence

from .endpoints import Endpoint, parse_endpoint
from .runtime.limits import Limits
from .runtime.server import Server, Service, run_until_signal
from .services import DEFAULTS, build_services

__all__ = ["serve"]


def _eps(value: Sequence[str | Endpoint] | None, name: str) -> list[Endpoint] | None:
    if value is None:
        return [parse_endpoint(e) for e in DEFAULTS[name]]
    return [parse_endpoint(e) if isinstance(e, str) else e for e in value]


async def serve(
    services: Sequence[Service] | None = None,
    *,
    greeting: Sequence[str | Endpoint] | None = None,
    echo: Sequence[str | Endpoint] | None = None,
    chat: Sequence[str | Endpoint] | None = None,
    banner: str = "Thank you for connecting",
    limits: Limits | None = None,
    handle_signals: bool = True,
) -> Server:
    """Run wirecat's services until SIGINT/SIGTERM (or until cancelled); return the server.

    Args:
        services: explicit services to run; when given, the per-service arguments are ignored.
        greeting, echo, chat: endpoints per service (strings or :class:`Endpoint`); ``None``
            means the default loopback endpoints, ``[]`` turns the service off.
        banner: the greeting line.
        limits: server-wide :class:`Limits`.
        handle_signals: install SIGINT/SIGTERM handlers (main thread only). With False,
            run until the calling task is cancelled, then drain.

    Raises:
        AddressInUse, PermissionDenied, ListenError: a listener could not be opened.
        InvalidEndpoint: an endpoint string does not parse.
    """
    if services is None:
        services = build_services(
            greeting=_eps(greeting, "greeting"),
            echo=_eps(echo, "echo"),
            chat=_eps(chat, "chat"),
            banner=banner,
        )
    server = Server(services, limits=limits)
    if handle_signals:
        await run_until_signal(server)
        return server
    await server.start()
    try:
        await server.serve_forever()
    finally:
        await server.shutdown()
    return server
