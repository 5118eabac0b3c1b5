"""Connect-time behaviour over real sockets: greeting, 4401, 1013, paths, lifespan."""

from __future__ import annotations

import hashlib
import json
import logging
import re

import httpx
import hypercorn.trio
import pytest
import trio
import trio_websocket

from parser_api.app import create_app
from parser_api.sources.http import Route
from tests.parser_api.parser_fake_marketplace import FakeMarketplace
from tests.parser_api.parser_testkit import (
    TOKEN,
    ParserServer,
    hypercorn_config,
    make_config,
    serve,
    start_parser,
    wait_until,
)
from ws_gateway.errors import ConnectionClosedError, HandshakeError
from ws_gateway.websocket import WebSocket

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


async def close_code(url: str, headers: list[tuple[bytes, bytes]] | None = None) -> int | None:
    """Connect, and return the close code the server ends the connection with.

    Uses the SDK's small client: trio-websocket 0.12 leaves its socket unclosed
    when the server closes right after the upgrade.
    """
    ws = await WebSocket.connect(url, headers=headers or ())
    try:
        with trio.fail_after(10), pytest.raises(ConnectionClosedError) as caught:
            await ws.receive_text()
    finally:
        await ws.close()
    return caught.value.code


async def greeting(url: str, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, object]:
    async with trio_websocket.open_websocket_url(url, extra_headers=headers) as ws:
        with trio.fail_after(10):
            result: dict[str, object] = json.loads(await ws.get_message())
    return result


async def test_greeting_shape(parser: ParserServer) -> None:
    message = await greeting(parser.ws_url())
    assert message["ok"] is True
    assert message["action"] == "connected"
    assert TS.match(str(message["ts"]))
    data = message["data"]
    assert isinstance(data, dict)
    assert data["protocol"] == "parser-ws/2.0"
    assert re.match(r"^[0-9a-f]{24}$", data["conn_id"])
    assert set(message) == {"ok", "action", "ts", "data"}


async def test_header_token_is_accepted(parser: ParserServer) -> None:
    message = await greeting(parser.ws_url(None), [(b"X-Admin-Token", TOKEN.encode())])
    assert message["action"] == "connected"


@pytest.mark.parametrize(
    ("query_token", "header_token"),
    [
        (None, None),  # missing entirely
        ("wrong-token", None),  # wrong in the query
        ("", None),  # empty in the query
        (None, "wrong-token"),  # wrong in the header
        (TOKEN[:-1], None),  # a prefix is not the token
        ("wrong-token", TOKEN),  # the query takes precedence over the header
    ],
)
async def test_missing_or_wrong_token_closes_with_4401(
    parser: ParserServer, query_token: str | None, header_token: str | None
) -> None:
    headers = [(b"X-Admin-Token", header_token.encode())] if header_token is not None else None
    assert await close_code(parser.ws_url(query_token), headers) == 4401


