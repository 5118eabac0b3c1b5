"""The relay protocol's messages: the connect message in, ``connected``/``error`` out.

Every connect message, whether a JSON text frame or the ``/ws`` query string,
goes through :func:`parse_connect_message` / :func:`parse_connect_query`, which
share one attrs class and the project's converter, so both forms accept and
reject exactly the same things.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import re
import string
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import attrs

from relay.converter import (
    FieldError,
    InputError,
    check,
    loads_json,
    register_renames,
    structure,
)
from relay.wire.handshake import forbidden_header

__all__ = [
    "COUNTRY",
    "SLUG",
    "ConnectLimits",
    "ConnectMessage",
    "ConnectRequest",
    "TargetURL",
    "connected_message",
    "error_message",
    "parse_connect_message",
    "parse_connect_query",
    "parse_target_url",
    "valid_country",
    "valid_slug",
]

MAX_URL_LENGTH = 8192  # the default of [server] max_url_length
COUNTRY = re.compile(r"[A-Za-z]{2}")
"""An ISO 3166-1 alpha-2 country code, any case (``fullmatch``)."""
SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""An agent's slug (``fullmatch``)."""


def valid_slug(value: str) -> bool:
    """Whether ``value`` is an agent slug like ``de1``."""
    return SLUG.fullmatch(value) is not None


def valid_country(value: str | None) -> bool:
    """Whether ``value`` is None or a two-letter ISO country code."""
    return value is None or COUNTRY.fullmatch(value) is not None


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_COOKIE_NAME = _HEADER_NAME
# Browser profile names ("chrome", "chrome146", "chrome152_macos"); the agent
# checks the name against the profiles the installed library has.
_PROFILE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
# Controls other than HTAB split or smuggle HTTP header lines somewhere down the line.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Printable ASCII stays as it is in a request target; anything else is %-encoded.
_TARGET_SAFE = string.punctuation


def _valid_url(value: str) -> bool:
    return parse_target_url(value) is not None


def _comma_list(pattern: re.Pattern[str]) -> Any:
    def ok(value: str | None) -> bool:
        return value is None or all(pattern.fullmatch(item.strip()) for item in value.split(","))

    return ok


def _encodable(text: str) -> bool:
    """False for lone surrogates (JSON allows them; UTF-8 cannot carry them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _clean_value(text: str) -> bool:
    return _CONTROL.search(text) is None and _encodable(text)


def _header_problem(name: str, value: str) -> str | None:
    if not _HEADER_NAME.fullmatch(name):
        return f"{name!r} is not an HTTP header name"
    if forbidden_header(name):
        return (
            f"{name} cannot be set: the handshake's own headers (Host, Upgrade, Connection, "
            "Sec-WebSocket-* except Sec-WebSocket-Protocol) belong to the relay"
        )
    if not _clean_value(value):
        return f"{name}: values must be free of CR/LF/NUL and other control characters"
    return None


def _check_headers(_instance: Any, attribute: Any, headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        problem = _header_problem(name, value)
        if problem is not None:
            raise FieldError(attribute.name, problem)


def _check_cookies(_instance: Any, attribute: Any, cookies: Mapping[str, str]) -> None:
    for name, value in cookies.items():
        if not _COOKIE_NAME.fullmatch(name):
            raise FieldError(attribute.name, f"{name!r} is not a cookie name")
        if ";" in value or not _clean_value(value):
            raise FieldError(
                attribute.name, f"{name}: values must be free of ';', CR, LF, NUL and controls"
            )


def _doc(text: str, **extra: object) -> dict[str, object]:
    return {"doc": text, **extra}


@attrs.frozen
class ConnectMessage:
    """The connect message as sent on the wire (field names as in the protocol)."""

    url: str = attrs.field(
        validator=check(
            _valid_url,
            "must be a ws:// or wss:// URL with a valid host, no credentials, fragment, "
            "spaces or control characters",
        ),
        metadata=_doc("Target WebSocket URL (wss://... or ws://...)"),
        repr=False,
    )
    api_key: str | None = attrs.field(
        default=None,
        metadata=_doc("API key for authentication. key is also accepted.", required=True),
        repr=False,
    )
    key: str | None = attrs.field(default=None, repr=False)
    headers: dict[str, str] = attrs.field(
        factory=dict,
        validator=_check_headers,
        repr=False,
        metadata=_doc("Custom headers sent with the WS upgrade request to the target."),
    )
    cookies: dict[str, str] = attrs.field(
        factory=dict,
        validator=_check_cookies,
        repr=False,
        metadata=_doc("Cookies sent with the WS upgrade request, merged into one Cookie header."),
    )
    geo: str | None = attrs.field(
        default=None,
        validator=check(_comma_list(COUNTRY), "must be comma-separated two-letter ISO codes"),
        metadata=_doc("Comma-separated ISO country codes the agent must be in (e.g. US,DE)."),
    )
    agent: str | None = attrs.field(
        default=None,
        validator=check(_comma_list(SLUG), "must be comma-separated agent slugs"),
        metadata=_doc("Agent slug, or comma-separated slugs for a random pick (de1,at5)."),
    )
    idle_timeout: float = attrs.field(
        default=0.0,
        validator=check(lambda v: v >= 0, "must be >= 0"),
        metadata=_doc(
            "If > 0, close both sides after this many seconds without a message from the "
            "target. 0 = no idle timeout."
        ),
    )
    impersonate: str | None = attrs.field(
        default=None,
        validator=check(
            lambda v: v is None or _PROFILE.fullmatch(v) is not None,
            "must be a browser profile name such as 'chrome' (or 'none')",
        ),
        metadata=_doc(
            "Dial the target as this browser (TLS ClientHello and upgrade request): 'chrome', "
            "a pinned profile such as 'chrome146', or 'none'. Only where the agent allows it."
        ),
    )


register_renames(ConnectMessage, {"api_key": "apiKey"})


@attrs.frozen
class TargetURL:
    """A validated ``ws://`` / ``wss://`` target."""

    secure: bool
    host: str
    port: int
    # Path and query, as sent in the request line; a query may carry a token: no repr.
    resource: str = attrs.field(repr=False)

    @property
    def host_header(self) -> str:
        """The ``Host`` header value (port omitted when it is the scheme's default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"


def _ascii_host(host: str) -> str | None:
    """The host as sent on the wire (IDNA for names), or None if it cannot be one."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return host
    try:
        name = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return None
    labels = name.lower().removesuffix(".").split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    return name


