"""Proxy agents through real proxies: microsocks (SOCKS5) and tinyproxy (HTTP CONNECT),
with and without credentials, ``https://`` to the proxy, and each stage's failure.

Each proxy binds its outgoing connections to its own loopback address, so the
target's peer address shows the connection really went through that proxy.
"""

from __future__ import annotations

import json
import logging
import ssl

import attrs
import pytest
import trio
import trustme

from relay.agents.base import plain_request
from relay.agents.proxy import ProxyAgent, ProxyURL
from relay.client import RelayError, open_relay
from relay.config import AgentConfig
from relay.wire.closecodes import Outcome, SessionError
from tests.agents.conftest import healthz, server_context, until_state
from tests.support.gateway import KEY, make_config, start_gateway
from tests.support.proxies import free_port, microsocks, tinyproxy, tls_front
from tests.support.target import TargetServer

SECRET = "pa55-w0rd-q8"


def _proxy(slug: str, url: str, **extra: object) -> AgentConfig:
    return AgentConfig(slug=slug, country="US", kind="proxy", proxy=url, **extra)  # type: ignore[arg-type]


async def _relay(ws_url: str, target_url: str, agent: str) -> str:
    """Echo once through ``agent``; returns its node_id."""
    async with open_relay(ws_url, api_key=KEY, url=target_url, agent=agent) as relayed:
        await relayed.websocket.send_message(f"through {agent}")
        assert await relayed.websocket.get_message() == f"through {agent}"
        return relayed.node_id


async def _refused(ws_url: str, target_url: str, agent: str) -> tuple[str, int | None]:
    with pytest.raises(RelayError) as refused:
        async with open_relay(ws_url, api_key=KEY, url=target_url, agent=agent):
            pass
    return refused.value.message, refused.value.code


