"""The protocol document's own examples, run unchanged but for their addresses."""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from relay.config import KeyConfig
from tests.support.gateway import make_config, start_gateway
from tests.support.target import TargetServer

EXAMPLES = Path(__file__).parent / "seed_examples"


async def test_seed_python_example_with_websockets(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    running = await start_gateway(nursery, make_config(keys=[KeyConfig(key="YOUR_API_KEY")]))
    code = (EXAMPLES / "relay_python.py").read_text()
    code = code.replace("wss://scraping-api.55-tech.com/ws", running.ws_url)
    code = code.replace("wss://echo.websocket.events", f"{target.url}/echo")
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-c", code], capture_stdout=True, capture_stderr=True, check=False
        )
    output = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert output.splitlines() == [
        "Status: {'type': 'connected', 'status': 101, 'node_id': 'relay-local'}",
        "Echo: test message",
    ]
    assert target.connections[0].messages == ["test message"]
