"""Served by the gateway, the parser API's requests leave through its agents."""

from __future__ import annotations

import attrs
import trio

from relay.agents.direct import DirectAgent
from relay.config import AgentConfig
from tests.parser_api.parser_fake_marketplace import FakeMarketplace
from tests.parser_api.parser_testkit import TOKEN, make_config
from tests.support.gateway import make_config as gateway_config
from tests.support.gateway import start_gateway
from tests.support.proxies import tinyproxy
from ws_gateway.client import GatewayClient


async def test_a_country_session_leaves_from_that_countrys_agent(
    nursery: trio.Nursery, market: FakeMarketplace
) -> None:
    agents = (
        AgentConfig(slug="local"),
        AgentConfig(slug="gb1", country="GB", source_address="127.0.0.2"),
    )
    config = attrs.evolve(gateway_config(agents=agents), parser=make_config(market))
    running = await start_gateway(nursery, config)
    base = running.address.http_url
    async with GatewayClient(base_http_url=base, admin_token=TOKEN) as client:
        await client.configure_depop(batch_size=5, country_filter="gb")
        batch = await client.fetch_batch()
        assert batch["data"]["count"] > 0
    depop = [request for request in market.requests if request.domain == "depop"]
    assert depop
    assert {request.peer for request in depop} == {"127.0.0.2"}
    # No agent in the United States: Poshmark's .com leaves directly.
    async with GatewayClient(base_http_url=base, admin_token=TOKEN) as client:
        await client.configure_poshmark(batch_size=5, parsing_mode="com")
        assert (await client.fetch_batch())["data"]["count"] > 0
    poshmark = [request for request in market.requests if request.domain == "com"]
    assert {request.peer for request in poshmark} == {"127.0.0.1"}


async def test_a_proxy_agent_carries_its_countrys_requests(
    nursery: trio.Nursery, market: FakeMarketplace
) -> None:
    async with tinyproxy(user="scraper", password="pa55-q8", bind="127.0.0.9") as proxy:
        agents = (
            AgentConfig(slug="local"),
            AgentConfig(
                slug="gb2", country="GB", kind="proxy", proxy=proxy.url("scraper", "pa55-q8")
            ),
        )
        config = attrs.evolve(gateway_config(agents=agents), parser=make_config(market))
        running = await start_gateway(nursery, config)
        async with GatewayClient(
            base_http_url=running.address.http_url, admin_token=TOKEN
        ) as client:
            await client.configure_depop(batch_size=5, country_filter="gb")
            assert (await client.fetch_batch())["data"]["count"] > 0
    depop = [request for request in market.requests if request.domain == "depop"]
    assert depop
    assert {request.peer for request in depop} == {"127.0.0.9"}


async def test_requests_move_to_the_next_agent_when_one_turns_unhealthy(
    nursery: trio.Nursery, market: FakeMarketplace
) -> None:
    agents = (
        AgentConfig(slug="gb1", country="GB", source_address="127.0.0.2"),
        AgentConfig(slug="gb2", country="GB", source_address="127.0.0.3"),
    )
    config = attrs.evolve(gateway_config(agents=agents), parser=make_config(market))
    running = await start_gateway(nursery, config)
    gb1 = next(agent for agent in running.gateway.agents.agents if agent.slug == "gb1")
    assert isinstance(gb1, DirectAgent)
    async with GatewayClient(base_http_url=running.address.http_url, admin_token=TOKEN) as client:
        await client.configure_depop(batch_size=5, country_filter="gb")
        assert (await client.fetch_batch())["data"]["count"] > 0
        seen = len(market.requests)
        assert {request.peer for request in market.requests} == {"127.0.0.2"}
        gb1.healthy = False
        assert (await client.fetch_batch())["data"]["count"] > 0
    later = market.requests[seen:]
    assert later
    assert {request.peer for request in later} == {"127.0.0.3"}
