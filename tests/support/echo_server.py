"""A plain `websockets` echo server, the reference target for conformance runs.

Run: python -m tests.support.echo_server PORT [CERTFILE KEYFILE] [--deflate]  (prints
"ready" once listening); with a certificate and key it serves wss://, with --deflate it
accepts permessage-deflate and compresses what it sends.
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


async def _main(port: int, tls: list[str], deflate: bool) -> None:
    context: ssl.SSLContext | None = None
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls[0], tls[1])
    # No compression unless asked, 32 MiB messages: Autobahn's 9.x cases send up to 16 MiB.
    async with serve(
        _echo,
        "127.0.0.1",
        port,
        max_size=32 * 1024 * 1024,
        compression="deflate" if deflate else None,
        ping_interval=None,
        ssl=context,
    ):
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    args = [arg for arg in sys.argv[1:] if arg != "--deflate"]
    asyncio.run(_main(int(args[0]), args[1:3], "--deflate" in sys.argv))
