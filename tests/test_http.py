"""Everything on the port that is not a relay session: the query-string form,
/ws/docs, /healthz, plain HTTP to /ws, garbage, and isolation between clients."""

from __future__ import annotations

import json
from urllib.parse import quote

import attrs
import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from parser_api.config import ParserConfig
from relay.client import open_relay
from tests.support import wsp
from tests.support.gateway import KEY, Running, make_config, start_gateway
from tests.support.target import TargetServer


def _query(target: TargetServer, path: str = "/echo", **extra: str) -> str:
    parts = [f"apiKey={KEY}", f"url={quote(target.url + path, safe='')}"]
    parts += [f"{name}={quote(value, safe='')}" for name, value in extra.items()]
    return "?" + "&".join(parts)


async def test_query_string_form_sends_connected_first(
    gateway: Running, target: TargetServer
) -> None:
    async with open_websocket_url(gateway.ws_url + _query(target, idle_timeout="30")) as ws:
        assert json.loads(await ws.get_message()) == {
            "type": "connected",
            "status": 101,
            "node_id": "relay-local",
        }
        await ws.send_message(b"\x00binary")
        assert await ws.get_message() == b"\x00binary"


async def test_query_string_form_without_connected(gateway: Running, target: TargetServer) -> None:
    async with open_websocket_url(gateway.ws_url + _query(target, connected="false")) as ws:
        await ws.send_message("first")
        assert await ws.get_message() == "first"


async def test_query_string_headers_and_cookies(gateway: Running, target: TargetServer) -> None:
    query = (
        _query(target, "/headers", connected="0")
        + "&header="
        + quote("X-Token: abc")
        + ("&cookie=" + quote("sid=42") + "&cookie=" + quote("lang=en"))
    )
    async with open_websocket_url(gateway.ws_url + query) as ws:
        seen = json.loads(await ws.get_message())
    assert seen["headers"]["x-token"] == "abc"
    assert seen["headers"]["cookie"] == "sid=42; lang=en"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"idle_timeout": "soon"}, "idle_timeout: expected a number, got a string"),
        ({"idle_timeout": "-2"}, "idle_timeout: must be >= 0"),
        ({"geo": "Germany"}, "geo: must be comma-separated two-letter ISO codes"),
        ({"connected": "maybe"}, "connected: expected true or false"),
    ],
)
async def test_query_string_validation(
    gateway: Running, target: TargetServer, extra: dict[str, str], expected: str
) -> None:
    async with open_websocket_url(gateway.ws_url + _query(target, **extra)) as ws:
        message = json.loads(await ws.get_message())["message"]
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert expected in message
    assert closed.value.reason is not None
    assert closed.value.reason.code == 1008


async def test_query_string_bad_key(gateway: Running, target: TargetServer) -> None:
    query = _query(target).replace(f"apiKey={KEY}", "apiKey=nope")
    async with open_websocket_url(gateway.ws_url + query) as ws:
        assert json.loads(await ws.get_message())["message"] == "Invalid or missing API key"


async def test_ws_docs_describes_the_protocol(gateway: Running) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(gateway.address.http_url + "/ws/docs")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    doc = response.json()
    assert doc["type"] == "connected"
    assert doc["status"] == 101
    assert doc["node_id"] == "relay-local"
    assert doc["message"].endswith(gateway.ws_url)
    protocol = doc["protocol"]
    assert protocol["websocket_url"] == gateway.ws_url
    fields = {f["name"]: f for f in protocol["connect_message"]["fields"]}
    assert set(fields) == {
        "apiKey",
        "url",
        "headers",
        "cookies",
        "geo",
        "agent",
        "idle_timeout",
        "impersonate",
    }
    assert fields["idle_timeout"] == {
        "name": "idle_timeout",
        "type": "float",
        "required": False,
        "default": 0.0,
        "description": fields["idle_timeout"]["description"],
    }
    assert fields["url"]["required"] is True
    assert fields["apiKey"]["required"] is True
    assert set(protocol["close_codes"]) >= {"1000", "1008", "1009", "1011"}


async def test_healthz_and_unknown_paths(gateway: Running) -> None:
    async with httpx.AsyncClient() as client:
        health = await client.get(gateway.address.http_url + "/healthz")
        missing = await client.get(gateway.address.http_url + "/nope")
        plain_ws = await client.get(gateway.address.http_url + "/ws")
        post = await client.post(gateway.address.http_url + "/healthz")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert body["agents"] == [
        {
            "slug": "local",
            "country": None,
            "node_id": "relay-local",
            "kind": "direct",
            "healthy": True,
        }
    ]
    assert missing.status_code == 404
    assert plain_ws.status_code == 426
    assert plain_ws.headers["sec-websocket-version"] == "13"
    assert post.status_code == 405


async def test_bad_upgrade_requests(gateway: Running) -> None:
    port = gateway.address.port
    cases = {
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n": b"426",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n": b"400",
        b"\x16\x03\x01garbage that is not HTTP\r\n\r\n": b"400",
    }
    for request, status in cases.items():
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(request)
        answer = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                answer += chunk
        assert answer.split(b" ")[1] == status
        await stream.aclose()


async def test_garbage_does_not_disturb_other_sessions(
    gateway: Running, target: TargetServer
) -> None:
    async with open_relay(gateway.ws_url, api_key=KEY, url=f"{target.url}/echo") as relayed:
        for junk in (b"\x00" * 5000, b"GET / HTTP/9.9\r\n\r\n", b"\xff\xfe" * 100):
            stream = await trio.open_tcp_stream("127.0.0.1", gateway.address.port)
            await stream.send_all(junk)
            with trio.fail_after(5):
                while await stream.receive_some():
                    pass
            await stream.aclose()
        raw = await wsp.connect(gateway.ws_url)  # a session that then breaks the protocol
        await raw.send_raw(b"\x81\x05hello")  # unmasked
        await relayed.websocket.send_message("unaffected")
        assert await relayed.websocket.get_message() == "unaffected"


async def _raw_answer(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(request)
    answer = b""
    while chunk := await stream.receive_some():
        answer += chunk
    await stream.aclose()
    return answer


def _upgrade(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    ).encode()


@pytest.fixture
async def with_parser(nursery: trio.Nursery) -> Running:
    """A gateway that also serves the parser API."""
    config = attrs.evolve(make_config(), parser=ParserConfig(admin_token="pa-test-token"))
    return await start_gateway(nursery, config)


@pytest.mark.parametrize("path", ["/ws/", "/wss", "/ws/parserx", "/"])
async def test_a_websocket_upgrade_to_an_unknown_path_names_the_endpoints(
    with_parser: Running, path: str
) -> None:
    answer = await _raw_answer(with_parser.address.port, _upgrade(path))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404")
    assert body == f"No WebSocket endpoint at {path}; endpoints: /ws, /ws/parser\n".encode()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /ws/docs HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /playground HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /ws/parser HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        _upgrade("/ws/"),
        _upgrade("/ws").replace(b"Version: 13", b"Version: 8"),
    ],
)
async def test_no_response_repeats_a_header(with_parser: Running, request_bytes: bytes) -> None:
    answer = await _raw_answer(with_parser.address.port, request_bytes)
    head = answer.partition(b"\r\n\r\n")[0]
    names = [line.split(b":")[0].lower() for line in head.split(b"\r\n")[1:]]
    assert names, answer
    assert len(names) == len(set(names)), head.decode("latin-1")
