"""Minimal echo server: asyncio.Protocol on uvloop. Reference peer for bench/run.py.

Usage: python echo_uvloop.py [HOST] [PORT]   (PORT 0: any; prints "LISTENING <port>")
"""

import asyncio
import sys

import uvloop


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, host, port, backlog=4096)
    print("LISTENING", server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    uvloop.run(main(host, port))
