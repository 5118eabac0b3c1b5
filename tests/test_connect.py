"""The connect phase over real sockets: validation, keys, rate limits, target failures."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
from collections.abc import Sequence

import pytest
import trio
import trustme
from trio_websocket import open_websocket_url

from relay.client import RelayError, open_relay
from relay.config import KeyConfig
from tests.support.gateway import KEY, Running, connect_json, make_config, refusal, start_gateway
from tests.support.target import TargetServer


@pytest.mark.parametrize(
    ("first", "field", "problem"),
    [
        ("not json", None, "connect message is not valid JSON"),
        ("[1, 2]", None, "connect message must be a JSON object, got an array"),
        ('"url"', None, "connect message must be a JSON object, got a string"),
        ('{"apiKey": "k"}', "url", "required field missing"),
        ('{"apiKey": "k", "url": 5}', "url", "expected a string, got an integer"),
        ('{"apiKey": "k", "url": "http://x/"}', "url", "must be a ws:// or wss:// URL"),
        ('{"apiKey": "k", "url": "ws://"}', "url", "must be a ws:// or wss:// URL"),
        ('{"apiKey": "k", "url": "ws://h/#frag"}', "url", "must be a ws:// or wss:// URL"),
        ('{"apiKey": 7, "url": "ws://h/"}', "apiKey", "expected a string, got an integer"),
        ('{"apiKey": "k", "url": "ws://h/", "headers": []}', "headers", "expected an object"),
        (
            '{"apiKey": "k", "url": "ws://h/", "headers": {"A": 1}}',
            "headers['A']",
            "expected a string",
        ),
        ('{"apiKey": "k", "url": "ws://h/", "headers": {"Host": "x"}}', "headers", "cannot be set"),
        (
            '{"apiKey": "k", "url": "ws://h/", "headers": {"Upgrade": "x"}}',
            "headers",
            "cannot be set",
        ),
        (
            '{"apiKey": "k", "url": "ws://h/", "headers": {"Sec-WebSocket-Key": "x"}}',
            "headers",
            "cannot be set",
        ),
        (
            '{"apiKey": "k", "url": "ws://h/", "headers": {"X": "a\\r\\nB: c"}}',
            "headers",
            "CR/LF/NUL",
        ),
        ('{"apiKey": "k", "url": "ws://h/", "cookies": "a=b"}', "cookies", "expected an object"),
        ('{"apiKey": "k", "url": "ws://h/", "cookies": {"a": "b;c"}}', "cookies", "free of ';'"),
        ('{"apiKey": "k", "url": "ws://h/", "geo": "USA"}', "geo", "two-letter ISO codes"),
        ('{"apiKey": "k", "url": "ws://h/", "geo": 1}', "geo", "expected a string"),
        ('{"apiKey": "k", "url": "ws://h/", "agent": "bad slug!"}', "agent", "agent slugs"),
        ('{"apiKey": "k", "url": "ws://h/", "idle_timeout": -1}', "idle_timeout", "must be >= 0"),
        (
            '{"apiKey": "k", "url": "ws://h/", "idle_timeout": "5"}',
            "idle_timeout",
            "expected a number",
        ),
        ('{"apiKey": "k", "url": "ws://h/", "idle_timeout": NaN}', None, "not valid JSON"),
        (
            '{"apiKey": "k", "url": "ws://h/", "idle_timeout": true}',
            "idle_timeout",
            "expected a number",
        ),
    ],
)
async def test_bad_connect_message_names_the_field_and_closes_1008(
    gateway: Running, first: str, field: str | None, problem: str
) -> None:
    message, code, reason = await refusal(gateway.ws_url, first)
    assert code == 1008
    assert message is not None
    assert problem in message
    if field is not None:
        assert f"{field}: " in message
    assert reason  # the close reason carries the message too (cut to fit 123 bytes)
    assert message.startswith(reason[:40])


async def test_binary_connect_message_is_refused(gateway: Running) -> None:
    message, code, _ = await refusal(gateway.ws_url, b'{"apiKey": "test-key"}')
    assert code == 1008
    assert message == "The connect message must be a JSON text frame, not binary"


async def test_oversized_connect_message_is_refused(nursery: trio.Nursery) -> None:
    running = await start_gateway(nursery, make_config(max_connect_message_size=1024))
    message, code, _ = await refusal(running.ws_url, connect_json("ws://h/" + "a" * 2000))
    assert code == 1009
    assert message == "The connect message is over 1024 bytes"


@pytest.mark.parametrize("key", [None, "", "wrong-key", "test-key "])
async def test_invalid_or_missing_key(
    gateway: Running, target: TargetServer, key: str | None
) -> None:
    fields = {"url": f"{target.url}/echo"}
    if key is not None:
        fields["apiKey"] = key
    message, code, reason = await refusal(gateway.ws_url, json.dumps(fields))
    assert (message, code, reason) == (
        "Invalid or missing API key",
        1008,
        "Invalid or missing API key",
    )
    assert target.connections == []


async def test_key_alias_and_sha256_keys(nursery: trio.Nursery, target: TargetServer) -> None:
    import hashlib

    digest = hashlib.sha256(b"hashed-secret").hexdigest()
    running = await start_gateway(nursery, make_config(keys=[KeyConfig(key_sha256=digest)]))
    async with open_websocket_url(running.ws_url) as ws:
        await ws.send_message(json.dumps({"key": "hashed-secret", "url": f"{target.url}/echo"}))
        assert json.loads(await ws.get_message())["type"] == "connected"


async def test_rate_limit_exhaustion(nursery: trio.Nursery, target: TargetServer) -> None:
    running = await start_gateway(
        nursery, make_config(keys=[KeyConfig(key=KEY, rate=0.0, burst=3)])
    )
    for _ in range(3):
        async with open_relay(running.ws_url, api_key=KEY, url=f"{target.url}/echo"):
            pass
    message, code, _ = await refusal(running.ws_url, connect_json(f"{target.url}/echo"))
    assert (message, code) == ("Rate limit exceeded", 1008)
    # Invalid messages do not take tokens: validation comes first.
    message, code, _ = await refusal(running.ws_url, '{"apiKey": "test-key"}')
    assert code == 1008
    assert message is not None
    assert "url" in message


async def test_bad_messages_do_not_spend_tokens(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    running = await start_gateway(
        nursery, make_config(keys=[KeyConfig(key=KEY, rate=0.0, burst=1)])
    )
    for _ in range(3):
        _, code, _ = await refusal(running.ws_url, json.dumps({"apiKey": KEY, "url": "http://x"}))
        assert code == 1008
    async with open_relay(running.ws_url, api_key=KEY, url=f"{target.url}/echo") as relayed:
        assert relayed.status == 101


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_target_connection_refused(gateway: Running) -> None:
    port = _free_port()
    message, code, _ = await refusal(gateway.ws_url, connect_json(f"ws://127.0.0.1:{port}/"))
    assert code == 1011
    assert message == f"Target connection refused: 127.0.0.1:{port}"


async def _fake_resolver(host: str, port: int) -> Sequence[str]:
    if host == "target.test":
        return ["127.0.0.1"]
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


async def test_dns_failure(nursery: trio.Nursery) -> None:
    running = await start_gateway(nursery, resolver=_fake_resolver)
    message, code, _ = await refusal(running.ws_url, connect_json("ws://no-such-host.test/"))
    assert code == 1011
    assert message is not None
    assert message.startswith("Target host could not be resolved: no-such-host.test")


async def test_names_resolve_through_the_gateway_resolver(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    running = await start_gateway(nursery, resolver=_fake_resolver)
    url = f"ws://target.test:{target.port}/headers"
    async with open_relay(running.ws_url, api_key=KEY, url=url) as relayed:
        seen = json.loads(await relayed.websocket.get_message())
    assert seen["headers"]["host"] == f"target.test:{target.port}"


async def test_non_101_answer_names_the_status(gateway: Running, target: TargetServer) -> None:
    message, code, _ = await refusal(
        gateway.ws_url, connect_json(f"{target.url}/reject?status=403")
    )
    assert code == 1011
    assert message == "Target refused the WebSocket upgrade: HTTP 403 Forbidden"
    with pytest.raises(RelayError) as refused:
        async with open_relay(gateway.ws_url, api_key=KEY, url=f"{target.url}/reject?status=404"):
            pass
    assert refused.value.code == 1011
    assert "HTTP 404" in refused.value.message


async def test_tls_failure_untrusted_certificate(nursery: trio.Nursery, gateway: Running) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    listeners = await trio.open_ssl_over_tcp_listeners(0, context, host="127.0.0.1")
    port = listeners[0].transport_listener.socket.getsockname()[1]

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.do_handshake()

    nursery.start_soon(trio.serve_listeners, handler, listeners)
    message, code, _ = await refusal(gateway.ws_url, connect_json(f"wss://127.0.0.1:{port}/"))
    assert code == 1011
    assert message is not None
    assert message.startswith("TLS handshake with target failed")
    assert "certificate" in message


async def test_tls_failure_plain_server(gateway: Running, target: TargetServer) -> None:
    message, code, _ = await refusal(
        gateway.ws_url, connect_json(f"wss://127.0.0.1:{target.port}/")
    )
    assert code == 1011
    assert message is not None
    assert message.startswith("TLS handshake with target failed")


async def test_target_that_never_answers_is_bounded_by_the_dial_timeout(
    nursery: trio.Nursery,
) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    nursery.start_soon(trio.serve_listeners, silent, listeners)
    running = await start_gateway(nursery, make_config(dial_timeout=0.5))
    message, code, _ = await refusal(running.ws_url, connect_json(f"ws://127.0.0.1:{port}/"))
    assert code == 1011
    assert message == (
        "Target connection timed out after 0.5 s during the WebSocket handshake with the target"
    )


async def test_private_targets_refused_by_default(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    running = await start_gateway(nursery, make_config(allow_private=False))
    message, code, _ = await refusal(running.ws_url, connect_json(f"{target.url}/echo"))
    assert code == 1008
    assert message == "Target address not allowed: 127.0.0.1 resolves to loopback address 127.0.0.1"
    assert target.connections == []


async def test_no_agent_available(gateway: Running, target: TargetServer) -> None:
    for fields in ({"geo": "JP"}, {"agent": "nowhere"}):
        message, code, _ = await refusal(
            gateway.ws_url, connect_json(f"{target.url}/echo", **fields)
        )
        assert (message, code) == ("No agent available", 1011)
    assert target.connections == []


async def test_client_close_during_connect_phase_is_answered(gateway: Running) -> None:
    async with open_websocket_url(gateway.ws_url) as ws:
        await ws.aclose(4000, "changed my mind")
        assert ws.closed is not None
        assert ws.closed.code == 4000


async def test_client_ping_during_connect_phase_is_answered(
    gateway: Running, target: TargetServer
) -> None:
    async with open_websocket_url(gateway.ws_url) as ws:
        with trio.fail_after(5):
            await ws.ping(b"early")
        await ws.send_message(connect_json(f"{target.url}/echo"))
        assert json.loads(await ws.get_message())["type"] == "connected"


async def test_messages_pipelined_after_the_connect_message(
    gateway: Running, target: TargetServer
) -> None:
    async with open_websocket_url(gateway.ws_url) as ws:
        await ws.send_message(connect_json(f"{target.url}/echo"))
        await ws.send_message("sent before connected arrived")
        assert json.loads(await ws.get_message())["type"] == "connected"
        assert await ws.get_message() == "sent before connected arrived"
