"""The relay protocol's messages: the connect message in, ``connected``/``error`` out.

Every connect message, whether a JSON text frame or the ``/ws`` query string,
goes through :func:`parse_connect_message` / :func:`parse_connect_query`, which
share one attrs class and the project's converter, so both forms accept and
reject exactly the same things.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs

from relay.converter import InputError, check, loads_json, register_renames, structure
from relay.handshake import forbidden_header

__all__ = [
    "ConnectMessage",
    "ConnectRequest",
    "TargetURL",
    "connected_message",
    "error_message",
    "parse_connect_message",
    "parse_connect_query",
    "parse_target_url",
]

MAX_URL_LENGTH = 8192
_COUNTRY = re.compile(r"^[A-Za-z]{2}$")
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_COOKIE_NAME = _HEADER_NAME


def _valid_url(value: str) -> bool:
    return _parse_target_url(value) is not None


def _comma_list(pattern: re.Pattern[str]) -> Any:
    def ok(value: str | None) -> bool:
        return value is None or all(pattern.match(item.strip()) for item in value.split(","))

    return ok


def _no_ctl(text: str) -> bool:
    return not any(ch in text for ch in "\r\n\0")


def _valid_headers(headers: Mapping[str, str]) -> bool:
    return all(
        _HEADER_NAME.match(name) and not forbidden_header(name) and _no_ctl(value)
        for name, value in headers.items()
    )


def _valid_cookies(cookies: Mapping[str, str]) -> bool:
    return all(
        _COOKIE_NAME.match(name) and _no_ctl(value) and ";" not in value
        for name, value in cookies.items()
    )


def _doc(text: str, **extra: object) -> dict[str, object]:
    return {"doc": text, **extra}


@attrs.frozen
class ConnectMessage:
    """The connect message as sent on the wire (field names as in the protocol)."""

    url: str = attrs.field(
        validator=check(
            _valid_url,
            f"must be a ws:// or wss:// URL with a host, no credentials or fragment, "
            f"at most {MAX_URL_LENGTH} characters",
        ),
        metadata=_doc("Target WebSocket URL (wss://... or ws://...)"),
    )
    api_key: str | None = attrs.field(
        default=None,
        metadata=_doc("API key for authentication. key is also accepted.", required=True),
    )
    key: str | None = None
    headers: dict[str, str] = attrs.field(
        factory=dict,
        validator=check(
            _valid_headers,
            "names must be HTTP tokens, values free of CR/LF/NUL, and the handshake's own "
            "headers (Host, Upgrade, Connection, Sec-WebSocket-* except "
            "Sec-WebSocket-Protocol) cannot be set",
        ),
        metadata=_doc("Custom headers sent with the WS upgrade request to the target."),
    )
    cookies: dict[str, str] = attrs.field(
        factory=dict,
        validator=check(_valid_cookies, "names must be tokens, values free of ';', CR, LF, NUL"),
        metadata=_doc("Cookies sent with the WS upgrade request, merged into one Cookie header."),
    )
    geo: str | None = attrs.field(
        default=None,
        validator=check(_comma_list(_COUNTRY), "must be comma-separated two-letter ISO codes"),
        metadata=_doc("Comma-separated ISO country codes the agent must be in (e.g. US,DE)."),
    )
    agent: str | None = attrs.field(
        default=None,
        validator=check(_comma_list(_SLUG), "must be comma-separated agent slugs"),
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


register_renames(ConnectMessage, {"api_key": "apiKey"})


@attrs.frozen
class TargetURL:
    """A validated ``ws://`` / ``wss://`` target."""

    secure: bool
    host: str
    port: int
    resource: str  # path and query, as sent in the request line

    @property
    def host_header(self) -> str:
        """The ``Host`` header value (port omitted when it is the scheme's default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"


def _parse_target_url(value: str) -> TargetURL | None:
    if len(value) > MAX_URL_LENGTH or not _no_ctl(value) or " " in value:
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
    secure = scheme == "wss"
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    return TargetURL(secure, parts.hostname, port or (443 if secure else 80), resource)


@attrs.frozen
class ConnectRequest:
    """A validated connect request, ready for authentication and dialing."""

    api_key: str | None
    target: TargetURL
    url: str
    headers: tuple[tuple[str, str], ...]
    geo: frozenset[str]
    agents: tuple[str, ...]
    idle_timeout: float
    send_connected: bool = True

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
        }


def _split(value: str | None, *, upper: bool) -> list[str]:
    if not value:
        return []
    items = [item.strip() for item in value.split(",") if item.strip()]
    return [item.upper() for item in items] if upper else items


def _to_request(message: ConnectMessage, *, send_connected: bool = True) -> ConnectRequest:
    target = _parse_target_url(message.url)
    assert target is not None  # guaranteed by the validator
    headers = [(name, value) for name, value in message.headers.items()]
    if message.cookies:
        jar = "; ".join(f"{name}={value}" for name, value in message.cookies.items())
        # Cookies given in both places end up in one header, explicit header first.
        existing = [value for name, value in headers if name.lower() == "cookie"]
        headers = [(n, v) for n, v in headers if n.lower() != "cookie"]
        headers.append(("Cookie", "; ".join([*existing, jar])))
    return ConnectRequest(
        api_key=message.api_key if message.api_key is not None else message.key,
        target=target,
        url=message.url,
        headers=tuple(headers),
        geo=frozenset(_split(message.geo, upper=True)),
        agents=tuple(_split(message.agent, upper=False)),
        idle_timeout=message.idle_timeout,
        send_connected=send_connected,
    )


def parse_connect_message(text: str | bytes) -> ConnectRequest:
    """Parse a connect message (JSON text); raises :class:`InputError` naming the field."""
    data = loads_json(text, what="connect message")
    return _to_request(structure(data, ConnectMessage, what="connect message"))


_QUERY_FIELDS = {"apiKey", "key", "url", "geo", "agent", "idle_timeout"}
_FALSE = {"0", "false", "no", "off"}
_TRUE = {"1", "true", "yes", "on"}


def parse_connect_query(query: str) -> ConnectRequest | None:
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
    return _to_request(message, send_connected=send_connected)


def connected_message(node_id: str, status: int = 101) -> str:
    """The ``connected`` answer, as JSON text."""
    return json.dumps({"type": "connected", "status": status, "node_id": node_id})


def error_message(message: str) -> str:
    """An ``error`` answer, as JSON text."""
    return json.dumps({"type": "error", "message": message})


def parse_target_url(value: str) -> TargetURL | None:
    """A ``ws://`` / ``wss://`` URL checked like the connect message's ``url``; None if invalid."""
    return _parse_target_url(value)
