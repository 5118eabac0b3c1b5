"""Reload of real ``relay serve`` processes: ``relay reload`` with a PID file, a broken file
reported in the log, and ``--workers`` where every worker re-reads the file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed

from relay.client import RelayError, open_relay
from tests.support.conditions import eventually
from tests.support.process import RelayProcess, relay_process
from tests.support.target import TargetServer

FILE = """
[targets]
allow_private = true

[[keys]]
name = "alpha"
key = "alpha-key"
"""
BETA = """
[[keys]]
name = "beta"
key = "beta-key"
"""


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _http(relay: RelayProcess) -> str:
    return relay.ws_url.replace("ws://", "http://").removesuffix("/ws")


async def _reload_command(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "relay.cli", "reload", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def _admits(ws_url: str, key: str, url: str) -> bool:
    """True when ``key`` gets a session (and it echoes), False when refused with 1008."""
    code: int | None = None
    try:
        async with open_relay(ws_url, api_key=key, url=url) as relayed:
            await relayed.websocket.send_message("hello")
            return await relayed.websocket.get_message() == "hello"
    except RelayError as refused:
        code = refused.code
    assert code == 1008
    return False


async def test_relay_reload_through_the_pid_file(tmp_path: Path, target: TargetServer) -> None:
    config, pid_file = tmp_path / "relay.toml", tmp_path / "relay.pid"
    _write(config, FILE)
    url = f"{target.url}/echo"
    args = ["--config", str(config), "--bind", "127.0.0.1:0", "--pid-file", str(pid_file)]
    async with relay_process(args) as relay:
        assert pid_file.read_text().strip() == str(relay.pid)
        assert not await _admits(relay.ws_url, "beta-key", url)
        async with open_relay(relay.ws_url, api_key="alpha-key", url=url) as open_session:
            _write(config, FILE.replace("alpha-key", "other-key") + BETA)
            done = await _reload_command("--pid-file", str(pid_file), "--config", str(config))
            assert done.returncode == 0, done.stderr
            assert f"sent SIGHUP to {relay.pid}" in done.stdout.decode()
            await eventually(partial(_admits, relay.ws_url, "beta-key", url), "beta admitted")
            assert not await _admits(relay.ws_url, "alpha-key", url)
            await open_session.websocket.send_message("untouched")
            assert await open_session.websocket.get_message() == "untouched"

            # Asked to end revoked keys' sessions: the one still open on alpha ends with 1008.
            done = await _reload_command("--pid-file", str(pid_file), "--end-revoked")
            assert done.returncode == 0
            with trio.fail_after(10), pytest.raises(ConnectionClosed) as ended:
                await open_session.websocket.get_message()
            reason = ended.value.reason
            assert reason is not None
            assert (reason.code, reason.reason) == (1008, "API key revoked")

        # A broken file: relay reload --config refuses to signal; a bare SIGHUP is logged.
        _write(config, "[server]\nbindd = 1\n")
        refused = await _reload_command("--pid-file", str(pid_file), "--config", str(config))
        assert refused.returncode == 2
        message = f"{config}: Invalid configuration: server: unknown field(s): bindd"
        assert f"relay: {message}" in refused.stderr.decode()
        os.kill(relay.pid, signal.SIGHUP)
        logged = f"configuration not reloaded, nothing changed: {message}"

        async def reported() -> bool:
            return logged in relay.output

        await eventually(reported, "the refused reload in the log")
        assert await _admits(relay.ws_url, "beta-key", url)  # nothing changed
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(_http(relay) + "/metrics")).text
        assert 'relay_config_reloads_total{result="invalid"} 1.0' in metrics
    assert not pid_file.exists()  # removed at exit


async def _hashes(http_url: str, pids: set[int]) -> dict[int, str]:
    """Each worker's loaded-config hash, asking (on new connections) until all answered."""
    seen: dict[int, str] = {}
    async with httpx.AsyncClient() as client:
        with trio.fail_after(30):
            while set(seen) < pids:
                health = (await client.get(http_url + "/healthz")).json()
                seen[health["pid"]] = health["config"]["hash"]
    return seen


@pytest.mark.parametrize("workers", [2])
async def test_every_worker_reloads(tmp_path: Path, target: TargetServer, workers: int) -> None:
    config, pid_file = tmp_path / "relay.toml", tmp_path / "relay.pid"
    _write(config, FILE)
    args = ["--config", str(config), "--bind", "127.0.0.1:0", "--pid-file", str(pid_file)]
    async with relay_process([*args, "--workers", str(workers)]) as relay:
        assert pid_file.read_text().strip() == str(relay.pid)  # the supervisor
        pids = {int(pid) for pid in relay.output.split("(pids ", 1)[1].split(")")[0].split(", ")}
        before = await _hashes(_http(relay), pids)
        assert len(set(before.values())) == 1
        _write(config, FILE + BETA)
        done = await _reload_command("--pid-file", str(pid_file))
        assert done.returncode == 0
        with trio.fail_after(30):
            while True:
                after = await _hashes(_http(relay), pids)
                if set(after.values()).isdisjoint(before.values()):
                    break
                await trio.sleep(0.1)
        assert len(set(after.values())) == 1  # every worker runs the same new configuration
        for _ in range(4):  # whichever worker the kernel picks
            assert await _admits(relay.ws_url, "beta-key", f"{target.url}/echo")
