"""The ``proxy`` agent: the target is dialed through an upstream SOCKS5, SOCKS4 or
HTTP CONNECT proxy (python-socks' Trio backend; ``https://`` adds TLS to the
proxy), then TLS to a ``wss://`` target and the same upgrade as a direct dial.

Every failure names the stage that failed — the proxy unreachable, its
authentication refused, the proxy unable to reach the target — and never the
proxy's credentials, which stay out of messages, logs and reprs.
"""

from __future__ import annotations

import ipaddress
import ssl
from urllib.parse import unquote, urlsplit

import attrs
import trio
from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError, ProxyType
from python_socks.async_.trio.v2 import Proxy

from relay.agents.health import Health, probe
from relay.browser.profiles import session_profile
from relay.dial import (
    DialSettings,
    TargetConnection,
    os_error_text,
    start_target_tls,
    start_tls,
    upgrade,
)
from relay.keepalive import hop_keepalive
from relay.targets import resolve_checked
from relay.wire.closecodes import Outcome, SessionError
from relay.wire.connect import ConnectRequest, TargetURL

__all__ = ["ProxyAgent", "ProxyURL"]

_TYPES = {
    "socks5": ProxyType.SOCKS5,
    "socks4": ProxyType.SOCKS4,
    "http": ProxyType.HTTP,
    "https": ProxyType.HTTP,
}
# 407 is the standard answer; some proxies (tinyproxy) answer bad credentials with 401.
_HTTP_AUTH_REFUSED = (401, 407)
_SOCKS4_IDENT_FAILED = 0x5D


