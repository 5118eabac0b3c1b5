"""Poshmark: ``GET {base}/vm-rest/posts?request=<json>``, paged by ``max_id``.

A response looks like ``{"data": [post, ...], "more": {"next_max_id": ...}}``;
each post carries ``id``, ``title``, ``price_amount`` / ``original_price_amount``
(``{"val": "29.0", "currency_code": "USD"}``), ``inventory.status``
(``available`` / ``sold_out``), ``brand``, ``size`` / ``size_obj``,
``condition`` (``nwt``, ``ret``, ``not_nwt``, and the newer ``uln`` / ``ug`` /
``uf``), ``cover_shot`` / ``pictures``, ``creator_username``, ``origin_domain``
and ``created_at``. An HTTP 200 whose body is ``{"error": {...}}`` is the site
refusing the request, not an empty page. A search yields at most
:data:`RESULT_CAP` results, so a feed stops there with a note for ``stats.me``.
The request and page functions are pure; :func:`poshmark_feed` wires them to
the HTTP client. Sources for each field: docs/parser_api.md.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from parser_api.harvest import Feed, Page
from parser_api.items import Item, as_dict, as_text, parse_money, to_utc_iso
from parser_api.sources.http import PoliteClient, UpstreamError

__all__ = ["build_params", "normalize_post", "parse_page", "poshmark_feed"]

SITES = {"com": ("US", "USD"), "ca": ("CA", "CAD")}
STATUSES = {"ads": "available", "sales": "sold_out"}
_CONDITIONS = {
    "nwt": "new_with_tags",
    "ret": "new_with_tags",
    "not_nwt": "used",
    "uln": "like_new",
    "ug": "good",
    "uf": "fair",
}
# Public scrapers report that a Poshmark search stops yielding results after about
# this many; paging past it returns nothing new, so a feed ends there.
RESULT_CAP = 5000


def build_params(
    *, inventory_status: str, cursor: str | None, page_size: int, query: str | None
) -> dict[str, str]:
    """Query parameters of one search request; ``cursor`` is a JSON-encoded ``max_id``."""
    request: dict[str, Any] = {
        "filters": {"department": "All", "inventory_status": [inventory_status]},
        "query_and_facet_filters": {"department": "All"},
        "experience": "all",
        "sizeSystem": "us",
        # The web app sends the page size as a string.
        "count": str(page_size),
    }
    if query:
        request["query"] = query
    if cursor is not None:
        # Cursors are kept JSON-encoded so a numeric max_id goes back as a number.
        request["max_id"] = json.loads(cursor)
    return {"request": json.dumps(request, separators=(",", ":")), "summarize": "true"}


def _error_message(error: object) -> str:
    """The site's own words from an ``{"error": {...}}`` body."""
    if isinstance(error, dict):
        for key in ("statusMessage", "message", "errorMessage", "errorType", "errorCode"):
            text = as_text(error.get(key))
            if text:
                return text[:200]
    text = as_text(error)
    return text[:200] if text else "error without a message"


def parse_page(data: object, *, site: str, base_url: str, where: str = "poshmark") -> Page:
    """Normalize one response body; raises :class:`UpstreamError` if it is not a search page.

    A body with an ``error`` object is an ``upstream_error`` carrying the site's message.
    """
    if isinstance(data, dict) and data.get("error") not in (None, {}, ""):
        raise UpstreamError(
            "upstream_error",
            f"{where} answered an error: {_error_message(data['error'])}",
            status=200,
        )
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise UpstreamError(
            "upstream_bad_response", f"{where}: expected an object with a 'data' array", status=200
        )
    posts: list[object] = data["data"]
    items = [normalize_post(post, site=site, base_url=base_url) for post in posts]
    good = tuple(item for item in items if item is not None)
    more = data.get("more")
    next_max_id = more.get("next_max_id") if isinstance(more, dict) else None
    cursor = None
    # An empty page ends the feed even if it names a next page: it would loop forever.
    if posts and isinstance(next_max_id, str | int | float) and next_max_id != "":
        cursor = json.dumps(next_max_id)
    return Page(items=good, next_cursor=cursor, skipped=len(items) - len(good))


