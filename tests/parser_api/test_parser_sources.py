"""The sources end to end: parser server ↔ fake marketplace, both over real loopback HTTP."""

from __future__ import annotations

import socket
from typing import Any

import trio
import trio_websocket

from tests.parser_api.parser_fake_marketplace import FakeMarketplace
from tests.parser_api.parser_testkit import Client, ParserServer, start_parser


async def fetch_all(client: Client, limit: int = 50) -> list[dict[str, Any]]:
    """Fetch until ``count: 0``; returns every response."""
    responses = []
    for _ in range(limit):
        response = await client.request("parser.fetch", {})
        assert response["ok"] is True, response
        responses.append(response)
        if response["data"]["count"] == 0:
            return responses
    raise AssertionError("never exhausted")


def items_of(responses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for response in responses for item in response["data"]["items"]]


async def test_batches_have_the_requested_size_and_page_to_exhaustion(
    client: Client, market: FakeMarketplace
) -> None:
    await client.request("parser.configure", {"parser_type": "poshmark", "batch_size": 7})
    responses = await fetch_all(client)
    counts = [r["data"]["count"] for r in responses]
    assert counts == [7] * 8 + [4, 0]  # 60 valid listings on .com, 7 at a time
    assert [len(r["data"]["items"]) for r in responses] == counts
    last = responses[-1]["data"]
    assert last == {"parser_type": "poshmark", "count": 0, "items": [], "exhausted": True}
    assert all(r["data"]["exhausted"] is False for r in responses[:-2])
    ids = [item["id"] for item in items_of(responses)]
    assert ids == [f"com-a{i:03d}" for i in range(60)]  # in order, none twice, broken one skipped
    assert all(
        item["status"] == "available" and item["site"] == "com" for item in items_of(responses)
    )
    # Upstream: 7 pages of 10, each after the first sent with the previous page's max_id.
    requests = [r for r in market.requests if r.domain == "com"]
    assert len(requests) == 7
    assert "max_id" not in requests[0].posh_request
    assert all("max_id" in r.posh_request for r in requests[1:])
    assert all(r.posh_request["filters"]["inventory_status"] == ["available"] for r in requests)
    assert all(r.posh_request["experience"] == "all" for r in requests)
    # Still answering after exhaustion.
    again = await client.request("parser.fetch", {})
    assert again["data"]["count"] == 0
    assert again["data"]["exhausted"] is True


async def test_ads_and_sales_counts_are_collected_in_total(
    client: Client, market: FakeMarketplace
) -> None:
    await client.request(
        "parser.configure",
        {"parser_type": "poshmark", "batch_size": 8, "ads_count": 15, "sales_count": 5},
    )
    responses = await fetch_all(client)
    assert [r["data"]["count"] for r in responses] == [8, 8, 4, 0]
    items = items_of(responses)
    assert sum(item["status"] == "available" for item in items) == 15
    assert sum(item["status"] == "sold" for item in items) == 5
    assert all(item["id"].startswith("com-s") for item in items if item["status"] == "sold")
    statuses = {r.posh_request["filters"]["inventory_status"][0] for r in market.requests}
    assert statuses == {"available", "sold_out"}
    assert items[1]["status"] == "sold"  # both kinds fill up together, not one after the other


async def test_com_plus_ca_merges_both_domains_without_duplicates(
    client: Client, market: FakeMarketplace
) -> None:
    await client.request(
        "parser.configure", {"parser_type": "poshmark", "batch_size": 50, "parsing_mode": "com+ca"}
    )
    responses = await fetch_all(client)
    items = items_of(responses)
    ids = [item["id"] for item in items]
    assert len(ids) == len(set(ids)) == 80  # 60 on .com + 25 on .ca, 5 of them cross-listed
    assert [item["site"] for item in items[:4]] == ["com", "ca", "com", "ca"]
    ca_items = [item for item in items if item["site"] == "ca"]
    assert len(ca_items) >= 20
    assert all(item["currency"] == "CAD" and item["country"] == "CA" for item in ca_items)
    assert all(item["url"].startswith(market.url("ca") + "/listing/") for item in ca_items)
    assert {r.domain for r in market.requests} == {"com", "ca"}


