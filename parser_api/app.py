"""The ASGI app serving ``/ws/parser`` (runs under Hypercorn's Trio worker).

Connect-time checks happen after the WebSocket is accepted, because a close
before acceptance becomes an HTTP 403 and the client would never see the
protocol's close codes (4401 bad token, 1013 connection limit).

Every close the server initiates (4401, 1013, 1001) completes the close
handshake of RFC 6455 section 7.1.1: after its close frame the app keeps
reading, discarding the client's frames, until the client's close arrives (or
``close_timeout`` passes), and only then lets Hypercorn drop the TCP
connection. Dropping it at once would leave the client's early frames (a
``configure`` sent as soon as the socket opens) to hit a closed socket; the
kernel then answers with a reset, which can destroy the close frame before the
client reads it, and the client sees 1006 instead of the code.

Each connection owns a nursery: one task reads frames, the other answers them
in order. A client that disconnects cancels its own work at once (a fetch may
be waiting on a slow marketplace), and :meth:`ParserApp.shutdown` cancels every
session and closes it with 1001.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import trio

from parser_api.config import ParserConfig
from parser_api.protocol import (
    ACTIONS,
    CLOSE_GOING_AWAY,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNAUTHORIZED,
    ENDPOINT,
    dumps,
)
from parser_api.session import Session
from parser_api.sources import SourceFactory
from parser_api.sources.http import Egress, PoliteClient

__all__ = ["Egress", "ParserApp", "create_app"]

log = logging.getLogger("parser_api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def create_app(config: ParserConfig, *, egress: Egress | None = None) -> ParserApp:
    """The parser API as an ASGI app; raises ValueError if ``config`` has no admin token.

    ``egress(country)`` is asked for every marketplace request and may return the
    :class:`~parser_api.sources.http.Route` (proxy, local address) that a request
    for that country (ISO code, upper case; None when unknown) leaves by; None
    means a direct connection.
    """
    return ParserApp(config, egress=egress)


class ParserApp:
    """ASGI app: ``websocket`` scopes at ``/ws/parser``, ``lifespan``, and 404 for the rest.

    The relay can mount it without sending ``lifespan``; it should then call
    :meth:`shutdown` before it stops serving.
    """

    def __init__(self, config: ParserConfig, *, egress: Egress | None = None) -> None:
        if not config.has_token:
            raise ValueError("the parser API needs admin_token or admin_token_sha256")
        self.config = config
        self.client = PoliteClient(config.http, egress=egress)
        self.sources = SourceFactory(config, self.client)
        self.active = 0
        # Totals for the gateway's /metrics; action names are the protocol's own
        # ("other" for anything else), so the label set stays bounded.
        self.requests: dict[tuple[str, bool], int] = {}
        self.refused: dict[str, int] = {}
        self._sessions: set[trio.CancelScope] = set()
        self._closing = False
        self._idle = trio.Event()  # set whenever no session is open
        self._idle.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "http":
            await _http_not_found(scope, send)

    async def shutdown(self, *, grace: float = 5.0) -> None:
        """Close every session with 1001, refuse new ones, release upstream connections.

        Waits at most ``grace`` seconds for the sessions to finish; idempotent.
        """
        self._closing = True
        for scope in list(self._sessions):
            scope.cancel()
        with trio.move_on_after(grace):
            await self._idle.wait()
        await self.client.aclose()

    async def wait_idle(self) -> None:
        """Return once no session is open."""
        await self._idle.wait()

    def _count(self, response: dict[str, Any]) -> None:
        action = response.get("action")
        label = action if action in ACTIONS else "other"
        key = (str(label), bool(response.get("ok")))
        self.requests[key] = self.requests.get(key, 0) + 1

    def _refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _token(self, scope: Scope) -> str | None:
        # keep_blank_values: "?token=" is a (wrong) token given, not a token absent.
        query = parse_qs(
            bytes(scope.get("query_string", b"")).decode("latin-1"), keep_blank_values=True
        )
        if "token" in query:
            return query["token"][0]
        for name, value in scope.get("headers", []):
            if bytes(name).lower() == b"x-admin-token":
                return bytes(value).decode("latin-1")
        return None

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if scope.get("path") not in (ENDPOINT, ENDPOINT + "/"):
            await send({"type": "websocket.close", "code": 1000})  # before accept: HTTP 403
            return
        peer = _peer(scope)
        if self._closing:
            self._refuse("shutting_down")
            await self._accept_and_close(receive, send, CLOSE_GOING_AWAY, "server shutting down")
            return
        if not self.config.verify_token(self._token(scope)):
            log.info("parser connection from %s refused: missing or wrong token", peer)
            self._refuse("unauthorized")
            await self._accept_and_close(receive, send, CLOSE_UNAUTHORIZED, "unauthorized")
            return
        if self.active >= self.config.max_connections:
            log.info("parser connection from %s refused: %d connections open", peer, self.active)
            self._refuse("too_many_connections")
            await self._accept_and_close(
                receive, send, CLOSE_TRY_AGAIN_LATER, "too many connections"
            )
            return
        self.active += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        try:
            await self._serve(peer, receive, send)
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    async def _serve(self, peer: str, receive: Receive, send: Send) -> None:
        session = Session(self.config, self.sources, conn_id=secrets.token_hex(12))
        log.info("parser connection %s from %s", session.conn_id, peer)
        # Registered before the first await: shutdown() either saw _closing unset
        # and will find this scope, or set it before the connect check refused us.
        client_left = trio.Event()  # set by the reader on the client's disconnect
        with trio.CancelScope() as shutdown_scope:
            self._sessions.add(shutdown_scope)
            try:
                await send({"type": "websocket.accept"})
                await send({"type": "websocket.send", "text": dumps(session.greeting())})
                async with trio.open_nursery() as nursery:
                    inbox_in, inbox_out = trio.open_memory_channel[str | bytes](16)
                    nursery.start_soon(
                        _read_frames, receive, inbox_in, nursery.cancel_scope, client_left
                    )
                    async with inbox_out:
                        async for data in inbox_out:
                            response = await session.handle(data)
                            self._count(response)
                            await send({"type": "websocket.send", "text": dumps(response)})
            finally:
                self._sessions.discard(shutdown_scope)
        # A client that already left needs no close (nor a wait for its answer).
        if shutdown_scope.cancelled_caught and not client_left.is_set():
            await self._close(receive, send, CLOSE_GOING_AWAY, "server shutting down")
        log.info("parser connection %s closed", session.conn_id)

    async def _accept_and_close(self, receive: Receive, send: Send, code: int, reason: str) -> None:
        await send({"type": "websocket.accept"})
        await self._close(receive, send, code, reason)

    async def _close(self, receive: Receive, send: Send, code: int, reason: str) -> None:
        """Send a close frame, then wait (bounded) for the client's close; see the module doc."""
        await send({"type": "websocket.close", "code": code, "reason": reason})
        with trio.move_on_after(self.config.close_timeout):
            # Hypercorn hands on the client's frames until its close arrives (or
            # the TCP connection ends), then reports the disconnect.
            while (await receive())["type"] != "websocket.disconnect":
                pass


async def _read_frames(
    receive: Receive,
    inbox: trio.MemorySendChannel[str | bytes],
    done: trio.CancelScope,
    left: trio.Event,
) -> None:
    """Forward received frames to the session; a disconnect cancels its pending work."""
    async with inbox:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                left.set()
                done.cancel()
                return
            if message["type"] == "websocket.receive":
                text = message.get("text")
                await inbox.send(text if text is not None else bytes(message.get("bytes") or b""))


async def _http_not_found(scope: Scope, send: Send) -> None:
    upgrade = scope.get("path") == ENDPOINT
    status = 426 if upgrade else 404
    body = json.dumps(
        {"error": "use a WebSocket client" if upgrade else "not found", "endpoint": ENDPOINT}
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if upgrade:
        headers.append((b"upgrade", b"websocket"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    if client:
        return f"{client[0]}:{client[1]}"
    return "unknown"
