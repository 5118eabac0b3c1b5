"""How one marketplace GET leaves the process: curl_cffi as desktop Chrome, or httpx.

The marketplaces sit behind bot checks that look at the TLS ClientHello, the
HTTP/2 settings and the header set, so by default requests go through
curl_cffi (curl-impersonate): its Chrome profiles send Chrome's ClientHello,
HTTP/2 SETTINGS and header order, and a User-Agent and ``sec-ch-ua`` naming
the same Chrome version as the TLS profile (the profile sets both; this module
never overrides them). ``impersonate = "none"`` keeps the plain httpx client.
docs/decisions/0011-browser-grade-parser-http.md says why curl_cffi.

curl_cffi's async API runs on asyncio, and the server is Trio, so the sync API
runs in Trio worker threads (a :class:`trio.CapacityLimiter` bounds them). A
cancelled request abandons its thread: the request finishes (bounded by
``timeout``) and its result is dropped. One curl session is kept per country
egress and host, so connections are reused and the site's cookies (bot-check
cookies such as ``__cf_bm``, session cookies) are sent back as a browser's
jar would; a lock per session keeps an abandoned request and the next one
from sharing a curl handle. Cookie values are never logged.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import tempfile
import threading
import warnings
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import attrs
import httpx
import trio

from parser_api.config import HttpConfig, resolve_profile

__all__ = [
    "API_HEADERS",
    "Answer",
    "BodyTooLarge",
    "CurlFetcher",
    "Fetcher",
    "HttpxFetcher",
    "Route",
    "TransportFailure",
    "make_fetcher",
]

log = logging.getLogger("parser_api.http")

# The web apps call their JSON APIs with fetch(): Chrome then sends these
# instead of a navigation's. None removes a header the profile would add for
# a navigation (curl_cffi drops a header whose value is None).
API_HEADERS: dict[str, str | None] = {
    "accept": "application/json, text/plain, */*",
    "sec-fetch-site": "same-origin",
    "sec-fetch-mode": "cors",
    "sec-fetch-dest": "empty",
    "priority": "u=1, i",
    "upgrade-insecure-requests": None,
    "sec-fetch-user": None,
    "cache-control": None,
}
# curl_cffi warns about every https:// proxy URL in case "http://" was meant;
# here https:// always means TLS to the proxy (a proxy agent's own choice).
warnings.filterwarnings("ignore", message="Make sure you are using https over https proxy")
# A site's cookies per (country, host); a browser keeps ~180 per domain.
MAX_COOKIES = 100
_THREADS = 16


@attrs.frozen
class Route:
    """Where a request leaves from: a proxy URL and/or a local address (None: direct).

    ``proxy`` is ``scheme://[user:pass@]host:port`` (``http``, ``https``,
    ``socks5``, ``socks5h``; credentials percent-encoded) and never shown in
    reprs; ``proxy_ssl`` verifies an ``https://`` proxy.
    """

    proxy: str | None = attrs.field(default=None, repr=False)
    local_address: str | None = None
    proxy_ssl: ssl.SSLContext | None = attrs.field(default=None, repr=False, eq=False)


@attrs.frozen
class Answer:
    """A response: status, headers (lower-case names) and the body (200 only)."""

    status: int
    headers: Mapping[str, str]
    body: bytes = b""


class TransportFailure(Exception):
    """No HTTP answer: connect error, reset, TLS failure or timeout."""

    def __init__(self, problem: str, *, timed_out: bool = False) -> None:
        super().__init__(problem)
        self.problem = problem
        self.timed_out = timed_out


class BodyTooLarge(Exception):
    """The body passed ``max_body_size``."""


class Fetcher(Protocol):
    """One GET at a time per caller; see the module doc."""

    @property
    def closed(self) -> bool:
        """True when no connection or session is held."""
        ...

    async def get(
        self,
        url: str,
        params: Mapping[str, str],
        headers: Mapping[str, str | None],
        *,
        country: str | None,
        route: Route | None,
    ) -> Answer:
        """GET ``url``; raises :class:`TransportFailure` or :class:`BodyTooLarge`."""
        ...

    async def aclose(self) -> None:
        """Release connections and sessions (a later request opens new ones)."""
        ...


def make_fetcher(policy: HttpConfig, transport: httpx.AsyncBaseTransport | None = None) -> Fetcher:
    """curl_cffi for a Chrome profile; httpx for ``impersonate = "none"`` or a test transport."""
    if policy.impersonate == "none" or transport is not None:
        return HttpxFetcher(policy, transport)
    return CurlFetcher(policy)


class _HttpxLogFilter(logging.Filter):
    """httpx logs every request, full URL included, at INFO: demote those lines to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and str(record.msg).startswith("HTTP Request:"):
            if not log.isEnabledFor(logging.DEBUG):
                return False
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_HTTPX_FILTER = _HttpxLogFilter()


