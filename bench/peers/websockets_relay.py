"""An asyncio + ``websockets`` relay, written the way the library's docs suggest.

Message-level: each pump is ``async for message in src: await dst.send(message)``.
Compression is off on both hops and the size limit is raised so that the peer
relays what the bench sends (1 MiB messages) instead of refusing it. ``--cert``/
``--key`` serve ``wss://``; ``--ca-file`` is trusted for ``wss://`` targets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import sys

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from bench.tls import client_context, server_context

MAX_SIZE = 64 * 1024 * 1024
# Trust for wss:// targets (the system CAs plus --ca-file), set by main().
TARGET_SSL: ssl.SSLContext | None = None


Connection = ServerConnection | ClientConnection


async def _pump(src: Connection, dst: Connection) -> None:
    try:
        async for message in src:
            await dst.send(message)
    except ConnectionClosed:
        pass


async def handler(client: ServerConnection) -> None:
    """One relayed session: connect message, target connection, two pumps."""
    try:
        request = json.loads(await asyncio.wait_for(client.recv(), 10))
        url = request["url"]
    except (TimeoutError, ValueError, KeyError, TypeError):
        await client.close(1008, "bad connect message")
        return
    try:
        upstream = await connect(
            url,
            compression=None,
            max_size=MAX_SIZE,
            additional_headers=request.get("headers") or None,
            ssl=TARGET_SSL if str(url).startswith("wss:") else None,
        )
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
        await client.send(json.dumps({"type": "error", "message": f"target: {exc}"}))
        await client.close(1011, "target unreachable")
        return
    async with upstream:
        await client.send(json.dumps({"type": "connected", "status": 101, "node_id": "ws-peer"}))
        tasks = [
            asyncio.create_task(_pump(client, upstream)),
            asyncio.create_task(_pump(upstream, client)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
    await client.close()


async def run(host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
    """Serve until killed (``wss://`` with ``tls``); prints ``READY <port>``."""
    async with serve(
        handler, host, port, compression=None, max_size=MAX_SIZE, backlog=4096, ssl=tls
    ) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        sys.stdout.write(f"READY {bound}\n")
        sys.stdout.flush()
        await server.serve_forever()


def main() -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(prog="python -m bench.peers.websockets_relay")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert", help="PEM certificate chain: serve wss://")
    parser.add_argument("--key", help="its private key")
    parser.add_argument("--ca-file", help="CA trusted for wss:// targets")
    args = parser.parse_args()
    global TARGET_SSL
    TARGET_SSL = client_context(args.ca_file)
    tls = server_context(args.cert, args.key) if args.cert else None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args.host, args.port, tls))


if __name__ == "__main__":
    main()
