"""Fixtures shared by the whole suite: a scripted target and a running gateway."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from tests.support.conditions import guard_async_tests
from tests.support.gateway import Running, start_gateway
from tests.support.target import TargetServer

IN_CI = os.environ.get("CI", "").lower() == "true"

# Suites whose tests provoke hangs on purpose (floods, dead peers, bounds): each
# async test there runs under a hang guard, so a hung test fails instead of
# stalling the run.
_GUARDED = tuple(Path(__file__).parent / name for name in ("faults", "security"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    guard_async_tests(
        [item for item in items if any(d in Path(item.path).parents for d in _GUARDED)]
    )


def require(available: bool, what: str) -> None:
    """Skip when ``what`` is missing, except in CI where that is a failure."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI (CI=true) but is not available")
    pytest.skip(f"{what} is not available")


@pytest.fixture
async def target(nursery: trio.Nursery) -> TargetServer:
    """A scripted target WebSocket server on 127.0.0.1."""
    server: TargetServer = await nursery.start(TargetServer().serve)
    return server


@pytest.fixture
async def gateway(nursery: trio.Nursery) -> Running:
    """A gateway on 127.0.0.1 with one direct agent and the test key."""
    return await start_gateway(nursery)
