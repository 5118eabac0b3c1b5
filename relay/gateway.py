"""Everything sessions share: keys, rate limits, agents, dial settings, and the
set of live sessions.  Built once from a :class:`~relay.config.Config`."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Protocol

import attrs
import trio

from relay.agents import Agent, AgentPool, DirectAgent
from relay.auth import KeyStore
from relay.closecodes import Outcome
from relay.config import Config
from relay.dial import DialSettings
from relay.metrics import Metrics
from relay.ratelimit import MemoryRateLimiter, RateLimiter
from relay.slots import MemorySessionSlots, SessionSlots
from relay.targets import Resolver, TargetPolicy, system_resolver

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


class LiveSession(Protocol):
    """What the gateway needs of a running session (relay.session.Session)."""

    def traffic(self) -> tuple[int, int, int, int]:
        """Bytes and frames relayed so far."""
        ...

    def shutdown(self) -> None:
        """End it with 1001."""
        ...

    @property
    def outcome(self) -> Outcome:
        """How it ended (valid once it has)."""
        ...


@attrs.define
class Gateway:
    """The shared state of one gateway process."""

    config: Config
    keys: KeyStore
    limiter: RateLimiter
    agents: AgentPool
    dial: DialSettings
    stats: Stats = attrs.Factory(Stats)
    slots: SessionSlots = attrs.Factory(MemorySessionSlots)  # per-key session counts
    sessions: set[LiveSession] = attrs.Factory(set)
    metrics: Metrics = attrs.field(init=False)
    # Set by request_shutdown(); serve() then drains and stops.
    shutdown_requested: trio.Event = attrs.Factory(trio.Event)
    draining: bool = False
    _idle: trio.Event = attrs.Factory(trio.Event)

    def __attrs_post_init__(self) -> None:
        self.metrics = Metrics(
            live_sessions=lambda: self.sessions,
            agent_health=lambda: [
                (agent.slug, getattr(agent, "kind", "direct"), agent.healthy)
                for agent in self.agents.agents
            ],
            draining=lambda: self.draining,
            backend_errors=lambda: int(getattr(self.limiter, "redis_errors", 0)),
        )
        self._idle.set()

    def session_started(self, session: LiveSession) -> None:
        """Register a session."""
        self.sessions.add(session)
        self.stats.sessions_started += 1
        self.stats.sessions_active += 1
        self._idle = trio.Event()

    def session_ended(self, session: LiveSession) -> None:
        """Unregister a session and fold its traffic into the totals."""
        self.sessions.discard(session)
        self.stats.ended(session.outcome.value)
        self.metrics.session_finished(session.traffic())
        self.metrics.sessions.labels(session.outcome.value).inc()
        if not self.sessions:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no session is open."""
        await self._idle.wait()

    def request_shutdown(self) -> None:
        """Ask :func:`relay.serve` to stop accepting, drain, and return."""
        self.shutdown_requested.set()

    async def drain(self, period: float, grace: float) -> None:
        """Wait up to ``period`` for sessions to end, then close the rest with
        1001 and give them ``grace`` seconds to finish their closes."""
        self.draining = True
        with trio.move_on_after(period):
            await self.wait_idle()
        for session in list(self.sessions):
            session.shutdown()
        with trio.move_on_after(grace):
            await self.wait_idle()

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        agents: Sequence[Agent] | None = None,
        resolver: Resolver = system_resolver,
        limiter: RateLimiter | None = None,
        slots: SessionSlots | None = None,
    ) -> Gateway:
        """Build the gateway's shared state from ``config``.

        ``agents``, when given, are used instead of the configured ones
        (embedding, tests); :func:`configured_agents` builds those.
        ``limiter`` and ``slots`` default to the in-memory backends
        (:func:`relay.limits.open_limits` opens the configured ones).
        """
        dial = dial_settings(config, resolver)
        return cls(
            config=config,
            keys=KeyStore(config.keys),
            limiter=limiter if limiter is not None else MemoryRateLimiter(),
            agents=AgentPool(agents if agents is not None else configured_agents(config, dial)),
            dial=dial,
            slots=slots if slots is not None else MemorySessionSlots(),
        )


def dial_settings(config: Config, resolver: Resolver = system_resolver) -> DialSettings:
    """How this gateway dials targets: policy, timeout, TLS trust, resolver."""
    context = ssl.create_default_context()
    if config.targets.ca_file:
        context.load_verify_locations(config.targets.ca_file)
    return DialSettings(
        policy=TargetPolicy(allow_private=config.targets.allow_private),
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
