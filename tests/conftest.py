"""Fixtures shared by the whole suite: a scripted target and a running gateway."""

from __future__ import annotations

import os

import pytest
import trio

from tests.support.gateway import Running, start_gateway
from tests.support.target import TargetServer

IN_CI = os.environ.get("CI", "").lower() == "true"


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
