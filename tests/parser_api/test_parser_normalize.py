"""Pure functions: request building, page parsing and item normalization per marketplace."""

from __future__ import annotations

import json

import pytest

from parser_api.items import Item, item_fields_reference, parse_money, to_utc_iso
from parser_api.sources import depop, poshmark
from parser_api.sources.http import UpstreamError
from tests.parser_api.parser_fake_marketplace import depop_product, posh_post


def test_poshmark_request_params_carry_status_count_cursor_and_query() -> None:
    first = poshmark.build_params(
        inventory_status="sold_out", cursor=None, page_size=48, query="nike"
    )
    request = json.loads(first["request"])
    assert request["filters"]["inventory_status"] == ["sold_out"]
    assert request["experience"] == "all"
    assert request["count"] == "48"  # a string, as the web app sends it
    assert request["query_and_facet_filters"] == {"department": "All"}
    assert request["query"] == "nike"
    assert "max_id" not in request
    later = poshmark.build_params(
        inventory_status="available", cursor=json.dumps(1590339263.92), page_size=10, query=None
    )
    request = json.loads(later["request"])
    assert request["max_id"] == 1590339263.92  # a numeric cursor goes back as a number
    assert "query" not in request


def test_poshmark_post_normalizes_to_the_item_shape() -> None:
    item = poshmark.normalize_post(
        posh_post("abc", site="ca", sold=True, brand="Tommy", price=65),
        site="ca",
        base_url="https://poshmark.ca",
    )
    assert item == Item(
        id="abc",
        marketplace="poshmark",
        site="ca",
        status="sold",
        title="Tommy item abc",
        price=65.0,
        currency="CAD",
        original_price=130.0,
        brand="Tommy",
        size="M",
        condition="new_with_tags",
        url="https://poshmark.ca/listing/abc",
        images=("https://img.example/posts/abc/cover.jpg", "https://img.example/posts/abc/2.jpg"),
        seller="seller_ca",
        country="CA",
        created_at="2020-05-13T00:48:07Z",
    )
    assert set(item.to_json()) == {field["name"] for field in item_fields_reference()}


def test_poshmark_zero_original_price_and_missing_fields() -> None:
    post = posh_post("x", site="com", sold=False)
    post["original_price_amount"] = {"val": "0.0", "currency_code": "USD"}
    post["brand"] = ""
    del post["size_obj"]
    post["condition"] = "not_nwt"
    item = poshmark.normalize_post(post, site="com", base_url="https://poshmark.com/")
    assert item is not None
    assert item.original_price is None
    assert item.brand is None
    assert item.size == "M"
    assert item.condition == "used"
    assert item.url == "https://poshmark.com/listing/x"


@pytest.mark.parametrize(
    "broken",
    [
        {"id": "a", "title": "no price"},
        {"title": "no id", "price_amount": {"val": "3"}, "inventory": {"status": "available"}},
        {
            "id": "a",
            "title": "t",
            "price_amount": {"val": "3"},
            "inventory": {"status": "reserved"},
        },
        "not an object",
    ],
)
def test_poshmark_unusable_posts_are_skipped(broken: object) -> None:
    assert poshmark.normalize_post(broken, site="com", base_url="https://p") is None


def test_poshmark_page_paging_and_skips() -> None:
    posts = [posh_post("a", site="com", sold=False), {"id": "broken"}]
    page = poshmark.parse_page(
        {"data": posts, "more": {"next_max_id": 1590339263.92}}, site="com", base_url="https://p"
    )
    assert [item.id for item in page.items] == ["a"]
    assert page.skipped == 1
    assert page.next_cursor == json.dumps(1590339263.92)
    last = poshmark.parse_page({"data": posts, "more": {}}, site="com", base_url="https://p")
    assert last.next_cursor is None
    # An empty page ends the feed even when it names a next page.
    empty = poshmark.parse_page(
        {"data": [], "more": {"next_max_id": "9"}}, site="com", base_url="x"
    )
    assert empty.next_cursor is None


@pytest.mark.parametrize("body", [[], {"posts": []}, {"data": {}}, "x", None])
def test_poshmark_page_of_the_wrong_shape_is_an_upstream_error(body: object) -> None:
    with pytest.raises(UpstreamError) as caught:
        poshmark.parse_page(body, site="com", base_url="https://p")
    assert caught.value.code == "upstream_bad_response"


def test_depop_params_send_every_filter_upstream() -> None:
    filters = depop.DepopFilters(
        country="gb", min_price=10, max_price=99.5, brand="nike", query="tee"
    )
    params = depop.build_params(filters, cursor="MnwyNHw", page_size=24, brand_id="7")
    assert params == {
        "what": "tee",
        "country": "gb",
        "currency": "GBP",
        "limit": "24",
        "from": "in_country_search",
        "include_like_count": "true",
        "brandIds": "7",
        "priceMin": "10",
        "priceMax": "99.50",
        "after": "MnwyNHw",
    }
    # A brand whose id is not known yet: no brand parameter; with no query, its name
    # is searched as words (items are checked against the brand either way).
    unknown = depop.build_params(
        depop.DepopFilters(brand="Stüssy"), cursor=None, page_size=24, brand_id=None
    )
    assert unknown["what"] == "Stüssy"
    assert "brandIds" not in unknown
    bare = depop.build_params(depop.DepopFilters(), cursor=None, page_size=5)
    assert bare == {
        "country": "us",
        "currency": "USD",
        "limit": "5",
        "from": "in_country_search",
        "include_like_count": "true",
    }


