"""Egress agents: where a target connection leaves from, and how one is chosen."""

from relay.agents.base import Agent, AgentPool
from relay.agents.direct import DirectAgent
from relay.agents.health import Health
from relay.agents.proxy import ProxyAgent, ProxyURL
from relay.agents.remote import RemoteAgent

__all__ = ["Agent", "AgentPool", "DirectAgent", "Health", "ProxyAgent", "ProxyURL", "RemoteAgent"]
