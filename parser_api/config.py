"""The ``[parser]`` configuration table.

Structured by the relay with ``relay.converter.structure(table, ParserConfig,
what="[parser] config")``; every table here rejects unknown keys, so a typo in
the config file fails at start-up instead of silently keeping a default.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
from cattrs.gen import make_dict_structure_fn

from relay.converter import FieldError, check, converter, secret_digest, secret_field, sha256_field

__all__ = [
    "DepopSourceConfig",
    "HttpConfig",
    "ParserConfig",
    "PoshmarkSourceConfig",
]

PROTOCOL_MAX_BATCH = 200


def _http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query


def _non_negative(value: float) -> bool:
    return value >= 0


def _positive(value: float) -> bool:
    return value > 0


_URL_PROBLEM = "must be an http:// or https:// URL with a host and no query"
PLAIN_USER_AGENT = "Mozilla/5.0 (compatible; ws-relay-gateway-parser/0.1)"


def chrome_profiles() -> list[str]:
    """The desktop Chrome profiles the installed curl_cffi can impersonate."""
    from curl_cffi.requests.impersonate import BrowserType

    return [b.value for b in BrowserType if b.value.startswith("chrome") and "_" not in b.value]


def resolve_profile(name: str) -> str:
    """The curl_cffi profile for an ``impersonate`` value ("chrome": the newest Chrome)."""
    if name == "chrome":
        from curl_cffi.requests.impersonate import DEFAULT_CHROME

        return str(DEFAULT_CHROME)
    return name


def _profile(value: str) -> bool:
    return value in ("none", "chrome") or value in chrome_profiles()


_PROFILE_PROBLEM = (
    'must be "chrome", "none" or a desktop Chrome profile of the installed curl_cffi '
    '(e.g. "chrome146"; see curl_cffi.requests.impersonate.BrowserType)'
)


def _user_agent_only_plain(instance: Any, _attribute: Any, value: str | None) -> None:
    if value is not None and instance.impersonate != "none":
        raise FieldError(
            "user_agent",
            'only with impersonate = "none": a Chrome profile sends the User-Agent '
            "that matches its TLS fingerprint",
        )


@attrs.frozen
class PoshmarkSourceConfig:
    """``[parser.poshmark]``: where the Poshmark sites are and how big a page to ask for."""

    base_url_com: str = attrs.field(
        default="https://poshmark.com", validator=check(_http_url, _URL_PROBLEM)
    )
    base_url_ca: str = attrs.field(
        default="https://poshmark.ca", validator=check(_http_url, _URL_PROBLEM)
    )
    page_size: int = attrs.field(
        default=48, validator=check(lambda v: 1 <= v <= 100, "must be 1..100")
    )


@attrs.frozen
class DepopSourceConfig:
    """``[parser.depop]``: where Depop is and how big a page to ask for."""

    base_url: str = attrs.field(
        default="https://www.depop.com", validator=check(_http_url, _URL_PROBLEM)
    )
    page_size: int = attrs.field(
        default=24, validator=check(lambda v: 1 <= v <= 100, "must be 1..100")
    )
    # Seconds between two Depop requests (public Depop tools keep to ~30 a minute).
    request_spacing: float = attrs.field(
        default=2.0, validator=check(_non_negative, "must be >= 0")
    )


@attrs.frozen
class HttpConfig:
    """``[parser.http]``: how politely the sources talk to the marketplaces."""

    # Seconds between two requests to the same host, across all sessions.
    request_spacing: float = attrs.field(
        default=1.0, validator=check(_non_negative, "must be >= 0")
    )
    max_retries: int = attrs.field(
        default=3, validator=check(lambda v: 0 <= v <= 10, "must be 0..10")
    )
    backoff_base: float = attrs.field(default=1.0, validator=check(_non_negative, "must be >= 0"))
    backoff_max: float = attrs.field(default=30.0, validator=check(_non_negative, "must be >= 0"))
    # A Retry-After longer than this is reported to the client instead of waited out.
    max_retry_after: float = attrs.field(
        default=60.0, validator=check(_non_negative, "must be >= 0")
    )
    timeout: float = attrs.field(default=20.0, validator=check(_positive, "must be > 0"))
    max_body_size: int = attrs.field(
        default=8 * 1024 * 1024, validator=check(lambda v: v >= 1024, "must be >= 1024")
    )
    # A CA bundle (PEM file) that replaces the usual roots for verifying the
    # marketplaces, e.g. behind a TLS-inspecting corporate proxy.
    ca_file: str | None = attrs.field(
        default=None,
        validator=check(lambda v: v is None or Path(v).is_file(), "must be a readable PEM file"),
    )
    # "chrome" (the newest desktop Chrome profile of the installed curl_cffi), a
    # pinned profile such as "chrome146", or "none" for the plain httpx client.
    impersonate: str = attrs.field(default="chrome", validator=check(_profile, _PROFILE_PROBLEM))
    # Only with impersonate = "none": a Chrome profile sends its own User-Agent,
    # which must name the same version as its TLS fingerprint.
    user_agent: str | None = attrs.field(
        default=None,
        validator=[
            check(
                lambda v: v is None or (bool(v) and not any(c in v for c in "\r\n\0")),
                "must be one line",
            ),
            _user_agent_only_plain,
        ],
    )

    @property
    def plain_user_agent(self) -> str:
        """The User-Agent of the plain client."""
        return self.user_agent or PLAIN_USER_AGENT


def _token_choice(instance: Any, _attribute: Any, _value: Any) -> None:
    if instance.admin_token is not None and instance.admin_token_sha256 is not None:
        raise FieldError("admin_token_sha256", "set admin_token or admin_token_sha256, not both")


@attrs.frozen
class ParserConfig:
    """The ``[parser]`` table: admin token, limits and the marketplace sources.

    A config without any token is valid to load (so the relay can call
    :meth:`ensure_token`), but :func:`parser_api.app.create_app` refuses it.
    """

    admin_token: str | None = secret_field()
    admin_token_sha256: str | None = sha256_field(_token_choice)
    max_connections: int = attrs.field(
        default=10, validator=check(lambda v: 1 <= v <= 10_000, "must be 1..10000")
    )
    max_batch: int = attrs.field(
        default=PROTOCOL_MAX_BATCH,
        validator=check(lambda v: 1 <= v <= PROTOCOL_MAX_BATCH, f"must be 1..{PROTOCOL_MAX_BATCH}"),
    )
    # Largest request message (bytes of UTF-8 JSON) a client may send.
    max_message_size: int = attrs.field(
        default=64 * 1024,
        validator=check(lambda v: 256 <= v <= 16 * 1024 * 1024, "must be 256..16777216"),
    )
    # Upper bound on one parser.fetch, retries and spacing included.
    fetch_timeout: float = attrs.field(default=120.0, validator=check(_positive, "must be > 0"))
    # After the server sends a close frame, how long it waits for the client's
    # close before dropping the TCP connection (RFC 6455 section 7.1.1).
    close_timeout: float = attrs.field(default=5.0, validator=check(_positive, "must be > 0"))
    # Dedup memory bound: a session that has sent this many items is exhausted.
    max_items_per_session: int = attrs.field(
        default=100_000, validator=check(lambda v: v >= 1, "must be >= 1")
    )
    poshmark: PoshmarkSourceConfig = attrs.Factory(PoshmarkSourceConfig)
    depop: DepopSourceConfig = attrs.Factory(DepopSourceConfig)
    http: HttpConfig = attrs.Factory(HttpConfig)

    @classmethod
    def generate(cls, **overrides: Any) -> ParserConfig:
        """A config with a freshly generated admin token (read it back from ``admin_token``)."""
        return cls(admin_token=generate_token(), **overrides)

    def ensure_token(self) -> tuple[ParserConfig, str | None]:
        """This config with a token: a generated one when none is set.

        Returns the config and the generated token (None when one was configured),
        so the caller can print it once.
        """
        if self.has_token:
            return self, None
        token = generate_token()
        return attrs.evolve(self, admin_token=token), token

    @property
    def has_token(self) -> bool:
        """Whether a token (plain or hashed) is configured."""
        return self.admin_token is not None or self.admin_token_sha256 is not None

    @property
    def token_digest(self) -> bytes:
        """SHA-256 of the admin token: the only form the server compares against."""
        digest = secret_digest(self.admin_token, self.admin_token_sha256)
        if digest is None:
            raise ValueError("no admin token configured")
        return digest

    def verify_token(self, candidate: str | None) -> bool:
        """Constant-time check of a presented token (comparing SHA-256 digests)."""
        if candidate is None:
            return False
        presented = hashlib.sha256(candidate.encode("utf-8", "surrogatepass")).digest()
        return hmac.compare_digest(presented, self.token_digest)


def generate_token() -> str:
    """A new random admin token (URL-safe, 192 bits)."""
    return "pa-" + secrets.token_urlsafe(24)


for _cls in (PoshmarkSourceConfig, DepopSourceConfig, HttpConfig, ParserConfig):
    converter.register_structure_hook(
        _cls, make_dict_structure_fn(_cls, converter, _cattrs_forbid_extra_keys=True)
    )