async def test_socks5_and_http_connect_with_and_without_credentials(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    async with (
        microsocks(bind="127.0.0.5") as socks_open,
        microsocks(user="scraper", password=SECRET, bind="127.0.0.6") as socks_auth,
        tinyproxy(bind="127.0.0.7") as http_open,
        tinyproxy(user="scraper", password=SECRET, bind="127.0.0.8") as http_auth,
    ):
        agents = (
            _proxy("s5", socks_open.url()),
            _proxy("s5auth", socks_auth.url("scraper", SECRET), node_id="scraping-us2"),
            _proxy("http", http_open.url()),
            _proxy("httpauth", http_auth.url("scraper", SECRET)),
        )
        running = await start_gateway(nursery, make_config(agents=agents))
        url = f"{target.url}/echo"
        expected = {
            "s5": ("relay-s5", "127.0.0.5"),
            "s5auth": ("scraping-us2", "127.0.0.6"),
            "http": ("relay-http", "127.0.0.7"),
            "httpauth": ("relay-httpauth", "127.0.0.8"),
        }
        for slug, (node_id, peer) in expected.items():
            assert await _relay(running.ws_url, url, slug) == node_id
            assert target.connections[-1].peer == peer
        # Remote DNS: the proxy, not the gateway, resolves the target's name.
        localhost = url.replace("127.0.0.1", "localhost")
        for slug in ("s5auth", "httpauth"):
            await _relay(running.ws_url, localhost, slug)
            assert target.connections[-1].headers["host"].startswith("localhost:")


async def test_proxy_auth_failure_is_1011_with_a_clear_message(
    nursery: trio.Nursery, target: TargetServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + SECRET
    async with (
        microsocks(user="scraper", password=SECRET) as socks,
        tinyproxy(user="scraper", password=SECRET) as http,
    ):
        agents = (
            _proxy("s5", socks.url("scraper", wrong)),
            _proxy("s5none", socks.url()),
            _proxy("http", http.url("scraper", wrong)),
            _proxy("httpnone", http.url()),
        )
        config = make_config(agents=agents)
        running = await start_gateway(nursery, config)
        for slug in ("s5", "s5none", "http", "httpnone"):
            message, code = await _refused(running.ws_url, f"{target.url}/echo", slug)
            assert (message, code) == (f"Agent {slug}: proxy authentication refused", 1011)
        assert target.connections == []
        report = json.dumps(await healthz(running.address.http_url))
    for text in (report, caplog.text, repr(config), repr(running.gateway.agents.agents)):
        assert SECRET not in text
        assert wrong not in text


async def test_each_proxy_stage_failure_is_named(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    async with microsocks() as socks, tinyproxy() as http:
        agents = (
            _proxy("down", f"socks5://u:{SECRET}@127.0.0.1:{free_port()}"),
            _proxy("s5", socks.url()),
            _proxy("http", http.url()),
        )
        running = await start_gateway(nursery, make_config(agents=agents))
        echo = f"{target.url}/echo"
        # (Asked directly: its health check may already have taken it out of selection.)
        down = running.gateway.agents.agents[0]
        with pytest.raises(SessionError) as failed:
            await down.open(plain_request(echo))
        assert (failed.value.outcome, failed.value.message) == (
            Outcome.AGENT_FAILED,
            "Agent down: proxy unreachable (Connection refused)",
        )
        await until_state(down.health, "unhealthy")  # type: ignore[attr-defined]
        assert down.health.last_error == failed.value.message  # type: ignore[attr-defined]
        closed = f"ws://127.0.0.1:{free_port()}/"
        assert await _refused(running.ws_url, closed, "s5") == (
            "Agent s5: proxy could not reach the target (Connection refused by destination host)",
            1011,
        )
        message, code = await _refused(running.ws_url, closed, "http")
        assert message.startswith("Agent http: proxy could not reach the target (")
        assert code == 1011
        # Past the proxy, the target's own answers are reported as for a direct dial.
        assert await _refused(running.ws_url, f"{target.url}/reject?status=403", "s5") == (
            "Target refused the WebSocket upgrade: HTTP 403 Forbidden",
            1011,
        )


async def test_https_proxy_then_tls_to_a_wss_target(
    nursery: trio.Nursery, tls_target: TargetServer, ca: trustme.CA, ca_file: str
) -> None:
    async with (
        tinyproxy(user="scraper", password=SECRET, bind="127.0.0.9") as http,
        tls_front(http.port, server_context(ca)) as front,
    ):
        agents = (_proxy("tls", front.url("scraper", SECRET), ca_file=ca_file),)
        config = make_config(agents=agents)
        config = attrs.evolve(config, targets=attrs.evolve(config.targets, ca_file=ca_file))
        running = await start_gateway(nursery, config)
        assert await _relay(running.ws_url, f"{tls_target.url}/echo", "tls") == "relay-tls"
        assert tls_target.connections[-1].peer == "127.0.0.9"
        # Trusting nothing private, the proxy's certificate is refused and named.
        agent = running.gateway.agents.agents[0]
        untrusting = attrs.evolve(agent, proxy_ssl=ssl.create_default_context())  # type: ignore[misc]
        with pytest.raises(SessionError, match="TLS handshake with the proxy failed"):
            await untrusting.open(plain_request(f"{tls_target.url}/echo"))


async def test_unhealthy_proxy_agent_is_skipped_and_readmitted(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    port = free_port()
    async with microsocks(bind="127.0.0.5") as other:
        agents = (
            _proxy("flaky", f"socks5://127.0.0.1:{port}", health_interval=0.1),
            _proxy("steady", other.url()),
        )
        running = await start_gateway(nursery, make_config(agents=agents))
        flaky = running.gateway.agents.agents[0]
        assert isinstance(flaky, ProxyAgent)
        await until_state(flaky.health, "unhealthy")  # nothing listens on its port yet
        echo = f"{target.url}/echo"
        assert await _refused(running.ws_url, echo, "flaky") == ("No agent available", 1011)
        assert {await _relay(running.ws_url, echo, "flaky,steady") for _ in range(5)} == {
            "relay-steady"
        }
        async with microsocks(port=port, bind="127.0.0.6"):
            await until_state(flaky.health, "healthy")
            assert await _relay(running.ws_url, echo, "flaky") == "relay-flaky"
            assert target.connections[-1].peer == "127.0.0.6"


def test_proxy_url_never_shows_its_credentials() -> None:
    proxy = ProxyURL.parse(f"socks5://scraper:{SECRET}@127.0.0.1:1080")
    assert (proxy.username, proxy.password) == ("scraper", SECRET)
    assert str(proxy) == "socks5://***@127.0.0.1:1080"
    assert SECRET not in repr(proxy)
    decoded = ProxyURL.parse("http://a%40b:p%3Aw@[::1]:3128")
    assert (decoded.username, decoded.password, decoded.host) == ("a@b", "p:w", "::1")
    assert str(decoded) == "http://***@[::1]:3128"
    with pytest.raises(ValueError, match="socks5://"):
        ProxyURL.parse("ftp://127.0.0.1:21")
