"""wirecat: sockets made solid. A typed asyncio library and a command-line tool.

The public surface::

    conn = await wirecat.connect("tcp://127.0.0.1:7007")   # Connection / DatagramConnection
    await wirecat.serve(echo=["tcp://127.0.0.1:7007"], greeting=[], chat=[])
    wirecat.parse_endpoint("udp://[::1]:7007")              # Endpoint
"""

from .app import serve
from .endpoints import Endpoint, parse_endpoint
from .errors import *  # noqa: F403
from .errors import __all__ as _errors_all
from .runtime.limits import Limits
from .runtime.server import Server, Service
from .runtime.stream import Connection, DatagramConnection, connect

__version__ = "0.1.0"

__all__ = [
    "Connection",
    "DatagramConnection",
    "Endpoint",
    "Limits",
    "Server",
    "Service",
    "__version__",
    "connect",
    "parse_endpoint",
    "serve",
    *_errors_all,
]
