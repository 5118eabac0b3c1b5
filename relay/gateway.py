"""Everything sessions share: keys, rate limits, agents, dial settings, and the
set of live sessions.  Built once from a :class:`~relay.config.Config`."""

from __future__ import annotations

import ssl
from collections.abc import Sequence

import attrs

from relay.agents import Agent, AgentPool, DirectAgent
from relay.auth import KeyStore
from relay.capacity import Capacity
from relay.config import Config
from relay.dial import DialSettings
from relay.ratelimit import MemoryRateLimiter, RateLimiter
from relay.targets import Resolver, system_resolver

__all__ = ["Gateway", "Stats", "configured_agents", "dial_settings"]


@attrs.define
class Stats:
    """Counters since start-up (exported by ``/healthz``)."""

    sessions_started: int = 0
    sessions_active: int = 0
    outcomes: dict[str, int] = attrs.Factory(dict)

    def ended(self, outcome: str) -> None:
        """Count a finished session."""
        self.sessions_active -= 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


@attrs.define
class Gateway:
    """The shared state of one gateway process."""

    config: Config
    keys: KeyStore
    limiter: RateLimiter
    agents: AgentPool
    dial: DialSettings
    stats: Stats = attrs.Factory(Stats)
    capacity: Capacity = attrs.field()

    @capacity.default
    def _capacity(self) -> Capacity:
        server = self.config.server
        return Capacity(max_handshakes=server.max_handshakes, max_sessions=server.max_sessions)

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        agents: Sequence[Agent] | None = None,
        resolver: Resolver = system_resolver,
        limiter: RateLimiter | None = None,
    ) -> Gateway:
        """Build the gateway's shared state from ``config``.

        ``agents``, when given, are used instead of the configured ones
        (embedding, tests); :func:`configured_agents` builds those.
        """
        dial = dial_settings(config, resolver)
        return cls(
            config=config,
            keys=KeyStore(config.keys),
            limiter=limiter if limiter is not None else MemoryRateLimiter(),
            agents=AgentPool(agents if agents is not None else configured_agents(config, dial)),
            dial=dial,
        )


def dial_settings(config: Config, resolver: Resolver = system_resolver) -> DialSettings:
    """How this gateway dials targets: policy, timeout, TLS trust, resolver."""
    context = ssl.create_default_context()
    if config.targets.ca_file:
        context.load_verify_locations(config.targets.ca_file)
    return DialSettings(
        policy=config.targets.policy(),
        timeout=config.server.dial_timeout,
        ssl_context=context,
        resolver=resolver,
    )


def configured_agents(config: Config, dial: DialSettings) -> list[Agent]:
    """The agents the ``[[agents]]`` tables describe."""
    return [
        DirectAgent(
            slug=agent.slug,
            country=agent.country,
            node_id=agent.reported_node_id,
            settings=dial,
            source_address=agent.source_address,
        )
        for agent in config.agents
    ]
