"""Remote agents: real ``relay agent`` processes (and in-process nodes) behind a gateway.

Agents bind their target connections to distinct loopback addresses, so the
target's view of its peer says which agent dialed.
"""

from __future__ import annotations

import json
import logging
import signal
import tomllib

import pytest
import trio
from trio_websocket import ConnectionClosed

from relay.agents.base import plain_request
from relay.agents.remote import RemoteAgent
from relay.client import RelayError, open_relay
from relay.config import AgentConfig, config_from_dict
from relay.wire.closecodes import SessionError
from tests.agents.conftest import TOKEN, healthz, start_node, until_state
from tests.support.gateway import KEY, make_config, start_gateway
from tests.support.process import relay_process
from tests.support.proxies import free_port
from tests.support.target import TargetServer

# The issue's [[agents]] example, with real ports: must work as written.
GATEWAY_TOML = """
[server]
bind = "127.0.0.1:0"

[targets]
allow_private = true

[[keys]]
key = "{key}"
rate = 1000.0
burst = 1000

[[agents]]
slug = "de1"
country = "DE"
node_id = "scraping-de1"
kind = "remote"
url = "{de_url}"
token = "{token}"

[[agents]]
slug = "us1"
country = "US"
kind = "remote"
url = "{us_url}"
token = "{token}"
source_address = "127.0.0.3"   # sent to the agent, which binds its dial to it

[[agents]]
slug = "local"
source_address = "127.0.0.4"   # a direct agent bound to an egress address
"""


def _agent_args(slug: str, country: str, *extra: str, port: int = 0) -> list[str]:
    return [
        "--bind",
        f"127.0.0.1:{port}",
        "--token",
        TOKEN,
        "--slug",
        slug,
        "--country",
        country,
        "--allow-private-targets",
        *extra,
    ]


async def _peer_and_node(url: str, target: TargetServer, **fields: str) -> tuple[str, str]:
    async with open_relay(url, api_key=KEY, url=f"{target.url}/echo", **fields) as relayed:  # type: ignore[arg-type]
        await relayed.websocket.send_message("ping through")
        assert await relayed.websocket.get_message() == "ping through"
        return target.connections[-1].peer, relayed.node_id


