"""The ASGI app behind every non-relay path on the gateway's port."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from relay.agents import Agent
from relay.agents.health import Health
from relay.docs import protocol_document
from relay.gateway import Gateway
from relay.metrics import CONTENT_TYPE
from relay.playground import PLAYGROUND_PATH, send_page, send_redirect

__all__ = ["GatewayApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def _json(send: Send, status: int, body: object, *, method: str = "GET") -> None:
    data = json.dumps(body, indent=2).encode() + b"\n"
    await _text(send, status, data, "application/json", method=method)


async def _text(send: Send, status: int, data: bytes, content_type: str, *, method: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(data)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else data})


class GatewayApp:
    """``/ws/docs``, ``/healthz``, ``/playground`` and any mounted sub-apps (by exact path)."""

    def __init__(
        self,
        gateway: Gateway,
        mounts: dict[str, ASGIApp] | None = None,
        *,
        config_status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.gateway = gateway
        self.mounts = dict(mounts or {})
        # The loaded configuration's hash and load time (relay/reload.py), when it reloads.
        self.config_status = config_status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one ASGI scope."""
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        mounted = self.mounts.get(scope.get("path", ""))
        if mounted is not None:
            await mounted(scope, receive, send)
            return
        if kind == "websocket":
            await receive()  # websocket.connect
            await self._no_websocket_here(scope, send)
            return
        await self._http(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Hypercorn's Trio worker fails at start-up if the app simply returns here.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await _json(send, 405, {"error": "method not allowed"}, method=method)
            return
        if path == "/ws/docs":
            await _json(send, 200, self._docs(scope), method=method)
        elif path == "/healthz":
            health = self._health()
            await _json(send, 503 if self.gateway.draining else 200, health, method=method)
        elif path == "/metrics":
            await _text(
                send, 200, self.gateway.registry.metrics.render(), CONTENT_TYPE, method=method
            )
        elif path == PLAYGROUND_PATH:
            await send_page(send, method=method)
        elif path == "/":
            await send_redirect(send, PLAYGROUND_PATH)
        else:
            await _json(
                send,
                404,
                {
                    "error": "not found",
                    "endpoints": [
                        "/ws",
                        "/ws/docs",
                        "/healthz",
                        "/metrics",
                        PLAYGROUND_PATH,
                        *self.mounts,
                    ],
                },
                method=method,
            )

    def websocket_endpoints(self) -> list[str]:
        """Paths that accept a WebSocket upgrade on this port."""
        return ["/ws", *sorted({path.rstrip("/") for path in self.mounts})]

    async def _no_websocket_here(self, scope: Scope, send: Send) -> None:
        """A WebSocket upgrade to a path with no endpoint (``/ws/``, a typo): a
        404 whose body names the endpoints, rather than a bare 403."""
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008})
            return
        endpoints = ", ".join(self.websocket_endpoints())
        body = f"No WebSocket endpoint at {scope['path']}; endpoints: {endpoints}\n".encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 404,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})

    def _docs(self, scope: Scope) -> dict[str, Any]:
        host = _header(scope, b"host") or self.gateway.config.server.bind
        scheme = "wss" if scope.get("scheme") == "https" else "ws"
        agents = self.gateway.agents.agents
        return protocol_document(f"{scheme}://{host}/ws", agents[0].node_id if agents else "")

    def _health(self) -> dict[str, Any]:
        stats = self.gateway.registry.stats
        agents = self.gateway.agents.agents
        health: dict[str, Any] = {
            # Serving but unable to dial anything: say so without failing the probe.
            "status": "draining"
            if self.gateway.draining
            else ("ok" if any(agent.healthy for agent in agents) else "degraded"),
            "pid": os.getpid(),
            "sessions_active": stats.sessions_active,
            "sessions_started": stats.sessions_started,
            "agents": [_agent_health(agent) for agent in agents],
        }
        if self.config_status is not None:
            health["config"] = self.config_status()
        return health


def _agent_health(agent: Agent) -> dict[str, Any]:
    """One agent in ``/healthz``: identity, kind and check results, never a secret."""
    entry: dict[str, Any] = {
        "slug": agent.slug,
        "country": agent.country,
        "node_id": agent.node_id,
        "kind": getattr(agent, "kind", "custom"),
        "healthy": agent.healthy,
    }
    health = getattr(agent, "health", None)
    if isinstance(health, Health):
        entry.update(
            state=health.state,
            last_check=health.last_check,
            last_error=health.last_error,
            failures=health.failures,
        )
        if health.reported:
            entry["reported"] = dict(health.reported)
    return entry