def parse_target_url(value: str) -> TargetURL | None:
    """``value`` as a target, or None when it is not a usable ``ws://``/``wss://`` URL."""
    return _parse_target_url(value) if type(value) is str else _target_url(value)


# Pure and called twice per connect message (its validator, then the request):
# a small cache of the URLs seen last; TargetURL is immutable, so sharing is safe.
@functools.lru_cache(maxsize=64)
def _parse_target_url(value: str) -> TargetURL | None:
    return _target_url(value)


def _target_url(value: str) -> TargetURL | None:
    if _CONTROL.search(value) or " " in value or not _encodable(value):
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss") or not parts.hostname or parts.fragment:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    host = _ascii_host(parts.hostname)
    if host is None:
        return None
    secure = scheme == "wss"
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    # As browsers do: non-ASCII in the path or query is sent %-encoded as UTF-8.
    resource = quote(resource, safe=_TARGET_SAFE)
    return TargetURL(secure, host, port or (443 if secure else 80), resource)


@attrs.frozen
class ConnectLimits:
    """Operator-set bounds on a connect request (``[server]``): violations are
    reported against the field, like any other invalid input."""

    max_url_length: int = MAX_URL_LENGTH
    max_headers: int = 32  # entries in ``headers``
    max_header_size: int = 8192  # bytes of one header line's name and value (Cookie merged)


@attrs.frozen
class ConnectRequest:
    """A validated connect request, ready for authentication and dialing."""

    # Secrets (the key, header and cookie values, tokens in the URL) stay out of reprs.
    api_key: str | None = attrs.field(repr=False)
    target: TargetURL
    url: str = attrs.field(repr=False)
    headers: tuple[tuple[str, str], ...] = attrs.field(repr=False)
    geo: frozenset[str]
    agents: tuple[str, ...]
    idle_timeout: float
    send_connected: bool = True
    impersonate: str | None = None  # a browser profile asked for by the client

    def upgrade_headers(self) -> tuple[tuple[str, str], ...]:
        """Headers for the target's upgrade request (cookies already merged)."""
        return self.headers

    def redacted(self) -> dict[str, object]:
        """A view safe for logs: no key, header values or cookies."""
        return {
            "url_host": self.target.host,
            "geo": sorted(self.geo),
            "agents": list(self.agents),
            "idle_timeout": self.idle_timeout,
            "header_names": [name for name, _ in self.headers],
            "impersonate": self.impersonate,
        }


def _split(value: str | None, *, upper: bool) -> list[str]:
    if not value:
        return []
    items = [item.strip() for item in value.split(",") if item.strip()]
    return [item.upper() for item in items] if upper else items