async def test_two_agent_processes_route_by_geo_and_pin(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    de_args = _agent_args("de1", "DE", "--source-address", "127.0.0.2")
    async with (
        relay_process(de_args, command="agent") as de,
        relay_process(_agent_args("us1", "US"), command="agent") as us,
    ):
        assert "relay agent de1 (DE) listening on" in de.output
        assert TOKEN not in de.output + us.output
        text = GATEWAY_TOML.format(key=KEY, token=TOKEN, de_url=de.ws_url, us_url=us.ws_url)
        running = await start_gateway(nursery, config_from_dict(tomllib.loads(text)))
        url = running.ws_url

        assert await _peer_and_node(url, target, geo="DE") == ("127.0.0.2", "scraping-de1")
        assert await _peer_and_node(url, target, geo="us") == ("127.0.0.3", "relay-us1")
        assert await _peer_and_node(url, target, agent="de1") == ("127.0.0.2", "scraping-de1")
        assert await _peer_and_node(url, target, agent="local") == ("127.0.0.4", "relay-local")
        seen = {await _peer_and_node(url, target, agent="de1,us1") for _ in range(24)}
        assert seen == {("127.0.0.2", "scraping-de1"), ("127.0.0.3", "relay-us1")}  # 2^-23

        # Headers and cookies reach the target through the agent; the link's token does not.
        async with open_relay(
            url,
            api_key=KEY,
            url=f"{target.url}/headers",
            headers={"Origin": "https://example.test", "X-Trace": "t-1"},
            cookies={"session": "abc123"},
            geo="DE",
        ) as relayed:
            seen_headers = json.loads(await relayed.websocket.get_message())["headers"]
        assert seen_headers["origin"] == "https://example.test"
        assert seen_headers["x-trace"] == "t-1"
        assert seen_headers["cookie"] == "session=abc123"
        assert "authorization" not in seen_headers

        # The agents passed their health checks and said who they are.
        de1 = running.gateway.agents.agents[0]
        assert isinstance(de1, RemoteAgent)
        await until_state(de1.health, "healthy")
        report = await healthz(running.address.http_url)
        entry = report["agents"][0]  # type: ignore[index]
        assert (entry["slug"], entry["kind"], entry["state"]) == ("de1", "remote", "healthy")
        assert entry["reported"] == {"slug": "de1", "country": "DE", "node_id": "relay-de1"}
        assert TOKEN not in json.dumps(report)


async def _close_of(
    url: str, target_url: str
) -> tuple[int | None, str | None]:  # the close the client receives
    async with open_relay(url, api_key=KEY, url=target_url) as relayed:
        with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
            await relayed.websocket.get_message()
    assert closed.value.reason is not None
    return closed.value.reason.code, closed.value.reason.reason


async def test_close_codes_pass_unchanged_through_both_hops(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    node = await start_node(nursery, slug="de1", country="DE")
    agents = (AgentConfig(slug="de1", country="DE", kind="remote", url=node.url, token=TOKEN),)
    running = await start_gateway(nursery, make_config(agents=agents))

    # target → agent → gateway → client, and the client's answer all the way back
    code = await _close_of(running.ws_url, f"{target.url}/close?code=4001&reason=target+says+bye")
    assert code == (4001, "target says bye")
    with trio.fail_after(10):
        await target.connections[-1].ended.wait()
    assert (target.connections[-1].close_code, target.connections[-1].close_reason) == (
        4001,
        "target says bye",
    )

    # client → gateway → agent → target, and the target's answer back
    async with open_relay(running.ws_url, api_key=KEY, url=f"{target.url}/echo") as relayed:
        await relayed.websocket.aclose(4002, "client says bye")
        assert relayed.websocket.closed is not None
        assert (relayed.websocket.closed.code, relayed.websocket.closed.reason) == (
            4002,
            "client says bye",
        )
    with trio.fail_after(10):
        await target.connections[-1].ended.wait()
    assert (target.connections[-1].close_code, target.connections[-1].close_reason) == (
        4002,
        "client says bye",
    )


async def test_agent_killed_mid_relay_is_1011_then_skipped_and_readmitted(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    port = free_port()
    us = await start_node(nursery, slug="us1", country="US")
    de_args = _agent_args("de1", "DE", "--source-address", "127.0.0.2", port=port)
    agents = (
        AgentConfig(
            slug="de1",
            country="DE",
            node_id="scraping-de1",
            kind="remote",
            url=f"ws://127.0.0.1:{port}/agent",
            token=TOKEN,
            health_interval=0.2,
            health_timeout=2.0,
        ),
        AgentConfig(slug="us1", country="US", kind="remote", url=us.url, token=TOKEN),
    )
    running = await start_gateway(nursery, make_config(agents=agents))
    de1 = running.gateway.agents.agents[0]
    assert isinstance(de1, RemoteAgent)

    async with relay_process(de_args, command="agent") as de:
        await until_state(de1.health, "healthy")
        async with open_relay(
            running.ws_url, api_key=KEY, url=f"{target.url}/echo", agent="de1"
        ) as relayed:
            await relayed.websocket.send_message("before")
            assert await relayed.websocket.get_message() == "before"
            de.process.send_signal(signal.SIGKILL)  # the agent crashes mid-relay
            with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
                await relayed.websocket.get_message()
        assert closed.value.reason is not None
        assert closed.value.reason.code == 1011

    # Out of selection: pinned requests find no agent, the rest go to us1.
    await until_state(de1.health, "unhealthy")
    with pytest.raises(RelayError) as refused:
        async with open_relay(running.ws_url, api_key=KEY, url=f"{target.url}/echo", agent="de1"):
            pass
    assert (refused.value.message, refused.value.code) == ("No agent available", 1011)
    for _ in range(5):
        _, node = await _peer_and_node(running.ws_url, target, geo="DE,US")
        assert node == "relay-us1"
    report = await healthz(running.address.http_url)
    entry = report["agents"][0]  # type: ignore[index]
    assert entry["state"] == "unhealthy"
    assert entry["last_error"].startswith("Agent de1 unreachable")
    assert report["status"] == "ok"

    # Back on its port: the next check re-admits it.
    async with relay_process(de_args, command="agent"):
        await until_state(de1.health, "healthy")
        peer, node = await _peer_and_node(running.ws_url, target, agent="de1")
        assert (peer, node) == ("127.0.0.2", "scraping-de1")


async def test_wrong_token_is_refused_and_named(
    nursery: trio.Nursery, target: TargetServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    node = await start_node(nursery, slug="de1", country="DE")
    wrong = "not-the-" + TOKEN
    agents = (
        AgentConfig(
            slug="de1", country="DE", kind="remote", url=node.url, token=wrong, health_interval=60
        ),
    )
    running = await start_gateway(nursery, make_config(agents=agents))
    de1 = running.gateway.agents.agents[0]
    assert isinstance(de1, RemoteAgent)

    # A dial names the refusal (checked on the agent directly: the background
    # check may already have taken it out of selection).
    with pytest.raises(SessionError, match=r"Agent de1 refused the gateway's token \(HTTP 401\)"):
        await de1.open(plain_request(f"{target.url}/echo"))
    await until_state(de1.health, "unhealthy")
    assert de1.health.last_error == "Agent de1 refused the gateway's token (HTTP 401)"
    message, code = await _refusal(running.ws_url, target, agent="de1")
    assert (message, code) == ("No agent available", 1011)
    assert target.connections == []
    report = json.dumps(await healthz(running.address.http_url))
    for secret in (wrong, TOKEN):
        assert secret not in report
        assert secret not in caplog.text
        assert secret not in repr(running.gateway.config)


def _request(url: str) -> object:
    from relay.agents.base import plain_request

    return plain_request(url)


async def _refusal(url: str, target: TargetServer, **fields: str) -> tuple[str, int | None]:
    with pytest.raises(RelayError) as refused:
        async with open_relay(url, api_key=KEY, url=f"{target.url}/echo", **fields):  # type: ignore[arg-type]
            pass
    return refused.value.message, refused.value.code
