"""``serve()``: the gateway on one port, inside the caller's Trio nursery."""

from __future__ import annotations

import logging
from functools import partial

import attrs
import trio

from relay.agents.health import run_health_checks
from relay.asgi import ASGIApp, GatewayApp
from relay.config import Config
from relay.gateway import Gateway
from relay.httpserver import AsgiServer
from relay.listener import handle_connection

__all__ = ["BoundAddress", "serve"]

log = logging.getLogger("relay.server")


@attrs.frozen
class BoundAddress:
    """Where the gateway listens, as given to ``task_status.started()``."""

    host: str
    port: int

    @property
    def ws_url(self) -> str:
        """The relay endpoint's URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}/ws"

    @property
    def http_url(self) -> str:
        """The base URL of the HTTP endpoints."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


async def serve(
    config: Config,
    *,
    gateway: Gateway | None = None,
    mounts: dict[str, ASGIApp] | None = None,
    task_status: trio.TaskStatus[BoundAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the gateway until cancelled.

    Use ``address = await nursery.start(serve, config)``: the address it
    reports is bound and accepting (port 0 in ``config`` picks a free port).
    ``gateway`` supplies prebuilt shared state (custom agents, resolver);
    ``mounts`` adds ASGI apps by exact path (e.g. ``/ws/parser``).
    """
    if gateway is None:
        gateway = Gateway.from_config(config)
    server = config.server
    listeners = await trio.open_tcp_listeners(server.port, host=server.host)
    sockname = listeners[0].socket.getsockname()
    address = BoundAddress(str(sockname[0]), int(sockname[1]))
    http = AsgiServer(GatewayApp(gateway, mounts), max_request_head=server.max_request_head)
    async with trio.open_nursery() as nursery:
        await nursery.start(http.run_lifespan)
        await nursery.start(run_health_checks, gateway.agents.agents)
        log.info("relay listening on %s", address.ws_url)
        task_status.started(address)
        await trio.serve_listeners(
            partial(handle_connection, gateway, http), listeners, handler_nursery=nursery
        )
