"""``GatewayClient``: the Python SDK of the parser WebSocket API (protocol parser-ws/2.0).

Works under ``asyncio.run`` and ``trio.run`` alike (anyio)::

    client = GatewayClient(base_http_url="http://127.0.0.1:8080", admin_token="...")
    async with client:
        await client.configure_poshmark(batch_size=50, parsing_mode="com")
        batch = await client.fetch_batch()
        print(batch["data"]["count"], "items")

Every call returns the server's whole response envelope
(``{"ok", "action", "ts", "data"}``); ``ok: false`` answers raise
:class:`RequestError`, a refused connection :class:`AuthenticationError` (4401)
or :class:`ServerBusyError` (1013).
"""

from __future__ import annotations

import json
import os
import ssl
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio

from ws_gateway.errors import (
    AuthenticationError,
    ConnectionClosedError,
    GatewayError,
    HandshakeError,
    NotConfiguredError,
    RequestError,
    ServerBusyError,
    UpstreamError,
    request_error,
)
from ws_gateway.websocket import WebSocket

__all__ = [
    "AuthenticationError",
    "ConnectionClosedError",
    "GatewayClient",
    "GatewayError",
    "HandshakeError",
    "NotConfiguredError",
    "RequestError",
    "ServerBusyError",
    "UpstreamError",
    "parser_ws_url",
]

PARSER_PATH = "/ws/parser"


def parser_ws_url(base_http_url: str, path: str = PARSER_PATH) -> str:
    """``http(s)://host[:port][/prefix]`` → ``ws(s)://host[:port][/prefix]/ws/parser``."""
    parts = urlsplit(base_http_url)
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"base_http_url must be an http:// or https:// URL, got {base_http_url!r}")
    return urlunsplit((schemes[parts.scheme], parts.netloc, parts.path.rstrip("/") + path, "", ""))


def _ssl_context(ca: ssl.SSLContext | str | os.PathLike[str] | None) -> ssl.SSLContext | None:
    if ca is None or isinstance(ca, ssl.SSLContext):
        return ca
    return ssl.create_default_context(cafile=os.fspath(ca))


class GatewayClient:
    """A connection to ``/ws/parser``; use ``async with client:`` (re-enterable after exit).

    ``ca`` is an ``ssl.SSLContext`` or a CA bundle path for ``https`` servers with
    a private CA. The token goes in the ``X-Admin-Token`` header, so it stays out
    of URLs and access logs. ``timeout`` bounds each request (a fetch may wait on
    slow or rate-limited marketplaces).
    """

    def __init__(
        self,
        base_http_url: str,
        admin_token: str,
        *,
        ca: ssl.SSLContext | str | os.PathLike[str] | None = None,
        timeout: float = 180.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = parser_ws_url(base_http_url)
        self._token = admin_token
        self._ssl = _ssl_context(ca)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.greeting: dict[str, Any] | None = None
        self._ws: WebSocket | None = None
        self._lock: anyio.Lock | None = None

    def __repr__(self) -> str:
        return f"GatewayClient(url={self.url!r}, connected={self._ws is not None})"

    @property
    def conn_id(self) -> str | None:
        """The server's id for this connection (from the greeting)."""
        if self.greeting is None:
            return None
        return str(self.greeting["data"]["conn_id"])

    async def __aenter__(self) -> GatewayClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def connect(self) -> dict[str, Any]:
        """Open the connection and return the ``connected`` greeting."""
        if self._ws is not None:
            raise GatewayError("already connected")
        self._lock = anyio.Lock()
        with anyio.fail_after(self.connect_timeout):
            ws = await WebSocket.connect(
                self.url,
                headers=[(b"x-admin-token", self._token.encode())],
                ssl_context=self._ssl,
            )
            try:
                greeting = json.loads(await ws.receive_text())
            except BaseException:
                await ws.close()
                raise
        if not (isinstance(greeting, dict) and greeting.get("action") == "connected"):
            await ws.close()
            raise GatewayError(f"unexpected greeting: {str(greeting)[:200]}")
        self._ws = ws
        self.greeting = greeting
        return greeting

    async def aclose(self) -> None:
        """Close the connection (normal closure); safe to call twice."""
        ws, self._ws = self._ws, None
        if ws is not None:
            with anyio.CancelScope(shield=True):
                await ws.close()

    async def request(self, action: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request and return the response; ``ok: false`` raises :class:`RequestError`."""
        if self._lock is None:
            raise GatewayError("not connected; use 'async with client:'")
        message = json.dumps({"action": action, "payload": payload or {}})
        expected = "pong" if action == "ping" else action
        async with self._lock:
            response = await self._exchange(message)
            if not isinstance(response, dict) or response.get("action") not in (expected, "error"):
                await self.aclose()
                raise GatewayError(f"unexpected response to {action}: {str(response)[:200]}")
        if response.get("ok") is not True:
            raise request_error(response)
        return response

    async def _exchange(self, message: str) -> object:
        """Send ``message`` and read the next message; on any failure drop the connection.

        Responses carry no request id: after a timeout the late answer would be
        taken for the next request's, so the connection cannot be kept.
        """
        if self._ws is None:
            raise GatewayError("not connected; use 'async with client:'")
        try:
            with anyio.fail_after(self.timeout):
                await self._ws.send_text(message)
                return json.loads(await self._ws.receive_text())
        except BaseException:
            await self.aclose()
            raise

    async def configure_poshmark(
        self,
        *,
        batch_size: int | None = None,
        parsing_mode: str | None = None,
        ads_count: int | None = None,
        sales_count: int | None = None,
        query: str | None = None,
    ) -> dict[str, Any]:
        """``parser.configure`` for Poshmark; unset arguments take the server's defaults."""
        return await self.request(
            "parser.configure",
            _payload(
                parser_type="poshmark",
                batch_size=batch_size,
                parsing_mode=parsing_mode,
                ads_count=ads_count,
                sales_count=sales_count,
                query=query,
            ),
        )

    async def configure_depop(
        self,
        *,
        batch_size: int | None = None,
        country_filter: str | None = None,
        min_price: float | None = None,
        max_price: float | None = None,
        brand_filter: str | None = None,
        query: str | None = None,
    ) -> dict[str, Any]:
        """``parser.configure`` for Depop; unset arguments take the server's defaults."""
        return await self.request(
            "parser.configure",
            _payload(
                parser_type="depop",
                batch_size=batch_size,
                country_filter=country_filter,
                min_price=min_price,
                max_price=max_price,
                brand_filter=brand_filter,
                query=query,
            ),
        )

    async def fetch_batch(self) -> dict[str, Any]:
        """``parser.fetch``: the next batch (``data.count``, ``data.items``, ``data.exhausted``)."""
        return await self.request("parser.fetch")

    async def stats(self) -> dict[str, Any]:
        """``stats.me``: this connection's counters."""
        return await self.request("stats.me")

    async def ping(self) -> dict[str, Any]:
        """``ping``: answered with action ``pong``."""
        return await self.request("ping")

    async def help(self) -> dict[str, Any]:
        """``help``: the full protocol reference."""
        return await self.request("help")


def _payload(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}
