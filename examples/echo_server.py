"""An echo server (RFC 862) on the public API: python examples/echo_server.py [ENDPOINT]"""

import asyncio
import sys

import wirecat


async def echo(conn: wirecat.Connection) -> None:
    async for line in conn:  # one line at a time, at most 64 KiB each
        await conn.send(line)


async def main(endpoint: str) -> None:
    async with wirecat.listen(endpoint, echo) as server:
        print(f"echo on {server.endpoint()}", flush=True)
        await server.serve_forever()


asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "tcp://127.0.0.1:7007"))
