"""Agents from their ``[[agents]]`` configuration."""

from __future__ import annotations

import ssl

from relay.agents.base import Agent
from relay.agents.direct import DirectAgent
from relay.agents.proxy import ProxyAgent, ProxyURL
from relay.agents.remote import RemoteAgent
from relay.config import AgentConfig
from relay.dial import DialSettings

__all__ = ["build_agent"]


def _context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(ca_file)
    return context


def build_agent(config: AgentConfig, dial: DialSettings) -> Agent:
    """The agent ``config`` describes, dialing with ``dial``'s policy and timeouts."""
    slug, country, node_id = config.slug, config.country, config.reported_node_id
    if config.kind == "proxy":
        assert config.proxy is not None  # the config's validators guarantee it
        return ProxyAgent(
            slug,
            country,
            node_id,
            ProxyURL.parse(config.proxy),
            dial,
            proxy_ssl=_context(config.ca_file),
            remote_dns=config.remote_dns,
            source_address=config.source_address,
            health_interval=config.health_interval,
            health_timeout=config.health_timeout,
            health_url=config.health_url,
            impersonate=config.impersonate,
            allow_impersonate=config.allow_impersonate,
        )
    if config.kind == "remote":
        assert config.url is not None
        assert config.token is not None
        return RemoteAgent(
            slug,
            country,
            node_id,
            config.url,
            config.token,
            dial,
            ssl_context=_context(config.ca_file),
            source_address=config.source_address,
            health_interval=config.health_interval,
            health_timeout=config.health_timeout,
            health_url=config.health_url,
            impersonate=config.impersonate,
            allow_impersonate=config.allow_impersonate,
        )
    return DirectAgent(
        slug,
        country,
        node_id,
        dial,
        source_address=config.source_address,
        impersonate=config.impersonate,
        allow_impersonate=config.allow_impersonate,
    )
