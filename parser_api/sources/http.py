"""A polite JSON-over-HTTP client for the marketplace sources.

Politeness is per host and shared by every session of the process: one request
in flight per host, ``request_spacing`` seconds between requests, retries with
exponential backoff on 429 / 5xx / transport errors honouring ``Retry-After``
(which also holds back every other session's requests to that host), and no
retry at all on 403, which means "blocked" rather than "busy".

The timing rules are pure functions (:func:`parse_retry_after`,
:func:`backoff_delay`); the clock is Trio's, so tests run them under
``autojump_clock``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import http
import logging
import math
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import cast
from urllib.parse import urlsplit

import attrs
import httpx
import trio

from parser_api.config import HttpConfig
from relay.converter import InputError, loads_json

__all__ = [
    "DomainGate",
    "Egress",
    "PoliteClient",
    "UpstreamError",
    "backoff_delay",
    "parse_retry_after",
]

log = logging.getLogger("parser_api.http")

# country (ISO alpha-2, upper case, or None) -> transport requests leave through (None: direct)
Egress = Callable[[str | None], httpx.AsyncBaseTransport | None]


@attrs.define
class UpstreamError(Exception):
    """A marketplace request that failed for good; ``code`` is the protocol error code."""

    code: str
    message: str
    status: int | None = None
    retry_after: float | None = None

    def __str__(self) -> str:
        return self.message


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    current = now if now is not None else dt.datetime.now(dt.UTC)
    return max(0.0, (when - current).total_seconds())


def backoff_delay(attempt: int, policy: HttpConfig) -> float:
    """Exponential backoff before retry number ``attempt + 1`` (attempt counts from 0)."""
    return float(min(policy.backoff_max, policy.backoff_base * (2**attempt)))


class DomainGate:
    """One request at a time to a host, ``spacing`` seconds apart; retries can push it back."""

    def __init__(self, spacing: float) -> None:
        self._spacing = spacing
        self._lock = trio.Lock()
        self._next_allowed = -math.inf

    async def __aenter__(self) -> DomainGate:
        await self._lock.acquire()
        try:
            await trio.sleep_until(self._next_allowed)
        except BaseException:
            self._lock.release()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.defer(self._spacing)
        self._lock.release()

    def defer(self, seconds: float) -> None:
        """Allow no request to this host for ``seconds`` from now."""
        self._next_allowed = max(self._next_allowed, trio.current_time() + seconds)


class PoliteClient:
    """GETs JSON from marketplaces; raises :class:`UpstreamError` with a protocol code."""

    def __init__(
        self,
        policy: HttpConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        egress: Egress | None = None,
    ) -> None:
        self.policy = policy
        self.requests_sent = 0
        self._gates: dict[str, DomainGate] = {}
        self._transport = transport
        self._egress = egress
        self._clients: dict[str | None, httpx.AsyncClient] = {}

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` ran and no request has been made since."""
        return not self._clients

    async def aclose(self) -> None:
        """Close pooled connections (a later request opens new ones)."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    def _client_for(self, country: str | None) -> httpx.AsyncClient:
        key = country if self._egress is not None else None
        client = self._clients.get(key)
        if client is None:
            transport = self._egress(country) if self._egress is not None else self._transport
            # trust_env=False: the gateway picks the egress, not whatever HTTP_PROXY
            # happens to be set in the server's environment.
            client = self._clients[key] = httpx.AsyncClient(
                transport=transport,
                timeout=self.policy.timeout,
                follow_redirects=False,
                trust_env=False,
                headers={"User-Agent": self.policy.user_agent, "Accept": "application/json"},
            )
        return client

    def gate(self, host: str) -> DomainGate:
        """The politeness gate for ``host`` (created on first use)."""
        gate = self._gates.get(host)
        if gate is None:
            gate = self._gates[host] = DomainGate(self.policy.request_spacing)
        return gate

    async def get_json(
        self,
        url: str,
        params: Mapping[str, str],
        *,
        headers: Mapping[str, str] | None = None,
        country: str | None = None,
    ) -> object:
        """GET ``url`` and return its JSON body, retrying politely; see the module doc.

        ``country`` picks the egress (see :data:`Egress`) when one is configured.
        """
        host = urlsplit(url).netloc
        where = host + urlsplit(url).path
        gate = self.gate(host)
        attempt = 0
        while True:
            async with gate:
                client = self._client_for(country)
                failure, retry_after, body = await self._attempt(
                    client, url, params, headers, where
                )
                if body is not None:
                    return _decode(body, where)
                assert failure is not None
                if attempt >= self.policy.max_retries:
                    log.warning(
                        "upstream %s failed after %d attempts: %s", where, attempt + 1, failure
                    )
                    raise failure
                if retry_after is not None and retry_after > self.policy.max_retry_after:
                    failure.message += f" (Retry-After {retry_after:.0f} s is longer than we wait)"
                    raise failure
                delay = (
                    retry_after if retry_after is not None else backoff_delay(attempt, self.policy)
                )
                gate.defer(delay)
            attempt += 1

    async def _attempt(
        self,
        client: httpx.AsyncClient,
        url: str,
        params: Mapping[str, str],
        headers: Mapping[str, str] | None,
        where: str,
    ) -> tuple[UpstreamError | None, float | None, bytes | None]:
        """One request: (retryable failure, its Retry-After, body); raises when final."""
        self.requests_sent += 1
        try:
            async with client.stream("GET", url, params=params, headers=headers) as response:
                status = response.status_code
                if status == 200:
                    return None, None, await self._read_limited(response, where)
                await response.aclose()
        except httpx.TimeoutException:
            return UpstreamError("upstream_unreachable", f"{where}: request timed out"), None, None
        except httpx.TransportError as exc:
            problem = type(exc).__name__
            return UpstreamError("upstream_unreachable", f"{where}: {problem}"), None, None
        phrase = _phrase(status)
        if status == 403:
            raise UpstreamError(
                "upstream_blocked", f"{where} answered 403 {phrase}; not retried", status=status
            )
        if status == 429 or 500 <= status <= 599:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            code = "upstream_rate_limited" if status == 429 else "upstream_error"
            error = UpstreamError(
                code, f"{where} answered {status} {phrase}", status=status, retry_after=retry_after
            )
            return error, retry_after, None
        raise UpstreamError("upstream_error", f"{where} answered {status} {phrase}", status=status)

    async def _read_limited(self, response: httpx.Response, where: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        # aiter_bytes() is an async generator (typed as an iterator): close it when we
        # stop early, or Trio warns when it is garbage collected unfinished.
        body = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
        async with contextlib.aclosing(body) as stream:
            async for chunk in stream:
                size += len(chunk)
                if size > self.policy.max_body_size:
                    raise UpstreamError(
                        "upstream_bad_response",
                        f"{where}: response larger than {self.policy.max_body_size} bytes",
                        status=200,
                    )
                chunks.append(chunk)
        return b"".join(chunks)


def _decode(body: bytes, where: str) -> object:
    try:
        return loads_json(body, what=f"response from {where}")
    except InputError as exc:
        raise UpstreamError("upstream_bad_response", _short(str(exc)), status=200) from None


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "(unknown status)"


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
