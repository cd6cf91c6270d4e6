"""WebSocket echo on the `websockets` library's own asyncio server (uvloop when installed).
Reference peer for bench/run.py's ws part. Usage: ws_echo_websockets.py HOST PORT."""

import asyncio
import sys

from websockets.asyncio.server import serve


async def echo(conn):  # type: ignore[no-untyped-def]
    async for message in conn:
        await conn.send(message)


async def main(host: str, port: int) -> None:
    async with serve(echo, host, port, compression=None, backlog=4096) as server:
        print(f"LISTENING {server.sockets[0].getsockname()[1]}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main(sys.argv[1], int(sys.argv[2])))
    except ImportError:
        asyncio.run(main(sys.argv[1], int(sys.argv[2])))
