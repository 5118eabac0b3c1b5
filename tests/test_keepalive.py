"""TCP keepalive on relayed connections: both hops of a session, direct and
through a proxy agent, carry the configured probes; 0 turns them off."""

from __future__ import annotations

import socket
from typing import Any

import trio

from relay.client import open_relay
from relay.config import AgentConfig
from relay.keepalive import socket_of
from tests.support.gateway import KEY, make_config, start_gateway
from tests.support.proxies import tinyproxy
from tests.support.target import TargetServer


def keepalive_of(sock: Any) -> tuple[int, int, int, int]:
    """(SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT) of ``sock``."""
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    )


async def hop_sockets(
    nursery: trio.Nursery, target: TargetServer, agent: str, **server: object
) -> list[tuple[int, int, int, int]]:
    """Keepalive settings of the client and target hops of one live session."""
    agents = (AgentConfig(slug="local"),)
    if agent == "proxy":
        proxy = await nursery.start(_run_tinyproxy)
        agents = (AgentConfig(slug="proxy", kind="proxy", proxy=proxy),)  # type: ignore[arg-type]
    running = await start_gateway(nursery, make_config(agents=agents, **server))
    async with open_relay(
        running.ws_url, api_key=KEY, url=f"{target.url}/echo", agent=agent
    ) as relayed:
        await relayed.websocket.send_message("ping")
        assert await relayed.websocket.get_message() == "ping"
        (session,) = running.gateway.registry.sessions
        hops = [session.client, session.target]  # type: ignore[attr-defined]
        return [keepalive_of(socket_of(hop.stream)) for hop in hops]


async def _run_tinyproxy(task_status: trio.TaskStatus[str]) -> None:
    async with tinyproxy() as proxy:
        task_status.started(proxy.url())
        await trio.sleep_forever()


async def test_both_hops_probe_a_silent_peer_by_default(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    # Default tcp_keepalive = 60: probes after 60 quiet seconds, every 10, six of them.
    assert await hop_sockets(nursery, target, "local") == [(1, 60, 10, 6)] * 2


async def test_the_connection_to_a_proxy_agent_is_probed_too(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    assert await hop_sockets(nursery, target, "proxy", tcp_keepalive=12.0) == [(1, 12, 2, 6)] * 2


async def test_zero_turns_keepalive_off(nursery: trio.Nursery, target: TargetServer) -> None:
    hops = await hop_sockets(nursery, target, "local", tcp_keepalive=0.0)
    assert [enabled for enabled, *_ in hops] == [0, 0]
