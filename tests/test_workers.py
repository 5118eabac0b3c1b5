"""``relay serve --workers 2``: two processes share the port; a dead one is replaced."""

from __future__ import annotations

import os
import re
import signal

import httpx
import trio

from relay.client import open_relay
from tests.support.process import relay_process
from tests.support.target import TargetServer


async def _pids_serving(http_url: str, wanted: set[int]) -> set[int]:
    """Ask /healthz (a new connection each time) until every wanted PID answered."""
    seen: set[int] = set()
    async with httpx.AsyncClient() as client:
        with trio.fail_after(30):
            while not wanted <= seen:
                response = await client.get(http_url + "/healthz")
                seen.add(response.json()["pid"])
    return seen


async def test_two_workers_serve_and_a_killed_one_is_restarted(target: TargetServer) -> None:
    args = ["--workers", "2", "--bind", "127.0.0.1:0", "--allow-private-targets"]
    async with relay_process([*args, "--api-key", "k"]) as relay:
        match = re.search(r"workers: 2 \(pids (\d+), (\d+)\)", relay.output)
        assert match is not None, relay.output
        first = {int(match.group(1)), int(match.group(2))}
        assert relay.pid not in first
        http_url = relay.ws_url.replace("ws://", "http://").removesuffix("/ws")
        assert await _pids_serving(http_url, first) == first

        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        survivor = first - {victim}
        async with httpx.AsyncClient() as client:
            with trio.fail_after(30):
                replacement: int | None = None
                while replacement is None:
                    pid = (await client.get(http_url + "/healthz")).json()["pid"]
                    if pid not in first:
                        replacement = pid
        assert await _pids_serving(http_url, survivor | {replacement}) >= survivor

        async with open_relay(relay.ws_url, api_key="k", url=f"{target.url}/echo") as relayed:
            await relayed.websocket.send_message("through a worker")
            assert await relayed.websocket.get_message() == "through a worker"
