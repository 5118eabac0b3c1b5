"""Every validation error: ``ok:false`` naming the problem, and the connection stays open."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio_websocket

from tests.parser_api.parser_fake_marketplace import FakeMarketplace
from tests.parser_api.parser_testkit import Client, ParserServer, start_parser

POSH = {"parser_type": "poshmark"}
DEPOP = {"parser_type": "depop"}


def configure(**payload: Any) -> str:
    return json.dumps({"action": "parser.configure", "payload": payload})


CASES: list[tuple[str, Any, str, str, str]] = [
    # id, raw message, answered action, error code, text the message must contain
    ("bad-json", "{not json", "error", "bad_json", "not valid JSON"),
    ("nan", '{"action": "ping", "payload": {"x": NaN}}', "error", "bad_json", "NaN"),
    ("binary", b'{"action": "ping"}', "error", "bad_request", "binary frames"),
    ("array", "[1, 2]", "error", "bad_request", "must be a JSON object"),
    ("no-action", '{"payload": {}}', "error", "bad_request", "action: required field missing"),
    ("action-not-string", '{"action": 5}', "error", "bad_request", "action: expected a string"),
    (
        "payload-not-object",
        '{"action": "ping", "payload": []}',
        "ping",
        "bad_request",
        "payload: expected an object",
    ),
    (
        "extra-envelope-key",
        '{"action": "ping", "payload": {}, "id": 1}',
        "ping",
        "bad_request",
        "unknown field(s): id",
    ),
    (
        "unknown-action",
        '{"action": "parser.start", "payload": {}}',
        "parser.start",
        "unknown_action",
        "'parser.start'",
    ),
    (
        "fetch-before-configure",
        '{"action": "parser.fetch", "payload": {}}',
        "parser.fetch",
        "not_configured",
        "parser.configure",
    ),
    (
        "fetch-with-fields",
        '{"action": "parser.fetch", "payload": {"n": 1}}',
        "parser.fetch",
        "invalid_payload",
        "unknown field(s): n",
    ),
    (
        "ping-with-fields",
        '{"action": "ping", "payload": {"a": 1}}',
        "ping",
        "invalid_payload",
        "unknown field(s): a",
    ),
    (
        "stats-with-fields",
        '{"action": "stats.me", "payload": {"a": 1}}',
        "stats.me",
        "invalid_payload",
        "unknown field(s): a",
    ),
    (
        "help-with-fields",
        '{"action": "help", "payload": {"a": 1}}',
        "help",
        "invalid_payload",
        "unknown field(s): a",
    ),
    (
        "no-parser-type",
        configure(batch_size=5),
        "parser.configure",
        "invalid_payload",
        "parser_type: required field missing",
    ),
    (
        "unknown-parser-type",
        configure(parser_type="ebay"),
        "parser.configure",
        "invalid_payload",
        "parser_type: must be one of 'poshmark', 'depop'",
    ),
    (
        "parser-type-not-string",
        configure(parser_type=1),
        "parser.configure",
        "invalid_payload",
        "parser_type: must be one of",
    ),
    (
        "batch-zero",
        configure(**POSH, batch_size=0),
        "parser.configure",
        "invalid_payload",
        "batch_size: must be between 1 and 200",
    ),
    (
        "batch-201",
        configure(**DEPOP, batch_size=201),
        "parser.configure",
        "invalid_payload",
        "batch_size: must be between 1 and 200",
    ),
    (
        "batch-string",
        configure(**POSH, batch_size="50"),
        "parser.configure",
        "invalid_payload",
        "batch_size: expected an integer, got a string",
    ),
    (
        "batch-bool",
        configure(**POSH, batch_size=True),
        "parser.configure",
        "invalid_payload",
        "batch_size: expected an integer, got a boolean",
    ),
    (
        "batch-float",
        configure(**POSH, batch_size=2.5),
        "parser.configure",
        "invalid_payload",
        "batch_size: expected an integer",
    ),
    (
        "parsing-mode",
        configure(**POSH, parsing_mode="us"),
        "parser.configure",
        "invalid_payload",
        "parsing_mode: must be one of 'com', 'ca', 'com+ca'",
    ),
    (
        "ads-negative",
        configure(**POSH, ads_count=-1),
        "parser.configure",
        "invalid_payload",
        "ads_count: must be 0..100000",
    ),
    (
        "sales-huge",
        configure(**POSH, sales_count=10**6),
        "parser.configure",
        "invalid_payload",
        "sales_count: must be 0..100000",
    ),
    (
        "both-zero",
        configure(**POSH, ads_count=0, sales_count=0),
        "parser.configure",
        "invalid_payload",
        "sales_count: ads_count and sales_count cannot both be 0",
    ),
    (
        "posh-unknown-field",
        configure(**POSH, country_filter="us"),
        "parser.configure",
        "invalid_payload",
        "unknown field(s): country_filter",
    ),
    (
        "depop-unknown-field",
        configure(**DEPOP, parsing_mode="com"),
        "parser.configure",
        "invalid_payload",
        "unknown field(s): parsing_mode",
    ),
    (
        "country-3-letters",
        configure(**DEPOP, country_filter="usa"),
        "parser.configure",
        "invalid_payload",
        "country_filter: must be an ISO 3166-1 alpha-2",
    ),
    (
        "country-not-iso",
        configure(**DEPOP, country_filter="xx"),
        "parser.configure",
        "invalid_payload",
        "country_filter: must be an ISO 3166-1 alpha-2",
    ),
    (
        "country-number",
        configure(**DEPOP, country_filter=12),
        "parser.configure",
        "invalid_payload",
        "country_filter: expected a string",
    ),
    (
        "min-over-max",
        configure(**DEPOP, min_price=50, max_price=10),
        "parser.configure",
        "invalid_payload",
        "max_price: must be greater than or equal to min_price",
    ),
    (
        "negative-price",
        configure(**DEPOP, min_price=-1),
        "parser.configure",
        "invalid_payload",
        "min_price: must be 0..10000000",
    ),
    (
        "price-string",
        configure(**DEPOP, max_price="10"),
        "parser.configure",
        "invalid_payload",
        "max_price: expected a number",
    ),
    (
        "brand-empty",
        configure(**DEPOP, brand_filter=""),
        "parser.configure",
        "invalid_payload",
        "brand_filter: must be 1..100 characters",
    ),
    (
        "brand-control",
        configure(**DEPOP, brand_filter="a\nb"),
        "parser.configure",
        "invalid_payload",
        "brand_filter: must be 1..100",
    ),
    (
        "query-too-long",
        configure(**POSH, query="x" * 201),
        "parser.configure",
        "invalid_payload",
        "query: must be 1..200",
    ),
    (
        "payload-null",
        '{"action": "parser.configure", "payload": null}',
        "parser.configure",
        "bad_request",
        "payload: expected an object, got null",
    ),
]


@pytest.mark.parametrize(
    ("raw", "action", "code", "text"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
async def test_invalid_requests_get_a_named_error_and_the_connection_stays_open(
    client: Client, raw: Any, action: str, code: str, text: str
) -> None:
    await client.send(raw)
    response = await client.recv()
    assert response["ok"] is False
    assert response["action"] == action
    assert response["data"]["error"]["code"] == code
    assert text in response["data"]["error"]["message"]
    assert (await client.request("ping", {}))["ok"] is True


async def test_several_badly_typed_fields_are_all_named(client: Client) -> None:
    await client.send(configure(**POSH, batch_size="5", parsing_mode=3, ads_count="many"))
    message = (await client.recv())["data"]["error"]["message"]
    for field in ("batch_size", "parsing_mode", "ads_count"):
        assert field in message


async def test_configured_max_batch_is_enforced(
    nursery: trio.Nursery, market: FakeMarketplace
) -> None:
    server = await start_parser(nursery, market, max_batch=20)
    async with trio_websocket.open_websocket_url(server.ws_url()) as ws:
        connection = Client(ws)
        await connection.recv()
        response = await connection.request("parser.configure", {**POSH, "batch_size": 21})
        assert response["data"]["error"]["code"] == "invalid_payload"
        assert "batch_size: must be between 1 and 20" in response["data"]["error"]["message"]
        assert (await connection.request("parser.configure", {**POSH, "batch_size": 20}))[
            "ok"
        ] is True


async def test_oversized_message_is_refused_without_closing(
    nursery: trio.Nursery, market: FakeMarketplace
) -> None:
    server = await start_parser(nursery, market, max_message_size=1024)
    async with trio_websocket.open_websocket_url(server.ws_url()) as ws:
        connection = Client(ws)
        await connection.recv()
        await connection.send(json.dumps({"action": "ping", "payload": {"pad": "é" * 600}}))
        response = await connection.recv()
        assert response["data"]["error"]["code"] == "message_too_large"
        assert "1024 bytes" in response["data"]["error"]["message"]
        assert (await connection.request("ping", {}))["ok"] is True


async def test_a_failed_configure_keeps_the_previous_one(
    client: Client, parser: ParserServer
) -> None:
    await client.request("parser.configure", {**POSH, "batch_size": 3})
    bad = await client.request("parser.configure", {**POSH, "batch_size": 0})
    assert bad["ok"] is False
    batch = await client.request("parser.fetch", {})
    assert batch["data"]["count"] == 3
