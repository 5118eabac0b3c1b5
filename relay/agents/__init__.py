"""Egress agents: where a target connection leaves from, and how one is chosen."""

from relay.agents.base import Agent, AgentPool
from relay.agents.direct import DirectAgent

__all__ = ["Agent", "AgentPool", "DirectAgent"]
