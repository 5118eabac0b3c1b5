"""A local fake of the Poshmark and Depop search endpoints, served over real HTTP.

One ASGI app answers for three "domains" by path prefix:

- ``/com/vm-rest/posts`` and ``/ca/vm-rest/posts``: Poshmark's shape
  (``{"data": [post...], "more": {"next_max_id": ...}}``), ``inventory_status``
  ``available`` / ``sold_out``, at most ``POSHMARK_PAGE`` posts per page;
- ``/depop/presentation/api/v1/search/products/``: Depop's shape
  (``{"meta", "page_info": {"has_more", "last"}, "objects": [...]}``).

Tests queue failures per domain (``fail("com", (429, {"retry-after": "1"}, b""))``)
and read back every request received.
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict, deque
from typing import Any
from urllib.parse import parse_qs

import attrs
import trio

POSHMARK_PAGE = 10
DEPOP_PAGE = 8
CURSOR_BASE = 1_700_000_000.0

Failure = tuple[int, dict[str, str], bytes]
BRAND_IDS = {"Nike": 7, "Adidas": 8}  # Depop's brand ids in the fake


@attrs.define
class Recorded:
    domain: str
    path: str
    params: dict[str, str]
    peer: str = ""  # the requesting address: which egress a request left from
    headers: dict[str, str] = attrs.Factory(dict)  # lower-case names

    @property
    def posh_request(self) -> dict[str, Any]:
        return json.loads(self.params["request"])


def posh_post(
    post_id: str, *, site: str, sold: bool, brand: str = "Nike", price: int = 25
) -> dict[str, Any]:
    """A post in Poshmark's vm-rest shape (the fields the parser reads, plus noise)."""
    currency = "CAD" if site == "ca" else "USD"
    return {
        "id": post_id,
        "creator_id": "5adce618cf40b4b29d6beca1",
        "status": "published",
        "origin_domain": "ca" if site == "ca" else "us",
        "inventory": {"status": "sold_out" if sold else "available", "multi_item": False},
        "title": f"{brand} item {post_id}",
        "description": "A thing.\nSecond line.",
        "price_amount": {"val": f"{price}.0", "currency_code": currency, "currency_symbol": "$"},
        "original_price_amount": {"val": f"{price * 2}.0", "currency_code": currency},
        "size": "M",
        "size_obj": {"id": "M", "display": "M", "display_with_size_set": "M"},
        "brand": brand,
        "condition": "nwt",
        "cover_shot": {"url": f"https://img.example/posts/{post_id}/cover.jpg"},
        "pictures": [
            {"url": f"https://img.example/posts/{post_id}/cover.jpg"},
            {"url": f"https://img.example/posts/{post_id}/2.jpg"},
        ],
        "created_at": "2020-05-12T17:48:07-07:00",
        "first_published_at": "2020-05-12T17:50:17-07:00",
        "creator_username": f"seller_{site}",
        "like_count": 4,
    }


def depop_product(
    number: int, *, brand: str, price: float, country: str, currency: str = "USD"
) -> dict[str, Any]:
    """A product in Depop's presentation-API shape."""
    slug = f"shopper{number % 3}-vintage-{brand.lower()}-tee-{number:04x}"
    return {
        "id": 900_000 + number,
        "slug": slug,
        "brand_id": BRAND_IDS.get(brand, 1),
        "brand_name": brand,
        "category_name": "T-shirts",
        "description": f"Vintage {brand} tee #{number}\nGreat condition",
        "attributes": {"condition": "used_excellent", "colour": ["black"]},
        "sizes": [{"id": 1, "name": "L"}],
        "pictures": [{"formats": {"P0": {"url": f"https://media.example/{number}/p0.jpg"}}}],
        "preview": {"formats": {"P0": {"url": f"https://media.example/{number}/p0.jpg"}}},
        "pricing": {
            "currency_name": currency,
            "final_price_key": "discounted_price",
            "original_price": {"total_price": f"{price + 5:.2f}"},
            "discounted_price": {"total_price": f"{price:.2f}"},
            "is_reduced": True,
        },
        "country": country.upper(),
        "like_count": 3,
    }


def default_poshmark() -> dict[tuple[str, str], list[dict[str, Any]]]:
    """com: 60 available (+1 broken), 12 sold; ca: 25 available (5 also on com), 6 sold."""
    listings: dict[tuple[str, str], list[dict[str, Any]]] = {
        ("com", "available"): [
            posh_post(f"com-a{i:03d}", site="com", sold=False) for i in range(60)
        ],
        ("com", "sold_out"): [posh_post(f"com-s{i:03d}", site="com", sold=True) for i in range(12)],
        # Cross-listed first: com+ca sees them on both domains early on.
        ("ca", "available"): [posh_post(f"com-a{i:03d}", site="ca", sold=False) for i in range(5)]
        + [posh_post(f"ca-a{i:03d}", site="ca", sold=False) for i in range(20)],
        ("ca", "sold_out"): [posh_post(f"ca-s{i:03d}", site="ca", sold=True) for i in range(6)],
    }
    # One broken entry (no price) that the parser must skip, not choke on.
    listings[("com", "available")].insert(3, {"id": "broken-1", "title": "no price"})
    return listings


