"""The agent interface and selection by ``agent`` pins and ``geo``."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Protocol

from relay.closecodes import Outcome, SessionError
from relay.dial import TargetConnection
from relay.protocol import ConnectRequest

__all__ = ["Agent", "AgentPool"]


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
        self._rng.shuffle(found)
        return found

    def choose(self, request: ConnectRequest) -> Agent:
        """A random matching agent; raises "No agent available" when there is none."""
        found = self.candidates(request)
        if not found:
            raise SessionError(Outcome.NO_AGENT, "No agent available")
        return found[0]
