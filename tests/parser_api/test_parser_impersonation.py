"""The parser's upstream requests look like the configured desktop Chrome.

A local TLS server records each raw ClientHello and the HTTP/2 request
(tests/support/clienthello.py); JA3N/JA4 and the HTTP/2 fingerprint are
computed here from those bytes, never asked of the client library. The
reference is a plain curl_cffi request with the same profile to the same kind
of recorder: what proves the parser's request is the profile's is equality
with it, and what proves it is not Python's is inequality with ``ssl``'s.

What this does *not* prove: that curl_cffi's profile equals a live Chrome of
that version (that is curl-impersonate's claim, checked by its maintainers
against real browsers, and cannot be checked without the internet here).
Chrome shuffles its TLS extension order per connection, so raw JA3 differs
between any two Chrome connections; JA3N (sorted extensions) and JA4 do not.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
import trustme

from parser_api.config import HttpConfig, resolve_profile
from parser_api.sources.depop import DepopFilters, depop_feed
from parser_api.sources.http import PoliteClient, Route, UpstreamError
from relay.config import AgentConfig
from tests.parser_api.parser_fake_marketplace import FakeMarketplace
from tests.parser_api.parser_testkit import TOKEN, make_config
from tests.support.clienthello import Connection, HelloRecorder, ja3n, ja4
from tests.support.gateway import make_config as gateway_config
from tests.support.gateway import start_gateway
from tests.support.proxies import microsocks, tinyproxy, tls_front
from ws_gateway.client import GatewayClient

EMPTY_DEPOP_PAGE = json.dumps({"meta": {}, "page_info": {"has_more": False}, "objects": []})
RESPONSE = ("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n" + EMPTY_DEPOP_PAGE).encode()
# Chrome's HTTP/2 pseudo-header order: :method, :authority, :scheme, :path.
CHROME_PSEUDO_ORDER = "m,a,s,p"


@attrs.frozen
class Pki:
    ca: trustme.CA
    ca_file: str

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("pki") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return Pki(ca, str(path))


@pytest.fixture
def recorder(pki: Pki) -> Iterator[HelloRecorder]:
    with HelloRecorder(pki.server_context(), alpn=("h2", "http/1.1"), response=RESPONSE) as rec:
        yield rec


def reference(pki: Pki, profile: str) -> Connection:
    """A plain curl_cffi GET with ``profile``: the profile as the library produces it."""
    from curl_cffi import requests

    with HelloRecorder(pki.server_context(), alpn=("h2", "http/1.1"), response=RESPONSE) as rec:
        requests.get(rec.url("/reference"), impersonate=profile, verify=pki.ca_file)  # type: ignore[arg-type]
        return rec.wait_for(1)[0]


async def depop_request(recorder: HelloRecorder, policy: HttpConfig, route: Route | None) -> None:
    """One Depop search page, as a session would ask for it, to ``recorder``."""
    client = PoliteClient(policy, egress=lambda country: route)
    feed = depop_feed(
        client, base_url=recorder.url(""), filters=DepopFilters(country="gb"), page_size=24
    )
    try:
        await feed.fetch(None)
    finally:
        await client.aclose()


def chrome_policy(pki: Pki, profile: str = "chrome") -> HttpConfig:
    return HttpConfig(
        impersonate=profile, ca_file=pki.ca_file, max_retries=0, timeout=10.0, request_spacing=0
    )


def assert_same_client(ours: Connection, theirs: Connection) -> None:
    """Same TLS and HTTP/2 fingerprint, same browser headers in the same order."""
    mine, ref = ours.hello, theirs.hello
    assert ja4(mine) == ja4(ref)
    assert ja3n(mine) == ja3n(ref)
    assert mine.cipher_suites[1:] == ref.cipher_suites[1:]  # [0] is a random GREASE value
    assert mine.alpn == ref.alpn == (b"h2", b"http/1.1")
    assert mine.signature_algorithms == ref.signature_algorithms
    assert ours.alpn == theirs.alpn == "h2"
    assert ours.akamai_h2 == theirs.akamai_h2
    assert ours.akamai_h2 is not None
    assert ours.akamai_h2.endswith("|" + CHROME_PSEUDO_ORDER)
    # The browser's identity headers are the profile's own, in the profile's order.
    for name in ("user-agent", "sec-ch-ua", "sec-ch-ua-mobile", "sec-ch-ua-platform"):
        assert ours.header(name) == theirs.header(name), name
    names = [name for name, _ in ours.headers]
    ref_names = [name for name, _ in theirs.headers]
    shared = [n for n in ref_names if n in names]
    assert [n for n in names if n in ref_names] == shared
    assert {"user-agent", "sec-ch-ua", "accept-encoding", "accept-language"} <= set(shared)


def ua_version(connection: Connection) -> tuple[str, str]:
    """(Chrome major in the User-Agent, Chrome major in sec-ch-ua)."""
    agent = connection.header("user-agent") or ""
    hints = connection.header("sec-ch-ua") or ""
    ua = re.search(r"Chrome/(\d+)\.", agent)
    ch = re.search(r'"Google Chrome";v="(\d+)"', hints)
    assert ua is not None
    assert ch is not None
    return ua.group(1), ch.group(1)


async def test_a_parser_request_is_the_chrome_profiles(pki: Pki, recorder: HelloRecorder) -> None:
    await depop_request(recorder, chrome_policy(pki), None)
    (ours,) = await trio.to_thread.run_sync(recorder.wait_for, 1)
    theirs = await trio.to_thread.run_sync(reference, pki, resolve_profile("chrome"))
    assert_same_client(ours, theirs)
    assert ours.request_line is not None
    assert ours.request_line.startswith("GET /presentation/api/v1/search/products/?")
    # A fetch() from the web app, not a navigation.
    assert ours.header("sec-fetch-mode") == "cors"
    assert ours.header("sec-fetch-dest") == "empty"
    assert ours.header("upgrade-insecure-requests") is None
    assert (
        ours.header(
            "accept",
        )
        is not None
    )
    assert "application/json" in (ours.header("accept") or "")


async def test_user_agent_and_client_hints_name_the_profiles_chrome(
    pki: Pki, recorder: HelloRecorder
) -> None:
    await depop_request(recorder, chrome_policy(pki), None)
    await depop_request(recorder, chrome_policy(pki, "chrome146"), None)
    default, pinned = await trio.to_thread.run_sync(recorder.wait_for, 2)
    newest = resolve_profile("chrome").removeprefix("chrome")
    assert ua_version(default) == (newest, newest)
    assert ua_version(pinned) == ("146", "146")
    for connection in (default, pinned):
        platform = connection.header("sec-ch-ua-platform")
        agent = connection.header("user-agent") or ""
        assert (platform, "Windows NT" in agent or "Macintosh" in agent) in (
            ('"Windows"', True),
            ('"macOS"', True),
        )
        assert ("Windows NT" in agent) == (platform == '"Windows"')
    # Each pinned profile has its own ClientHello as the library builds it.
    assert ja4(pinned.hello) == ja4(
        (await trio.to_thread.run_sync(reference, pki, "chrome146")).hello
    )


async def test_python_ssl_and_the_plain_client_differ(pki: Pki, recorder: HelloRecorder) -> None:
    await depop_request(recorder, chrome_policy(pki), None)
    plain = HttpConfig(impersonate="none", ca_file=pki.ca_file, max_retries=0, timeout=10.0)
    await depop_request(recorder, plain, None)
    chrome, httpx_client = await trio.to_thread.run_sync(recorder.wait_for, 2)
    assert ja4(chrome.hello) != ja4(httpx_client.hello)
    assert ja3n(chrome.hello) != ja3n(httpx_client.hello)
    # Python's ssl default context, the client a plain Python HTTP stack uses.
    context = ssl.create_default_context()
    assert ja4(chrome.hello).split("_")[1] != ja4(httpx_client.hello).split("_")[1]
    python_ciphers = {c["id"] & 0xFFFF for c in context.get_ciphers()}
    assert set(httpx_client.hello.cipher_suites) - {0x00FF} == python_ciphers
    assert httpx_client.header("user-agent") == (
        "Mozilla/5.0 (compatible; ws-relay-gateway-parser/0.1)"
    )


async def test_cookies_are_kept_per_country_and_host(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    setting = (
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        "set-cookie: __cf_bm=bot-check-value; Path=/; Secure; HttpOnly\r\n\r\n" + EMPTY_DEPOP_PAGE
    ).encode()
    with HelloRecorder(pki.server_context(), alpn=("h2",), response=setting) as rec:
        client = PoliteClient(chrome_policy(pki))
        url = rec.url("/presentation/api/v1/search/products/")
        try:
            await client.get_json(url, {}, country="GB")
            await client.get_json(url, {}, country="GB")
            await client.get_json(url, {}, country="US")
        finally:
            await client.aclose()
        first, second, other = await trio.to_thread.run_sync(rec.wait_for, 3)
    assert first.header("cookie") is None
    assert second.header("cookie") == "__cf_bm=bot-check-value"
    assert other.header("cookie") is None  # another country's egress has its own jar
    # The client's log lines (the recorder's own hpack debug output aside) name no cookie.
    ours = [r for r in caplog.records if r.name.startswith(("parser_api", "curl_cffi", "httpx"))]
    assert ours
    assert not [r for r in ours if "bot-check-value" in r.getMessage()]


@asynccontextmanager
async def proxy_url(kind: str, pki: Pki) -> AsyncIterator[str]:
    """A real proxy of ``kind`` whose outgoing connections come from 127.0.0.9."""
    if kind == "socks5":
        async with microsocks(user="scraper", password="pa55-q8", bind="127.0.0.9") as socks:
            yield socks.url("scraper", "pa55-q8")
        return
    async with tinyproxy(user="scraper", password="pa55-q8", bind="127.0.0.9") as http:
        if kind == "http":
            yield http.url("scraper", "pa55-q8")
            return
        async with tls_front(http.port, pki.server_context()) as front:
            yield front.url("scraper", "pa55-q8")


@pytest.mark.parametrize("kind", ["socks5", "http", "https"])
# pytest resets the fetcher module's filter for curl_cffi's "did you mean http://" warning.
@pytest.mark.filterwarnings("ignore:Make sure you are using https over https proxy")
async def test_through_a_proxy_agent_the_request_is_the_same(
    nursery: trio.Nursery, pki: Pki, recorder: HelloRecorder, market: FakeMarketplace, kind: str
) -> None:
    async with proxy_url(kind, pki) as url:
        agents = (
            AgentConfig(slug="local"),
            AgentConfig(slug="gb1", country="GB", kind="proxy", proxy=url, ca_file=pki.ca_file),
        )
        parser = make_config(market)
        parser = attrs.evolve(
            parser,
            http=attrs.evolve(parser.http, impersonate="chrome", ca_file=pki.ca_file),
            depop=attrs.evolve(parser.depop, base_url=recorder.url("")),
        )
        config = attrs.evolve(gateway_config(agents=agents), parser=parser)
        running = await start_gateway(nursery, config)
        async with GatewayClient(
            base_http_url=running.address.http_url, admin_token=TOKEN
        ) as client:
            await client.configure_depop(batch_size=5, country_filter="gb")
            batch = await client.fetch_batch()
        assert batch["ok"] is True
        assert batch["data"]["exhausted"] is True
    (ours,) = await trio.to_thread.run_sync(recorder.wait_for, 1)
    assert ours.peer[0] == "127.0.0.9"  # it left through the proxy
    theirs = await trio.to_thread.run_sync(reference, pki, resolve_profile("chrome"))
    assert_same_client(ours, theirs)


def test_unknown_profile_is_a_config_error_naming_the_field() -> None:
    from parser_api.config import ParserConfig
    from relay.converter import InputError, structure

    with pytest.raises(InputError, match=r"http\.impersonate"):
        structure({"http": {"impersonate": "chrome1"}}, ParserConfig, what="[parser] config")
    with pytest.raises(InputError, match=r"http\.user_agent"):
        structure({"http": {"user_agent": "x"}}, ParserConfig, what="[parser] config")
    assert Path(__file__).exists()


async def test_a_transport_failure_through_curl_is_upstream_unreachable(pki: Pki) -> None:
    with HelloRecorder() as rec:  # drops every connection after the ClientHello
        client = PoliteClient(chrome_policy(pki))
        try:
            with pytest.raises(UpstreamError) as caught:
                await client.get_json(rec.url("/x"), {})
        finally:
            await client.aclose()
    assert caught.value.code == "upstream_unreachable"


async def test_an_oversized_body_through_curl_is_refused(pki: Pki) -> None:
    big = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n[" + b"1," * 4000 + b"1]"
    with HelloRecorder(pki.server_context(), alpn=("h2",), response=big) as rec:
        client = PoliteClient(attrs.evolve(chrome_policy(pki), max_body_size=1024))
        try:
            with pytest.raises(UpstreamError) as caught:
                await client.get_json(rec.url("/big"), {})
        finally:
            await client.aclose()
    assert caught.value.code == "upstream_bad_response"
    assert "larger than 1024 bytes" in caught.value.message
