"""Everything sessions share: keys, rate limits, agents, dial settings, and the
set of live sessions.  Built once from a :class:`~relay.config.Config`."""

from __future__ import annotations

import ssl
from collections.abc import Sequence

import attrs

from relay.agents import Agent, AgentPool
from relay.agents.factory import build_agent
from relay.auth import KeyStore
from relay.capacity import Capacity
from relay.config import Config, KeyConfig, NodeConfig, ServerConfig
from relay.dial import DialSettings, TargetConnection
from relay.ratelimit import LimitsUnavailable, MemoryRateLimiter, RateLimiter
from relay.registry import SessionRegistry
from relay.session import Session
from relay.slots import MemorySessionSlots, SessionClaim, SessionSlots
from relay.targets import Resolver, system_resolver
from relay.wire.closecodes import Outcome, SessionError
from relay.wire.connect import (
    ConnectRequest,
    error_message,
    parse_connect_message,
    parse_connect_query,
)

__all__ = ["Gateway", "GatewayFront", "configured_agents", "dial_settings"]


@attrs.define(kw_only=True, eq=False)
class Gateway:
    """The shared state of one gateway process."""

    config: Config
    keys: KeyStore
    limiter: RateLimiter
    agents: AgentPool
    dial: DialSettings
    slots: SessionSlots = attrs.Factory(MemorySessionSlots)  # per-key session counts
    capacity: Capacity = attrs.field()
    registry: SessionRegistry = attrs.field()

    @capacity.default
    def _capacity(self) -> Capacity:
        return Capacity(max_handshakes=self.config.server.max_handshakes)

    @registry.default
    def _registry(self) -> SessionRegistry:
        return SessionRegistry(agent_health=self.agent_health, backend_errors=self.backend_errors)

    @property
    def draining(self) -> bool:
        """Whether the gateway is draining for shutdown (no new sessions)."""
        return self.registry.draining

    def agent_health(self) -> list[tuple[str, str, bool]]:
        """Slug, kind and health of every agent, for /metrics."""
        return [
            (agent.slug, getattr(agent, "kind", "direct"), agent.healthy)
            for agent in self.agents.agents
        ]

    def backend_errors(self) -> int:
        """Failed calls to a shared limits backend, for /metrics."""
        return int(getattr(self.limiter, "redis_errors", 0))

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


def dial_settings(
    config: Config | NodeConfig, resolver: Resolver = system_resolver
) -> DialSettings:
    """How this gateway dials targets: policy, timeout, TLS trust, resolver."""
    context = ssl.create_default_context()
    if config.targets.ca_file:
        context.load_verify_locations(config.targets.ca_file)
    return DialSettings(
        policy=config.targets.policy(),
        timeout=config.server.dial_timeout,
        ssl_context=context,
        resolver=resolver,
        keepalive=config.server.tcp_keepalive,
    )


def configured_agents(config: Config, dial: DialSettings) -> list[Agent]:
    """The agents the ``[[agents]]`` tables describe."""
    return [build_agent(agent, dial) for agent in config.agents]


@attrs.define
class GatewayFront:
    """The gateway's ``/ws``: API key, one token, a session slot, an agent by ``geo``/``agent``.

    One per connection; it takes the ``[server]`` settings in force when the
    connection arrived, so a reload changes new sessions, not open ones.
    """

    gateway: Gateway
    query: str = ""
    # The key the session was admitted with (a reload ending revoked keys' sessions reads it).
    key: KeyConfig | None = attrs.field(default=None, init=False)
    _server: ServerConfig = attrs.field(init=False)

    @_server.default
    def _server_now(self) -> ServerConfig:
        return self.gateway.config.server

    @property
    def server(self) -> ServerConfig:
        """The gateway's ``[server]`` settings, as they were when this session arrived."""
        return self._server

    @property
    def registry(self) -> SessionRegistry:
        """The gateway's live sessions."""
        return self.gateway.registry

    def query_request(self) -> ConnectRequest | None:
        """The ``/ws?url=…`` form."""
        if not self.query:
            return None  # what parsing an empty query gives, without parsing it
        return parse_connect_query(self.query, self.server.connect_limits)

    def parse(self, text: str) -> ConnectRequest:
        """A client's connect message."""
        return parse_connect_message(text, self.server.connect_limits)

    async def open(self, request: ConnectRequest, session: Session) -> TargetConnection:
        """Authenticate, take a token and a slot, then open the target through an agent
        (another matching agent is tried when one fails on its own account)."""
        gateway = self.gateway
        key = gateway.keys.lookup(request.api_key)
        if key is None:
            raise SessionError(Outcome.AUTH_FAILED, "Invalid or missing API key")
        self.key = key
        session.key_id = key.key_id
        claim = session.claim = SessionClaim(gateway.slots, session_id=session.id)
        try:
            if not await gateway.limiter.acquire(key):
                gateway.registry.metrics.rate_limited.inc()
                raise SessionError(Outcome.RATE_LIMITED, "Rate limit exceeded")
            if not await claim.claim(key):
                raise SessionError(
                    Outcome.KEY_SESSION_LIMIT, "Too many concurrent sessions for this API key"
                )
        except LimitsUnavailable:
            # A shared limits backend that fails closed: come back later (1013).
            raise SessionError(
                Outcome.OVER_CAPACITY, "Rate limiter unavailable, try again later"
            ) from None
        connection, agent = await gateway.agents.open(request)
        session.agent, session.node_id = agent.slug, agent.node_id
        return connection

    def error_text(self, error: SessionError) -> str:
        """The protocol's ``error`` message."""
        return error_message(error.message)