def _to_request(
    message: ConnectMessage, limits: ConnectLimits, *, what: str, send_connected: bool = True
) -> ConnectRequest:
    def refuse(field: str, problem: str) -> InputError:
        return InputError(f"Invalid {what}: {field}: {problem}")

    if len(message.url) > limits.max_url_length:
        raise refuse("url", f"must be at most {limits.max_url_length} characters")
    if len(message.headers) > limits.max_headers:
        raise refuse("headers", f"at most {limits.max_headers} headers")
    target = parse_target_url(message.url)
    assert target is not None  # guaranteed by the validator
    # Surrounding whitespace is not part of a header value (and h11 refuses it).
    headers = [(name, value.strip(" \t")) for name, value in message.headers.items()]
    if message.cookies:
        jar = "; ".join(f"{name}={value}" for name, value in message.cookies.items())
        # Cookies given in both places end up in one header, explicit header first.
        existing = [value for name, value in headers if name.lower() == "cookie"]
        headers = [(n, v) for n, v in headers if n.lower() != "cookie"]
        headers.append(("Cookie", "; ".join([*existing, jar]).strip(" \t")))
    for name, value in headers:
        if len(name) + len(value.encode()) > limits.max_header_size:
            field = "cookies" if name == "Cookie" and message.cookies else "headers"
            raise refuse(field, f"{name}: over {limits.max_header_size} bytes")
    return ConnectRequest(
        api_key=message.api_key if message.api_key is not None else message.key,
        target=target,
        url=message.url,
        headers=tuple(headers),
        geo=frozenset(_split(message.geo, upper=True)),
        agents=tuple(_split(message.agent, upper=False)),
        idle_timeout=message.idle_timeout,
        send_connected=send_connected,
        impersonate=message.impersonate,
    )


def parse_connect_message(
    text: str | bytes, limits: ConnectLimits = ConnectLimits()
) -> ConnectRequest:
    """Parse a connect message (JSON text); raises :class:`InputError` naming the field."""
    data = loads_json(text, what="connect message")
    message = structure(data, ConnectMessage, what="connect message")
    return _to_request(message, limits, what="connect message")


_QUERY_FIELDS = {"apiKey", "key", "url", "geo", "agent", "idle_timeout", "impersonate"}
_FALSE = {"0", "false", "no", "off"}
_TRUE = {"1", "true", "yes", "on"}


def parse_connect_query(
    query: str, limits: ConnectLimits = ConnectLimits()
) -> ConnectRequest | None:
    """Parse the ``/ws?url=…&apiKey=…`` form; None when the query names no ``url``.

    ``header=Name: value`` and ``cookie=name=value`` may repeat; ``connected=false``
    suppresses the ``connected`` message for tools that expect only the
    target's frames (conformance suites).
    """
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(name == "url" for name, _ in pairs):
        return None
    data: dict[str, object] = {}
    headers: dict[str, str] = {}
    cookies: dict[str, str] = {}
    send_connected = True
    for name, value in pairs:
        if name in _QUERY_FIELDS:
            if name in data:
                raise InputError(f"Invalid connect query: {name}: given more than once")
            data[name] = value
        elif name == "header":
            hname, sep, hvalue = value.partition(":")
            if not sep:
                raise InputError("Invalid connect query: header: expected 'Name: value'")
            headers[hname.strip()] = hvalue.strip()
        elif name == "cookie":
            cname, sep, cvalue = value.partition("=")
            if not sep:
                raise InputError("Invalid connect query: cookie: expected 'name=value'")
            cookies[cname.strip()] = cvalue
        elif name == "connected":
            if value.lower() not in _FALSE | _TRUE:
                raise InputError("Invalid connect query: connected: expected true or false")
            send_connected = value.lower() in _TRUE
    if "idle_timeout" in data:
        # Left a string when unparsable, so the converter reports the field's type.
        with contextlib.suppress(ValueError):
            data["idle_timeout"] = float(str(data["idle_timeout"]))
    if headers:
        data["headers"] = headers
    if cookies:
        data["cookies"] = cookies
    message = structure(data, ConnectMessage, what="connect query")
    return _to_request(message, limits, what="connect query", send_connected=send_connected)


@functools.lru_cache(maxsize=64)
def connected_message(node_id: str, status: int = 101) -> str:
    """The ``connected`` answer, as JSON text (the same few texts every session: cached)."""
    return json.dumps({"type": "connected", "status": status, "node_id": node_id})


def error_message(message: str) -> str:
    """An ``error`` answer, as JSON text."""
    return json.dumps({"type": "error", "message": message})