@attrs.frozen
class ProxyURL:
    """An upstream proxy; ``str()`` and ``repr()`` never show the credentials."""

    scheme: str
    host: str
    port: int
    username: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> ProxyURL:
        """Split ``scheme://[user:pass@]host:port`` (credentials percent-decoded)."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _TYPES or not parts.hostname or parts.port is None:
            raise ValueError("expected socks5://, socks4://, http:// or https:// host:port")
        username = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password) if parts.password is not None else None
        return cls(scheme, parts.hostname, parts.port, username, password)

    @property
    def tls(self) -> bool:
        """Whether the connection to the proxy itself is TLS."""
        return self.scheme == "https"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        auth = "***@" if self.username is not None else ""
        return f"{self.scheme}://{auth}{host}:{self.port}"


def _local_name(host: str) -> bool:
    lower = host.lower().rstrip(".")
    return lower == "localhost" or lower.endswith(".localhost")


@attrs.define
class ProxyAgent:
    """Dials through ``proxy``; ``source_address`` binds the connection to the proxy."""

    slug: str
    country: str | None
    node_id: str
    proxy: ProxyURL
    settings: DialSettings
    proxy_ssl: ssl.SSLContext = attrs.field(factory=ssl.create_default_context, repr=False)
    remote_dns: bool = True
    source_address: str | None = None
    health: Health = attrs.Factory(Health)
    health_interval: float = 10.0
    health_timeout: float = 5.0
    health_url: str | None = None
    kind: str = "proxy"
    impersonate: str = "none"  # the browser profile its dials use (relay/browser)
    allow_impersonate: bool = False  # whether a session may choose its own

    @property
    def healthy(self) -> bool:
        """Selectable unless its last health check failed."""
        return self.health.selectable

    def _fail(self, stage: str, outcome: Outcome = Outcome.AGENT_FAILED) -> SessionError:
        return SessionError(outcome, f"Agent {self.slug}: {stage}")

    async def _destination(self, target: TargetURL) -> str:
        """The host the proxy is asked for, checked against the target policy.

        With remote DNS the proxy resolves names, so only addresses given
        literally and names that are local by definition can be checked here;
        without it the gateway resolves, checks, and hands the proxy the
        checked address (docs/decisions/0007-agents.md).
        """
        policy = self.settings.policy
        try:
            ipaddress.ip_address(target.host)
        except ValueError:
            pass
        else:
            return (await resolve_checked(target.host, target.port, policy))[0]
        if not self.remote_dns:
            addresses = await resolve_checked(
                target.host, target.port, policy, self.settings.resolver
            )
            return addresses[0]
        reason = policy.refusal("127.0.0.1") if _local_name(target.host) else None
        if reason is not None:
            raise SessionError(
                Outcome.TARGET_NOT_ALLOWED,
                f"Target address not allowed: {target.host} is a {reason} name",
            )
        return target.host

    async def connect_proxy(self) -> trio.abc.Stream:
        """TCP (and TLS for ``https://``) to the proxy alone: the default health check."""
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(
                self.proxy.host, self.proxy.port, local_address=self.source_address
            )
        except OSError as exc:
            raise self._fail(f"proxy unreachable ({os_error_text(exc)})") from None
        if self.proxy.tls:
            try:
                stream = await start_tls(
                    stream,
                    self.proxy.host,
                    self.proxy_ssl,
                    peer="the proxy",
                    outcome=Outcome.AGENT_FAILED,
                )
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        return stream

    async def _through_proxy(self, host: str, port: int) -> trio.abc.Stream:
        """A stream to ``host:port`` through the proxy, each failure named by its stage."""
        proxy = self.proxy
        client = Proxy(
            _TYPES[proxy.scheme],
            proxy.host,
            proxy.port,
            username=proxy.username,
            password=proxy.password,
            rdns=self.remote_dns,
            proxy_ssl=self.proxy_ssl if proxy.tls else None,
        )
        try:
            # The caller's deadline governs; python-socks' own must not fire first.
            wrapped = await client.connect(
                host, port, timeout=self.settings.timeout + 60, local_addr=self.source_address
            )
        except ProxyConnectionError as exc:
            cause = exc.__cause__
            detail = os_error_text(cause) if isinstance(cause, OSError) else "connection failed"
            raise self._fail(f"proxy unreachable ({detail})") from None
        except ProxyTimeoutError:
            raise self._fail("proxy did not answer in time") from None
        except ProxyError as exc:
            raise self._refusal(exc) from None
        except trio.BrokenResourceError as exc:
            if proxy.tls and exc.__cause__ is not None and isinstance(exc.__cause__, ssl.SSLError):
                detail = getattr(exc.__cause__, "verify_message", None) or exc.__cause__.reason
                raise self._fail(f"TLS handshake with the proxy failed: {detail}") from None
            raise self._fail("proxy closed the connection during its handshake") from None
        except OSError as exc:
            raise self._fail(f"proxy connection failed ({os_error_text(exc)})") from None
        return wrapped.trio_stream

    def _refusal(self, exc: ProxyError) -> SessionError:
        """Sort a proxy's refusal into authentication, reaching the target, or the proxy."""
        code = exc.error_code
        text = str(exc)
        if (
            (self.proxy.scheme in ("http", "https") and code in _HTTP_AUTH_REFUSED)
            or (self.proxy.scheme == "socks4" and code == _SOCKS4_IDENT_FAILED)
            or (code is None and "authentication" in text.lower())
        ):
            return self._fail("proxy authentication refused")
        if code is not None:
            return self._fail(f"proxy could not reach the target ({text})", Outcome.TARGET_FAILED)
        return self._fail(f"proxy handshake failed ({text})")

    async def open(self, request: ConnectRequest) -> TargetConnection:
        """Open the target WebSocket through the proxy."""
        target = request.target
        browser = session_profile(
            self.slug, self.impersonate, self.allow_impersonate, request.impersonate
        )
        stage = "proxy"
        stream: trio.abc.Stream | None = None
        with trio.move_on_after(self.settings.timeout):
            try:
                host = await self._destination(target)
                stream = await self._through_proxy(host, target.port)
                hop_keepalive(stream, self.settings.keepalive)
                if target.secure:
                    stage = "the TLS handshake with the target"
                    stream = await start_target_tls(stream, target, self.settings, browser)
                stage = "the WebSocket handshake with the target"
                return await upgrade(
                    stream,
                    request,
                    max_response_head=self.settings.max_response_head,
                    browser=browser,
                )
            except BaseException:
                if stream is not None:
                    await trio.aclose_forcefully(stream)
                raise
        if stream is not None:
            await trio.aclose_forcefully(stream)
        if stage == "proxy":
            raise self._fail(f"no answer through the proxy within {self.settings.timeout:g} s")
        raise SessionError(
            Outcome.TARGET_FAILED,
            f"Target connection timed out after {self.settings.timeout:g} s during {stage}",
        )

    async def check(self) -> None:
        """Reach the proxy; with ``health_url``, dial that WebSocket through it too."""
        if self.health_url is not None:
            await probe(self, self.health_url)
            return
        stream = await self.connect_proxy()
        await trio.aclose_forcefully(stream)