def test_depop_brand_ids_are_learned_from_results() -> None:
    brands = depop.BrandIds()
    brands.learn(
        [
            {"brand_name": "Nike", "brand_id": 7},
            {"brand_name": "Other", "brand_id": 1},
            {"brand_name": "Adidas", "brand_id": "8"},
            {"brand_name": "Nike", "brand_id": 99},  # the first id seen stays
            {"brand_id": 5},
            "junk",
        ]
    )
    assert brands.get("NIKE") == "7"
    assert brands.get("adidas") == "8"
    assert brands.get("Other") is None
    assert brands.get("Puma") is None


def test_depop_product_normalizes_to_the_item_shape() -> None:
    item = depop.normalize_product(
        depop_product(7, brand="Nike", price=42.0, country="gb", currency="GBP"),
        base_url="https://www.depop.com",
    )
    assert item is not None
    assert item.id == "900007"
    assert item.marketplace == "depop"
    assert item.status == "available"
    assert item.title == "Vintage Nike tee #7"
    assert (item.price, item.original_price, item.currency) == (42.0, 47.0, "GBP")
    assert (item.brand, item.size, item.condition, item.country) == ("Nike", "L", "excellent", "GB")
    assert item.url == "https://www.depop.com/products/shopper1-vintage-nike-tee-0007/"
    assert item.images == ("https://media.example/7/p0.jpg",)
    assert item.seller == "shopper1"
    assert item.created_at is None


def test_depop_price_breakdown_shape_sold_flag_and_other_brand() -> None:
    product = {
        "id": 823805820,
        "slug": "buono-fashion-nova-can-it-be-a567",
        "brand_name": "Other",
        "sizes": [{"name": "M"}],
        "status": "SOLD",
        "pricing": {
            "currency": "USD",
            "final_price_key": "current_price",
            "current_price": {"price_breakdown": {"price": {"amount": "13.00"}}},
        },
    }
    item = depop.normalize_product(product, base_url="https://d")
    assert item is not None
    assert item.price == 13.0
    assert item.original_price is None
    assert item.brand is None
    assert item.status == "sold"
    assert item.title == "Fashion nova can it be"  # from the slug when there is no description


@pytest.mark.parametrize(
    "product",
    [
        {
            "slug": "a-b-c",
            "pricing": {"currency_name": "USD", "original_price": {"total_price": "1"}},
        },
        {"id": 1, "pricing": {"currency_name": "USD", "original_price": {"total_price": "1"}}},
        {"id": 1, "slug": "a-b-c", "pricing": {"currency_name": "USD"}},
        {"id": 1, "slug": "a-b-c", "pricing": {"original_price": {"total_price": "1"}}},
        ["list"],
    ],
)
def test_depop_unusable_products_are_skipped(product: object) -> None:
    assert depop.normalize_product(product, base_url="https://d") is None


def test_depop_page_cursor_follows_has_more() -> None:
    objects = [depop_product(1, brand="Nike", price=5, country="us")]
    more = depop.parse_page(
        {"page_info": {"has_more": True, "last": "abc"}, "objects": objects}, base_url="x"
    )
    assert more.next_cursor == "abc"
    done = depop.parse_page(
        {"page_info": {"has_more": False, "last": "abc"}, "objects": objects}, base_url="x"
    )
    assert done.next_cursor is None
    with pytest.raises(UpstreamError):
        depop.parse_page({"products": []}, base_url="x")


def test_depop_filters_are_checked_on_items() -> None:
    def item(price: float, brand: str | None, country: str | None) -> Item:
        return Item(
            id="1", marketplace="depop", site="com", status="available", title="t", price=price,
            currency="USD", original_price=None, brand=brand, size=None, condition=None, url="u",
            images=(), seller=None, country=country, created_at=None,
        )  # fmt: skip

    filters = depop.DepopFilters(country="gb", min_price=10, max_price=20, brand="nike")
    assert depop.matches(item(10, "NIKE", "GB"), filters)
    assert depop.matches(item(20, "Nike", None), filters)
    assert not depop.matches(item(9.99, "Nike", "GB"), filters)
    assert not depop.matches(item(20.01, "Nike", "GB"), filters)
    assert not depop.matches(item(15, "Adidas", "GB"), filters)
    assert not depop.matches(item(15, None, "GB"), filters)
    assert not depop.matches(item(15, "Nike", "US"), filters)
    assert depop.matches(item(1, None, "US"), depop.DepopFilters())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("29.0", 29.0),
        (29, 29.0),
        ("1,299.50", 1299.5),
        ("abc", None),
        (True, None),
        (-1, None),
        ("nan", None),
    ],
)
def test_parse_money(value: object, expected: float | None) -> None:
    assert parse_money(value) == expected


def test_to_utc_iso() -> None:
    assert to_utc_iso("2020-05-12T17:48:07-07:00") == "2020-05-13T00:48:07Z"
    assert to_utc_iso("2020-05-12T17:48:07Z") == "2020-05-12T17:48:07Z"
    assert to_utc_iso("2020-05-12T17:48:07") is None  # naive: zone unknown
    assert to_utc_iso("yesterday") is None
    assert to_utc_iso(None) is None
