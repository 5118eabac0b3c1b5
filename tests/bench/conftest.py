"""Fixtures for the bench tests: the bench's echo target and a peer relay as processes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.procs import stop_process, wait_ready_line
from bench.systems import SYSTEMS, Context, Running
from tests.conftest import require

BENCH_EXTRA = ("rich", "hdrh", "matplotlib", "uvloop", "picows")


@pytest.fixture(autouse=True)
def _bench_extra() -> None:
    """Every bench test needs the ``bench`` extra; in CI its absence is a failure."""
    missing = [name for name in BENCH_EXTRA if importlib.util.find_spec(name) is None]
    require(not missing, f"the bench extra (pip install '.[bench]'; missing {missing})")


@pytest.fixture
def echo_url(tmp_path: Path) -> Iterator[str]:
    """``ws://`` URL of a running ``bench.echo`` target."""
    log = tmp_path / "echo.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.echo", "--port", "0"], stdout=subprocess.PIPE, stderr=fh
        )
    try:
        port = wait_ready_line(proc, log)
        yield f"ws://127.0.0.1:{port}/"
    finally:
        stop_process(proc)


@pytest.fixture
def websockets_peer(echo_url: str) -> Iterator[Running]:
    """The asyncio + websockets peer relay, relaying to the echo target."""
    running = SYSTEMS["websockets"].start(Context(target_url=echo_url, relay_cores=None))
    try:
        yield running
    finally:
        running.stop()
