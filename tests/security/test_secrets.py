"""Secrets never leave: API keys (plain or hashed), the client's header and cookie
values and tokens in target URLs appear in no log record (at DEBUG), no error
message or close reason, no HTTP endpoint's output, and no repr."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from urllib.parse import quote

import attrs
import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from relay.auth import KeyStore
from relay.client import open_relay
from relay.config import KeyConfig, TargetsConfig
from relay.wire.connect import parse_connect_message
from tests.support import wsp
from tests.support.conditions import eventually
from tests.support.gateway import Running, make_config, refusal, start_gateway
from tests.support.target import TargetServer

PLAIN_KEY = "sk-PLAIN-4f1d2a"
HASHED_KEY = "sk-HASHED-9c8b7a"
LIMITED_KEY = "sk-LIMITED-77e1"
WRONG_KEY = "sk-WRONG-5e5e5e"
HEADER_SECRET = "Bearer HDR-SECRET-1a2b"
COOKIE_SECRET = "CK-SECRET-3c4d"
URL_TOKEN = "URL-TOKEN-5e6f"
SECRETS = [PLAIN_KEY, HASHED_KEY, LIMITED_KEY, WRONG_KEY, HEADER_SECRET, COOKIE_SECRET, URL_TOKEN]
# Loggers of the clients the test itself runs (httpx logs every URL it requests).
CLIENT_LOGGERS = ("httpx", "httpcore", "trio-websocket", "trio_websocket")
# Parts of the secrets too, in case something cuts them.
FRAGMENTS = ["4f1d2a", "9c8b7a", "77e1", "5e5e5e", "HDR-SECRET", "CK-SECRET", "URL-TOKEN"]


def _leaks(texts: Iterable[str | None]) -> list[str]:
    return [
        f"{fragment!r} in {text[:200]!r}"
        for text in texts
        if text
        for fragment in FRAGMENTS
        if fragment in text
    ]


@pytest.fixture
async def secret_gateway(nursery: trio.Nursery) -> Running:
    keys = [
        KeyConfig(key=PLAIN_KEY, rate=1000, burst=1000, name="plain"),
        KeyConfig(key_sha256=hashlib.sha256(HASHED_KEY.encode()).hexdigest(), rate=1000),
        KeyConfig(key=LIMITED_KEY, rate=0, burst=1, max_sessions=1),
    ]
    targets = TargetsConfig(allow_private=True, deny=("10.0.0.0/8",))
    config = attrs.evolve(make_config(keys=keys), targets=targets)
    return await start_gateway(nursery, config)


def _message(url: str, key: str = PLAIN_KEY, **fields: object) -> str:
    return json.dumps({"apiKey": key, "url": url, **fields})


async def _session_flows(running: Running, target: TargetServer) -> list[str | None]:
    """Successful, refused and broken sessions carrying every secret; returns what
    the clients were told (error messages and close reasons)."""
    told: list[str | None] = []
    url = f"{target.url}/headers?token={URL_TOKEN}"
    secret_headers = {"Authorization": HEADER_SECRET}
    secret_cookies = {"session": COOKIE_SECRET}
    # Relayed end to end (the target does see them: that is the point).
    for key in (PLAIN_KEY, HASHED_KEY):
        async with open_relay(
            running.ws_url, api_key=key, url=url, headers=secret_headers, cookies=secret_cookies
        ) as relayed:
            seen = json.loads(await relayed.websocket.get_message())
            assert seen["headers"]["authorization"] == HEADER_SECRET
    # Refused, each with secrets in the request.
    bad = [
        _message(url, key=WRONG_KEY, headers=secret_headers),
        _message(url, headers={"Authorization": HEADER_SECRET + "\r\nX: y"}),
        _message(url, headers={"Host": HEADER_SECRET}),
        _message(url, headers={"X-Big": HEADER_SECRET * 1000}),
        _message(url, cookies={"session": COOKIE_SECRET + ";"}),
        _message(url, cookies={"session": COOKIE_SECRET * 1000}),
        _message(url, headers={"Authorization": 12}, cookies=secret_cookies),
        _message(f"ws://h/{URL_TOKEN}#{URL_TOKEN}", headers=secret_headers),
        _message(f"ws://user:{URL_TOKEN}@h/", cookies=secret_cookies),
        _message(f"{target.url}/reject?status=403&token={URL_TOKEN}", headers=secret_headers),
        _message(f"ws://127.0.0.1:1/?token={URL_TOKEN}", headers=secret_headers),
        _message(f"ws://10.1.2.3/?token={URL_TOKEN}", headers=secret_headers),
        f'{{"apiKey": "{PLAIN_KEY}", "url": "{url}", "headers": {{"A": "{HEADER_SECRET}"',
        json.dumps({"apiKey": PLAIN_KEY, "url": url, "idle_timeout": HEADER_SECRET}),
        json.dumps([PLAIN_KEY, HEADER_SECRET]),
    ]
    for first in bad:
        message, _code, reason = await refusal(running.ws_url, first)
        told += [message, reason]
    # The query-string form.
    query = f"?apiKey={PLAIN_KEY}&url={quote(url, safe='')}&header=" + quote(
        f"Authorization: {HEADER_SECRET}"
    )
    for extra in (
        "&connected=maybe",
        f"&idle_timeout={COOKIE_SECRET}",
        f"&cookie=a={COOKIE_SECRET};",
    ):
        message, _code, reason = await refusal(running.ws_url + query + extra, None)
        told += [message, reason]
    # Rate limit and the per-key session limit.
    async with open_relay(running.ws_url, api_key=LIMITED_KEY, url=f"{target.url}/echo"):
        message, _code, reason = await refusal(running.ws_url, _message(url, key=LIMITED_KEY))
        told += [message, reason]
    message, _code, reason = await refusal(running.ws_url, _message(url, key=LIMITED_KEY))
    told += [message, reason]
    # A client that drops mid-session, and one that breaks the protocol.
    client = await wsp.connect(running.ws_url)
    await client.send(wsp.TextMessage(_message(url, headers=secret_headers)))
    assert json.loads(str(await client.next_message()))["type"] == "connected"
    await trio.aclose_forcefully(client.stream)
    raw = await wsp.connect(running.ws_url)
    await raw.send(wsp.TextMessage(_message(f"{target.url}/echo", cookies=secret_cookies)))
    assert json.loads(str(await raw.next_message()))["type"] == "connected"
    await raw.send_raw(b"\x81\x05hello")  # unmasked: a protocol error
    event = await raw.next_event()
    assert isinstance(event, wsp.CloseConnection)
    told.append(event.reason)
    return told


async def _http_outputs(running: Running) -> list[str]:
    base = running.address.http_url
    out: list[str] = []
    async with httpx.AsyncClient() as http:
        for method, path in (
            ("GET", "/healthz"),
            ("GET", "/ws/docs"),
            ("GET", "/metrics"),
            ("GET", "/playground"),
            ("GET", f"/nope?apiKey={PLAIN_KEY}"),
            ("POST", "/healthz"),
            ("GET", f"/ws?apiKey={PLAIN_KEY}&header=Authorization:{HEADER_SECRET}"),
        ):
            response = await http.request(
                method, base + path, headers={"Authorization": HEADER_SECRET}
            )
            out.append(f"{response.status_code} {response.headers} {response.text}")
    stream = await trio.open_tcp_stream("127.0.0.1", running.address.port)
    await stream.send_all(f"\x16{PLAIN_KEY} {HEADER_SECRET}\r\n\r\n".encode())
    answer = b""
    while chunk := await stream.receive_some():
        answer += chunk
    out.append(answer.decode("latin-1"))
    return out


async def test_secrets_appear_in_no_log_error_or_endpoint(
    secret_gateway: Running, target: TargetServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    told = await _session_flows(secret_gateway, target)
    http = await _http_outputs(secret_gateway)
    # Every session has ended (and logged its end) before the logs are read.
    stats = secret_gateway.gateway.registry.stats
    await eventually(lambda: stats.sessions_active == 0, "every session to end")
    assert sum(stats.outcomes.values()) == stats.sessions_started
    # Everything the process logged, except the test's own HTTP and WebSocket clients.
    server_side = [
        record for record in caplog.records if not record.name.startswith(CLIENT_LOGGERS)
    ]
    assert {record.name for record in server_side} >= {"relay.session", "relay.targets"}
    records = [f"{record.getMessage()} {record.exc_text or ''}" for record in server_side]
    records += [repr(record.args) for record in server_side]
    assert _leaks(records) == []
    assert len([t for t in told if t]) > 30
    assert _leaks(told) == []
    assert _leaks(http) == []


def test_secrets_are_not_in_reprs() -> None:
    request = parse_connect_message(
        _message(
            f"wss://h.example/stream?token={URL_TOKEN}",
            headers={"Authorization": HEADER_SECRET},
            cookies={"session": COOKIE_SECRET},
        )
    )
    keys = [KeyConfig(key=PLAIN_KEY), KeyConfig(key_sha256=hashlib.sha256(b"x").hexdigest())]
    config = make_config(keys=keys)
    texts = [repr(request), str(request), repr(request.target), repr(config), repr(keys)]
    texts.append(repr(KeyStore(keys).lookup(PLAIN_KEY)))
    assert _leaks(texts) == []


async def test_close_reasons_cut_to_fit_carry_no_secret(secret_gateway: Running) -> None:
    """The close reason repeats the error message; a long one is cut, never widened."""
    long_name = "X-" + "n" * 200
    message, code, reason = await refusal(
        secret_gateway.ws_url, _message("ws://h/", headers={long_name: HEADER_SECRET, "Host": "x"})
    )
    assert code == 1008
    assert reason is not None
    assert len(reason.encode()) <= 123
    assert _leaks([message, reason]) == []


async def test_connection_closed_reason_of_a_session_never_echoes_input(
    secret_gateway: Running,
) -> None:
    async with open_websocket_url(secret_gateway.ws_url) as ws:
        await ws.send_message(_message("http://not-ws/", headers={"A": HEADER_SECRET}))
        answer = json.loads(await ws.get_message())
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason is not None
    assert _leaks([answer["message"], closed.value.reason.reason]) == []