class HttpxFetcher:
    """The plain client: httpx, Python's TLS, ``user_agent``; one pool per route."""

    def __init__(
        self, policy: HttpConfig, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.policy = policy
        self._transport = transport
        self._clients: dict[Route | None, httpx.AsyncClient] = {}
        logging.getLogger("httpx").addFilter(_HTTPX_FILTER)  # idempotent

    @property
    def closed(self) -> bool:
        """True when no pool is open."""
        return not self._clients

    def _verify(self) -> ssl.SSLContext | bool:
        if self.policy.ca_file is None:
            return True
        return ssl.create_default_context(cafile=self.policy.ca_file)

    def _client(self, route: Route | None) -> httpx.AsyncClient:
        client = self._clients.get(route)
        if client is None:
            transport = self._transport
            if transport is None and route is not None:
                proxy = None
                if route.proxy is not None:
                    proxy = httpx.Proxy(route.proxy, ssl_context=route.proxy_ssl)
                transport = httpx.AsyncHTTPTransport(local_address=route.local_address, proxy=proxy)
            # trust_env=False: the gateway picks the egress, not whatever HTTP_PROXY
            # happens to be set in the server's environment.
            client = self._clients[route] = httpx.AsyncClient(
                transport=transport,
                verify=self._verify(),
                timeout=self.policy.timeout,
                follow_redirects=False,
                trust_env=False,
                headers={"User-Agent": self.policy.plain_user_agent, "Accept": "application/json"},
            )
        return client

    async def get(
        self,
        url: str,
        params: Mapping[str, str],
        headers: Mapping[str, str | None],
        *,
        country: str | None,
        route: Route | None,
    ) -> Answer:
        """GET through httpx; the body is read (up to the limit) for 200 only."""
        client = self._client(route)
        sent = {name: value for name, value in headers.items() if value is not None}
        try:
            async with client.stream("GET", url, params=params, headers=sent) as response:
                body = b""
                if response.status_code == 200:
                    # aiter_bytes() is an async generator: close it when stopping early,
                    # or Trio warns when it is garbage collected unfinished.
                    chunks = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
                    async with contextlib.aclosing(chunks) as stream:
                        async for chunk in stream:
                            body += chunk
                            if len(body) > self.policy.max_body_size:
                                raise BodyTooLarge
                return Answer(
                    response.status_code,
                    {k.lower(): v for k, v in response.headers.items()},
                    body,
                )
        except httpx.TimeoutException:
            raise TransportFailure("request timed out", timed_out=True) from None
        except httpx.TransportError as exc:
            raise TransportFailure(type(exc).__name__) from None

    async def aclose(self) -> None:
        """Close every pool."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


@attrs.define
class _Slot:
    """One curl session (connections, cookie jar) and the lock for its handle."""

    session: Any  # curl_cffi.requests.Session
    lock: threading.Lock = attrs.Factory(threading.Lock)
    retired: bool = False  # close the session once the request holding the lock ends

    def close_now_or_later(self) -> None:
        """Close the session, or leave that to the (abandoned) request still using it."""
        if self.lock.acquire(blocking=False):
            try:
                self.session.close()
            finally:
                self.lock.release()
        else:
            self.retired = True


class CurlFetcher:
    """curl_cffi impersonating the configured Chrome profile; see the module doc."""

    def __init__(self, policy: HttpConfig) -> None:
        self.policy = policy
        self.profile = resolve_profile(policy.impersonate)
        self._slots: dict[tuple[str | None, str], _Slot] = {}
        self._limiter = trio.CapacityLimiter(_THREADS)
        self._ca_files: dict[int, str] = {}
        self._ca_dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def closed(self) -> bool:
        """True when no session is open."""
        return not self._slots

    def _slot(self, country: str | None, host: str) -> _Slot:
        slot = self._slots.get((country, host))
        if slot is None:
            from curl_cffi import requests as curl_requests

            session: Any = curl_requests.Session(
                impersonate=self.profile,
                timeout=self.policy.timeout,
                allow_redirects=False,
                trust_env=False,  # the gateway picks the egress, not HTTP_PROXY
            )
            slot = self._slots[(country, host)] = _Slot(session)
        return slot

    def _proxy_ca_file(self, context: ssl.SSLContext | None) -> str | None:
        """A PEM file of the CAs ``context`` trusts for an https proxy (None: curl's default)."""
        if context is None:
            return None
        path = self._ca_files.get(id(context))
        if path is None:
            certificates = context.get_ca_certs(binary_form=True)
            if not certificates:
                return None
            if self._ca_dir is None:
                self._ca_dir = tempfile.TemporaryDirectory(prefix="parser-proxy-ca-")
            file = Path(self._ca_dir.name) / f"{len(self._ca_files)}.pem"
            file.write_text("".join(ssl.DER_cert_to_PEM_cert(cert) for cert in certificates))
            path = self._ca_files[id(context)] = str(file)
        return path

    async def get(
        self,
        url: str,
        params: Mapping[str, str],
        headers: Mapping[str, str | None],
        *,
        country: str | None,
        route: Route | None,
    ) -> Answer:
        """GET in a worker thread; a cancelled call leaves the thread to finish on its own."""
        slot = self._slot(country, urlsplit(url).netloc)
        ca_file = self._proxy_ca_file(route.proxy_ssl if route is not None else None)
        return await trio.to_thread.run_sync(
            self._blocking_get,
            slot,
            url,
            dict(params),
            {**API_HEADERS, **headers},
            route,
            ca_file,
            limiter=self._limiter,
            abandon_on_cancel=True,
        )

    def _blocking_get(
        self,
        slot: _Slot,
        url: str,
        params: dict[str, str],
        headers: dict[str, str | None],
        route: Route | None,
        ca_file: str | None,
    ) -> Answer:
        from curl_cffi import CurlOpt
        from curl_cffi.requests import exceptions

        with slot.lock:
            session = slot.session
            session.curl_options = {CurlOpt.PROXY_CAINFO: ca_file} if ca_file else {}
            try:
                response = session.get(
                    url,
                    params=params,
                    headers=headers,
                    proxy=route.proxy if route is not None else None,
                    interface=route.local_address if route is not None else None,
                    verify=self.policy.ca_file or True,
                    stream=True,
                    # HTTP/2 over TLS only, as browsers do: never curl's h2c
                    # upgrade on a cleartext http:// URL.
                    http_version="v2tls",
                )
                try:
                    body = b""
                    if response.status_code == 200:
                        for chunk in response.iter_content():
                            body += chunk
                            if len(body) > self.policy.max_body_size:
                                raise BodyTooLarge
                    return Answer(
                        response.status_code,
                        {k.lower(): v for k, v in response.headers.items()},
                        body,
                    )
                finally:
                    response.close()
            except exceptions.Timeout:
                raise TransportFailure("request timed out", timed_out=True) from None
            except exceptions.RequestException as exc:
                raise TransportFailure(type(exc).__name__) from None
            finally:
                _trim_cookies(session.cookies.jar, MAX_COOKIES)
                if slot.retired:  # aclose() ran while this request was abandoned
                    session.close()

    async def aclose(self) -> None:
        """Close every session; one still used by an abandoned request closes when it ends."""
        slots, self._slots = list(self._slots.values()), {}
        for slot in slots:
            slot.close_now_or_later()
        await trio.lowlevel.checkpoint()
        if self._ca_dir is not None:
            self._ca_dir.cleanup()
            self._ca_dir, self._ca_files = None, {}


def _trim_cookies(jar: Any, limit: int) -> None:
    """Drop expired cookies, then any beyond ``limit`` (in the jar's iteration order)."""
    jar.clear_expired_cookies()
    cookies = list(jar)
    for cookie in cookies[: max(0, len(cookies) - limit)]:
        jar.clear(cookie.domain, cookie.path, cookie.name)
