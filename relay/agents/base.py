"""The agent interface, selection by ``agent`` pins and ``geo``, and retrying
another agent when the chosen one fails for a reason of its own."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from typing import Protocol

from relay.dial import TargetConnection
from relay.wire.closecodes import Outcome, SessionError
from relay.wire.connect import ConnectRequest, parse_target_url

__all__ = ["MAX_ATTEMPTS", "Agent", "AgentPool", "plain_request"]

log = logging.getLogger("relay.agents")

# Agents tried for one request before giving up: a dead agent costs a client
# at most this many dial attempts, not a refusal.
MAX_ATTEMPTS = 3


class Agent(Protocol):
    """An egress point able to open a target WebSocket."""

    @property
    def slug(self) -> str:
        """Short name clients pin with ``agent``."""
        ...

    @property
    def country(self) -> str | None:
        """ISO country code matched by ``geo`` (upper case), if known."""
        ...

    @property
    def node_id(self) -> str:
        """Reported to the client in ``connected``."""
        ...

    @property
    def healthy(self) -> bool:
        """Whether the agent may be selected now."""
        ...

    async def open(self, request: ConnectRequest) -> TargetConnection:
        """Open the target WebSocket; raises :class:`SessionError` on failure."""
        ...


class AgentPool:
    """All configured agents, and the selection rule of the protocol."""

    def __init__(self, agents: Iterable[Agent], *, rng: random.Random | None = None) -> None:
        self._agents = list(agents)
        self._rng = rng if rng is not None else random.SystemRandom()

    def __iter__(self) -> Iterable[Agent]:
        return iter(self._agents)

    @property
    def agents(self) -> Sequence[Agent]:
        """Every configured agent, healthy or not."""
        return tuple(self._agents)

    def replace(self, agents: Iterable[Agent]) -> None:
        """Select among ``agents`` from now on (a reload); dials already made are unaffected."""
        self._agents = list(agents)

    def candidates(self, request: ConnectRequest) -> list[Agent]:
        """Healthy agents matching the request's pins and countries, in random order."""
        pinned = set(request.agents)
        found = [
            agent
            for agent in self._agents
            if agent.healthy
            and (not pinned or agent.slug in pinned)
            and (not request.geo or agent.country in request.geo)
        ]
        if request.impersonate is not None and found:
            found = _permitting(found, request.impersonate)
        self._rng.shuffle(found)
        return found

    def choose(self, request: ConnectRequest) -> Agent:
        """A random matching agent; raises "No agent available" when there is none."""
        found = self.candidates(request)
        if not found:
            raise SessionError(Outcome.NO_AGENT, "No agent available")
        return found[0]

    async def open(
        self, request: ConnectRequest, *, attempts: int = MAX_ATTEMPTS
    ) -> tuple[TargetConnection, Agent]:
        """Open the target through a matching agent; the connection and that agent.

        An agent that fails for a reason of its own (``AGENT_FAILED``: proxy
        down, link refused) is asked to re-check its health and another
        matching agent is tried, up to ``attempts`` in all.  A target-level
        failure (refused, HTTP 403, not allowed) is the answer as it is.
        """
        tried: list[str] = []
        last: SessionError | None = None
        while len(tried) < attempts:
            found = [agent for agent in self.candidates(request) if agent.slug not in tried]
            if not found:
                break
            agent = found[0]
            try:
                return await agent.open(request), agent
            except SessionError as error:
                if error.outcome is not Outcome.AGENT_FAILED:
                    raise
                log.warning("agent %s failed to dial: %s", agent.slug, error.message)
                tried.append(agent.slug)
                last = error
                health = getattr(agent, "health", None)
                if health is not None:
                    health.suspect()
        if last is None:
            raise SessionError(Outcome.NO_AGENT, "No agent available")
        if len(tried) == 1:
            raise last
        raise SessionError(
            Outcome.NO_AGENT,
            f"No agent available: {', '.join(tried)} failed; last: {last.message}",
        )


def _permitting(found: list[Agent], choice: str) -> list[Agent]:
    """The agents that let a session choose its browser profile (``allow_impersonate``).

    None of them: the field is refused (1008) rather than "No agent available".
    """
    permitting = [agent for agent in found if getattr(agent, "allow_impersonate", False)]
    if not permitting:
        which = f"agent {found[0].slug} does not" if len(found) == 1 else "no matching agent"
        verb = "" if len(found) == 1 else "s"
        raise SessionError(
            Outcome.BAD_REQUEST,
            f"Invalid connect message: impersonate: {which} allow{verb} choosing a browser "
            f"profile (allow_impersonate), asked for {choice!r}",
        )
    return permitting


def plain_request(url: str, headers: Sequence[tuple[str, str]] = ()) -> ConnectRequest:
    """A request the gateway makes itself (agent links, health probes): no key, no pins."""
    target = parse_target_url(url)
    if target is None:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    return ConnectRequest(
        api_key=None,
        target=target,
        url=url,
        headers=tuple(headers),
        geo=frozenset(),
        agents=(),
        idle_timeout=0.0,
    )
