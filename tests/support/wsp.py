"""A small wsproto-over-Trio connection used by the test target and raw test clients.

It is deliberately a different implementation from the relay's own frame code,
so the tests do not check the relay against itself.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)


class WsprotoStream:
    """wsproto driven over a Trio stream."""

    def __init__(self, stream: trio.abc.Stream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self._pending: list[Event] = []
        self.eof = False

    async def send(self, event: Event) -> None:
        """Send one wsproto event."""
        data = self.ws.send(event)
        if data:
            await self.stream.send_all(data)

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (for protocol-violation tests)."""
        await self.stream.send_all(data)

    async def next_event(self) -> Event | None:
        """The next event, None at EOF."""
        while not self._pending:
            if self.eof:
                return None
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.eof = True
                self.ws.receive_data(None)
                # wsproto reports EOF as a 1006 close event; callers see None instead.
                self._pending.extend(
                    e
                    for e in self.ws.events()
                    if not (isinstance(e, CloseConnection) and e.code == 1006)
                )
                if not self._pending:
                    return None
            else:
                self.ws.receive_data(data)
                self._pending.extend(self.ws.events())
        return self._pending.pop(0)

    async def next_message(self) -> str | bytes | CloseConnection | None:
        """The next whole message (answering pings), a close, or None at EOF."""
        parts: list[str | bytes] = []
        while True:
            event = await self.next_event()
            if event is None:
                return None
            if isinstance(event, Ping):
                await self.send(event.response())
            elif isinstance(event, CloseConnection):
                return event
            elif isinstance(event, Message):
                parts.append(event.data)
                if event.message_finished:
                    if isinstance(event, TextMessage):
                        return "".join(str(p) for p in parts)
                    return b"".join(bytes(p) for p in parts)  # type: ignore[arg-type]

    async def close(self, code: int = 1000, reason: str = "") -> CloseConnection | None:
        """Send a close and wait for the answer (None if the peer just left)."""
        await self.send(CloseConnection(code=code, reason=reason))
        while True:
            event = await self.next_event()
            if event is None or isinstance(event, CloseConnection):
                return event


async def client_handshake(
    stream: trio.abc.Stream, host: str, target: str, headers: list[tuple[str, str]] | None = None
) -> WsprotoStream:
    """Run the client handshake over ``stream``; raises on refusal."""
    conn = WsprotoStream(stream, WSConnection(ConnectionType.CLIENT))
    await conn.send(Request(host=host, target=target, extra_headers=headers or []))
    event = await conn.next_event()
    if not isinstance(event, AcceptConnection):
        raise ConnectionError(f"handshake refused: {event!r}")
    return conn


async def connect(url: str) -> WsprotoStream:
    """Open a raw WebSocket client connection to ``ws://host:port/path?query``."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return await client_handshake(stream, f"{parts.hostname}:{parts.port}", target or "/")


__all__ = [
    "BytesMessage",
    "CloseConnection",
    "Ping",
    "Pong",
    "RejectConnection",
    "TextMessage",
    "WsprotoStream",
    "client_handshake",
    "connect",
]
