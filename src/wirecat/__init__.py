"""wirecat: sockets made solid. A typed asyncio library and a command-line tool.

The public surface::

    async with wirecat.connect("tcp://127.0.0.1:7007") as conn:      # Connection
        await conn.send(b"hello\\n")
        print(await conn.recv_line())
    async with wirecat.connect_datagram("udp://127.0.0.1:7007") as dg: # DatagramConnection
        ...
    async with wirecat.listen("tcp://127.0.0.1:0", handler) as server: # your own handler
        await server.serve_forever()
    config = wirecat.ServeConfig(chat=["tcp://127.0.0.1:7070"])       # wirecat serve's config
    async with wirecat.Server(config) as server: ...                   # ... run from Python
    wirecat.run(config)                                                 # blocking, workers
    wirecat.parse_endpoint("udp://[::1]:7007")                          # Endpoint
    async with wirecat.ChatClient.connect("127.0.0.1:7070", nick="bot") as chat:
        await chat.join("#lobby")                                       # a chat bot

Names are imported lazily (on first use), so ``import wirecat.protocols`` loads no I/O
module. Model: websockets ``__init__.py`` (``lazy_import``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import *  # noqa: F403  (import-light: no I/O modules)
from .errors import __all__ as _errors_all

__version__ = "0.1.0"

#: Public name -> module that defines it (relative to this package).
_LAZY: dict[str, str] = {
    "ChatClient": ".chat.client",
    "Connection": ".runtime.connection",
    "DatagramConnection": ".runtime.connection",
    "Opening": ".runtime.connection",
    "connect": ".runtime.connection",
    "connect_datagram": ".runtime.connection",
    "Endpoint": ".endpoints",
    "FilesClient": ".files.client",
    "parse_endpoint": ".endpoints",
    "Limits": ".runtime.limits",
    "Service": ".runtime.server",
    "listen": ".runtime.server",
    "ServeConfig": ".config",
    "TLSConfig": ".config",
    "Server": ".app",
    "run": ".app",
    "relay": ".services.relay",
    "serve": ".app",
}

__all__ = [
    "ChatClient",
    "Connection",
    "DatagramConnection",
    "Endpoint",
    "FilesClient",
    "Limits",
    "Opening",
    "ServeConfig",
    "Server",
    "Service",
    "TLSConfig",
    "__version__",
    "connect",
    "connect_datagram",
    "listen",
    "parse_endpoint",
    "relay",
    "run",
    "serve",
    *_errors_all,
]
assert set(_LAZY) <= set(__all__)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wirecat' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


if TYPE_CHECKING:
    from .app import Server, run, serve
    from .chat.client import ChatClient
    from .config import ServeConfig, TLSConfig
    from .endpoints import Endpoint, parse_endpoint
    from .files.client import FilesClient
    from .runtime.connection import (
        Connection,
        DatagramConnection,
        Opening,
        connect,
        connect_datagram,
    )
    from .runtime.limits import Limits
    from .runtime.server import Service, listen
    from .services.relay import relay
