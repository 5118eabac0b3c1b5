"""The parser API's marketplace requests leave through the gateway's agents.

A session filtered to a country (a Depop ``country_filter``, a Poshmark
domain) is sent through a healthy agent of that country that can carry HTTP:
a ``direct`` agent with a ``source_address``, or a ``proxy`` agent's upstream
proxy.  The agent is chosen per request, so a request after an agent's failed
health check goes through the next one.  ``remote`` agents relay WebSockets
only; a country without an agent that carries HTTP goes out directly, as it
would with no agents at all.
"""

from __future__ import annotations

import importlib.util

import httpx

from parser_api.sources.http import Egress
from relay.agents.base import Agent, AgentPool
from relay.agents.direct import DirectAgent
from relay.agents.proxy import ProxyAgent

__all__ = ["agent_egress"]

# python-socks does SOCKS for WebSockets; httpx needs socksio for it, so SOCKS
# proxies carry HTTP only when that is installed.
_HTTP_PROXY_SCHEMES = frozenset(
    {"http", "https", "socks5"} if importlib.util.find_spec("socksio") else {"http", "https"}
)


def _transport(agent: Agent) -> httpx.AsyncBaseTransport | None:
    """How HTTP goes out through ``agent``; None if it cannot carry HTTP."""
    if isinstance(agent, DirectAgent) and agent.source_address is not None:
        return httpx.AsyncHTTPTransport(local_address=agent.source_address)
    if isinstance(agent, ProxyAgent) and agent.proxy.scheme in _HTTP_PROXY_SCHEMES:
        proxy = agent.proxy
        auth = (proxy.username or "", proxy.password or "") if proxy.username else None
        url = f"{proxy.scheme}://{proxy.host}:{proxy.port}"
        return httpx.AsyncHTTPTransport(proxy=httpx.Proxy(url, auth=auth))
    return None


class CountryTransport(httpx.AsyncBaseTransport):
    """Sends each request through the first healthy of a country's agents.

    With none healthy it still uses the first: the request then fails where
    the caller sees it, rather than leaving from another country unnoticed.
    """

    def __init__(self, carriers: list[tuple[Agent, httpx.AsyncBaseTransport]]) -> None:
        self._carriers = carriers

    def _pick(self) -> tuple[Agent, httpx.AsyncBaseTransport]:
        for carrier in self._carriers:
            if carrier[0].healthy:
                return carrier
        return self._carriers[0]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._pick()[1].handle_async_request(request)

    async def aclose(self) -> None:
        for _, transport in self._carriers:
            await transport.aclose()


def agent_egress(pool: AgentPool) -> Egress:
    """An ``egress(country)`` for :func:`parser_api.app.create_app` over ``pool``."""

    def egress(country: str | None) -> httpx.AsyncBaseTransport | None:
        if country is None:
            return None
        wanted = country.upper()
        carriers = []
        for agent in pool.agents:
            if agent.country == wanted and (transport := _transport(agent)) is not None:
                carriers.append((agent, transport))
        return CountryTransport(carriers) if carriers else None

    return egress
