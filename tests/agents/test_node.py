"""The agent node (``relay agent``) behind a gateway: its own policy, proxy, TLS and
idle deadline, its front door, and the link's keepalive."""

from __future__ import annotations

import json
import socket

import attrs
import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from relay.agents.base import plain_request
from relay.agents.remote import RemoteAgent, link_message
from relay.client import RelayError, open_relay
from relay.config import AgentConfig
from relay.gateway import dial_settings
from relay.wire.closecodes import SessionError
from relay.wire.connect import parse_connect_message
from tests.agents.conftest import TOKEN, start_node, until_state
from tests.support.gateway import KEY, make_config, start_gateway
from tests.support.proxies import microsocks
from tests.support.target import TargetServer


def _remote(url: str, **extra: object) -> AgentConfig:
    return AgentConfig(slug="de1", country="DE", kind="remote", url=url, token=TOKEN, **extra)  # type: ignore[arg-type]


async def test_agent_applies_its_own_target_policy(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    node = await start_node(nursery, allow_private=False)
    running = await start_gateway(nursery, make_config(agents=(_remote(node.url),)))
    with pytest.raises(RelayError) as refused:
        async with open_relay(running.ws_url, api_key=KEY, url=f"{target.url}/echo"):
            pass
    assert refused.value.code == 1008
    assert refused.value.message == (
        "Target address not allowed: 127.0.0.1 resolves to loopback address 127.0.0.1"
    )
    assert target.connections == []


async def test_target_refusal_passes_through_without_retrying(
    nursery: trio.Nursery, target: TargetServer, caplog: pytest.LogCaptureFixture
) -> None:
    first = await start_node(nursery)
    second = await start_node(nursery)
    agents = (_remote(first.url), attrs.evolve(_remote(second.url), slug="de2"))
    running = await start_gateway(nursery, make_config(agents=agents))
    with pytest.raises(RelayError) as refused:
        async with open_relay(running.ws_url, api_key=KEY, url=f"{target.url}/reject?status=403"):
            pass
    assert (refused.value.message, refused.value.code) == (
        "Target refused the WebSocket upgrade: HTTP 403 Forbidden",
        1011,
    )
    assert "failed to dial" not in caplog.text  # the other agent was not tried


async def test_agent_dials_through_its_own_upstream_proxy(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    async with microsocks(user="u", password="pw-9", bind="127.0.0.5") as socks:
        node = await start_node(nursery, proxy=socks.url("u", "pw-9"))
        running = await start_gateway(nursery, make_config(agents=(_remote(node.url),)))
        async with open_relay(running.ws_url, api_key=KEY, url=f"{target.url}/echo") as relayed:
            await relayed.websocket.send_message("via the agent's proxy")
            assert await relayed.websocket.get_message() == "via the agent's proxy"
        assert target.connections[-1].peer == "127.0.0.5"


async def test_agent_keeps_the_idle_deadline(nursery: trio.Nursery, target: TargetServer) -> None:
    node = await start_node(nursery)
    running = await start_gateway(nursery, make_config(agents=(_remote(node.url),)))
    async with open_relay(
        running.ws_url, api_key=KEY, url=f"{target.url}/echo", idle_timeout=0.3
    ) as relayed:
        with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
            await relayed.websocket.get_message()
    assert closed.value.reason is not None
    assert (closed.value.reason.code, closed.value.reason.reason) == (1000, "idle timeout")
    with trio.fail_after(10):
        await target.connections[-1].ended.wait()
    assert target.connections[-1].close_code == 1000


async def test_wss_link_to_an_agent_with_tls_to_a_wss_target(
    nursery: trio.Nursery,
    tls_target: TargetServer,
    ca_file: str,
    leaf_files: tuple[str, str],
) -> None:
    cert, key = leaf_files
    node = await start_node(nursery, tls_cert=cert, tls_key=key, targets_ca=ca_file)
    assert node.url.startswith("wss://127.0.0.1:")
    agents = (_remote(node.url, ca_file=ca_file, health_interval=0.2),)
    running = await start_gateway(nursery, make_config(agents=agents))
    agent = running.gateway.agents.agents[0]
    assert isinstance(agent, RemoteAgent)
    async with open_relay(running.ws_url, api_key=KEY, url=f"{tls_target.url}/echo") as relayed:
        await relayed.websocket.send_message(b"\x00binary over two TLS hops")
        assert await relayed.websocket.get_message() == b"\x00binary over two TLS hops"
    await until_state(agent.health, "healthy")

    # Without the private CA the gateway refuses the agent's certificate.
    untrusting = RemoteAgent(
        "de1", "DE", "relay-de1", node.url, TOKEN, dial_settings(make_config())
    )
    with pytest.raises(SessionError, match="TLS handshake with agent de1 failed"):
        await untrusting.open(plain_request(f"{tls_target.url}/echo"))


async def test_front_door_refuses_plain_http_wrong_paths_and_tokens(nursery: trio.Nursery) -> None:
    node = await start_node(nursery)
    base = node.url.removesuffix("/agent").replace("ws://", "http://")
    async with httpx.AsyncClient() as client:
        assert (await client.get(base + "/")).status_code == 404
        assert (await client.get(base + "/agent")).status_code == 426
    for headers in (
        [],
        [(b"authorization", b"Bearer wrong")],
        [(b"authorization", TOKEN.encode())],
    ):
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(node.url, extra_headers=headers):
                pass
        assert rejected.value.status_code == 401
    health_headers = [(b"authorization", f"Bearer {TOKEN}".encode())]
    async with open_websocket_url(node.url + "/health", extra_headers=health_headers) as ws:
        assert '"type": "healthy"' in await ws.get_message()


async def test_link_sockets_notice_a_silent_drop_within_seconds(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    node = await start_node(nursery)
    agent = RemoteAgent("de1", "DE", "relay-de1", node.url, TOKEN, dial_settings(make_config()))
    connection = await agent.open(plain_request(f"{target.url}/echo"))
    try:
        sock = connection.stream.socket  # type: ignore[attr-defined]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
        interval = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
        count = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
        assert idle + interval * count <= 5
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 5000
        assert connection.idle_handled
    finally:
        await trio.aclose_forcefully(connection.stream)


def test_link_message_is_a_connect_message_with_cookies_merged() -> None:
    request = parse_connect_message(
        '{"apiKey": "k", "url": "wss://t.example/s?q=1", "headers": {"Origin": "o"},'
        ' "cookies": {"a": "1", "b": "2"}, "geo": "DE", "idle_timeout": 7}'
    )
    text = link_message(request, "127.0.0.2")
    assert json.loads(text) == {
        "url": "wss://t.example/s?q=1",
        "headers": {"Origin": "o", "Cookie": "a=1; b=2"},
        "idle_timeout": 7,
        "source_address": "127.0.0.2",
    }  # no API key, no geo: the gateway has dealt with those
    again = parse_connect_message(text)
    assert again.url == request.url
    assert again.headers == (("Origin", "o"), ("Cookie", "a=1; b=2"))
    assert again.idle_timeout == 7
    assert again.api_key is None