async def test_ca_only(client: Client, market: FakeMarketplace) -> None:
    await client.request(
        "parser.configure", {"parser_type": "poshmark", "parsing_mode": "ca", "batch_size": 100}
    )
    response = await client.request("parser.fetch", {})
    assert response["data"]["count"] == 25
    assert {item["site"] for item in response["data"]["items"]} == {"ca"}
    assert {r.domain for r in market.requests} == {"ca"}


async def test_depop_filters_are_sent_upstream_and_respected(
    client: Client, market: FakeMarketplace
) -> None:
    # The fake ignores brand and price, so only the parser's own checks keep mismatches out.
    await client.request(
        "parser.configure",
        {"parser_type": "depop", "batch_size": 50, "country_filter": "GB", "min_price": 20,
         "max_price": 150, "brand_filter": "nike"},
    )  # fmt: skip
    responses = await fetch_all(client)
    items = items_of(responses)
    expected = [
        p for p in market.depop
        if p["country"] == "GB" and p["brand_name"] == "Nike"
        and 20 <= float(p["pricing"]["discounted_price"]["total_price"]) <= 150
    ]  # fmt: skip
    assert [item["id"] for item in items] == [str(p["id"]) for p in expected]
    assert items, "the filters must leave something to check"
    for item in items:
        assert item["brand"] == "Nike"
        assert item["country"] == "GB"
        assert 20 <= item["price"] <= 150
        assert item["marketplace"] == "depop"
        assert item["url"].startswith(market.url("depop") + "/products/")
    requests = [r for r in market.requests if r.domain == "depop"]
    assert len(requests) == 5  # 40 GB products, 8 per page
    for request in requests:
        assert request.path == "/presentation/api/v1/search/products/"
        assert request.params["country"] == "gb"
        assert request.params["currency"] == "GBP"
        assert request.params["priceMin"] == "20"
        assert request.params["priceMax"] == "150"
        # Depop takes brand ids; the first search for a brand has none yet, so it
        # searches the name as words and checks the brand on each item.
        assert request.params["what"] == "nike"
        assert "brandIds" not in request.params
    assert "after" not in requests[0].params
    assert all("after" in r.params for r in requests[1:])
    stats = (await client.request("stats.me", {}))["data"]
    assert stats["upstream"]["filtered"] == 40 - len(expected)
    # The results taught the process Nike's id: the next search sends it.
    await client.request(
        "parser.configure",
        {"parser_type": "depop", "batch_size": 50, "country_filter": "GB", "min_price": 20,
         "max_price": 150, "brand_filter": "NIKE"},
    )  # fmt: skip
    await client.request("parser.fetch", {})
    later = [r for r in market.requests if r.domain == "depop"][len(requests) :]
    assert later
    assert {r.params.get("brandIds") for r in later} == {"7"}
    assert all("what" not in r.params for r in later)


async def test_depop_upstream_filtering_is_respected_too(
    client: Client, market: FakeMarketplace
) -> None:
    market.depop_applies_filters = True
    await client.request(
        "parser.configure",
        {"parser_type": "depop", "batch_size": 30, "max_price": 50, "brand_filter": "Adidas"},
    )
    items = items_of(await fetch_all(client))
    assert items
    assert all(item["brand"] == "Adidas" for item in items)
    assert all(item["price"] <= 50 for item in items)


async def test_429_then_success_honours_retry_after(
    client: Client, market: FakeMarketplace
) -> None:
    await client.request("parser.configure", {"parser_type": "depop", "batch_size": 5})
    market.fail("depop", (429, {"Retry-After": "1"}, b'{"error":"slow down"}'))
    start = trio.current_time()
    response = await client.request("parser.fetch", {})
    assert trio.current_time() - start >= 0.9  # waited as told
    assert response["ok"] is True
    assert response["data"]["count"] == 5
    assert market.count("depop") == 2


async def test_403_is_reported_once_and_the_connection_recovers(
    client: Client, market: FakeMarketplace
) -> None:
    await client.request("parser.configure", {"parser_type": "depop", "batch_size": 5})
    market.fail("depop", (403, {}, b"<html>blocked</html>"))
    response = await client.request("parser.fetch", {})
    assert response["ok"] is False
    assert response["action"] == "parser.fetch"
    error = response["data"]["error"]
    assert error["code"] == "upstream_blocked"
    assert error["upstream_status"] == 403
    assert "403" in error["message"]
    assert market.count("depop") == 1  # no retry loop on 403
    assert (await client.request("ping", {}))["ok"] is True
    recovered = await client.request("parser.fetch", {})
    assert recovered["ok"] is True
    assert recovered["data"]["count"] == 5
    stats = (await client.request("stats.me", {}))["data"]
    assert stats["errors"] == 1
    assert stats["batches"] == 1


