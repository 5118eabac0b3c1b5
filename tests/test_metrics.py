"""/metrics counts a scripted run exactly; the session log line says what happened."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from relay.client import RelayError, open_relay
from relay.config import KeyConfig
from relay.logs import JsonFormatter
from tests.support.gateway import KEY, Running, make_config, start_gateway
from tests.support.target import TargetServer

MESSAGES: list[str | bytes] = ["hello", b"\x00\x01binary", "x" * 300]


def _client_frame(payload_len: int) -> int:
    """Size of a masked client frame."""
    return 2 + (2 if payload_len >= 126 else 0) + 4 + payload_len


def _server_frame(payload_len: int) -> int:
    return 2 + (2 if payload_len >= 126 else 0) + payload_len


async def _scrape(running: Running) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient() as client:
        response = await client.get(running.address.http_url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


async def _settled(running: Running) -> None:
    with trio.fail_after(10):
        await running.gateway.registry.wait_idle()


async def test_metrics_count_a_scripted_run(nursery: trio.Nursery, target: TargetServer) -> None:
    keys = [KeyConfig(key=KEY, rate=1000.0, burst=1000), KeyConfig(key="once", rate=0.0, burst=1)]
    running = await start_gateway(nursery, make_config(keys=keys))
    for _ in range(3):
        async with open_relay(running.ws_url, api_key=KEY, url=f"{target.url}/echo") as relayed:
            for message in MESSAGES:
                await relayed.websocket.send_message(message)
                assert await relayed.websocket.get_message() == message
    async with open_relay(running.ws_url, api_key="once", url=f"{target.url}/echo"):
        pass
    for key in ("wrong", "once"):
        with pytest.raises(RelayError):
            async with open_relay(running.ws_url, api_key=key, url=f"{target.url}/echo"):
                pass
    await _settled(running)
    values = await _scrape(running)

    def value(name: str, **labels: str) -> float:
        return values[(name, tuple(sorted(labels.items())))]

    assert value("relay_connects_total", outcome="connected") == 4
    assert value("relay_connects_total", outcome="auth_failed") == 1
    assert value("relay_connects_total", outcome="rate_limited") == 1
    assert value("relay_connects_total", outcome="no_agent") == 0
    assert value("relay_rate_limit_rejections_total") == 1
    assert value("relay_sessions_ended_total", outcome="closed") == 4
    assert value("relay_sessions_active") == 0
    # Each relayed session: the messages, then the client's close 1000 and its answer.
    payloads = [len(m.encode() if isinstance(m, str) else m) for m in MESSAGES]
    up = 3 * (sum(_client_frame(n) for n in payloads) + _client_frame(2)) + _client_frame(2)
    down = 3 * (sum(_server_frame(n) for n in payloads) + _server_frame(2)) + _server_frame(2)
    assert value("relay_bytes_total", direction="client_to_target") == up
    assert value("relay_bytes_total", direction="target_to_client") == down
    assert value("relay_frames_total", direction="client_to_target") == 3 * 4 + 1
    assert value("relay_frames_total", direction="target_to_client") == 3 * 4 + 1
    assert value("relay_close_codes_sent_total", side="target", code="1000") == 4
    assert value("relay_close_codes_sent_total", side="client", code="1000") == 4
    assert value("relay_close_codes_sent_total", side="client", code="1008") == 2
    assert value("relay_dial_seconds_count") == 4
    assert value("relay_agent_healthy", agent="local", kind="direct") == 1
    assert value("relay_draining") == 0


async def test_live_sessions_count_before_they_end(gateway: Running, target: TargetServer) -> None:
    async with open_relay(gateway.ws_url, api_key=KEY, url=f"{target.url}/echo") as relayed:
        await relayed.websocket.send_message(b"\x00" * 1000)
        await relayed.websocket.get_message()
        values = await _scrape(gateway)
        assert values[("relay_sessions_active", ())] == 1
        assert values[("relay_bytes_total", (("direction", "client_to_target"),))] == 1008


async def test_session_end_log_line(
    gateway: Running, target: TargetServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay.session")
    async with open_relay(
        gateway.ws_url,
        api_key=KEY,
        url=f"{target.url}/echo",
        headers={"Authorization": "Bearer secret-header"},
        cookies={"sid": "secret-cookie"},
    ) as relayed:
        await relayed.websocket.send_message("four")
        await relayed.websocket.get_message()
        await relayed.websocket.aclose(4100, "done")
    await _settled(gateway)
    (record,) = [r for r in caplog.records if r.getMessage() == "session end"]
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["outcome"] == "closed"
    assert fields["key"].startswith("key-")
    assert fields["agent"] == "local"
    assert fields["node"] == "relay-local"
    assert fields["target_host"] == "127.0.0.1"
    assert (fields["close_to_target"], fields["close_to_client"]) == (4100, 4100)
    assert fields["bytes_from_client"] == _client_frame(4) + _client_frame(6)
    assert fields["bytes_from_target"] == _server_frame(4) + _server_frame(6)
    assert len(fields["session"]) == 12
    line = JsonFormatter().format(record)
    assert json.loads(line)["outcome"] == "closed"
    for secret in (KEY, "secret-header", "secret-cookie"):
        assert secret not in line
        assert secret not in caplog.text
