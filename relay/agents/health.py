"""Background health checks: agents that fail them leave selection until they pass again.

Each checked agent (``proxy``, ``remote``) gets one task, in its own cancel
scope inside :class:`HealthChecks`' nursery (owned by the server), that
runs the agent's own check — a real round trip — under its
``health_timeout``, then sleeps ``health_interval`` or until a failed dial
asks for an early check.  A check that raises anything counts as failed: one
broken agent must never take the server down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import attrs
import trio

from relay.agents.base import Agent, plain_request
from relay.dataplane.hop import RECEIVE_SIZE, Hop
from relay.wire.closecodes import NORMAL, SessionError
from relay.wire.frames import FrameReader

__all__ = ["Checked", "Health", "HealthChecks", "probe", "run_health_checks", "watch"]

log = logging.getLogger("relay.health")

MIN_GAP = 1.0  # seconds between two checks of one agent, however often it is suspected
UNKNOWN = "unknown"
HEALTHY = "healthy"
UNHEALTHY = "unhealthy"


@attrs.define
class Health:
    """What the checks know about one agent; shown by ``/healthz`` (never a secret)."""

    state: str = UNKNOWN
    last_error: str | None = None
    last_check: float | None = None  # wall-clock time of the last finished check
    failures: int = 0  # consecutive failed checks
    reported: dict[str, object] = attrs.Factory(dict)  # what the agent said about itself
    # Set (then replaced) on every finished check, so waiters need no polling.
    checked: trio.Event = attrs.Factory(trio.Event)
    # Set to run the next check now instead of after the interval.
    wake: trio.Event = attrs.Factory(trio.Event)

    @property
    def selectable(self) -> bool:
        """Unknown counts as usable: a fresh gateway serves before its first check ends."""
        return self.state != UNHEALTHY

    def record(self, slug: str, error: str | None) -> None:
        """Record a finished check of agent ``slug`` (``error`` None when it passed)."""
        before = self.state
        self.last_check = time.time()
        self.last_error = error
        if error is None:
            self.state, self.failures = HEALTHY, 0
        else:
            self.state, self.failures = UNHEALTHY, self.failures + 1
        if before != self.state:
            if error is None:
                log.info("agent %s is healthy", slug)
            else:
                log.warning("agent %s is unhealthy: %s", slug, error)
        self.checked.set()
        self.checked = trio.Event()

    def suspect(self) -> None:
        """A dial just failed for an agent-level reason: check again now."""
        self.wake.set()


@runtime_checkable
class Checked(Protocol):
    """An agent with a health check."""

    slug: str
    health: Health
    health_interval: float
    health_timeout: float

    async def check(self) -> None:
        """One round trip; raises on failure (a :class:`SessionError` names the cause)."""
        ...


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SessionError):
        return exc.message
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


async def check_once(agent: Checked) -> None:
    """Run one check under the agent's timeout and record the result."""
    error: str | None = None
    with trio.move_on_after(agent.health_timeout) as scope:
        try:
            await agent.check()
        except Exception as exc:  # any failure is the agent's, never the server's
            error = _describe(exc)
    if scope.cancelled_caught:
        error = f"no answer within {agent.health_timeout:g} s"
    agent.health.record(agent.slug, error)


async def watch(agent: Checked) -> None:
    """Check ``agent`` until cancelled."""
    while True:
        agent.health.wake = trio.Event()
        started = trio.current_time()
        await check_once(agent)
        with trio.move_on_after(agent.health_interval):
            await agent.health.wake.wait()
        # Dials failing faster than this must not turn the checks into a busy loop.
        await trio.sleep_until(started + min(agent.health_interval, MIN_GAP))


class HealthChecks:
    """The health checks of a changing set of agents, in one nursery that ``run`` owns.

    Each agent's watch runs inside a cancel scope of its own, so a reload that
    removes an agent stops exactly that agent's checks (and one it adds starts
    its own) while the others go on undisturbed.
    """

    def __init__(self) -> None:
        self._nursery: trio.Nursery | None = None
        # id(agent) -> (agent, its watch's scope); the agent is kept so its id stays its own.
        self._watched: dict[int, tuple[Checked, trio.CancelScope]] = {}

    async def run(
        self,
        agents: Iterable[object],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Watch the checked agents in ``agents``, and those :meth:`start` adds, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                for agent in agents:
                    self.start(agent)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def start(self, agent: object) -> None:
        """Start checking ``agent`` (no-op for an agent without checks, or one already watched)."""
        if not isinstance(agent, Checked) or id(agent) in self._watched:
            return
        if self._nursery is None:
            raise RuntimeError("HealthChecks.run is not running")
        scope = trio.CancelScope()
        self._watched[id(agent)] = (agent, scope)
        self._nursery.start_soon(self._watch, agent, scope, name=f"health:{agent.slug}")

    def stop(self, agent: object) -> None:
        """Stop checking ``agent``; its watch is cancelled at its next checkpoint."""
        entry = self._watched.pop(id(agent), None)
        if entry is not None:
            entry[1].cancel()

    @property
    def watched(self) -> list[str]:
        """Slugs of the agents being checked now."""
        return sorted(agent.slug for agent, _scope in self._watched.values())

    async def _watch(self, agent: Checked, scope: trio.CancelScope) -> None:
        try:
            with scope:
                await watch(agent)
        finally:
            entry = self._watched.get(id(agent))
            if entry is not None and entry[1] is scope:
                del self._watched[id(agent)]


async def run_health_checks(
    agents: Iterable[object], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Watch every checked agent in ``agents`` until cancelled (a fixed set)."""
    await HealthChecks().run(agents, task_status=task_status)


async def probe(agent: Agent, url: str) -> None:
    """Open ``url`` through ``agent`` and close it again: a full round trip to a target.

    The caller bounds the time; a failure to open raises :class:`SessionError`.
    """
    connection = await agent.open(plain_request(url))
    hop = Hop("probe", connection.stream, is_target=True, max_message_size=RECEIVE_SIZE)
    try:
        await hop.send_close(NORMAL, "health check")
        reader = FrameReader(from_client=False, max_frame=RECEIVE_SIZE)
        reader.feed(connection.trailing)
        await hop.await_close(reader)
    finally:
        await hop.aclose()