def normalize_post(post: object, *, site: str, base_url: str) -> Item | None:
    """One post as an :class:`Item`, or None when it lacks an id, title, price or status."""
    if not isinstance(post, dict):
        return None
    post_id = as_text(post.get("id"))
    title = as_text(post.get("title"))
    price_amount = as_dict(post.get("price_amount"))
    price = parse_money(price_amount.get("val", post.get("price")))
    status = {"available": "available", "sold_out": "sold"}.get(
        str(as_dict(post.get("inventory")).get("status"))
    )
    if post_id is None or title is None or price is None or status is None:
        return None
    country, default_currency = SITES[site]
    original_amount = as_dict(post.get("original_price_amount"))
    original = parse_money(original_amount.get("val", post.get("original_price")))
    condition = as_text(post.get("condition"))
    origin = as_text(post.get("origin_domain"))
    brand_obj = as_dict(post.get("brand_obj"))
    brand = as_text(post.get("brand")) or as_text(brand_obj.get("canonical_name"))
    return Item(
        id=post_id,
        marketplace="poshmark",
        site=site,
        status=status,
        title=title,
        price=price,
        currency=as_text(price_amount.get("currency_code")) or default_currency,
        original_price=original or None,  # Poshmark sends 0 for "no original price"
        brand=brand,
        size=as_text(as_dict(post.get("size_obj")).get("display")) or as_text(post.get("size")),
        condition=_CONDITIONS.get(condition, condition) if condition else None,
        url=f"{base_url.rstrip('/')}/listing/{post_id}",
        images=_images(post),
        seller=as_text(post.get("creator_username")),
        country=origin.upper() if origin and len(origin) == 2 else country,
        created_at=to_utc_iso(post.get("created_at")) or to_utc_iso(post.get("first_published_at")),
    )


def _images(post: dict[str, Any]) -> tuple[str, ...]:
    urls: list[str] = []
    candidates = [post.get("cover_shot")]
    pictures = post.get("pictures")
    if isinstance(pictures, list):
        candidates.extend(pictures)
    for picture in candidates:
        url = as_text(as_dict(picture).get("url"))
        if url and url.startswith(("http://", "https://")) and url not in urls:
            urls.append(url)
    return tuple(urls)


def poshmark_feed(
    client: PoliteClient,
    *,
    base_url: str,
    site: str,
    kind: str,
    page_size: int,
    query: str | None,
) -> Feed:
    """A feed of one site's available (``kind="ads"``) or sold (``kind="sales"``) listings."""
    inventory_status = STATUSES[kind]
    url = base_url.rstrip("/") + "/vm-rest/posts"
    wanted = "sold" if kind == "sales" else "available"
    referer = base_url.rstrip("/") + "/search" if query else base_url.rstrip("/") + "/"
    received = 0  # results this search has yielded so far

    async def fetch(cursor: str | None) -> Page:
        """One search page after ``cursor``, normalized; the last one at :data:`RESULT_CAP`."""
        nonlocal received
        params = build_params(
            inventory_status=inventory_status, cursor=cursor, page_size=page_size, query=query
        )
        data = await client.get_json(
            url, params, headers={"referer": referer}, country=SITES[site][0]
        )
        page = parse_page(data, site=site, base_url=base_url, where=f"poshmark.{site}")
        received += len(page.items) + page.skipped
        if page.next_cursor is not None and received >= RESULT_CAP:
            note = f"stopped at the site's cap of about {RESULT_CAP} results per search"
            return attrs.evolve(page, next_cursor=None, note=note)
        return page

    return Feed(
        name=f"poshmark.{site}/{inventory_status}",
        kind=kind,
        fetch=fetch,
        # Upstream filters by inventory status; a listing that changed state in between is dropped.
        accept=lambda item: item.status == wanted,
    )
