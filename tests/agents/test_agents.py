"""Agent choice by ``geo`` and ``agent``, and the node_id each reports."""

from __future__ import annotations

import socket

import pytest
import trio
from trio_websocket import ConnectionClosed

from relay.agents.base import Agent, AgentPool
from relay.client import open_relay
from relay.config import AgentConfig
from relay.dial import TargetConnection
from relay.gateway import configured_agents, dial_settings
from relay.wire.closecodes import Outcome, SessionError
from relay.wire.connect import ConnectRequest, parse_connect_message
from tests.support.gateway import KEY, connect_json, make_config, refusal, start_gateway
from tests.support.target import TargetServer

AGENTS = (
    AgentConfig(slug="de1", country="DE", node_id="scraping-de1"),
    AgentConfig(slug="us3", country="us"),
    AgentConfig(slug="at5", country="AT"),
    AgentConfig(slug="nowhere"),
)


async def _node(url: str, target: TargetServer, **fields: str) -> str:
    async with open_relay(url, api_key=KEY, url=f"{target.url}/echo", **fields) as relayed:  # type: ignore[arg-type]
        return relayed.node_id


async def test_geo_and_agent_choose_the_agent(nursery: trio.Nursery, target: TargetServer) -> None:
    running = await start_gateway(nursery, make_config(agents=AGENTS))
    url = running.ws_url
    assert await _node(url, target, geo="DE") == "scraping-de1"
    assert await _node(url, target, geo="de") == "scraping-de1"  # case-insensitive
    assert await _node(url, target, geo="us") == "relay-us3"  # default node_id
    assert await _node(url, target, agent="at5") == "relay-at5"
    assert await _node(url, target, agent="nowhere") == "relay-nowhere"
    assert await _node(url, target, agent="de1", geo="DE,AT") == "scraping-de1"
    seen = {await _node(url, target, geo="AT, DE") for _ in range(40)}
    assert seen == {"scraping-de1", "relay-at5"}  # random among matches (2^-39 to fail)
    seen = {await _node(url, target, agent="us3,at5") for _ in range(40)}
    assert seen == {"relay-us3", "relay-at5"}
    seen = {await _node(url, target) for _ in range(60)}
    assert seen == {"scraping-de1", "relay-us3", "relay-at5", "relay-nowhere"}


async def test_contradicting_geo_and_agent_is_no_agent(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    running = await start_gateway(nursery, make_config(agents=AGENTS))
    message, code, _ = await refusal(
        running.ws_url, connect_json(f"{target.url}/echo", agent="de1", geo="US")
    )
    assert (message, code) == ("No agent available", 1011)
    assert target.connections == []


class _FailingAgent:
    slug = "broken"
    country = "FR"
    node_id = "relay-broken"
    healthy = True

    async def open(self, request: ConnectRequest) -> TargetConnection:
        raise SessionError(Outcome.AGENT_FAILED, "Agent broken failed: egress link down")


class _UnhealthyAgent(_FailingAgent):
    slug = "sick"
    healthy = False


def test_pool_skips_unhealthy_agents() -> None:
    request = parse_connect_message('{"apiKey": "k", "url": "ws://h/", "geo": "FR"}')
    pool = AgentPool([_UnhealthyAgent(), _FailingAgent()])
    assert [agent.slug for agent in pool.candidates(request)] == ["broken"]


async def test_agent_failure_while_dialing_is_1011(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    running = await start_gateway(nursery, agents=[_FailingAgent()])
    message, code, _ = await refusal(running.ws_url, connect_json(f"{target.url}/echo"))
    assert (message, code) == ("Agent broken failed: egress link down", 1011)


class _CrashingAgent:
    """Dials for real; the test then cuts its link to the gateway mid-relay."""

    slug = "crashy"
    country = None
    node_id = "relay-crashy"
    healthy = True

    def __init__(self, inner: Agent) -> None:
        self.inner = inner
        self.sockets: list[socket.socket] = []

    async def open(self, request: ConnectRequest) -> TargetConnection:
        connection = await self.inner.open(request)
        assert isinstance(connection.stream, trio.SocketStream)
        self.sockets.append(connection.stream.socket)  # type: ignore[arg-type]
        return connection


async def test_agent_crash_mid_relay_closes_client_1011(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    config = make_config()
    crashy = _CrashingAgent(configured_agents(config, dial_settings(config))[0])
    running = await start_gateway(nursery, config, agents=[crashy])
    async with open_relay(running.ws_url, api_key=KEY, url=f"{target.url}/echo") as relayed:
        await relayed.websocket.send_message("before")
        assert await relayed.websocket.get_message() == "before"
        crashy.sockets[0].shutdown(socket.SHUT_RDWR)  # the agent's link drops
        with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
            await relayed.websocket.get_message()
    assert closed.value.reason is not None
    assert (closed.value.reason.code, closed.value.reason.reason) == (
        1011,
        "target connection lost",
    )
