"""Every action over a real connection: configure, fetch, stats.me, ping, help."""

from __future__ import annotations

import re

import attrs

from parser_api.items import Item
from parser_api.protocol import ACTIONS, ERROR_CODES, DepopConfigure, PoshmarkConfigure
from tests.parser_api.parser_testkit import Client

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def assert_envelope(response: dict[str, object], *, ok: bool, action: str) -> None:
    assert set(response) == {"ok", "action", "ts", "data"}
    assert response["ok"] is ok
    assert response["action"] == action
    assert TS.match(str(response["ts"]))


async def test_configure_answers_the_effective_configuration(client: Client) -> None:
    poshmark = await client.request(
        "parser.configure", {"parser_type": "poshmark", "batch_size": 25}
    )
    assert_envelope(poshmark, ok=True, action="parser.configure")
    assert poshmark["data"]["configured"] == {
        "parser_type": "poshmark",
        "batch_size": 25,
        "parsing_mode": "com",
        "ads_count": 100,
        "sales_count": 0,
        "query": None,
    }
    depop = await client.request(
        "parser.configure",
        {"parser_type": "depop", "batch_size": 40, "country_filter": "us", "min_price": 10,
         "max_price": 200, "brand_filter": "nike"},
    )  # fmt: skip
    assert depop["data"]["configured"] == {
        "parser_type": "depop",
        "batch_size": 40,
        "country_filter": "us",
        "min_price": 10.0,
        "max_price": 200.0,
        "brand_filter": "nike",
        "query": None,
    }


async def test_fetch_returns_the_seed_shape(client: Client) -> None:
    await client.request("parser.configure", {"parser_type": "poshmark", "batch_size": 5})
    response = await client.request("parser.fetch", {})
    assert_envelope(response, ok=True, action="parser.fetch")
    data = response["data"]
    assert data["parser_type"] == "poshmark"
    assert data["count"] == 5 == len(data["items"])
    assert data["exhausted"] is False
    field_names = [field.name for field in attrs.fields(Item)]
    for item in data["items"]:
        assert list(item) == field_names


async def test_ping_answers_pong(client: Client) -> None:
    response = await client.request("ping", {})
    assert_envelope(response, ok=True, action="pong")
    assert response["data"] == {"pong": True}
    assert (await client.request("ping"))["action"] == "pong"  # payload may be omitted


async def test_stats_me_counts_this_connection(client: Client) -> None:
    fresh = await client.request("stats.me", {})
    assert_envelope(fresh, ok=True, action="stats.me")
    assert fresh["data"]["requests"] == {"stats.me": 1}
    assert fresh["data"]["parser_type"] is None
    assert fresh["data"]["upstream"] is None
    await client.request("parser.configure", {"parser_type": "poshmark", "batch_size": 4})
    await client.request("parser.fetch", {})
    await client.request("parser.fetch", {})
    await client.request("ping", {})
    await client.request("nope", {})  # an error
    await client.send("{")  # another error
    await client.recv()
    stats = (await client.request("stats.me", {}))["data"]
    assert stats["conn_id"] == fresh["data"]["conn_id"]
    assert stats["connected_since"] == fresh["data"]["connected_since"]
    assert stats["requests"] == {
        "(invalid)": 2,
        "parser.configure": 1,
        "parser.fetch": 2,
        "ping": 1,
        "stats.me": 2,
    }
    assert stats["requests_total"] == 8
    assert stats["batches"] == 2
    assert stats["items_sent"] == 8
    assert stats["errors"] == 2
    assert stats["parser_type"] == "poshmark"
    assert stats["exhausted"] is False
    assert stats["upstream"]["pages"] >= 1
    assert stats["upstream"]["skipped"] == 1  # the broken post on the first com page


async def test_help_is_generated_from_the_validating_classes(client: Client) -> None:
    response = await client.request("help", {})
    assert_envelope(response, ok=True, action="help")
    reference = response["data"]
    assert reference["protocol"] == "parser-ws/2.0"
    assert reference["endpoint"] == "/ws/parser"
    assert reference["limits"] == {
        "max_batch": 200,
        "max_connections": 10,
        "max_message_size": 65536,
    }
    assert set(reference["actions"]) == set(ACTIONS)
    assert set(reference["close_codes"]) == {"4401", "1013", "1001"}
    assert reference["error_codes"] == ERROR_CODES
    configure = reference["actions"]["parser.configure"]["payload"]["one_of_by_parser_type"]
    for tag, cls in (("poshmark", PoshmarkConfigure), ("depop", DepopConfigure)):
        fields = {entry["name"]: entry for entry in configure[tag]}
        assert list(fields) == [field.name for field in attrs.fields(cls)]
        assert fields["parser_type"]["required"] is True
        assert fields["batch_size"]["default"] == 50
    poshmark = {entry["name"]: entry for entry in configure["poshmark"]}
    assert poshmark["parsing_mode"]["constraint"] == "'com' | 'ca' | 'com+ca'"
    assert poshmark["ads_count"]["type"] == "integer"
    depop = {entry["name"]: entry for entry in configure["depop"]}
    assert depop["min_price"]["type"] == "number | null"
    assert [entry["name"] for entry in reference["item_fields"]] == [
        f.name for f in attrs.fields(Item)
    ]
    assert reference["actions"]["parser.fetch"]["payload"] == []


async def test_reconfigure_restarts_paging_but_keeps_dedup(client: Client) -> None:
    await client.request("parser.configure", {"parser_type": "poshmark", "batch_size": 6})
    first = await client.request("parser.fetch", {})
    await client.request("parser.configure", {"parser_type": "poshmark", "batch_size": 6})
    second = await client.request("parser.fetch", {})
    first_ids = {item["id"] for item in first["data"]["items"]}
    second_ids = {item["id"] for item in second["data"]["items"]}
    assert len(first_ids) == len(second_ids) == 6
    assert not first_ids & second_ids  # the session never sends a listing twice
