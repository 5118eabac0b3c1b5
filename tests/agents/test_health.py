"""Health checks on Trio's autojump clock, and retrying another agent at dial time."""

from __future__ import annotations

import random

import attrs
import pytest
import trio
import trio.testing

from relay.agents.base import AgentPool
from relay.agents.health import MIN_GAP, Health, run_health_checks
from relay.dial import TargetConnection
from relay.wire.closecodes import Outcome, SessionError
from relay.wire.connect import ConnectRequest, parse_connect_message


@attrs.define
class ScriptedAgent:
    """An agent whose checks and dials do what the test says, and are counted."""

    slug: str
    country: str | None = "DE"
    node_id: str = ""
    health: Health = attrs.Factory(Health)
    health_interval: float = 10.0
    health_timeout: float = 2.0
    check_error: BaseException | None = None
    check_hangs: bool = False
    dial_error: SessionError | None = None
    checks: list[float] = attrs.Factory(list)
    dials: int = 0

    @property
    def healthy(self) -> bool:
        return self.health.selectable

    async def check(self) -> None:
        self.checks.append(trio.current_time())
        if self.check_hangs:
            await trio.sleep_forever()
        if self.check_error is not None:
            raise self.check_error

    async def open(self, request: ConnectRequest) -> TargetConnection:
        self.dials += 1
        if self.dial_error is not None:
            raise self.dial_error
        return TargetConnection(trio.testing.memory_stream_pair()[0], 101, b"")


async def _next_check(agent: ScriptedAgent) -> None:
    await agent.health.checked.wait()


async def _start(nursery: trio.Nursery, *agents: object) -> None:
    """Start the checks and wait for the first one of ``agents[0]`` to finish.

    The event is taken before the start: a check that never yields can
    finish before this task runs again.
    """
    first = agents[0].health.checked  # type: ignore[attr-defined]
    await nursery.start(run_health_checks, agents)
    await first.wait()


async def test_failing_agent_leaves_selection_and_returns(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    agent = ScriptedAgent("de1")
    assert agent.health.state == "unknown"
    assert agent.healthy  # usable before the first check ends
    await _start(nursery, agent)
    assert (agent.health.state, agent.health.last_error) == ("healthy", None)

    agent.check_error = SessionError(Outcome.AGENT_FAILED, "Agent de1 unreachable (refused)")
    started = trio.current_time()
    await _next_check(agent)
    assert trio.current_time() - started == pytest.approx(10.0)  # the interval, not sooner
    assert (agent.health.state, agent.health.failures) == ("unhealthy", 1)
    assert agent.health.last_error == "Agent de1 unreachable (refused)"
    assert not agent.healthy
    await _next_check(agent)
    assert agent.health.failures == 2

    agent.check_error = None
    await _next_check(agent)
    assert (agent.health.state, agent.health.failures, agent.healthy) == ("healthy", 0, True)


async def test_a_check_that_hangs_or_raises_anything_fails_the_agent_only(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    hangs = ScriptedAgent("hangs", check_hangs=True)
    broken = ScriptedAgent("broken", check_error=RuntimeError("bug in a check"))
    await _start(nursery, hangs, broken, object())  # an agent without checks is ignored
    assert hangs.health.last_error == "no answer within 2 s"
    assert trio.current_time() == pytest.approx(2.0)
    assert broken.health.state == "unhealthy"
    assert broken.health.last_error == "bug in a check"


async def test_a_failed_dial_brings_the_next_check_forward(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    agent = ScriptedAgent("de1", health_interval=60.0)
    await _start(nursery, agent)
    await trio.sleep(5)
    agent.health.suspect()
    await _next_check(agent)
    assert agent.checks[1] - agent.checks[0] == pytest.approx(5.0)
    # Suspected again at once: not before MIN_GAP, however often dials fail.
    for _ in range(10):
        agent.health.suspect()
        await _next_check(agent)
    gaps = [b - a for a, b in zip(agent.checks[1:], agent.checks[2:], strict=False)]
    assert min(gaps) == pytest.approx(MIN_GAP)


def _request(**fields: str) -> ConnectRequest:
    extra = "".join(f', "{name}": "{value}"' for name, value in fields.items())
    return parse_connect_message('{"apiKey": "k", "url": "ws://t.example/"' + extra + "}")


def _failed(slug: str) -> SessionError:
    return SessionError(Outcome.AGENT_FAILED, f"Agent {slug}: proxy unreachable")


async def test_agent_failure_retries_another_matching_agent() -> None:
    bad = ScriptedAgent("bad", node_id="relay-bad", dial_error=_failed("bad"))
    good = ScriptedAgent("good", node_id="relay-good")
    elsewhere = ScriptedAgent("us1", country="US", node_id="relay-us1")
    for seed in range(8):  # whichever order the shuffle picks
        pool = AgentPool([bad, good, elsewhere], rng=random.Random(seed))
        _, agent = await pool.open(_request(geo="DE"))
        node_id = agent.node_id
        assert node_id == "relay-good"
    assert bad.dials >= 1
    assert bad.health.wake.is_set()  # asked to re-check now
    assert elsewhere.dials == 0


async def test_target_failures_are_not_retried() -> None:
    refused = SessionError(Outcome.TARGET_FAILED, "Target refused the WebSocket upgrade: 403", 403)
    first = ScriptedAgent("a", dial_error=refused)
    second = ScriptedAgent("b", dial_error=refused)
    pool = AgentPool([first, second])
    with pytest.raises(SessionError) as error:
        await pool.open(_request())
    assert error.value is refused
    assert first.dials + second.dials == 1


async def test_retries_are_bounded_and_the_answer_names_them() -> None:
    agents = [ScriptedAgent(f"de{n}", dial_error=_failed(f"de{n}")) for n in range(5)]
    pool = AgentPool(agents, rng=random.Random(1))
    with pytest.raises(SessionError) as error:
        await pool.open(_request())
    assert sum(agent.dials for agent in agents) == 3
    assert error.value.outcome is Outcome.NO_AGENT
    assert error.value.message.startswith("No agent available: ")
    assert "failed; last: Agent de" in error.value.message
    # One candidate: its own failure is the answer.
    with pytest.raises(SessionError) as single:
        await AgentPool([agents[0]]).open(_request())
    assert single.value.message == "Agent de0: proxy unreachable"
    # Nothing matching at all.
    with pytest.raises(SessionError) as none:
        await AgentPool(agents).open(_request(geo="FR"))
    assert none.value.message == "No agent available"
