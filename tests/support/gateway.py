"""Starting a gateway inside a test's nursery, on real loopback sockets or in memory."""

from __future__ import annotations

import json
from collections.abc import Sequence

import attrs
import trio
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    open_websocket_url,
    wrap_client_stream,
)

from relay.agents.base import Agent
from relay.asgi import GatewayApp
from relay.config import AgentConfig, Config, KeyConfig, ServerConfig, TargetsConfig
from relay.dial import TargetConnection, upgrade
from relay.gateway import Gateway
from relay.httpserver import AsgiServer
from relay.listener import handle_connection
from relay.server import BoundAddress, serve
from relay.targets import Resolver, system_resolver
from relay.wire.connect import ConnectRequest
from tests.support.target import TargetServer

KEY = "test-key"


def make_config(
    *,
    keys: Sequence[KeyConfig] = (KeyConfig(key=KEY, rate=1000.0, burst=1000),),
    agents: Sequence[AgentConfig] = (AgentConfig(slug="local"),),
    allow_private: bool = True,
    **server: object,
) -> Config:
    """A test configuration: loopback targets allowed, one generous key."""
    return Config(
        server=ServerConfig(bind="127.0.0.1:0", **server),  # type: ignore[arg-type]
        targets=TargetsConfig(allow_private=allow_private),
        keys=tuple(keys),
        agents=tuple(agents),
    )


@attrs.frozen
class Running:
    """A gateway started by a test."""

    address: BoundAddress
    gateway: Gateway

    @property
    def ws_url(self) -> str:
        return self.address.ws_url


async def start_gateway(
    nursery: trio.Nursery,
    config: Config | None = None,
    *,
    agents: Sequence[Agent] | None = None,
    resolver: Resolver = system_resolver,
) -> Running:
    """Serve a gateway on 127.0.0.1 (free port) in ``nursery``."""
    config = config or make_config()
    gateway = Gateway.from_config(config, agents=agents, resolver=resolver)
    address = await nursery.start(
        lambda task_status: serve(config, gateway=gateway, task_status=task_status)
    )
    return Running(address, gateway)


async def refusal(
    ws_url: str, first: str | bytes | None
) -> tuple[str | None, int | None, str | None]:
    """Send ``first`` (None: send nothing) and return (error message, close code, reason)."""
    async with open_websocket_url(ws_url) as ws:
        if first is not None:
            await ws.send_message(first)
        message: str | None = None
        try:
            answer = await ws.get_message()
            message = json.loads(answer)["message"] if isinstance(answer, str) else None
            await ws.get_message()
        except ConnectionClosed as closed:
            if closed.reason is None:
                raise AssertionError("closed without a reason object") from None
            return message, closed.reason.code, closed.reason.reason
    raise AssertionError("the gateway did not close the connection")


def connect_json(url: str, **fields: object) -> str:
    """A connect message with the test key."""
    return json.dumps({"apiKey": KEY, "url": url, **fields})


@attrs.define
class MemoryAgent:
    """An agent whose targets are served by ``target`` over in-memory streams.

    Used where Trio's autojump clock drives time: real sockets would let the
    clock jump ahead of bytes still in flight in the kernel.
    """

    target: TargetServer
    nursery: trio.Nursery
    slug: str = "mem"
    country: str | None = None
    node_id: str = "memory-node"
    healthy: bool = True

    async def open(self, request: ConnectRequest) -> TargetConnection:
        ours, theirs = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.target.handle, theirs)
        return await upgrade(ours, request)


async def memory_gateway(config: Config, target: TargetServer, nursery: trio.Nursery) -> Gateway:
    """A gateway whose only agent is a :class:`MemoryAgent`."""
    return Gateway.from_config(config, agents=[MemoryAgent(target, nursery)])


async def memory_client(
    gateway: Gateway, nursery: trio.Nursery, resource: str = "/ws"
) -> WebSocketConnection:
    """A trio-websocket client connected to ``gateway`` over an in-memory stream."""
    ours, theirs = trio.testing.memory_stream_pair()
    http = AsgiServer(GatewayApp(gateway))
    nursery.start_soon(handle_connection, gateway, http, theirs)
    return await wrap_client_stream(nursery, ours, "relay.test", resource)
