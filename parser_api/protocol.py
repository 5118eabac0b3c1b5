"""Parser protocol v2.0: envelopes, payloads, error codes and the ``help`` reference.

Every payload is an attrs class structured by the project's converter; the
``help`` action describes these same classes (field docs live in metadata), so
the reference cannot drift from what the server accepts.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from cattrs.gen import make_dict_structure_fn

from parser_api.countries import ISO_COUNTRIES
from parser_api.items import item_fields_reference, json_type_name
from relay.converter import FieldError, InputError, check, converter, structure

__all__ = [
    "ACTIONS",
    "CONFIGURE_TYPES",
    "ENDPOINT",
    "ERROR_CODES",
    "PROTOCOL",
    "Configure",
    "DepopConfigure",
    "EmptyPayload",
    "PoshmarkConfigure",
    "ProtocolError",
    "RequestEnvelope",
    "dumps",
    "error_response",
    "ok_response",
    "parse_configure",
    "protocol_reference",
    "utc_ts",
]

PROTOCOL = "parser-ws/2.0"
ENDPOINT = "/ws/parser"
CLOSE_UNAUTHORIZED = 4401
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_GOING_AWAY = 1001
PARSING_MODES = ("com", "ca", "com+ca")
MAX_COUNT = 100_000
MAX_PRICE = 10_000_000.0

ERROR_CODES: dict[str, str] = {
    "bad_json": "the message is not valid JSON text",
    "bad_request": 'the message is not {"action": string, "payload": object}',
    "message_too_large": "the message is larger than the server's max_message_size",
    "unknown_action": "the action is not one of the protocol's actions",
    "invalid_payload": "the payload does not fit the action; the message names the field",
    "not_configured": "parser.fetch before a successful parser.configure",
    "upstream_blocked": "the marketplace answered 403 (not retried)",
    "upstream_rate_limited": "the marketplace kept answering 429 after the retries",
    "upstream_error": "the marketplace answered 5xx after the retries, or another error status",
    "upstream_bad_response": "the marketplace's answer was not the expected JSON",
    "upstream_unreachable": "the marketplace could not be reached (connect error or timeout)",
    "upstream_timeout": "the whole fetch took longer than the server's fetch_timeout",
    "internal_error": "a bug in the server; the connection stays usable",
}


class ProtocolError(Exception):
    """A request that gets an ``ok:false`` answer; ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


