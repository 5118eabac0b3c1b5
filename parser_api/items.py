"""The one normalized listing shape every source produces.

Field documentation lives in each field's metadata so the ``help`` action and
the docs describe exactly this class.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal, InvalidOperation
from typing import Any

import attrs

__all__ = [
    "Item",
    "as_dict",
    "as_text",
    "item_fields_reference",
    "json_type_name",
    "parse_money",
    "to_utc_iso",
]


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@attrs.frozen
class Item:
    """One marketplace listing, normalized."""

    id: str = attrs.field(metadata=_doc("the marketplace's own listing id"))
    marketplace: str = attrs.field(metadata=_doc("'poshmark' or 'depop'"))
    site: str = attrs.field(
        metadata=_doc("'com' or 'ca' (Poshmark domain the listing was found on); 'com' for Depop")
    )
    status: str = attrs.field(metadata=_doc("'available' or 'sold'"))
    title: str = attrs.field(metadata=_doc("listing title (Depop: first line of the description)"))
    price: float = attrs.field(metadata=_doc("current asking (or selling) price"))
    currency: str = attrs.field(metadata=_doc("ISO 4217 code of price and original_price"))
    original_price: float | None = attrs.field(
        metadata=_doc("price before reductions / retail price, null when unknown")
    )
    brand: str | None = attrs.field(metadata=_doc("brand name, null when unbranded or unknown"))
    size: str | None = attrs.field(metadata=_doc("size label as shown on the marketplace"))
    condition: str | None = attrs.field(
        metadata=_doc(
            "one of new_with_tags, new, like_new, excellent, good, fair, used; "
            "the marketplace's own code when it has no mapping"
        )
    )
    url: str = attrs.field(metadata=_doc("public listing page"))
    images: tuple[str, ...] = attrs.field(metadata=_doc("image URLs, cover image first"))
    seller: str | None = attrs.field(metadata=_doc("seller's username"))
    country: str | None = attrs.field(metadata=_doc("ISO 3166 alpha-2 country of the listing"))
    created_at: str | None = attrs.field(
        metadata=_doc("listing creation time, UTC ISO-8601 with Z; null when the source has none")
    )

    @property
    def key(self) -> tuple[str, str]:
        """The de-duplication key: one listing is one item, whichever domain showed it."""
        return (self.marketplace, self.id)

    def to_json(self) -> dict[str, Any]:
        """The item as sent on the wire."""
        data = attrs.asdict(self, recurse=False)
        data["images"] = list(self.images)
        return data


def item_fields_reference() -> list[dict[str, str]]:
    """Name, JSON type and meaning of every item field (for ``help`` and docs)."""
    out = []
    for field in attrs.fields(Item):
        out.append(
            {"name": field.name, "type": json_type_name(field.type), "doc": field.metadata["doc"]}
        )
    return out


def json_type_name(annotation: Any) -> str:
    """A field annotation (a class or, before attrs resolves it, a string) in JSON terms."""
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    names = {
        "str": "string",
        "int": "integer",
        "float": "number",
        "bool": "boolean",
        "None": "null",
    }
    parts = []
    for part in text.split("|"):
        part = part.strip()
        if part.startswith(("tuple[", "list[")):
            inner = part[part.index("[") + 1 :].split(",")[0].rstrip("]")
            part = "array of " + names.get(inner.strip(), inner.strip())
        parts.append(names.get(part, part))
    return " | ".join(parts)


def as_dict(value: object) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (marketplace JSON is untrusted)."""
    return value if isinstance(value, dict) else {}


def as_text(value: object) -> str | None:
    """A non-blank string, stripped; None for anything else."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def parse_money(value: object) -> float | None:
    """A price from a marketplace field ("29.0", 29, "1,299.00") or None if it is not one."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(Decimal(value.replace(",", "").strip()))
        except InvalidOperation:
            return None
    else:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return round(number, 2)


def to_utc_iso(value: object) -> str | None:
    """An ISO-8601 timestamp with offset as UTC ``...Z``; None when absent or unparseable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None  # a naive time from upstream has no knowable zone
    return parsed.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
