"""Graceful shutdown of a real ``relay serve`` process on SIGTERM."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from relay.client import open_relay
from tests.support.process import relay_process
from tests.support.target import TargetServer

CONFIG = """
[server]
bind = "127.0.0.1:0"
drain_period = 1.5
close_timeout = 2.0
[targets]
allow_private = true
[[keys]]
key = "k"
burst = 100
"""


async def test_sigterm_drains_then_closes_sessions_with_1001(
    tmp_path: Path, target: TargetServer
) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(CONFIG)
    async with relay_process(["--config", str(config)]) as relay:
        http_url = relay.ws_url.replace("ws://", "http://").removesuffix("/ws")
        async with open_relay(relay.ws_url, api_key="k", url=f"{target.url}/echo") as relayed:
            relay.process.send_signal(signal.SIGTERM)
            async with httpx.AsyncClient() as client:
                with trio.fail_after(10):
                    # Another process: polling is the only way to see it change.
                    while (health := await client.get(http_url + "/healthz")).status_code == 200:  # noqa: ASYNC110
                        await trio.sleep(0.02)
            assert health.status_code == 503
            assert health.json()["status"] == "draining"
            # New sessions are refused while open ones go on.
            with pytest.raises(Exception, match="503"):
                async with open_websocket_url(relay.ws_url):
                    pass
            await relayed.websocket.send_message("during the drain")
            assert await relayed.websocket.get_message() == "during the drain"
            with trio.fail_after(15), pytest.raises(ConnectionClosed) as closed:
                await relayed.websocket.get_message()
        assert closed.value.reason is not None
        assert (closed.value.reason.code, closed.value.reason.reason) == (
            1001,
            "server shutting down",
        )
        record = target.connections[0]
        with trio.fail_after(10):
            await record.ended.wait()
        assert (record.close_code, record.close_reason) == (1001, "server shutting down")
        with trio.fail_after(15):
            await relay.process.wait()
        assert relay.process.returncode == 0


async def test_idle_gateway_stops_at_once_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(CONFIG.replace("drain_period = 1.5", "drain_period = 600"))
    async with relay_process(["--config", str(config)]) as relay:
        relay.process.send_signal(signal.SIGTERM)
        # Nothing to drain: no need to wait out the 600 s period.
        with trio.fail_after(15):
            await relay.process.wait()
        assert relay.process.returncode == 0


async def test_connect_phase_sessions_are_refused_with_1001(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(CONFIG)
    async with relay_process(["--config", str(config)]) as relay:
        async with open_websocket_url(relay.ws_url) as ws:
            relay.process.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                answer = json.loads(await ws.get_message())
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
        assert answer == {"type": "error", "message": "Server shutting down"}
        assert closed.value.reason is not None
        assert closed.value.reason.code == 1001
