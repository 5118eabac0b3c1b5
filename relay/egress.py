"""The parser API's marketplace requests leave through the gateway's agents.

A session filtered to a country (a Depop ``country_filter``, a Poshmark
domain) is sent through a healthy agent of that country where the gateway has
one: a ``direct`` agent's ``source_address``, or a ``proxy`` agent's upstream
proxy.  ``remote`` agents relay WebSockets only, so they carry no HTTP; a
country without a usable agent goes out directly, as it would with no agents.
"""

from __future__ import annotations

import importlib.util

import httpx

from parser_api.sources.http import Egress
from relay.agents.base import AgentPool
from relay.agents.direct import DirectAgent
from relay.agents.proxy import ProxyAgent

__all__ = ["agent_egress"]

# python-socks does SOCKS for WebSockets; httpx needs socksio for it, so SOCKS
# proxies carry HTTP only when that is installed.
_HTTP_PROXY_SCHEMES = frozenset(
    {"http", "https", "socks5"} if importlib.util.find_spec("socksio") else {"http", "https"}
)


def _transport(agent: object) -> httpx.AsyncBaseTransport | None:
    if isinstance(agent, DirectAgent) and agent.source_address is not None:
        return httpx.AsyncHTTPTransport(local_address=agent.source_address)
    if isinstance(agent, ProxyAgent) and agent.proxy.scheme in _HTTP_PROXY_SCHEMES:
        proxy = agent.proxy
        auth = (proxy.username or "", proxy.password or "") if proxy.username else None
        url = f"{proxy.scheme}://{proxy.host}:{proxy.port}"
        return httpx.AsyncHTTPTransport(proxy=httpx.Proxy(url, auth=auth))
    return None


def agent_egress(pool: AgentPool) -> Egress:
    """An ``egress(country)`` for :func:`parser_api.app.create_app` over ``pool``."""

    def egress(country: str | None) -> httpx.AsyncBaseTransport | None:
        if country is None:
            return None
        wanted = country.upper()
        for agent in pool.agents:
            if agent.country == wanted and agent.healthy:
                transport = _transport(agent)
                if transport is not None:
                    return transport
        return None

    return egress
