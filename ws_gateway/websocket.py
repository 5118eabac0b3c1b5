"""A small WebSocket client over anyio streams and wsproto (runs on asyncio and Trio).

Just what the SDK needs: connect (with TLS), send text, receive whole text
messages, answer pings, and the close handshake. Errors are the SDK's own.
"""

from __future__ import annotations

import contextlib
import ssl
from collections import deque
from collections.abc import Sequence
from urllib.parse import urlsplit

import anyio
import anyio.abc
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ws_gateway.errors import ConnectionClosedError, GatewayError, HandshakeError, closed_error

__all__ = ["WebSocket"]

_READ_SIZE = 65536


class WebSocket:
    """One client WebSocket connection; create it with :meth:`connect`."""

    def __init__(
        self, stream: anyio.abc.ByteStream, connection: WSConnection, *, max_message_size: int
    ) -> None:
        self._stream = stream
        self._ws = connection
        self._events: deque[Event] = deque()
        self._max_message_size = max_message_size
        self.close_code: int | None = None

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        ssl_context: ssl.SSLContext | None = None,
        max_message_size: int = 64 * 1024 * 1024,
    ) -> WebSocket:
        """Open ``ws://`` or ``wss://`` ``url`` and complete the opening handshake."""
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
        secure = parts.scheme == "wss"
        host = parts.hostname
        port = parts.port or (443 if secure else 80)
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = f"[{host}]" if ":" in host else host
        if parts.port:
            host_header += f":{parts.port}"
        if not secure:
            ssl_context = None
        elif ssl_context is None:
            ssl_context = ssl.create_default_context()
        try:
            stream: anyio.abc.ByteStream
            if ssl_context is not None:
                stream = await anyio.connect_tcp(
                    host, port, ssl_context=ssl_context, tls_hostname=host
                )
            else:
                stream = await anyio.connect_tcp(host, port)
        except (OSError, anyio.BrokenResourceError) as exc:
            problem = getattr(exc, "strerror", None) or exc or type(exc).__name__
            raise GatewayError(f"cannot connect to {host}:{port}: {problem}") from exc
        connection = WSConnection(ConnectionType.CLIENT)
        socket = cls(stream, connection, max_message_size=max_message_size)
        try:
            await socket._handshake(
                Request(host=host_header, target=resource, extra_headers=list(headers))
            )
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
        return socket

    async def _handshake(self, request: Request) -> None:
        await self._stream.send(self._ws.send(request))
        status: int | None = None
        body = bytearray()
        while True:
            if not self._events:
                await self._read()
                continue
            event = self._events.popleft()
            if isinstance(event, AcceptConnection):
                return
            if isinstance(event, RejectConnection):
                status = event.status_code
                if not event.has_body:
                    raise HandshakeError(status, "")
            elif isinstance(event, RejectData):
                body += event.data[: 4096 - len(body)]
                if event.body_finished:
                    raise HandshakeError(status or 0, body.decode("utf-8", "replace"))

    async def _read(self) -> None:
        try:
            data: bytes | None = await self._stream.receive(_READ_SIZE)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            data = None
        try:
            self._ws.receive_data(data)
            self._events.extend(self._ws.events())
        except RemoteProtocolError as exc:
            raise GatewayError(f"WebSocket protocol error from server: {exc}") from exc
        if data is None and not self._events:
            self.close_code = 1006
            raise ConnectionClosedError(1006, "connection lost")

    async def _send(self, event: Event) -> None:
        try:
            data = self._ws.send(event)
        except LocalProtocolError as exc:
            raise ConnectionClosedError(self.close_code or 1006, "connection is closed") from exc
        try:
            await self._stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise ConnectionClosedError(1006, "connection lost") from exc

    async def send_text(self, text: str) -> None:
        """Send one text message."""
        await self._send(TextMessage(data=text))

    async def receive_text(self) -> str:
        """The next whole text message; raises :class:`ConnectionClosedError` (or a subclass)."""
        parts: list[str] = []
        size = 0
        while True:
            if not self._events:
                await self._read()
                continue
            event = self._events.popleft()
            if isinstance(event, TextMessage | BytesMessage):
                chunk = event.data if isinstance(event, TextMessage) else bytes(event.data).decode()
                size += len(chunk)
                if size > self._max_message_size:
                    await self.close(1009, "message too big")
                    raise GatewayError("server message larger than max_message_size")
                parts.append(chunk)
                if event.message_finished:
                    return "".join(parts)
            elif isinstance(event, Ping):
                await self._send(event.response())
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                if self._ws.state == ConnectionState.REMOTE_CLOSING:
                    with contextlib.suppress(ConnectionClosedError):
                        await self._send(event.response())
                await anyio.aclose_forcefully(self._stream)
                raise closed_error(event.code, event.reason or "")

    async def _await_close_reply(self) -> None:
        while True:
            await self._read()
            for event in self._events:
                if isinstance(event, CloseConnection):
                    return
            self._events.clear()

    async def close(self, code: int = 1000, reason: str = "", *, grace: float = 5.0) -> None:
        """Run the close handshake (waiting at most ``grace`` seconds) and close the stream."""
        try:
            if self._ws.state == ConnectionState.OPEN:
                await self._send(CloseConnection(code=code, reason=reason))
                self.close_code = code
                with anyio.move_on_after(grace):
                    await self._await_close_reply()
        except GatewayError:
            pass
        finally:
            await anyio.aclose_forcefully(self._stream)
