"""Depop: ``GET {base}/presentation/api/v1/search/products/``, paged by ``after``.

A response looks like ``{"meta": {...}, "page_info": {"has_more": true, "last":
"<cursor>"}, "objects": [product, ...]}``; a product carries ``id``, ``slug``,
``description``, ``brand_name``, ``sizes`` (``[{"name": "M"}]``),
``attributes.condition`` (``used_excellent`` ...), ``pictures`` / ``preview``
(``{"formats": {"P0": {"url": ...}}}``), ``country``, ``status``
(``STATUS_SOLD`` ...), ``brand_id`` and ``pricing``, whose ``final_price_key``
names the entry holding the price. The item price is the listing's own price,
``price_breakdown.price.amount`` where present (``total_price`` can include the
buyer fee, shipping or tax), else ``total_price``. Filters are sent upstream
*and* checked on every item, so a marketplace that ignores one still cannot
leak a mismatch.

Brands: the search takes brand *ids*, and no public source shows a way to look
a name up, so ids are learned from the ``brand_id`` / ``brand_name`` pairs of
the results themselves (:class:`BrandIds`, shared by the process). Until a
brand's id is known, its name is searched for as words (``what``) and the
brand is checked on each item. Requests carry the web app's headers
(``depop-device-id`` per process, ``depop-session-id`` per connection,
``depop-search-id`` per search, ``x-cached-sizes``). Sources: docs/parser_api.md.
"""

from __future__ import annotations

import uuid
from typing import Any

import attrs

from parser_api.countries import currency_for
from parser_api.harvest import Feed, Page
from parser_api.items import Item, as_dict, as_text, parse_money, to_utc_iso
from parser_api.sources.http import PoliteClient, UpstreamError

__all__ = [
    "BrandIds",
    "DepopFilters",
    "DepopIdentity",
    "build_params",
    "depop_feed",
    "matches",
    "normalize_product",
    "parse_page",
]

_CONDITIONS = {
    "brand_new": "new",
    "used_like_new": "like_new",
    "used_excellent": "excellent",
    "used_good": "good",
    "used_fair": "fair",
}
_TITLE_LENGTH = 120
_SOLD_STATUSES = frozenset({"status_sold", "sold", "sold_out"})
_MAX_BRANDS = 50_000  # learned brand ids kept per process


class BrandIds:
    """Brand name (case-folded) to Depop brand id, learned from search results."""

    def __init__(self) -> None:
        self._ids: dict[str, str] = {}

    def learn(self, products: list[object]) -> None:
        """Remember the ``brand_id`` of every named brand in ``products``."""
        for product in products:
            if not isinstance(product, dict):
                continue
            name, brand_id = as_text(product.get("brand_name")), product.get("brand_id")
            if name is None or not isinstance(brand_id, int | str) or isinstance(brand_id, bool):
                continue
            key = name.casefold()
            if key not in self._ids and len(self._ids) < _MAX_BRANDS and key != "other":
                self._ids[key] = str(brand_id)

    def get(self, name: str) -> str | None:
        """The id of brand ``name``, if seen."""
        return self._ids.get(name.casefold())


@attrs.frozen
class DepopIdentity:
    """The web app's client ids: one device per process, one session per connection."""

    device_id: str = attrs.Factory(lambda: str(uuid.uuid4()))
    session_id: str = attrs.Factory(lambda: str(uuid.uuid4()))


@attrs.frozen
class DepopFilters:
    """A Depop session's search: what upstream is asked for and what items must match."""

    country: str | None = None  # lower-case ISO code
    min_price: float | None = None
    max_price: float | None = None
    brand: str | None = None
    query: str | None = None

    @property
    def upstream_country(self) -> str:
        """The ``country`` parameter (Depop needs one; ``us`` when unfiltered)."""
        return self.country or "us"


def build_params(
    filters: DepopFilters, *, cursor: str | None, page_size: int, brand_id: str | None = None
) -> dict[str, str]:
    """Query parameters of one search request (``brand_id``: the brand filter's id, if known)."""
    params = {
        "what": filters.query or "",
        "country": filters.upstream_country,
        "currency": currency_for(filters.upstream_country),
        "limit": str(page_size),
        "from": "in_country_search",
        "include_like_count": "true",
    }
    if filters.brand and brand_id is not None:
        params["brandIds"] = brand_id
    elif filters.brand and not filters.query:
        params["what"] = filters.brand  # narrows the search; each item is checked anyway
    if not params["what"]:
        del params["what"]
    if filters.min_price is not None:
        params["priceMin"] = _number(filters.min_price)
    if filters.max_price is not None:
        params["priceMax"] = _number(filters.max_price)
    if cursor is not None:
        params["after"] = cursor
    return params


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.2f}"


def matches(item: Item, filters: DepopFilters) -> bool:
    """Whether ``item`` respects the session's filters."""
    if filters.min_price is not None and item.price < filters.min_price:
        return False
    if filters.max_price is not None and item.price > filters.max_price:
        return False
    if filters.brand is not None and (item.brand or "").casefold() != filters.brand.casefold():
        return False
    return not (
        filters.country is not None
        and item.country is not None
        and item.country.lower() != filters.country
    )


def parse_page(data: object, *, base_url: str, where: str = "depop") -> Page:
    """Normalize one response body; raises :class:`UpstreamError` if it is not a search page."""
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
        raise UpstreamError(
            "upstream_bad_response",
            f"{where}: expected an object with an 'objects' array",
            status=200,
        )
    products: list[object] = data["objects"]
    items = [normalize_product(product, base_url=base_url) for product in products]
    good = tuple(item for item in items if item is not None)
    page_info = as_dict(data.get("page_info"))
    last = page_info.get("last")
    cursor = None
    if page_info.get("has_more") is True and products and isinstance(last, str) and last:
        cursor = last
    return Page(items=good, next_cursor=cursor, skipped=len(items) - len(good))


