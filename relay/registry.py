"""Bookkeeping of live sessions, shared by a gateway and an agent node.

A session registers here for its whole life: ``/metrics`` reads live traffic
from the registered sessions, and a graceful shutdown closes them with 1001.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs
import trio

from relay.metrics import Metrics
from relay.wire.closecodes import Outcome

__all__ = ["LiveSession", "SessionRegistry", "Stats"]


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

    def end(self, outcome: Outcome, detail: str = "") -> bool:
        """End it with ``outcome``'s closes, if it is relaying."""
        ...

    @property
    def outcome(self) -> Outcome:
        """How it ended (valid once it has)."""
        ...


def _no_agents() -> list[tuple[str, str, bool]]:
    return []


def _no_backend_errors() -> int:
    return 0


@attrs.define(kw_only=True, eq=False)
class SessionRegistry:
    """Live sessions, counters and the drain of one process.

    Held (not inherited) by the gateway and by an agent node; what ``/metrics``
    reads of its owner beyond the sessions comes in as two callables.
    """

    agent_health: Callable[[], list[tuple[str, str, bool]]] = _no_agents
    """Slug, kind and health of each agent, for /metrics."""
    backend_errors: Callable[[], int] = _no_backend_errors
    """Failed calls to a shared limits backend, for /metrics."""
    stats: Stats = attrs.Factory(Stats)
    sessions: set[LiveSession] = attrs.Factory(set)
    metrics: Metrics = attrs.field(init=False)
    # Set by request_shutdown(); serve() then drains and stops.
    shutdown_requested: trio.Event = attrs.Factory(trio.Event)
    draining: bool = False
    _idle: trio.Event = attrs.Factory(trio.Event)

    def __attrs_post_init__(self) -> None:
        self.metrics = Metrics(
            live_sessions=lambda: self.sessions,
            agent_health=lambda: self.agent_health(),
            draining=lambda: self.draining,
            backend_errors=lambda: self.backend_errors(),
        )
        self._idle.set()

    def session_started(self, session: LiveSession) -> None:
        """Register a session."""
        self.sessions.add(session)
        self.stats.sessions_started += 1
        self.stats.sessions_active += 1
        if self._idle.is_set():
            # A new event only when leaving idle: a waiter keeps the one it waits on.
            self._idle = trio.Event()

    def session_ended(self, session: LiveSession) -> None:
        """Unregister a session and fold its traffic into the totals."""
        self.sessions.discard(session)
        self.stats.ended(session.outcome.value)
        self.metrics.session_finished(session.traffic())
        self.metrics.session_ended(session.outcome.value)
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
