"""``relay agent`` token rotation: SIGHUP brings a new token, the old one lives on for
``token_overlap`` seconds, then only the new one opens links."""

from __future__ import annotations

import hashlib
import os
import signal
from functools import partial
from pathlib import Path

import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from relay.client import open_relay
from relay.config import AgentConfig, KeyConfig
from relay.node.tokens import AcceptedTokens
from tests.support.conditions import eventually
from tests.support.gateway import make_config, start_gateway
from tests.support.process import relay_process
from tests.support.target import TargetServer

AGENT_FILE = """
[targets]
allow_private = true

[agent]
slug = "rot1"
token = "{token}"
token_overlap = {overlap}
"""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Clock:
    """A hand-moved clock for the pure token ring."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_old_and_new_tokens_overlap_then_only_the_new_one_is_accepted() -> None:
    clock = Clock()
    tokens = AcceptedTokens(_digest("old"), clock=clock)
    assert tokens.rotate(_digest("new"), overlap=30.0)
    assert tokens.accepts(_digest("old"))
    assert tokens.accepts(_digest("new"))
    assert not tokens.accepts(_digest("other"))
    clock.now += 29.9
    assert tokens.accepts(_digest("old"))
    clock.now += 0.2
    assert not tokens.accepts(_digest("old"))
    assert tokens.accepts(_digest("new"))
    assert tokens.retiring == []  # nothing kept past its overlap


def test_no_overlap_and_an_unchanged_token() -> None:
    tokens = AcceptedTokens(_digest("old"), clock=Clock())
    assert not tokens.rotate(_digest("old"), overlap=30.0)  # same token: nothing retires
    assert tokens.retiring == []
    assert tokens.rotate(_digest("new"), overlap=0.0)
    assert not tokens.accepts(_digest("old"))


async def _health_answers(url: str, token: str) -> bool:
    """Whether the agent's health endpoint accepts ``token`` (False: HTTP 401)."""
    status: int | None = None
    try:
        async with open_websocket_url(
            url.removesuffix("/agent") + "/agent/health",
            extra_headers=[(b"authorization", f"Bearer {token}".encode())],
        ) as ws:
            return '"healthy"' in str(await ws.get_message())
    except ConnectionRejected as refused:
        status = refused.status_code
    assert status == 401
    return False


def _write(path: Path, text: str) -> None:
    path.write_text(text)


async def test_a_real_agent_rotates_its_token_on_sighup(
    nursery: trio.Nursery, tmp_path: Path, target: TargetServer
) -> None:
    config = tmp_path / "agent.toml"
    _write(config, AGENT_FILE.format(token="old-token", overlap=2.0))
    args = ["--config", str(config), "--bind", "127.0.0.1:0"]
    async with relay_process(args, command="agent", env={"RELAY_AGENT_TOKEN": ""}) as agent:
        assert await _health_answers(agent.ws_url, "old-token")
        assert not await _health_answers(agent.ws_url, "new-token")

        _write(config, AGENT_FILE.format(token="new-token", overlap=2.0))
        os.kill(agent.pid, signal.SIGHUP)
        await eventually(partial(_health_answers, agent.ws_url, "new-token"), "new token")
        # Within the overlap, gateways still on the old token are not refused.
        assert await _health_answers(agent.ws_url, "old-token")

        # A gateway moved to the new token relays through the agent.
        gateway_config = make_config(
            keys=(KeyConfig(key="k", rate=100.0, burst=100),),
            agents=(AgentConfig(slug="rot1", kind="remote", url=agent.ws_url, token="new-token"),),
        )
        relay = await start_gateway(nursery, gateway_config)
        async with open_relay(relay.ws_url, api_key="k", url=f"{target.url}/echo") as relayed:
            await relayed.websocket.send_message("through the rotated agent")
            assert await relayed.websocket.get_message() == "through the rotated agent"

        async def old_refused() -> bool:
            return not await _health_answers(agent.ws_url, "old-token")

        await eventually(old_refused, "the old token to expire after its overlap")
        assert "new token in force; the previous one is accepted for 2 s more" in agent.output

        # A broken file changes nothing.
        _write(config, "[agent]\ntoken = ''\n")
        os.kill(agent.pid, signal.SIGHUP)

        async def reported() -> bool:
            return "configuration not reloaded, nothing changed" in agent.output

        await eventually(reported, "the refused reload in the agent's log")
        assert await _health_answers(agent.ws_url, "new-token")