def _entry_price(entry: object) -> float | None:
    """A price entry's own listing price: the breakdown's ``price`` before ``total_price``."""
    entry = as_dict(entry)
    amount = as_dict(as_dict(entry.get("price_breakdown")).get("price")).get("amount")
    if amount is not None:
        return parse_money(amount)
    if "total_price" in entry:
        return parse_money(entry["total_price"])
    return parse_money(entry.get("amount"))


def _title(product: dict[str, Any], slug: str) -> str | None:
    description = as_text(product.get("title")) or as_text(product.get("description"))
    if description is None:
        words = slug.split("-")[1:-1]  # <seller>-<title words>-<hash>
        return " ".join(words).capitalize() or None
    first_line = description.splitlines()[0].strip()
    if len(first_line) > _TITLE_LENGTH:
        first_line = first_line[: _TITLE_LENGTH - 1].rstrip() + "…"
    return first_line


def normalize_product(product: object, *, base_url: str) -> Item | None:
    """One product as an :class:`Item`, or None when it lacks an id, slug or price."""
    if not isinstance(product, dict):
        return None
    raw_id = product.get("id")
    product_id = str(raw_id) if isinstance(raw_id, int | str) and str(raw_id) else None
    slug = as_text(product.get("slug"))
    pricing = as_dict(product.get("pricing"))
    key = as_text(pricing.get("final_price_key"))
    if key is None:
        key = next(
            (k for k in ("discounted_price", "current_price") if k in pricing), "original_price"
        )
    price = _entry_price(pricing.get(key))
    currency = as_text(pricing.get("currency_name")) or as_text(pricing.get("currency"))
    if product_id is None or slug is None or price is None or currency is None:
        return None
    title = _title(product, slug)
    if title is None:
        return None
    condition = as_text(as_dict(product.get("attributes")).get("condition")) or as_text(
        product.get("condition")
    )
    country = as_text(product.get("country"))
    status = as_text(product.get("status")) or ""
    sold = product.get("sold") is True or status.lower() in _SOLD_STATUSES
    seller = as_text(as_dict(product.get("seller")).get("username")) or slug.split("-", 1)[0]
    return Item(
        id=product_id,
        marketplace="depop",
        site="com",
        status="sold" if sold else "available",
        title=title,
        price=price,
        currency=currency.upper(),
        original_price=_entry_price(pricing["original_price"])
        if "original_price" in pricing
        else None,
        brand=_brand(product.get("brand_name")),
        size=_size(product.get("sizes")),
        condition=_CONDITIONS.get(condition, condition) if condition else None,
        url=f"{base_url.rstrip('/')}/products/{slug}/",
        images=_images(product),
        seller=seller or None,
        country=country.upper() if country and len(country) == 2 else None,
        created_at=to_utc_iso(product.get("created_at")),
    )


def _brand(value: object) -> str | None:
    brand = as_text(value)
    return None if brand is None or brand.casefold() == "other" else brand  # "Other": unbranded


def _size(value: object) -> str | None:
    if not isinstance(value, list) or not value:
        return None
    first = value[0]
    return as_text(first) or as_text(as_dict(first).get("name"))


def _picture_url(picture: object) -> str | None:
    formats = as_dict(as_dict(picture).get("formats"))
    for name in ("P0", *sorted(formats)):
        url = as_text(as_dict(formats.get(name)).get("url"))
        if url and url.startswith(("http://", "https://")):
            return url
    return None


def _images(product: dict[str, Any]) -> tuple[str, ...]:
    urls: list[str] = []
    candidates: list[object] = [product.get("preview")]
    pictures = product.get("pictures")
    if isinstance(pictures, list):
        candidates.extend(pictures)
    for picture in candidates:
        url = _picture_url(picture)
        if url and url not in urls:
            urls.append(url)
    return tuple(urls)


def depop_feed(
    client: PoliteClient,
    *,
    base_url: str,
    filters: DepopFilters,
    page_size: int,
    identity: DepopIdentity | None = None,
    brands: BrandIds | None = None,
    spacing: float | None = None,
) -> Feed:
    """The feed of a Depop search with ``filters`` (``spacing``: seconds between requests)."""
    url = base_url.rstrip("/") + "/presentation/api/v1/search/products/"
    identity = identity or DepopIdentity()
    brands = brands if brands is not None else BrandIds()
    headers = {
        "accept": "application/json",
        "depop-device-id": identity.device_id,
        "depop-session-id": identity.session_id,
        "depop-search-id": str(uuid.uuid4()),  # one search: this feed's pages
        "x-cached-sizes": "true",
        "referer": base_url.rstrip("/") + "/search/",
    }

    # Fixed for the whole search: its cursors belong to the parameters it started with.
    brand_id = brands.get(filters.brand) if filters.brand else None

    async def fetch(cursor: str | None) -> Page:
        """One search page after ``cursor``, normalized."""
        params = build_params(filters, cursor=cursor, page_size=page_size, brand_id=brand_id)
        country = filters.country.upper() if filters.country else None
        data = await client.get_json(url, params, headers=headers, country=country, spacing=spacing)
        if isinstance(data, dict) and isinstance(data.get("objects"), list):
            brands.learn(data["objects"])
        return parse_page(data, base_url=base_url)

    return Feed(
        name=f"depop/{filters.upstream_country}",
        kind="items",
        fetch=fetch,
        accept=lambda item: matches(item, filters),
    )