async def test_500_after_retries_is_an_error_and_no_item_is_lost(
    client: Client, market: FakeMarketplace
) -> None:
    await client.request("parser.configure", {"parser_type": "poshmark", "batch_size": 15})
    first = await client.request("parser.fetch", {})
    assert first["data"]["count"] == 15
    market.fail("com", *[(500, {}, b"oops")] * 3)  # max_retries=2: three attempts
    failed = await client.request("parser.fetch", {})
    assert failed["ok"] is False
    assert failed["data"]["error"]["code"] == "upstream_error"
    assert failed["data"]["error"]["upstream_status"] == 500
    second = await client.request("parser.fetch", {})
    assert second["ok"] is True
    assert second["data"]["count"] == 15
    ids = [item["id"] for item in first["data"]["items"] + second["data"]["items"]]
    assert ids == [f"com-a{i:03d}" for i in range(30)]


async def test_malformed_bodies_are_reported(client: Client, market: FakeMarketplace) -> None:
    await client.request("parser.configure", {"parser_type": "poshmark", "batch_size": 5})
    market.fail("com", (200, {}, b"<html>captcha</html>"), (200, {}, b'{"data": "nope"}'))
    for _ in range(2):
        response = await client.request("parser.fetch", {})
        assert response["data"]["error"]["code"] == "upstream_bad_response"
    assert market.count("com") == 2  # a bad body is not retried
    assert (await client.request("parser.fetch", {}))["data"]["count"] == 5


async def test_an_error_body_with_status_200_is_an_upstream_error(
    client: Client, market: FakeMarketplace
) -> None:
    await client.request("parser.configure", {"parser_type": "poshmark", "batch_size": 5})
    body = b'{"error": {"statusCode": 400, "errorType": "InvalidParameter", '
    body += b'"statusMessage": "Invalid request parameter"}}'
    market.fail("com", (200, {}, body))
    response = await client.request("parser.fetch", {})
    assert response["ok"] is False
    error = response["data"]["error"]
    assert error["code"] == "upstream_error"
    assert "Invalid request parameter" in error["message"]
    assert error["upstream_status"] == 200
    # Not the end of the feed: the same page is asked for again and paging goes on.
    again = await client.request("parser.fetch", {})
    assert again["data"]["count"] == 5
    assert again["data"]["exhausted"] is False
    assert market.count("com") == 2


async def test_unreachable_marketplace(nursery: trio.Nursery, market: FakeMarketplace) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    from parser_api.config import DepopSourceConfig

    server = await start_parser(nursery, market, depop=DepopSourceConfig(base_url=dead))
    async with trio_websocket.open_websocket_url(server.ws_url()) as ws:
        connection = Client(ws)
        await connection.recv()
        await connection.request("parser.configure", {"parser_type": "depop"})
        response = await connection.request("parser.fetch", {})
        assert response["data"]["error"]["code"] == "upstream_unreachable"
        assert (await connection.request("ping", {}))["ok"] is True


async def test_fetch_timeout(nursery: trio.Nursery, market: FakeMarketplace) -> None:
    server = await start_parser(nursery, market, fetch_timeout=0.3)
    market.delay["com"] = 30.0
    async with trio_websocket.open_websocket_url(server.ws_url()) as ws:
        connection = Client(ws)
        await connection.recv()
        await connection.request("parser.configure", {"parser_type": "poshmark"})
        response = await connection.request("parser.fetch", {})
        assert response["data"]["error"]["code"] == "upstream_timeout"
        assert (await connection.request("ping", {}))["ok"] is True


async def test_sessions_are_independent(parser: ParserServer) -> None:
    """Dedup is per connection: a second connection gets the same first listings."""
    batches = []
    for _ in range(2):
        async with trio_websocket.open_websocket_url(parser.ws_url()) as ws:
            connection = Client(ws)
            await connection.recv()
            await connection.request(
                "parser.configure", {"parser_type": "poshmark", "batch_size": 3}
            )
            batches.append(
                [i["id"] for i in (await connection.request("parser.fetch", {}))["data"]["items"]]
            )
    assert batches[0] == batches[1] == ["com-a000", "com-a001", "com-a002"]
