"""A uvloop + ``picows`` relay, written the way picows' examples are.

Frame-level callbacks: each frame from one side is sent on to the other with its
type and FIN bit; pings are answered by picows itself (auto-pong), close frames
are forwarded with their code and reason. ``--cert``/``--key`` serve ``wss://``;
``--ca-file`` is trusted for ``wss://`` targets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import sys

import uvloop
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
    ws_create_server,
)

from bench.tls import client_context, server_context

MAX_FRAME = 64 * 1024 * 1024
_PASSED_ON = (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION)
# Trust for wss:// targets (the system CAs plus --ca-file), set by main().
TARGET_SSL: ssl.SSLContext | None = None


class TargetSide(WSListener):
    """The target's connection: frames go to the client."""

    def __init__(self, client: WSTransport) -> None:
        self.client = client

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """Forward data frames and the close."""
        if frame.msg_type in _PASSED_ON:
            self.client.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)
        elif frame.msg_type == WSMsgType.CLOSE:
            self.client.send_close(frame.get_close_code(), frame.get_close_message())
            self.client.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        """The target went away: so does the client."""
        self.client.disconnect()


class ClientSide(WSListener):
    """The client's connection: first a connect message, then frames to the target."""

    def __init__(self) -> None:
        self.transport: WSTransport | None = None
        self.target: WSTransport | None = None
        self.connecting = False
        self.task: asyncio.Task[None] | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        """Keep the transport for replies."""
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """Connect message first; afterwards forward everything to the target."""
        if self.target is not None:
            if frame.msg_type in _PASSED_ON:
                self.target.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)
            elif frame.msg_type == WSMsgType.CLOSE:
                self.target.send_close(frame.get_close_code(), frame.get_close_message())
                self.target.disconnect()
            return
        if self.connecting or frame.msg_type != WSMsgType.TEXT:
            return
        try:
            url = json.loads(frame.get_payload_as_utf8_text())["url"]
        except (ValueError, KeyError, TypeError):
            transport.send_close(WSCloseCode.POLICY_VIOLATION, b"bad connect message")
            transport.disconnect()
            return
        self.connecting = True
        self.task = asyncio.get_running_loop().create_task(self._connect(transport, url))

    async def _connect(self, transport: WSTransport, url: str) -> None:
        try:
            target, _ = await ws_connect(
                lambda: TargetSide(transport),
                url,
                max_frame_size=MAX_FRAME,
                ssl_context=TARGET_SSL if url.startswith("wss:") else None,
            )
        except (TimeoutError, OSError, ValueError) as exc:
            reply: dict[str, object] = {"type": "error", "message": f"target: {exc}"}
            transport.send(WSMsgType.TEXT, json.dumps(reply).encode())
            transport.send_close(WSCloseCode.INTERNAL_ERROR, b"target unreachable")
            transport.disconnect()
            return
        if transport.is_disconnected:
            target.disconnect()
            return
        self.target = target
        connected = {"type": "connected", "status": 101, "node_id": "picows-peer"}
        transport.send(WSMsgType.TEXT, json.dumps(connected).encode())

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        """The client went away: close the target side too."""
        if self.target is not None:
            self.target.disconnect()


async def run(host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
    """Serve until killed (``wss://`` with ``tls``); prints ``READY <port>``."""
    server = await ws_create_server(
        lambda _request: ClientSide(),
        host,
        port,
        max_frame_size=MAX_FRAME,
        backlog=4096,
        ssl=tls,
    )
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"READY {bound}\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


def main() -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(prog="python -m bench.peers.picows_relay")
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
        uvloop.run(run(args.host, args.port, tls))


if __name__ == "__main__":
    main()
