"""Every input has a bound, and each bound has a clear error and the right close code."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, open_websocket_url

from relay.client import open_relay
from relay.config import KeyConfig
from tests.support.conditions import eventually
from tests.support.gateway import KEY, Running, connect_json, make_config, refusal, start_gateway
from tests.support.target import TargetServer


def _message(url: str, **fields: object) -> str:
    return json.dumps({"apiKey": KEY, "url": url, **fields})


async def test_connect_message_size(nursery: trio.Nursery) -> None:
    running = await start_gateway(nursery, make_config(max_connect_message_size=4096))
    message, code, _ = await refusal(running.ws_url, connect_json("ws://h/", pad="x" * 5000))
    assert (message, code) == ("The connect message is over 4096 bytes", 1009)


async def test_url_length(nursery: trio.Nursery, target: TargetServer) -> None:
    running = await start_gateway(nursery, make_config(max_url_length=64))
    long_url = f"{target.url}/echo?" + "q" * 64
    message, code, _ = await refusal(running.ws_url, connect_json(long_url))
    assert (message, code) == ("Invalid connect message: url: must be at most 64 characters", 1008)
    query = f"?apiKey={KEY}&url={quote(long_url, safe='')}"
    message, code, _ = await refusal(running.ws_url + query, None)
    assert (message, code) == ("Invalid connect query: url: must be at most 64 characters", 1008)
    assert target.connections == []


async def test_header_count(nursery: trio.Nursery, target: TargetServer) -> None:
    running = await start_gateway(nursery, make_config(max_headers=2))
    headers = {"X-A": "1", "X-B": "2", "X-C": "3"}
    message, code, _ = await refusal(running.ws_url, _message(target.url, headers=headers))
    assert (message, code) == ("Invalid connect message: headers: at most 2 headers", 1008)
    async with open_relay(
        running.ws_url, api_key=KEY, url=f"{target.url}/headers", headers={"X-A": "1", "X-B": "2"}
    ) as relayed:
        seen = json.loads(await relayed.websocket.get_message())
    assert (seen["headers"]["x-a"], seen["headers"]["x-b"]) == ("1", "2")


async def test_header_and_cookie_sizes(nursery: trio.Nursery, target: TargetServer) -> None:
    running = await start_gateway(nursery, make_config(max_header_size=100))
    message, code, _ = await refusal(
        running.ws_url, _message(target.url, headers={"X-Big": "v" * 100})
    )
    assert (message, code) == ("Invalid connect message: headers: X-Big: over 100 bytes", 1008)
    cookies = {f"c{n}": "v" * 20 for n in range(5)}  # each small, merged over the bound
    message, code, _ = await refusal(running.ws_url, _message(target.url, cookies=cookies))
    assert (message, code) == ("Invalid connect message: cookies: Cookie: over 100 bytes", 1008)
    assert target.connections == []


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"Host": "evil.example"}, "Host cannot be set"),
        ({"upgrade": "h2c"}, "upgrade cannot be set"),
        ({"Connection": "close"}, "Connection cannot be set"),
        ({"Sec-WebSocket-Key": "AAAAAAAAAAAAAAAAAAAAAA=="}, "Sec-WebSocket-Key cannot be set"),
        ({"Sec-WebSocket-Version": "8"}, "Sec-WebSocket-Version cannot be set"),
        ({"Sec-WebSocket-Extensions": "permessage-deflate"}, "cannot be set"),
        ({"Sec-WebSocket-Accept": "x"}, "cannot be set"),
        ({"Content-Length": "5"}, "Content-Length cannot be set"),
        ({"Transfer-Encoding": "chunked"}, "Transfer-Encoding cannot be set"),
        ({"X-Split": "a\r\nInjected: yes"}, "X-Split: values must be free of CR/LF/NUL"),
        ({"X-Nul": "a\x00b"}, "X-Nul: values must be free of CR/LF/NUL"),
        ({"X-Ctl": "a\x01b"}, "X-Ctl: values must be free of CR/LF/NUL"),
        ({"X-Del": "a\x7fb"}, "X-Del: values must be free of CR/LF/NUL"),
        ({"X-Name\n": "v"}, "'X-Name\\n' is not an HTTP header name"),
        ({"Bad Name": "v"}, "'Bad Name' is not an HTTP header name"),
        ({"": "v"}, "'' is not an HTTP header name"),
    ],
)
async def test_header_names_and_values(
    gateway: Running, target: TargetServer, headers: dict[str, str], problem: str
) -> None:
    message, code, _ = await refusal(gateway.ws_url, _message(target.url, headers=headers))
    assert code == 1008
    assert message is not None
    assert message.startswith("Invalid connect message: headers: ")
    assert problem in message
    assert target.connections == []


@pytest.mark.parametrize(
    ("cookies", "problem"),
    [
        ({"a": "b;c"}, "a: values must be free of ';'"),
        ({"a": "b\nc"}, "a: values must be free of ';'"),
        ({"a b": "c"}, "'a b' is not a cookie name"),
    ],
)
async def test_cookie_names_and_values(
    gateway: Running, target: TargetServer, cookies: dict[str, str], problem: str
) -> None:
    message, code, _ = await refusal(gateway.ws_url, _message(target.url, cookies=cookies))
    assert code == 1008
    assert message is not None
    assert f"cookies: {problem}" in message


async def test_what_may_be_sent_reaches_the_target_as_sent(
    gateway: Running, target: TargetServer
) -> None:
    """Sec-WebSocket-Protocol may be set; surrounding blanks are not part of a value;
    a non-ASCII path or query is sent %-encoded as UTF-8, as browsers do."""
    async with open_relay(
        gateway.ws_url,
        api_key=KEY,
        url=f"{target.url}/headers?q=ü",
        headers={"Sec-WebSocket-Protocol": "chat", "X-Blank": "  padded\t", "X-Utf8": "日本"},
    ) as relayed:
        seen = json.loads(await relayed.websocket.get_message())
    # (The test target takes Sec-WebSocket-Protocol as a subprotocol offer, not a header.)
    assert seen["headers"]["x-blank"] == "padded"
    assert seen["headers"]["x-utf8"] == "日本"
    assert target.connections[0].query == {"q": "ü"}
    async with open_relay(gateway.ws_url, api_key=KEY, url=f"{target.url}/żółć") as relayed:
        await relayed.websocket.send_message("path")
        assert await relayed.websocket.get_message() == "path"
    assert target.connections[1].path == "/%C5%BC%C3%B3%C5%82%C4%87"


@pytest.mark.parametrize(
    "url",
    [
        "ws://a..b/",
        "ws://-bad.example/",
        "ws://" + "a" * 64 + ".example/",
        "ws://h/\x01",
        "ws://h/\x7f",
        "ws://h/a b",
        "ws://h\ud800/",
        "ws://user:pass@h/",
        "ws://h:99999/",
    ],
)
async def test_urls_that_cannot_be_dialed_are_refused_up_front(gateway: Running, url: str) -> None:
    message, code, _ = await refusal(gateway.ws_url, _message(url))
    assert code == 1008
    assert message is not None
    assert message.startswith("Invalid connect message: url: must be a ws:// or wss:// URL")


async def test_sessions_per_key(nursery: trio.Nursery, target: TargetServer) -> None:
    keys = [KeyConfig(key=KEY, rate=1000, burst=1000, max_sessions=2), KeyConfig(key="other")]
    running = await start_gateway(nursery, make_config(keys=keys))
    slots = running.gateway.slots
    url = f"{target.url}/echo"
    async with open_relay(running.ws_url, api_key=KEY, url=url):
        async with open_relay(running.ws_url, api_key=KEY, url=url):
            message, code, _ = await refusal(running.ws_url, connect_json(url))
            assert (message, code) == ("Too many concurrent sessions for this API key", 1008)
            # Another key is not affected.
            async with open_relay(running.ws_url, api_key="other", url=url) as relayed:
                await relayed.websocket.send_message("other key")
                assert await relayed.websocket.get_message() == "other key"
        await eventually(lambda: slots.held() == 1, "a slot to come back")
        async with open_relay(running.ws_url, api_key=KEY, url=url) as relayed:
            await relayed.websocket.send_message("a slot again")
            assert await relayed.websocket.get_message() == "a slot again"
    await eventually(
        lambda: slots.held() == 0 and not running.gateway.registry.sessions, "all released"
    )


async def test_sessions_in_total(nursery: trio.Nursery, target: TargetServer) -> None:
    running = await start_gateway(nursery, make_config(max_sessions=2))
    url = f"{target.url}/echo"
    # One relaying session and one still in its connect phase fill the gateway.
    async with open_relay(running.ws_url, api_key=KEY, url=url), open_websocket_url(running.ws_url):
        await eventually(lambda: len(running.gateway.registry.sessions) == 2, "two sessions")
        # Refused at once, without waiting for a connect message.
        message, code, reason = await refusal(running.ws_url, None)
        assert (message, code) == ("Server at capacity, try again later", 1013)
        assert reason == message
    await eventually(lambda: len(running.gateway.registry.sessions) == 0, "all sessions released")
    async with open_relay(running.ws_url, api_key=KEY, url=url) as relayed:
        await relayed.websocket.send_message("room again")
        assert await relayed.websocket.get_message() == "room again"


async def test_config_rejects_nonsense_bounds() -> None:
    from relay.config import ConfigError, config_from_dict

    for table, problem in (
        ({"server": {"max_sessions": 0}}, "server.max_sessions: must be >= 1"),
        ({"server": {"max_handshakes": 0}}, "server.max_handshakes: must be >= 1"),
        ({"server": {"max_headers": -1}}, "server.max_headers: must be 0..1000"),
        ({"server": {"max_header_size": 10}}, "server.max_header_size: must be 64..65536"),
        ({"server": {"max_url_length": 5}}, "server.max_url_length: must be 16..65536"),
        ({"keys": [{"key": "k", "max_sessions": 0}]}, "keys[0].max_sessions: must be >= 1"),
    ):
        with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace("]", r"\]")):
            config_from_dict(table)


async def test_over_capacity_refusal_does_not_wait_for_the_client(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    from tests.support.gateway import memory_client, memory_gateway

    gateway = await memory_gateway(make_config(max_sessions=1), TargetServer(), nursery)
    first = await memory_client(gateway, nursery)
    second = await memory_client(gateway, nursery)
    start = trio.current_time()
    answer = json.loads(await second.get_message())
    assert answer == {"type": "error", "message": "Server at capacity, try again later"}
    with pytest.raises(ConnectionClosed) as closed:
        await second.get_message()
    assert closed.value.reason is not None
    assert closed.value.reason.code == 1013
    assert trio.current_time() == start
    await first.aclose()
