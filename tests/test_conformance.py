"""Autobahn conformance (kosoku's runner): the relay must pass every case the
echo target passes directly.  Compression (sections 12 and 13) is excluded: the
relay negotiates no extensions."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from urllib.parse import quote

import pytest
import trio

from relay.config import KeyConfig
from tests.conftest import require
from tests.support.gateway import make_config, start_gateway

EXCLUDE = ["12.*", "13.*"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def _echo_target() -> AsyncIterator[str]:
    port = _free_port()
    command = [sys.executable, "-m", "tests.support.echo_server", str(port)]
    async with trio.open_nursery() as nursery:
        run = partial(trio.run_process, command, stdout=subprocess.PIPE, check=False)
        process: trio.Process = await nursery.start(run)
        assert process.stdout is not None
        with trio.fail_after(30):
            assert b"ready" in await process.stdout.receive_some()
        try:
            yield f"ws://127.0.0.1:{port}/"
        finally:
            process.kill()


async def _kosoku(url: str) -> dict[str, list[object]]:
    command = [sys.executable, "-m", "tests.support.kosoku_run", url, "--parallel", "2"]
    for pattern in EXCLUDE:
        command += ["--exclude", pattern]
    result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    results: dict[str, list[object]] = json.loads(result.stdout)
    return results


@pytest.mark.conformance
async def test_relay_passes_every_case_the_target_passes_directly(nursery: trio.Nursery) -> None:
    try:
        import kosoku  # noqa: F401
    except ImportError:
        require(False, "kosoku (pip install kosoku)")
    config = make_config(keys=[KeyConfig(key="conformance", rate=1e6, burst=1_000_000)])
    running = await start_gateway(nursery, config)
    async with _echo_target() as target_url:
        direct = await _kosoku(target_url)
        relay_url = (
            f"{running.ws_url}?apiKey=conformance&url={quote(target_url, safe='')}&connected=false"
        )
        relayed = await _kosoku(relay_url)
    assert len(direct) > 290  # the whole suite ran (301 cases without 12.* and 13.*)
    assert set(relayed) == set(direct)
    passed_directly = {case for case, result in direct.items() if result[0]}
    failed_through_relay = {case: relayed[case] for case in passed_directly if not relayed[case][0]}
    assert failed_through_relay == {}
