"""The greeting service: send one banner line, then close. The classic first server."""

from __future__ import annotations

from collections.abc import Sequence

from ..endpoints import Endpoint
from ..runtime.handler import ServerContext, StreamHandler
from ..runtime.limits import Limits
from ..runtime.server import Service

__all__ = ["DEFAULT_BANNER", "GreetingService"]

DEFAULT_BANNER = "Thank you for connecting"


class _GreetingHandler(StreamHandler):
    __slots__ = ()

    service: GreetingService

    def on_connect(self) -> None:
        self.write(self.service.payload)
        self.close()


class GreetingService(Service):
    """Writes ``banner`` plus ``\\n`` to each peer, then closes (flushing first).

    Args:
        endpoints: where to listen (stream endpoints).
        banner: the line to send, without newline; UTF-8 encoded.

    Raises:
        ValueError: the banner contains a newline.
    """

    name = "greeting"

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        banner: str = DEFAULT_BANNER,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(endpoints, limits=limits)
        if "\n" in banner or "\r" in banner:
            raise ValueError("banner must be one line")
        self.banner = banner
        self.payload = banner.encode() + b"\n"

    def stream_handler(self, ctx: ServerContext) -> StreamHandler:
        return _GreetingHandler(ctx, self)
