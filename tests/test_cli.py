"""``relay serve`` as a real process: defaults, the printed dev key, options."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import trio

from relay.client import RelayError, open_relay
from tests.support.process import relay_process
from tests.support.target import TargetServer


async def test_serve_defaults_print_a_working_dev_key(target: TargetServer) -> None:
    async with relay_process(["--bind", "127.0.0.1:0", "--allow-private-targets"]) as relay:
        assert relay.dev_key is not None
        assert relay.dev_key.startswith("dev-")
        assert f"wscat -c {relay.ws_url}" in relay.output
        paste = relay.output.split("then paste: ", 1)[1].splitlines()[0]
        assert json.loads(paste)["apiKey"] == relay.dev_key
        async with open_relay(relay.ws_url, api_key=relay.dev_key, url=f"{target.url}/echo") as r:
            assert r.node_id == "relay-local"
            await r.websocket.send_message("through a real process")
            assert await r.websocket.get_message() == "through a real process"


async def test_serve_refuses_private_targets_by_default(target: TargetServer) -> None:
    async with relay_process(["--bind", "127.0.0.1:0"]) as relay:
        assert "private and loopback targets are refused" in relay.output
        assert relay.dev_key is not None
        with pytest.raises(RelayError) as refused:
            async with open_relay(relay.ws_url, api_key=relay.dev_key, url=f"{target.url}/echo"):
                pass
    assert refused.value.code == 1008
    assert refused.value.message.startswith("Target address not allowed")


async def test_serve_with_the_example_config_and_extra_keys(target: TargetServer) -> None:
    args = ["--config", "examples/relay.toml", "--bind", "127.0.0.1:0", "--api-key", "extra-1"]
    async with relay_process([*args, "--api-key", "extra-2"]) as relay:
        assert relay.dev_key is None  # keys are configured: nothing generated
        assert "test-key-1" not in relay.output
        assert "extra-1" not in relay.output
        for key in ("test-key-1", "extra-1", "extra-2"):
            async with open_relay(relay.ws_url, api_key=key, url=f"{target.url}/echo") as r:
                assert r.node_id == "scraping-de1"


def test_bad_config_exits_2_with_the_reason(tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay.cli", "serve", "--config", "/nonexistent/relay.toml"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "cannot read /nonexistent/relay.toml" in result.stderr


def test_bad_bind_option_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay.cli", "serve", "--bind", "nowhere"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "expected HOST:PORT" in result.stderr


async def test_port_in_use_is_a_clear_error() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    result = await trio.run_process(
        [sys.executable, "-m", "relay.cli", "serve", "--bind", f"127.0.0.1:{port}"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr.decode()


async def test_serve_mounts_the_parser_api_with_a_printed_token() -> None:
    import re

    from ws_gateway.client import GatewayClient
    from ws_gateway.errors import AuthenticationError

    async with relay_process(["--bind", "127.0.0.1:0"]) as relay:
        match = re.search(
            r"parser API: (ws://\S+/ws/parser)  admin token \(generated for this run\): (\S+)",
            relay.output,
        )
        assert match is not None, relay.output
        base = relay.ws_url.replace("ws://", "http://").removesuffix("/ws")
        async with GatewayClient(base_http_url=base, admin_token=match.group(2)) as client:
            pong = await client.ping()
            assert pong["ok"] is True
        with pytest.raises(AuthenticationError):
            async with GatewayClient(base_http_url=base, admin_token="wrong") as client:
                await client.ping()
