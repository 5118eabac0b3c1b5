"""A polite JSON-over-HTTP client for the marketplace sources.

Politeness is per host and shared by every session of the process: one request
in flight per host, ``request_spacing`` seconds between requests, retries with
exponential backoff on 429 / 5xx / transport errors honouring ``Retry-After``
(which also holds back every other session's requests to that host), and no
retry at all on 403, which means "blocked" rather than "busy". A
``Retry-After`` longer than ``max_retry_after`` is not waited out: the host is
closed until then, and every request to it meanwhile is answered
``upstream_rate_limited`` with the remaining time, without contacting it.

How a request leaves (curl_cffi as Chrome, or httpx) is
:mod:`parser_api.sources.fetchers`' business.

The timing rules are pure functions (:func:`parse_retry_after`,
:func:`backoff_delay`); the clock is Trio's, so tests run them under
``autojump_clock``.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import http
import logging
import math
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

import attrs
import httpx
import trio

from parser_api.config import HttpConfig
from parser_api.sources.fetchers import (
    Answer,
    BodyTooLarge,
    Fetcher,
    Route,
    TransportFailure,
    make_fetcher,
)
from relay.converter import InputError, loads_json

__all__ = [
    "DomainGate",
    "Egress",
    "PoliteClient",
    "Route",
    "UpstreamError",
    "backoff_delay",
    "parse_retry_after",
]

log = logging.getLogger("parser_api.http")

# country (ISO alpha-2, upper case, or None) -> the route a request leaves by (None:
# direct). Called for every request, so the choice can change between requests.
Egress = Callable[[str | None], Route | None]


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
        self._closed_until = -math.inf
        self._closed_by: UpstreamError | None = None

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

    def close_for(self, seconds: float, cause: UpstreamError) -> None:
        """Refuse requests to this host for ``seconds`` (a ``Retry-After`` we do not wait out)."""
        until = trio.current_time() + seconds
        if until > self._closed_until:
            self._closed_until, self._closed_by = until, cause

    def refusal(self, where: str) -> UpstreamError | None:
        """The error to answer at once while the host is closed, else None."""
        remaining = self._closed_until - trio.current_time()
        if remaining <= 0 or self._closed_by is None:
            return None
        return UpstreamError(
            "upstream_rate_limited",
            f"{where}: the host asked for a pause (Retry-After); {math.ceil(remaining)} s left,"
            " not contacted",
            status=self._closed_by.status,
            retry_after=float(math.ceil(remaining)),
        )


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
        self._egress = egress
        self.fetcher: Fetcher = make_fetcher(policy, transport)

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` ran and no request has been made since."""
        return self.fetcher.closed

    async def aclose(self) -> None:
        """Close pooled connections (a later request opens new ones)."""
        await self.fetcher.aclose()

    def gate(self, host: str, spacing: float | None = None) -> DomainGate:
        """The politeness gate for ``host`` (created on first use, ``spacing`` apart)."""
        gate = self._gates.get(host)
        if gate is None:
            every = self.policy.request_spacing if spacing is None else spacing
            gate = self._gates[host] = DomainGate(every)
        return gate

    async def get_json(
        self,
        url: str,
        params: Mapping[str, str],
        *,
        headers: Mapping[str, str | None] | None = None,
        country: str | None = None,
        spacing: float | None = None,
    ) -> object:
        """GET ``url`` and return its JSON body, retrying politely; see the module doc.

        ``country`` picks the egress (see :data:`Egress`) when one is configured;
        ``spacing`` overrides ``request_spacing`` for this host.
        """
        host = urlsplit(url).netloc
        where = host + urlsplit(url).path
        gate = self.gate(host, spacing)
        attempt = 0
        while True:
            if (refusal := gate.refusal(where)) is not None:
                raise refusal
            async with gate:
                if (refusal := gate.refusal(where)) is not None:
                    raise refusal
                route = self._egress(country) if self._egress is not None else None
                failure, retry_after, body = await self._attempt(
                    url, params, headers or {}, country, route, where
                )
                if body is not None:
                    return _decode(body, where)
                assert failure is not None
                if retry_after is not None and retry_after > self.policy.max_retry_after:
                    failure.message += f" (Retry-After {retry_after:.0f} s is longer than we wait)"
                    gate.close_for(retry_after, failure)
                    raise failure
                if attempt >= self.policy.max_retries:
                    log.warning(
                        "upstream %s failed after %d attempts: %s", where, attempt + 1, failure
                    )
                    raise failure
                delay = (
                    retry_after if retry_after is not None else backoff_delay(attempt, self.policy)
                )
                gate.defer(delay)
            attempt += 1

    async def _attempt(
        self,
        url: str,
        params: Mapping[str, str],
        headers: Mapping[str, str | None],
        country: str | None,
        route: Route | None,
        where: str,
    ) -> tuple[UpstreamError | None, float | None, bytes | None]:
        """One request: (retryable failure, its Retry-After, body); raises when final."""
        self.requests_sent += 1
        log.debug("GET %s (country %s)", where, country)
        try:
            answer: Answer = await self.fetcher.get(
                url, params, headers, country=country, route=route
            )
        except TransportFailure as exc:
            return UpstreamError("upstream_unreachable", f"{where}: {exc.problem}"), None, None
        except BodyTooLarge:
            raise UpstreamError(
                "upstream_bad_response",
                f"{where}: response larger than {self.policy.max_body_size} bytes",
                status=200,
            ) from None
        status = answer.status
        if status == 200:
            return None, None, answer.body
        phrase = _phrase(status)
        if status == 403:
            raise UpstreamError(
                "upstream_blocked", f"{where} answered 403 {phrase}; not retried", status=status
            )
        if status == 429 or 500 <= status <= 599:
            retry_after = parse_retry_after(answer.headers.get("retry-after"))
            code = "upstream_rate_limited" if status == 429 else "upstream_error"
            error = UpstreamError(
                code, f"{where} answered {status} {phrase}", status=status, retry_after=retry_after
            )
            return error, retry_after, None
        raise UpstreamError("upstream_error", f"{where} answered {status} {phrase}", status=status)


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
