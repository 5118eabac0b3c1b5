"""Request spacing, backoff and Retry-After, on Trio's virtual clock (``autojump_clock``).

The HTTP client runs against httpx's in-memory transport here, so time is
fully virtual; the socket tests cover the same client over real HTTP.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import httpx
import pytest
import trio

from parser_api.config import HttpConfig
from parser_api.sources.http import PoliteClient, UpstreamError, backoff_delay, parse_retry_after


class Upstream:
    """An in-memory marketplace: answers from a script, records virtual request times."""

    def __init__(self, *script: httpx.Response | Callable[[], httpx.Response]) -> None:
        self.script = list(script)
        self.times: list[tuple[str, float]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.times.append((request.url.host, trio.current_time()))
        if self.script:
            answer = self.script.pop(0)
            return answer() if callable(answer) else answer
        return httpx.Response(200, json={"ok": True})

    def at(self, host: str = "a.test") -> list[float]:
        return [t for h, t in self.times if h == host]


def make_client(upstream: Upstream, **policy: float) -> PoliteClient:
    settings: dict[str, float] = {"request_spacing": 2.0, "max_retries": 3, "backoff_base": 1.0}
    settings.update(policy)
    return PoliteClient(HttpConfig(**settings), transport=httpx.MockTransport(upstream))  # type: ignore[arg-type]


async def test_requests_to_one_host_are_spaced_and_other_hosts_are_not(
    autojump_clock: object,
) -> None:
    upstream = Upstream()
    client = make_client(upstream, request_spacing=2.0)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(client.get_json, "https://a.test/x", {})
        nursery.start_soon(client.get_json, "https://b.test/x", {})
    assert [t - start for t in upstream.at("a.test")] == [0.0, 2.0, 4.0]
    assert [t - start for t in upstream.at("b.test")] == [0.0]
    await client.aclose()


async def test_retry_after_is_honoured_and_holds_back_the_whole_host(
    autojump_clock: object,
) -> None:
    upstream = Upstream(httpx.Response(429, headers={"Retry-After": "7"}))
    client = make_client(upstream, request_spacing=0.5)
    start = trio.current_time()

    async def second_session() -> None:
        await trio.sleep(0.1)  # arrives while the first one is being told to wait
        await client.get_json("https://a.test/other", {})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.get_json, "https://a.test/x", {})
        nursery.start_soon(second_session)
    times = [t - start for t in upstream.at()]
    assert times[0] == 0.0
    assert min(times[1:]) >= 7.0  # nobody asked a.test again before Retry-After passed
    assert len(times) == 3
    await client.aclose()


async def test_retry_after_http_date_form(autojump_clock: object) -> None:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    upstream = Upstream(
        httpx.Response(503, headers={"Retry-After": when.strftime("%a, %d %b %Y %H:%M:%S GMT")})
    )
    client = make_client(upstream, request_spacing=0.0)
    start = trio.current_time()
    assert await client.get_json("https://a.test/x", {}) == {"ok": True}
    waited = upstream.at()[1] - start
    assert 25.0 <= waited <= 31.0
    await client.aclose()


async def test_backoff_is_exponential_on_5xx(autojump_clock: object) -> None:
    upstream = Upstream(httpx.Response(500), httpx.Response(502), httpx.Response(503))
    client = make_client(upstream, request_spacing=0.0, backoff_base=1.0, max_retries=3)
    start = trio.current_time()
    assert await client.get_json("https://a.test/x", {}) == {"ok": True}
    assert [t - start for t in upstream.at()] == [0.0, 1.0, 3.0, 7.0]
    await client.aclose()


async def test_gives_up_after_max_retries_with_the_last_status(autojump_clock: object) -> None:
    upstream = Upstream(*[httpx.Response(500)] * 5)
    client = make_client(upstream, request_spacing=0.0, max_retries=2)
    with pytest.raises(UpstreamError) as caught:
        await client.get_json("https://a.test/x", {})
    assert (caught.value.code, caught.value.status) == ("upstream_error", 500)
    assert len(upstream.at()) == 3
    await client.aclose()


async def test_persistent_429_is_reported_as_rate_limited(autojump_clock: object) -> None:
    upstream = Upstream(*[httpx.Response(429)] * 3)
    client = make_client(upstream, request_spacing=0.0, max_retries=2)
    with pytest.raises(UpstreamError) as caught:
        await client.get_json("https://a.test/x", {})
    assert caught.value.code == "upstream_rate_limited"
    await client.aclose()


async def test_a_retry_after_too_long_is_reported_not_waited(autojump_clock: object) -> None:
    upstream = Upstream(httpx.Response(429, headers={"Retry-After": "3600"}))
    client = make_client(upstream, request_spacing=0.0, max_retry_after=60.0)
    start = trio.current_time()
    with pytest.raises(UpstreamError) as caught:
        await client.get_json("https://a.test/x", {})
    assert caught.value.retry_after == 3600.0
    assert "Retry-After" in caught.value.message
    assert trio.current_time() - start < 1.0
    assert len(upstream.at()) == 1
    await client.aclose()


async def test_a_host_that_asked_for_a_long_pause_is_not_contacted_until_then(
    autojump_clock: object,
) -> None:
    upstream = Upstream(httpx.Response(503, headers={"Retry-After": "600"}))
    client = make_client(upstream, request_spacing=0.0, max_retry_after=60.0)
    with pytest.raises(UpstreamError) as first:
        await client.get_json("https://a.test/x", {})
    assert first.value.code == "upstream_error"
    assert first.value.retry_after == 600.0
    await trio.sleep(100)
    # Any later request to that host (any session shares the client) is refused
    # at once with the time left, without contacting it; other hosts are not held.
    with pytest.raises(UpstreamError) as held:
        await client.get_json("https://a.test/y", {})
    assert held.value.code == "upstream_rate_limited"
    assert held.value.retry_after == 500.0
    assert held.value.status == 503
    assert len(upstream.at()) == 1
    assert await client.get_json("https://b.test/z", {}) == {"ok": True}
    await trio.sleep(500)
    assert await client.get_json("https://a.test/y", {}) == {"ok": True}
    assert len(upstream.at()) == 2
    await client.aclose()


async def test_403_is_never_retried(autojump_clock: object) -> None:
    upstream = Upstream(httpx.Response(403))
    client = make_client(upstream)
    with pytest.raises(UpstreamError) as caught:
        await client.get_json("https://a.test/x", {})
    assert (caught.value.code, caught.value.status) == ("upstream_blocked", 403)
    assert len(upstream.at()) == 1
    await client.aclose()


async def test_other_4xx_is_an_error_without_retry(autojump_clock: object) -> None:
    upstream = Upstream(httpx.Response(404))
    client = make_client(upstream)
    with pytest.raises(UpstreamError) as caught:
        await client.get_json("https://a.test/x", {})
    assert (caught.value.code, caught.value.status) == ("upstream_error", 404)
    assert len(upstream.at()) == 1
    await client.aclose()


async def test_transport_errors_are_retried_then_reported(autojump_clock: object) -> None:
    def refuse() -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    upstream = Upstream(refuse, refuse, refuse)
    client = make_client(upstream, request_spacing=0.0, max_retries=2)
    with pytest.raises(UpstreamError) as caught:
        await client.get_json("https://a.test/x", {})
    assert caught.value.code == "upstream_unreachable"
    assert len(upstream.at()) == 3
    await client.aclose()


async def test_malformed_and_oversized_bodies(autojump_clock: object) -> None:
    upstream = Upstream(
        httpx.Response(200, content=b"<html>captcha</html>"),
        httpx.Response(200, content=b"[" + b"1," * 1000 + b"1]"),
    )
    client = make_client(upstream, request_spacing=0.0, max_body_size=1024)
    with pytest.raises(UpstreamError) as caught:
        await client.get_json("https://a.test/x", {})
    assert caught.value.code == "upstream_bad_response"
    with pytest.raises(UpstreamError) as caught:
        await client.get_json("https://a.test/x", {})
    assert caught.value.code == "upstream_bad_response"
    assert "larger than 1024" in caught.value.message
    assert len(upstream.at()) == 2  # neither was retried
    await client.aclose()


def test_parse_retry_after_forms() -> None:
    now = dt.datetime(2026, 1, 1, 0, 0, 0, tzinfo=dt.UTC)
    assert parse_retry_after("120", now=now) == 120.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 31 Dec 2025 23:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None


def test_backoff_delay_is_capped() -> None:
    policy = HttpConfig(backoff_base=1.0, backoff_max=5.0)
    assert [backoff_delay(n, policy) for n in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