async def test_token_never_appears_in_logs(
    parser: ParserServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_attempt = "my-secret-guess-123"
    assert await close_code(parser.ws_url(secret_attempt)) == 4401
    assert (await greeting(parser.ws_url()))["action"] == "connected"
    # Only the server's records: the test's own client library logs the URLs it dials.
    server_text = "\n".join(
        record.getMessage()
        for record in caplog.records
        if not record.name.startswith("trio-websocket")
    )
    assert "refused: missing or wrong token" in server_text  # the refusal was logged...
    assert secret_attempt not in server_text  # ...without either token
    assert TOKEN not in server_text


async def test_sha256_token_config(nursery: trio.Nursery, market: FakeMarketplace) -> None:
    digest = hashlib.sha256(b"hashed-secret").hexdigest()
    server = await start_parser(nursery, market, admin_token=None, admin_token_sha256=digest)
    assert (await greeting(server.ws_url("hashed-secret")))["action"] == "connected"
    assert await close_code(server.ws_url(digest)) == 4401  # the digest itself is not a token


async def test_eleventh_connection_gets_1013_and_a_slot_frees(parser: ParserServer) -> None:
    async with trio.open_nursery() as nursery:
        sockets = []
        for _ in range(10):
            ws = await trio_websocket.connect_websocket_url(nursery, parser.ws_url())
            assert (await ws.get_message()).startswith('{"ok":true,"action":"connected"')
            sockets.append(ws)
        assert parser.app.active == 10
        assert await close_code(parser.ws_url()) == 1013
        # Wrong token while full is still 4401: authentication comes first.
        assert await close_code(parser.ws_url("nope")) == 4401
        await sockets.pop().aclose()
        await wait_until(lambda: parser.app.active == 9)
        message = await greeting(parser.ws_url())
        assert message["action"] == "connected"
        for ws in sockets:
            await ws.aclose()
    await wait_until(lambda: parser.app.active == 0)


async def test_connection_limit_is_configurable(
    nursery: trio.Nursery, market: FakeMarketplace
) -> None:
    server = await start_parser(nursery, market, max_connections=1)
    async with trio_websocket.open_websocket_url(server.ws_url()) as ws:
        await ws.get_message()
        assert await close_code(server.ws_url()) == 1013


async def test_other_paths_and_plain_http_are_refused(parser: ParserServer) -> None:
    with pytest.raises(HandshakeError) as refused:
        await WebSocket.connect(parser.http_base.replace("http", "ws") + "/ws/other")
    assert refused.value.status == 403
    async with httpx.AsyncClient() as http:
        upgrade = await http.get(parser.http_base + "/ws/parser")
        missing = await http.get(parser.http_base + "/metrics")
    assert upgrade.status_code == 426
    assert missing.status_code == 404


async def test_lifespan_startup_and_shutdown_complete(market: FakeMarketplace) -> None:
    """Hypercorn runs the lifespan protocol; serving and stopping must both succeed."""
    app = create_app(make_config(market))
    stop = trio.Event()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                lambda task_status: hypercorn.trio.serve(
                    app, hypercorn_config(), shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            message = await greeting(binds[0].replace("http", "ws") + f"/ws/parser?token={TOKEN}")
            assert message["action"] == "connected"
            stop.set()
    assert app.client.closed  # lifespan.shutdown closed the upstream pool


async def test_a_disconnect_cancels_a_pending_fetch(parser: ParserServer) -> None:
    parser.market.delay["com"] = 60.0  # the marketplace hangs
    async with trio_websocket.open_websocket_url(parser.ws_url()) as ws:
        await ws.get_message()
        await ws.send_message(
            '{"action": "parser.configure", "payload": {"parser_type": "poshmark"}}'
        )
        await ws.get_message()
        await ws.send_message('{"action": "parser.fetch", "payload": {}}')
        await wait_until(lambda: parser.market.count("com") == 1)
    # Long before the marketplace would answer, the session is gone.
    await wait_until(lambda: parser.app.active == 0)


async def test_shutdown_closes_sessions_with_1001(parser: ParserServer) -> None:
    ws = await WebSocket.connect(parser.ws_url())
    try:
        await ws.receive_text()  # the greeting
        # The client reads (and answers the close) while the server shuts down:
        # shutdown() waits for each session's close handshake.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(parser.app.shutdown)
            with trio.fail_after(10), pytest.raises(ConnectionClosedError) as caught:
                await ws.receive_text()
    finally:
        await ws.close()
    assert caught.value.code == 1001
    assert parser.app.active == 0
    assert parser.app.client.closed
    assert await close_code(parser.ws_url()) == 1001  # and no new sessions


async def test_egress_hook_chooses_the_route_of_every_request(
    nursery: trio.Nursery, market: FakeMarketplace
) -> None:
    asked: list[str | None] = []

    def egress(country: str | None) -> Route | None:
        asked.append(country)
        return Route(local_address="127.0.0.5") if country == "GB" else None

    app = create_app(make_config(market), egress=egress)
    base = await serve(nursery, app)
    url = base.replace("http", "ws") + f"/ws/parser?token={TOKEN}"
    async with trio_websocket.open_websocket_url(url) as ws:
        await ws.get_message()
        for payload in (
            '{"parser_type": "depop", "country_filter": "gb", "batch_size": 2}',
            '{"parser_type": "poshmark", "parsing_mode": "com+ca", "batch_size": 4}',
        ):
            await ws.send_message(f'{{"action": "parser.configure", "payload": {payload}}}')
            await ws.get_message()
            await ws.send_message('{"action": "parser.fetch", "payload": {}}')
            assert '"count":' in await ws.get_message()
    # Asked for every request (so an agent's failover takes effect at once), in order.
    assert len(asked) == len(market.requests)
    assert [c for c, r in zip(asked, market.requests, strict=True) if r.domain == "depop"] == [
        "GB"
    ] * market.count("depop")
    assert {c for c, r in zip(asked, market.requests, strict=True) if r.domain != "depop"} == {
        "US",
        "CA",
    }
    depop_peers = {r.peer for r in market.requests if r.domain == "depop"}
    assert depop_peers == {"127.0.0.5"}
