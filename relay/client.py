"""A Trio client for the relay: open a gateway session, get the relayed connection.

::

    async with open_relay("ws://127.0.0.1:8080/ws", api_key=KEY, url=TARGET) as relayed:
        await relayed.websocket.send_message("hello")
        print(await relayed.websocket.get_message())

After ``connected`` the connection carries the target's frames unchanged; a
refusal raises :class:`RelayError` with the gateway's message and close code.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from relay.converter import structure
from relay.wire.connect import ConnectMessage

__all__ = ["RelayError", "Relayed", "connect_message", "open_relay"]


class RelayError(Exception):
    """The gateway refused the session (``error`` message, then a close)."""

    def __init__(self, message: str, code: int | None, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.message} (close code {self.code})"


@attrs.frozen
class Relayed:
    """An open relayed session: ``websocket`` now speaks to the target."""

    websocket: WebSocketConnection
    node_id: str
    status: int


def connect_message(
    *,
    api_key: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    cookies: Mapping[str, str] | None = None,
    geo: str | None = None,
    agent: str | None = None,
    idle_timeout: float = 0.0,
) -> str:
    """The JSON connect message for these arguments, validated like the gateway does.

    Raises :class:`relay.converter.InputError` for arguments the gateway would refuse.
    """
    fields: dict[str, object] = {"apiKey": api_key, "url": url, "idle_timeout": idle_timeout}
    for name, value in (("headers", headers), ("cookies", cookies), ("geo", geo), ("agent", agent)):
        if value:
            fields[name] = dict(value) if isinstance(value, Mapping) else value
    structure(fields, ConnectMessage, what="connect message")
    return json.dumps(fields)


def _close_of(closed: ConnectionClosed) -> tuple[int | None, str | None]:
    if closed.reason is None:
        return None, None
    return closed.reason.code, closed.reason.reason


@asynccontextmanager
async def open_relay(
    gateway_url: str,
    *,
    api_key: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    cookies: Mapping[str, str] | None = None,
    geo: str | None = None,
    agent: str | None = None,
    idle_timeout: float = 0.0,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float = 30.0,
    max_message_size: int = 16 * 1024 * 1024,
) -> AsyncIterator[Relayed]:
    """Open a relayed session through the gateway at ``gateway_url`` (``ws://…/ws``).

    ``connect_timeout`` bounds the wait for ``connected`` (the gateway's own
    dial timeout applies too).  ``ssl_context`` is used for a ``wss://``
    gateway, e.g. one trusting a private CA.
    """
    async with open_websocket_url(
        gateway_url, ssl_context=ssl_context, max_message_size=max_message_size
    ) as websocket:
        await websocket.send_message(
            connect_message(
                api_key=api_key,
                url=url,
                headers=headers,
                cookies=cookies,
                geo=geo,
                agent=agent,
                idle_timeout=idle_timeout,
            )
        )
        with trio.fail_after(connect_timeout):
            try:
                first = await websocket.get_message()
            except ConnectionClosed as closed:
                raise RelayError("gateway closed before answering", *_close_of(closed)) from None
        answer = json.loads(first)
        if answer.get("type") == "connected":
            yield Relayed(websocket, str(answer.get("node_id")), int(answer.get("status", 101)))
            return
        refusal = RelayError(str(answer.get("message", first)), None)
        with trio.move_on_after(connect_timeout):
            try:
                await websocket.get_message()
            except ConnectionClosed as closed:
                refusal.code, refusal.reason = _close_of(closed)
    raise refusal