def utc_ts(now: dt.datetime | None = None) -> str:
    """``2026-01-01T00:00:00Z``: the protocol's timestamp form."""
    moment = now if now is not None else dt.datetime.now(dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ok_response(action: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """A successful response envelope."""
    return {"ok": True, "action": action, "ts": utc_ts(), "data": dict(data)}


def error_response(action: str, error: ProtocolError) -> dict[str, Any]:
    """An ``ok:false`` response envelope naming the problem."""
    detail: dict[str, Any] = {"code": error.code, "message": error.message, **error.extra}
    return {"ok": False, "action": action, "ts": utc_ts(), "data": {"error": detail}}


def _spec(doc: str, constraint: str | None = None) -> dict[str, Any]:
    return {"doc": doc, "constraint": constraint}


def _no_ctl(value: str) -> bool:
    return not re.search(r"[\x00-\x1f\x7f]", value)


def _text(max_len: int) -> Callable[[Any, Any, Any], None]:
    return check(
        lambda v: v is None or (1 <= len(v) <= max_len and _no_ctl(v)),
        f"must be 1..{max_len} characters without control characters",
    )


@attrs.frozen
class RequestEnvelope:
    """Every request: ``{"action": "...", "payload": {...}}`` (payload may be omitted)."""

    action: str
    payload: dict[str, Any] = attrs.Factory(dict)


def _batch_field() -> Any:
    return attrs.field(
        default=50,
        validator=check(lambda v: 1 <= v <= 200, "must be between 1 and 200"),
        metadata=_spec("items per parser.fetch", "1..max_batch (200)"),
    )


def _some_quota(instance: PoshmarkConfigure, _attribute: Any, value: int) -> None:
    if instance.ads_count == 0 and value == 0:
        raise FieldError("sales_count", "ads_count and sales_count cannot both be 0")


@attrs.frozen
class PoshmarkConfigure:
    """``parser.configure`` for Poshmark."""

    parser_type: str = attrs.field(
        validator=check(lambda v: v == "poshmark", "must be 'poshmark'"),
        metadata=_spec("selects this payload", "'poshmark'"),
    )
    batch_size: int = _batch_field()
    parsing_mode: str = attrs.field(
        default="com",
        validator=check(lambda v: v in PARSING_MODES, "must be one of 'com', 'ca', 'com+ca'"),
        metadata=_spec("which Poshmark domains to read", "'com' | 'ca' | 'com+ca'"),
    )
    ads_count: int = attrs.field(
        default=100,
        validator=check(lambda v: 0 <= v <= MAX_COUNT, f"must be 0..{MAX_COUNT}"),
        metadata=_spec("total active listings to collect this session", f"0..{MAX_COUNT}"),
    )
    sales_count: int = attrs.field(
        default=0,
        validator=[
            check(lambda v: 0 <= v <= MAX_COUNT, f"must be 0..{MAX_COUNT}"),
            _some_quota,
        ],
        metadata=_spec(
            "total sold listings (inventory_status sold_out) to collect this session",
            f"0..{MAX_COUNT}; ads_count + sales_count > 0",
        ),
    )
    query: str | None = attrs.field(
        default=None,
        validator=_text(200),
        metadata=_spec("search words (extension; default: the whole feed)", "1..200 characters"),
    )


def _valid_country(value: str | None) -> bool:
    return value is None or (len(value) == 2 and value.upper() in ISO_COUNTRIES)


def _price_order(instance: DepopConfigure, _attribute: Any, value: float | None) -> None:
    if value is not None and instance.min_price is not None and value < instance.min_price:
        raise FieldError("max_price", "must be greater than or equal to min_price")


_PRICE = check(lambda v: v is None or 0 <= v <= MAX_PRICE, f"must be 0..{MAX_PRICE:.0f}")


@attrs.frozen
class DepopConfigure:
    """``parser.configure`` for Depop."""

    parser_type: str = attrs.field(
        validator=check(lambda v: v == "depop", "must be 'depop'"),
        metadata=_spec("selects this payload", "'depop'"),
    )
    batch_size: int = _batch_field()
    country_filter: str | None = attrs.field(
        default=None,
        validator=check(
            _valid_country, "must be an ISO 3166-1 alpha-2 country code like 'us' or 'gb'"
        ),
        metadata=_spec("only listings from this country (also sets the currency)", "ISO code"),
    )
    min_price: float | None = attrs.field(
        default=None,
        validator=_PRICE,
        metadata=_spec("lowest price, inclusive", f"0..{MAX_PRICE:.0f}"),
    )
    max_price: float | None = attrs.field(
        default=None,
        validator=[_PRICE, _price_order],
        metadata=_spec("highest price, inclusive", f"0..{MAX_PRICE:.0f}, >= min_price"),
    )
    brand_filter: str | None = attrs.field(
        default=None,
        validator=_text(100),
        metadata=_spec("only this brand (case-insensitive)", "1..100 characters"),
    )
    query: str | None = attrs.field(
        default=None,
        validator=_text(200),
        metadata=_spec("search words (extension; default: the whole feed)", "1..200 characters"),
    )


@attrs.frozen
class EmptyPayload:
    """The payload of actions that take no parameters: ``{}``."""


Configure = PoshmarkConfigure | DepopConfigure
CONFIGURE_TYPES: dict[str, type[PoshmarkConfigure] | type[DepopConfigure]] = {
    "poshmark": PoshmarkConfigure,
    "depop": DepopConfigure,
}

for _cls in (RequestEnvelope, PoshmarkConfigure, DepopConfigure, EmptyPayload):
    converter.register_structure_hook(
        _cls, make_dict_structure_fn(_cls, converter, _cattrs_forbid_extra_keys=True)
    )


def parse_configure(payload: Mapping[str, Any], *, max_batch: int) -> Configure:
    """Structure a ``parser.configure`` payload; raises :class:`InputError` naming the field.

    The ``parser_type`` tag is checked by hand: a cattrs tagged union would
    raise a bare ``KeyError`` for an unknown tag.
    """
    what = "parser.configure payload"
    choices = ", ".join(repr(name) for name in CONFIGURE_TYPES)
    if "parser_type" not in payload:
        raise InputError(f"Invalid {what}: parser_type: required field missing (one of {choices})")
    tag = payload["parser_type"]
    if not isinstance(tag, str) or tag not in CONFIGURE_TYPES:
        raise InputError(f"Invalid {what}: parser_type: must be one of {choices}")
    result = structure(payload, CONFIGURE_TYPES[tag], what=what)
    if result.batch_size > max_batch:
        problem = f"must be between 1 and {max_batch} (this server's max_batch)"
        raise InputError(f"Invalid {what}: batch_size: {problem}")
    return result


@attrs.frozen
class ActionSpec:
    """One action of the protocol, as described by ``help``."""

    name: str
    summary: str
    payload: tuple[type, ...]
    response: Mapping[str, str]


ACTIONS: dict[str, ActionSpec] = {
    spec.name: spec
    for spec in (
        ActionSpec(
            "parser.configure",
            "Set session parameters (parser type, batch size, filters); resets paging",
            (PoshmarkConfigure, DepopConfigure),
            {"configured": "the effective configuration, defaults filled in"},
        ),
        ActionSpec(
            "parser.fetch",
            "Fetch one batch of new items with the current session settings",
            (EmptyPayload,),
            {
                "parser_type": "'poshmark' or 'depop'",
                "count": "number of items in this batch (0 when nothing is left)",
                "items": "array of items (see item_fields)",
                "exhausted": "true when the source has nothing more for this session",
            },
        ),
        ActionSpec(
            "stats.me",
            "Per-connection counters",
            (EmptyPayload,),
            {
                "conn_id": "this connection's id",
                "connected_since": "UTC timestamp of the greeting",
                "requests": "requests received by action (this one included)",
                "requests_total": "all requests received",
                "batches": "successful parser.fetch answers",
                "items_sent": "items sent in those batches",
                "errors": "ok:false answers sent",
                "parser_type": "current parser type or null",
                "upstream": "pages fetched, entries skipped/filtered/duplicated this configuration",
            },
        ),
        ActionSpec(
            "ping", "Heartbeat: answered with action 'pong'", (EmptyPayload,), {"pong": "true"}
        ),
        ActionSpec(
            "help", "Full protocol reference as JSON", (EmptyPayload,), {"...": "this document"}
        ),
    )
}


def _field_reference(cls: type) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for field in attrs.fields(cls):
        required = field.default is attrs.NOTHING
        entry: dict[str, Any] = {
            "name": field.name,
            "type": json_type_name(field.type),
            "required": required,
            "doc": field.metadata.get("doc", ""),
        }
        if not required:
            entry["default"] = field.default
        if field.metadata.get("constraint"):
            entry["constraint"] = field.metadata["constraint"]
        out.append(entry)
    return out


def protocol_reference(
    *, max_batch: int, max_connections: int, max_message_size: int
) -> dict[str, Any]:
    """The ``help`` document: everything a client needs, built from the validating classes."""
    actions: dict[str, Any] = {}
    for spec in ACTIONS.values():
        if spec.name == "parser.configure":
            payload: Any = {
                "one_of_by_parser_type": {
                    tag: _field_reference(cls) for tag, cls in CONFIGURE_TYPES.items()
                }
            }
        else:
            payload = _field_reference(spec.payload[0])
        actions[spec.name] = {
            "summary": spec.summary,
            "payload": payload,
            "response_data": dict(spec.response),
        }
    return {
        "protocol": PROTOCOL,
        "endpoint": ENDPOINT,
        "limits": {
            "max_batch": max_batch,
            "max_connections": max_connections,
            "max_message_size": max_message_size,
        },
        "auth": {
            "query": "?token=ADMIN_TOKEN (takes precedence when both are given)",
            "header": "X-Admin-Token: ADMIN_TOKEN",
            "on_failure": f"close code {CLOSE_UNAUTHORIZED}",
        },
        "close_codes": {
            str(CLOSE_UNAUTHORIZED): "token missing or wrong",
            str(CLOSE_TRY_AGAIN_LATER): f"connection limit ({max_connections}) reached",
            str(CLOSE_GOING_AWAY): "server shutting down",
        },
        "greeting": {"action": "connected", "data": {"conn_id": "string", "protocol": PROTOCOL}},
        "request": {"action": "string", "payload": "object (may be omitted when empty)"},
        "response": {
            "ok": "boolean",
            "action": "the request's action ('pong' for ping; 'error' when unreadable)",
            "ts": "UTC ISO-8601, e.g. 2026-01-01T00:00:00Z",
            "data": 'object; on ok:false {"error": {"code", "message"}}',
        },
        "actions": actions,
        "error_codes": dict(ERROR_CODES),
        "item_fields": item_fields_reference(),
    }


def dumps(message: Mapping[str, Any]) -> str:
    """Compact JSON for the wire."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)
