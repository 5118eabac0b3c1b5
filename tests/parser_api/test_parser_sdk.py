"""``GatewayClient`` under Trio and under asyncio, against the real server."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from parser_api.app import create_app
from tests.parser_api.parser_fake_marketplace import FakeMarketplace
from tests.parser_api.parser_testkit import (
    TOKEN,
    ParserServer,
    ThreadedServers,
    hypercorn_config,
    make_config,
    serve,
    start_parser,
    wait_until,
)
from ws_gateway.client import (
    AuthenticationError,
    GatewayClient,
    GatewayError,
    HandshakeError,
    NotConfiguredError,
    RequestError,
    ServerBusyError,
    UpstreamError,
    parser_ws_url,
)


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://example.test", "ws://example.test/ws/parser"),
        ("https://example.test/", "wss://example.test/ws/parser"),
        ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/ws/parser"),
        ("https://example.test:8443/gw", "wss://example.test:8443/gw/ws/parser"),
    ],
)
def test_ws_url_is_derived_from_the_http_base(base: str, expected: str) -> None:
    assert parser_ws_url(base) == expected
    assert GatewayClient(base_http_url=base, admin_token="t").url == expected


@pytest.mark.parametrize("base", ["ftp://x", "example.test", ""])
def test_bad_base_url(base: str) -> None:
    with pytest.raises(ValueError, match="base_http_url"):
        GatewayClient(base_http_url=base, admin_token="t")


def test_ca_may_be_a_context() -> None:
    context = ssl.create_default_context()
    client = GatewayClient(base_http_url="https://x.test", admin_token="t", ca=context)
    assert client._ssl is context


async def test_every_call_under_trio(parser: ParserServer) -> None:
    client = GatewayClient(base_http_url=parser.http_base, admin_token=TOKEN)
    async with client:
        assert client.conn_id is not None
        assert len(client.conn_id) == 24
        assert (await client.ping())["action"] == "pong"
        configured = await client.configure_poshmark(
            batch_size=10, parsing_mode="com+ca", sales_count=2
        )
        assert configured["data"]["configured"]["parsing_mode"] == "com+ca"
        batch = await client.fetch_batch()
        assert batch["ok"] is True
        assert batch["data"]["count"] == 10
        depop = await client.configure_depop(
            batch_size=4, country_filter="us", min_price=10, brand_filter="Nike"
        )
        assert depop["data"]["configured"]["country_filter"] == "us"
        batch = await client.fetch_batch()
        assert batch["data"]["count"] == 4
        assert all(
            item["brand"] == "Nike" and item["price"] >= 10 for item in batch["data"]["items"]
        )
        stats = await client.stats()
        assert stats["data"]["batches"] == 2
        assert stats["data"]["items_sent"] == 14
        reference = await client.help()
        assert reference["data"]["protocol"] == "parser-ws/2.0"
    await _drained(parser)
    with pytest.raises(GatewayError, match="not connected"):
        await client.ping()


async def _drained(parser: ParserServer) -> None:
    await wait_until(lambda: parser.app.active == 0)


async def test_errors_are_typed_and_the_connection_survives(parser: ParserServer) -> None:
    async with GatewayClient(base_http_url=parser.http_base, admin_token=TOKEN) as client:
        with pytest.raises(NotConfiguredError) as not_configured:
            await client.fetch_batch()
        assert not_configured.value.code == "not_configured"
        with pytest.raises(RequestError) as invalid:
            await client.configure_poshmark(batch_size=500)
        assert invalid.value.code == "invalid_payload"
        assert "batch_size" in invalid.value.message
        assert invalid.value.response["ok"] is False
        await client.configure_depop(batch_size=3)
        parser.market.fail("depop", (403, {}, b""))
        with pytest.raises(UpstreamError) as upstream:
            await client.fetch_batch()
        assert upstream.value.code == "upstream_blocked"
        assert (await client.fetch_batch())["data"]["count"] == 3


async def test_wrong_token_raises_authentication_error(parser: ParserServer) -> None:
    client = GatewayClient(base_http_url=parser.http_base, admin_token="wrong")
    with pytest.raises(AuthenticationError) as caught:
        async with client:
            pass
    assert caught.value.code == 4401
    assert "wrong" not in str(caught.value)


async def test_full_server_raises_server_busy(
    nursery: trio.Nursery, market: FakeMarketplace
) -> None:
    server = await start_parser(nursery, market, max_connections=1)
    async with GatewayClient(base_http_url=server.http_base, admin_token=TOKEN):
        with pytest.raises(ServerBusyError) as caught:
            async with GatewayClient(base_http_url=server.http_base, admin_token=TOKEN):
                pass
        assert caught.value.code == 1013
    await _drained(server)
    async with GatewayClient(base_http_url=server.http_base, admin_token=TOKEN) as client:
        assert (await client.ping())["ok"] is True  # the slot came back


async def test_refused_upgrade_and_refused_connection(parser: ParserServer) -> None:
    with pytest.raises(HandshakeError) as caught:
        async with GatewayClient(base_http_url=parser.http_base + "/elsewhere", admin_token=TOKEN):
            pass
    assert caught.value.status == 403  # a WebSocket path other than /ws/parser
    with pytest.raises(GatewayError, match="cannot connect"):
        async with GatewayClient(base_http_url="http://127.0.0.1:1", admin_token=TOKEN):
            pass


async def test_client_can_reconnect_after_exit(parser: ParserServer) -> None:
    client = GatewayClient(base_http_url=parser.http_base, admin_token=TOKEN)
    ids = []
    for _ in range(2):
        async with client:
            ids.append(client.conn_id)
            assert (await client.ping())["ok"] is True
    assert ids[0] != ids[1]


async def _asyncio_session(base: str) -> dict[str, Any]:
    async with GatewayClient(base_http_url=base, admin_token=TOKEN) as client:
        await client.configure_poshmark(batch_size=20, parsing_mode="ca")
        batch = await client.fetch_batch()
        with pytest.raises(RequestError):
            await client.request("nope")
        stats = await client.stats()
        return {"batch": batch, "stats": stats, "pong": await client.ping()}


def test_every_call_under_asyncio(threaded: ThreadedServers) -> None:
    result = asyncio.run(_asyncio_session(threaded.http_base))
    assert result["batch"]["data"]["count"] == 20
    assert {item["site"] for item in result["batch"]["data"]["items"]} == {"ca"}
    assert result["stats"]["data"]["errors"] == 1
    assert result["pong"]["action"] == "pong"


def test_typed_closes_under_asyncio(threaded: ThreadedServers) -> None:
    async def main() -> None:
        with pytest.raises(AuthenticationError):
            async with GatewayClient(base_http_url=threaded.http_base, admin_token="bad"):
                pass

    asyncio.run(main())


async def test_a_timed_out_request_drops_the_connection(parser: ParserServer) -> None:
    parser.market.delay["com"] = 60.0
    client = GatewayClient(base_http_url=parser.http_base, admin_token=TOKEN)
    async with client:
        await client.configure_poshmark()
        client.timeout = 0.5  # only the fetch, which the hung marketplace never answers
        with pytest.raises(TimeoutError):
            await client.fetch_batch()
        # A late answer would be mistaken for the next one's, so the client disconnected.
        with pytest.raises(GatewayError, match="not connected"):
            await client.ping()
    await _drained(parser)


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


async def test_https_base_url_with_a_private_ca(
    nursery: trio.Nursery, market: FakeMarketplace, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    config = hypercorn_config()
    config.certfile, config.keyfile = str(cert), str(key)
    app = create_app(make_config(market))
    base = await serve(nursery, app, config)
    assert base.startswith("https://")
    async with GatewayClient(base_http_url=base, admin_token=TOKEN, ca=str(cert)) as client:
        assert client.url.startswith("wss://")
        assert (await client.ping())["action"] == "pong"
    context = ssl.create_default_context(cafile=str(cert))
    async with GatewayClient(base_http_url=base, admin_token=TOKEN, ca=context) as client:
        assert (await client.ping())["ok"] is True
    with pytest.raises(GatewayError, match="CERTIFICATE_VERIFY_FAILED"):  # not a system CA
        async with GatewayClient(base_http_url=base, admin_token=TOKEN):
            pass
