"""``serve()``: the gateway on one port, inside the caller's Trio nursery."""

from __future__ import annotations

import logging
from functools import partial

import attrs
import trio

from relay.asgi import ASGIApp, GatewayApp
from relay.config import Config
from relay.gateway import Gateway
from relay.httpserver import AsgiServer
from relay.limits import open_limits
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
    without it the limits backend of ``[ratelimit]`` is opened first (Redis
    unreachable: :class:`relay.ratelimit.LimitsUnavailable`, nothing bound).
    ``mounts`` adds ASGI apps by exact path (e.g. ``/ws/parser``).
    """
    if gateway is None:
        async with open_limits(config.ratelimit) as limits:
            built = Gateway.from_config(config, limiter=limits.limiter, slots=limits.slots)
            await serve(config, gateway=built, mounts=mounts, task_status=task_status)
        return
    server = config.server
    listeners = await trio.open_tcp_listeners(server.port, host=server.host)
    sockname = listeners[0].socket.getsockname()
    address = BoundAddress(str(sockname[0]), int(sockname[1]))
    http = AsgiServer(GatewayApp(gateway, mounts), max_request_head=server.max_request_head)
    async with trio.open_nursery() as nursery:
        await nursery.start(http.run_lifespan)
        log.info("relay listening on %s", address.ws_url)
        task_status.started(address)
        await trio.serve_listeners(
            partial(handle_connection, gateway, http), listeners, handler_nursery=nursery
        )
