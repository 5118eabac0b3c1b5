"""The parser API's marketplace requests leave through the gateway's agents.

A session filtered to a country (a Depop ``country_filter``, a Poshmark
domain) is sent through a healthy agent of that country that can carry HTTP:
a ``direct`` agent with a ``source_address`` (curl's local address), or a
``proxy`` agent's upstream HTTP, HTTPS or SOCKS5 proxy.  The agent is chosen
per request, so a request after an agent's failed health check goes through
the next one; with none healthy the first is used anyway, and its failure is
reported rather than the request leaving from another country unnoticed.
``remote`` agents relay WebSockets only; a country without an agent that
carries HTTP goes out directly, as it would with no agents at all.
"""

from __future__ import annotations

from urllib.parse import quote

from parser_api.sources.http import Egress, Route
from relay.agents.base import Agent, AgentPool
from relay.agents.direct import DirectAgent
from relay.agents.proxy import ProxyAgent

__all__ = ["agent_egress", "agent_route"]

# SOCKS4 has no place in an HTTP client; curl speaks the other three natively.
_HTTP_PROXY_SCHEMES = frozenset({"http", "https", "socks5"})


def agent_route(agent: Agent) -> Route | None:
    """How HTTP goes out through ``agent``; None if it cannot carry HTTP."""
    if isinstance(agent, DirectAgent) and agent.source_address is not None:
        return Route(local_address=agent.source_address)
    if isinstance(agent, ProxyAgent) and agent.proxy.scheme in _HTTP_PROXY_SCHEMES:
        proxy = agent.proxy
        scheme = proxy.scheme
        if scheme == "socks5" and agent.remote_dns:
            scheme = "socks5h"  # the proxy resolves names, as for the agent's WebSockets
        auth = ""
        if proxy.username is not None:
            auth = f"{quote(proxy.username, safe='')}:{quote(proxy.password or '', safe='')}@"
        host = f"[{proxy.host}]" if ":" in proxy.host else proxy.host
        return Route(
            proxy=f"{scheme}://{auth}{host}:{proxy.port}",
            local_address=agent.source_address,
            proxy_ssl=agent.proxy_ssl if proxy.scheme == "https" else None,
        )
    return None


def agent_egress(pool: AgentPool) -> Egress:
    """An ``egress(country)`` for :func:`parser_api.app.create_app` over ``pool``.

    Called for every request: the first healthy agent of the country that
    carries HTTP (the first such agent when none is healthy).
    """

    def egress(country: str | None) -> Route | None:
        if country is None:
            return None
        wanted = country.upper()
        first: Route | None = None
        for agent in pool.agents:
            if agent.country != wanted or (route := agent_route(agent)) is None:
                continue
            if agent.healthy:
                return route
            first = first or route
        return first

    return egress
