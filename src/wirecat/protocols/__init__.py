"""Sans-I/O protocols: bytes in, events out; no sockets, no event loop.

Constants shared by several protocols live here.
"""

from typing import Final

#: The longest authentication token any wirecat protocol accepts, in bytes of UTF-8.
MAX_TOKEN: Final = 256
