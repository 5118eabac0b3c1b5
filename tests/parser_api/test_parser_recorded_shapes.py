"""The parser against recorded response shapes (tests/parser_api/fixtures/README.md),
and the live sites' request shapes through the app against the fake marketplace."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from parser_api.config import DepopSourceConfig, HttpConfig, ParserConfig
from parser_api.sources import depop, poshmark
from parser_api.sources.http import PoliteClient, UpstreamError
from tests.parser_api.parser_fake_marketplace import FakeMarketplace
from tests.parser_api.parser_testkit import Client, ParserServer, start_parser

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def test_depop_recorded_page_prices_status_and_cursor() -> None:
    page = depop.parse_page(fixture("depop_search_products.json"), base_url="https://www.depop.com")
    assert page.next_cursor == "MnwyNHwxNzkwODU4Nzc0.BOOSTED_EXHAUSTED.0"
    jersey, cap, shoes = page.items
    # The listing's own price, not the total with buyer fee and shipping.
    assert jersey.price == 40.0
    assert jersey.currency == "USD"
    assert jersey.status == "available"
    assert jersey.brand == "Reebok"
    assert jersey.title == "Vintage 2000s New York Giants Retro Sportswear White Football Jersey"
    assert (
        jersey.url
        == "https://www.depop.com/products/21gvin0age-vintage-2000s-new-york-giants-6b3d/"
    )
    assert cap.price == 7.0  # the discounted price named by final_price_key
    assert cap.original_price == 10.0
    assert cap.brand is None  # "Other": unbranded
    assert cap.condition == "good"
    assert shoes.status == "sold"  # STATUS_SOLD
    assert shoes.price == 65.0
    assert shoes.currency == "GBP"
    assert shoes.condition == "new"


def test_depop_learns_brand_ids_from_a_recorded_page() -> None:
    brands = depop.BrandIds()
    brands.learn(fixture("depop_search_products.json")["objects"])
    assert brands.get("reebok") == "2511"
    assert brands.get("Nike") == "7"
    assert brands.get("Other") is None


def test_poshmark_recorded_page_with_the_newer_condition_codes() -> None:
    page = poshmark.parse_page(
        fixture("poshmark_vm_rest_posts.json"), site="com", base_url="https://poshmark.com"
    )
    assert [item.condition for item in page.items] == ["like_new", "good", "fair"]
    assert [item.status for item in page.items] == ["available", "available", "sold"]
    assert page.items[1].original_price is None
    assert page.items[2].currency == "CAD"
    assert page.next_cursor == json.dumps("2")  # the cursor keeps its JSON type


def test_poshmark_error_body_is_an_upstream_error_with_the_sites_message() -> None:
    with pytest.raises(UpstreamError) as caught:
        poshmark.parse_page(
            fixture("poshmark_error_200.json"), site="com", base_url="https://poshmark.com"
        )
    assert caught.value.code == "upstream_error"
    assert caught.value.status == 200
    assert "Invalid request parameter" in caught.value.message


async def test_depop_requests_carry_the_web_apps_headers(
    parser: ParserServer, client: Client, market: FakeMarketplace
) -> None:
    for brand in ("nike", "adidas"):  # two searches on one connection
        await client.request(
            "parser.configure", {"parser_type": "depop", "batch_size": 10, "brand_filter": brand}
        )
        await client.request("parser.fetch", {})
    async with trio_websocket.open_websocket_url(parser.ws_url()) as ws:
        other = Client(ws)
        await other.recv()
        await other.request("parser.configure", {"parser_type": "depop", "batch_size": 10})
        await other.request("parser.fetch", {})
    requests = [r for r in market.requests if r.domain == "depop"]
    assert len({r.headers["depop-device-id"] for r in requests}) == 1  # one per process
    by_search: dict[str, set[str]] = {}
    for r in requests:
        by_search.setdefault(r.headers["depop-search-id"], set()).add(r.headers["depop-session-id"])
        assert r.headers["x-cached-sizes"] == "true"
        assert "application/json" in r.headers["accept"]
        assert "Chrome/" in r.headers["user-agent"]
    assert len(by_search) == 3  # one search id per search
    sessions = [next(iter(s)) for s in by_search.values()]
    assert all(len(s) == 1 for s in by_search.values())
    assert sessions[0] == sessions[1] != sessions[2]  # one session id per connection


async def test_poshmark_search_stops_at_the_result_cap(
    client: Client, market: FakeMarketplace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poshmark, "RESULT_CAP", 30)  # the fake has 61 .com listings
    await client.request(
        "parser.configure", {"parser_type": "poshmark", "batch_size": 200, "ads_count": 1000}
    )
    response = await client.request("parser.fetch", {})
    assert response["data"]["exhausted"] is True
    assert response["data"]["count"] < 61
    assert market.count("com") == 3  # 10 per page: it did not page on
    stats = (await client.request("stats.me", {}))["data"]
    (note,) = stats["upstream"]["notes"]
    assert "cap" in note
    assert note.startswith("poshmark.com/available")


async def test_depop_requests_are_spaced_two_seconds_by_default(autojump_clock: object) -> None:
    assert ParserConfig().depop.request_spacing == 2.0
    assert DepopSourceConfig().request_spacing == 2.0
    times: list[float] = []

    async def upstream(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        body = {"page_info": {"has_more": True, "last": "x"}, "objects": [{"id": 1}]}
        return httpx.Response(200, json=body)

    client = PoliteClient(
        HttpConfig(request_spacing=0.0),
        transport=httpx.MockTransport(upstream),  # type: ignore[arg-type]
    )
    feed = depop.depop_feed(
        client,
        base_url="https://depop.test",
        filters=depop.DepopFilters(),
        page_size=24,
        spacing=ParserConfig().depop.request_spacing,
    )
    await feed.fetch(None)
    await feed.fetch("x")
    assert times[1] - times[0] == pytest.approx(2.0)
    await client.aclose()


async def test_plain_client_request_lines_are_debug_and_one_info_line_per_fetch(
    nursery: trio.Nursery, market: FakeMarketplace, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_parser(
        nursery, market, http=HttpConfig(impersonate="none", request_spacing=0.0)
    )
    caplog.set_level(logging.INFO)
    async with trio_websocket.open_websocket_url(server.ws_url()) as ws:
        raw = Client(ws)
        await raw.recv()
        await raw.request("parser.configure", {"parser_type": "poshmark", "batch_size": 25})
        await raw.request("parser.fetch", {})
    assert market.count("com") >= 3
    assert not [r for r in caplog.records if "HTTP Request" in r.getMessage()]
    infos = [r for r in caplog.records if r.name == "parser_api.session"]
    assert len(infos) == 1
    assert infos[0].levelno == logging.INFO
    assert "25 items" in infos[0].getMessage()
    assert market.url("com") not in infos[0].getMessage()
