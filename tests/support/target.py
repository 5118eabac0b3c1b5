"""A scripted WebSocket target server for the tests (wsproto, real or in-memory streams).

The path chooses the behaviour; every connection is recorded so tests can
assert what the target saw (headers, messages, the close code it received).

=============================  ===============================================
path                           behaviour
=============================  ===============================================
``/echo`` (and anything else)  echo every message, answer pings and closes
``/headers``                   first send a JSON text with the request's
                               path and headers, then echo
``/close?code=&reason=``       close at once with that code and reason
``/reject?status=``            refuse the upgrade with that HTTP status
``/flood?total=&size=``        send ``total`` bytes in binary messages
``/big?size=``                 send one binary message of ``size`` bytes
``/drop?after=``               echo ``after`` messages, then drop TCP
``/dropmid``                   send half a fragmented message, then drop TCP
``/fragments``                 send a 3-fragment text message with a ping
                               between fragments, then echo
``/ping?payload=``             ping the client, record the pong, then echo
``/masked``                    send a masked frame (a server must not)
``/tick?every=&count=``        send ``count`` texts, one every ``every`` s
=============================  ===============================================
"""

from __future__ import annotations

import json
import ssl
import struct
from urllib.parse import parse_qsl, urlsplit

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from tests.support.wsp import WsprotoStream


@attrs.define
class TargetConnection:
    """What the target saw on one connection."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    peer: str = ""
    messages: list[str | bytes] = attrs.Factory(list)
    close_code: int | None = None
    close_reason: str | None = None
    pongs: list[bytes] = attrs.Factory(list)
    sent_bytes: int = 0
    ended: trio.Event = attrs.Factory(trio.Event)


class TargetServer:
    """Serves the scripted behaviours; ``connections`` records every accepted one.

    With ``ssl_context`` it serves ``wss://`` (the TLS layer is peeled off per
    connection, so ``peer`` is still recorded).
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.connections: list[TargetConnection] = []
        self.port = 0
        self.new_connection = trio.Event()
        self.ssl_context = ssl_context

    @property
    def url(self) -> str:
        """Base ``ws://`` (or ``wss://``) URL of the TCP listener."""
        scheme = "wss" if self.ssl_context is not None else "ws"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def serve(
        self, *, task_status: trio.TaskStatus[TargetServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on 127.0.0.1 (free port) until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._accepted, listeners)

    async def _accepted(self, stream: trio.SocketStream) -> None:
        if self.ssl_context is None:
            await self.handle(stream)
            return
        tls = trio.SSLStream(stream, self.ssl_context, server_side=True)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError:
            await trio.aclose_forcefully(stream)
            return
        await self.handle(tls)

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one connection (a socket or an in-memory stream)."""
        try:
            await self._handle(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, RemoteProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        conn = WsprotoStream(stream, WSConnection(ConnectionType.SERVER))
        request = await conn.next_event()
        if not isinstance(request, Request):
            return
        parts = urlsplit(request.target)
        query = dict(parse_qsl(parts.query))
        headers: dict[str, str] = {"host": request.host}
        for name, value in request.extra_headers:
            headers[bytes(name).decode().lower()] = bytes(value).decode()
        record = TargetConnection(parts.path, query, headers)
        raw = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        sock = getattr(raw, "socket", None)
        if sock is not None:
            record.peer = sock.getpeername()[0]
        if parts.path == "/reject":
            await conn.send(RejectConnection(status_code=int(query.get("status", "403"))))
            return
        # Recorded before the 101 goes out, so a test that saw "connected" finds it.
        self.connections.append(record)
        self.new_connection.set()
        self.new_connection = trio.Event()
        await conn.send(AcceptConnection())
        try:
            await self._behave(conn, record)
        finally:
            record.ended.set()

    async def _behave(self, conn: WsprotoStream, record: TargetConnection) -> None:
        path, query = record.path, record.query
        if path == "/headers":
            await conn.send(TextMessage(json.dumps({"path": path, "headers": record.headers})))
        elif path == "/close":
            code = int(query.get("code", "1000"))
            await conn.send(CloseConnection(code=code, reason=query.get("reason", "")))
            answer = await conn.next_event()
            if isinstance(answer, CloseConnection):
                record.close_code, record.close_reason = answer.code, answer.reason
            return
        elif path == "/flood":
            size = int(query.get("size", "65536"))
            total = int(query.get("total", str(64 * size)))
            chunk = bytes(range(256)) * (size // 256 + 1)
            while record.sent_bytes < total:
                n = min(size, total - record.sent_bytes)
                await conn.send(BytesMessage(chunk[:n]))
                record.sent_bytes += n
        elif path == "/big":
            await conn.send(BytesMessage(b"\xab" * int(query["size"])))
        elif path == "/dropmid":
            await conn.send(TextMessage("first half ", message_finished=False))
            await trio.aclose_forcefully(conn.stream)
            return
        elif path == "/fragments":
            await conn.send(TextMessage("one ", message_finished=False))
            await conn.send(Ping(b"between"))
            await conn.send(TextMessage("two ", message_finished=False))
            await conn.send(TextMessage("three", message_finished=True))
        elif path == "/ping":
            await conn.send(Ping(query.get("payload", "p").encode()))
        elif path == "/masked":
            payload = b"oops"
            key = b"\x01\x02\x03\x04"
            body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            await conn.send_raw(struct.pack("!BB", 0x81, 0x80 | len(payload)) + key + body)
        elif path == "/tick":
            for n in range(int(query.get("count", "3"))):
                await trio.sleep(float(query.get("every", "1")))
                await conn.send(TextMessage(f"tick {n}"))
        await self._echo(conn, record, int(query["after"]) if path == "/drop" else None)

    async def _echo(
        self, conn: WsprotoStream, record: TargetConnection, drop_after: int | None
    ) -> None:
        parts: list[str | bytes] = []
        while True:
            if drop_after is not None and len(record.messages) >= drop_after:
                await trio.aclose_forcefully(conn.stream)
                return
            event = await conn.next_event()
            if event is None:
                return
            if isinstance(event, Ping):
                await conn.send(event.response())
            elif isinstance(event, Pong):
                record.pongs.append(bytes(event.payload))
            elif isinstance(event, CloseConnection):
                record.close_code, record.close_reason = event.code, event.reason
                await conn.send(event.response())
                return
            elif isinstance(event, TextMessage | BytesMessage):
                parts.append(event.data)
                if event.message_finished:
                    message: str | bytes
                    if isinstance(event, TextMessage):
                        message = "".join(str(p) for p in parts)
                        await conn.send(TextMessage(message))
                    else:
                        message = b"".join(bytes(p) for p in parts)  # type: ignore[arg-type]
                        await conn.send(BytesMessage(message))
                    record.messages.append(message)
                    parts = []
