"""Targets that misbehave at the TCP level, for the fault tests.

Each serves one behaviour on its own 127.0.0.1 port and records what happened
to the connections it accepted (so a test can see the relay close them).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request

from tests.support.wsp import WsprotoStream

Behaviour = Callable[["Misbehaving", trio.SocketStream], Awaitable[None]]


@attrs.define
class Misbehaving:
    """A listener whose connections run ``behaviour``."""

    behaviour: Behaviour
    port: int = 0
    accepted: int = 0
    # Set for each connection once the peer (the relay) has closed it.
    closed_by_peer: list[trio.Event] = attrs.Factory(list)
    new_connection: trio.Event = attrs.Factory(trio.Event)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[Misbehaving]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        self.closed_by_peer.append(trio.Event())
        self.new_connection.set()
        try:
            await self.behaviour(self, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def wait_for_peer_close(self, stream: trio.SocketStream) -> None:
        """Read and discard until the relay closes this connection."""
        event = self.closed_by_peer[-1]
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
        event.set()


async def accept_websocket(stream: trio.SocketStream) -> WsprotoStream:
    """Answer the relay's upgrade with 101."""
    conn = WsprotoStream(stream, WSConnection(ConnectionType.SERVER))
    request = await conn.next_event()
    assert isinstance(request, Request)
    await conn.send(AcceptConnection())
    return conn


def reset(stream: trio.SocketStream) -> None:
    """Make the next close an RST rather than a FIN (SO_LINGER 0)."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def frame_head(opcode: int, length: int, *, fin: bool = True) -> bytes:
    """An unmasked (server) frame header, written by hand."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return struct.pack("!BB", first, length)
    if length < 1 << 16:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)
