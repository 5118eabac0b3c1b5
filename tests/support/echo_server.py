"""A plain `websockets` echo server, the reference target for conformance runs.

Run: python -m tests.support.echo_server PORT [CERTFILE KEYFILE]  (prints "ready" once
listening); with a certificate and key it serves wss://.
"""

from __future__ import annotations

import asyncio
import ssl
import sys

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


async def _echo(ws: ServerConnection) -> None:
    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass


async def _main(port: int, tls: list[str]) -> None:
    context: ssl.SSLContext | None = None
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls[0], tls[1])
    # No compression, 32 MiB messages: Autobahn's 9.x cases send up to 16 MiB.
    async with serve(
        _echo,
        "127.0.0.1",
        port,
        max_size=32 * 1024 * 1024,
        compression=None,
        ping_interval=None,
        ssl=context,
    ):
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(_main(int(sys.argv[1]), sys.argv[2:4]))
