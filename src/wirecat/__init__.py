"""wirecat: sockets made solid. A typed asyncio library and a command-line tool."""

from .endpoints import Endpoint, parse_endpoint
from .errors import *  # noqa: F403
from .errors import __all__ as _errors_all

__version__ = "0.1.0"

__all__ = ["Endpoint", "__version__", "parse_endpoint", *_errors_all]
