"""wirecat's chat service, started through the library with the per-member message rate
limit lifted (a benchmark sender must not be throttled to 5 messages/s), everything else as
``wirecat serve`` has it. Reference peer for bench/run.py.

Usage: python wirecat_chat.py [HOST] [PORT]   (PORT 0: any; prints "LISTENING <port>")
"""

import contextlib
import sys

from wirecat import parse_endpoint
from wirecat.runtime.limits import Limits
from wirecat.runtime.loop import run
from wirecat.runtime.server import Server
from wirecat.services.chat import ChatService


async def main(host: str, port: int) -> None:
    ep = parse_endpoint(f"tcp://{host}:{port}")
    service = ChatService([ep], max_rate=1e9, burst=1_000_000, kick_after=0)
    limits = Limits(max_conns=20_000, max_conns_per_source=None, conn_rate=None, idle_timeout=None)
    server = Server([service], limits=limits)
    await server.start()
    print("LISTENING", server.endpoint("chat").port, flush=True)
    try:
        await server.serve_forever()
    finally:
        await server.shutdown(0.5)


if __name__ == "__main__":
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    with contextlib.suppress(KeyboardInterrupt):
        run(main(host, port))