def default_depop() -> list[dict[str, Any]]:
    """60 products: Nike (even) / Adidas (odd), prices 5..300, 20 in the US and 40 in GB."""
    products = []
    for n in range(60):
        brand = "Nike" if n % 2 == 0 else "Adidas"
        country = "us" if n % 3 == 0 else "gb"
        products.append(depop_product(n, brand=brand, price=5 + n * 5, country=country))
    return products


class FakeMarketplace:
    """The ASGI app; ``base`` is set to ``http://127.0.0.1:PORT`` once served."""

    def __init__(self) -> None:
        self.base = ""
        self.poshmark = default_poshmark()
        self.depop = default_depop()
        self.requests: list[Recorded] = []
        self.failures: dict[str, deque[Failure]] = defaultdict(deque)
        # Off: the fake ignores brand and price filters, so only the parser's
        # own checks can keep mismatching items out.
        self.depop_applies_filters = False
        self.delay: dict[str, float] = {}  # seconds before answering, per domain

    def url(self, domain: str) -> str:
        return f"{self.base}/{domain}"

    def fail(self, domain: str, *responses: Failure) -> None:
        """Answer the next requests to ``domain`` with these responses, in order."""
        self.failures[domain].extend(responses)

    def count(self, domain: str) -> int:
        return sum(1 for request in self.requests if request.domain == domain)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        params = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        domain, _, rest = scope["path"].lstrip("/").partition("/")
        peer = str((scope.get("client") or ("",))[0])
        headers = {
            bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1")
            for k, v in scope.get("headers", [])
        }
        self.requests.append(Recorded(domain, "/" + rest, params, peer, headers))
        if self.delay.get(domain):
            await trio.sleep(self.delay[domain])
        if self.failures[domain]:
            status, headers, body = self.failures[domain].popleft()
            await _respond(send, status, body, headers)
        elif domain in ("com", "ca") and rest == "vm-rest/posts":
            await _respond(send, 200, json.dumps(self._poshmark_page(domain, params)).encode())
        elif domain == "depop" and rest == "presentation/api/v1/search/products/":
            await _respond(send, 200, json.dumps(self._depop_page(params)).encode())
        else:
            await _respond(send, 404, b'{"error":"not found"}')

    def _poshmark_page(self, site: str, params: dict[str, str]) -> dict[str, Any]:
        request = json.loads(params["request"])
        status = request["filters"]["inventory_status"][0]
        posts = self.poshmark[(site, status)]
        offset = 0
        if "max_id" in request:
            offset = round(CURSOR_BASE - float(request["max_id"]))
        size = min(int(request.get("count", POSHMARK_PAGE)), POSHMARK_PAGE)
        page = posts[offset : offset + size]
        body: dict[str, Any] = {"data": page, "req_id": "test"}
        if offset + size < len(posts):
            # Real next_max_id values are numbers (timestamps) on .com; strings on .ca here.
            cursor: float | str = CURSOR_BASE - (offset + size)
            body["more"] = {"next_max_id": cursor if site == "com" else str(cursor)}
        else:
            body["more"] = {}
        return body

    def _depop_page(self, params: dict[str, str]) -> dict[str, Any]:
        products = [p for p in self.depop if p["country"].lower() == params.get("country", "us")]
        if self.depop_applies_filters:
            low = float(params.get("priceMin", 0))
            high = float(params.get("priceMax", 1e9))
            brand_id = params.get("brandIds")
            words = params.get("what", "").lower().split()
            products = [
                p
                for p in products
                if low <= float(p["pricing"]["discounted_price"]["total_price"]) <= high
                and (brand_id is None or str(p["brand_id"]) == brand_id)
                and all(w in (p["brand_name"] + " " + p["description"]).lower() for w in words)
            ]
        offset = int(base64.b64decode(params["after"]).decode()) if "after" in params else 0
        size = min(int(params.get("limit", DEPOP_PAGE)), DEPOP_PAGE)
        page = products[offset : offset + size]
        has_more = offset + size < len(products)
        last = base64.b64encode(str(offset + size).encode()).decode()
        return {
            "meta": {"total_count": len(products)},
            "page_info": {"has_more": has_more, "last": last if has_more else None},
            "objects": page,
        }


async def _respond(
    send: Any, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
