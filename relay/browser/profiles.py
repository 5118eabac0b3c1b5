"""Browser profiles and the upgrade request a browser sends, without I/O.

A profile names one curl-impersonate target (the TLS ClientHello: cipher
suites, extensions and their order, GREASE, groups, signature algorithms) and
the values of the browser's own request headers (``User-Agent`` of the same
Chrome version).  :func:`upgrade_headers` lays out the WebSocket upgrade
request exactly as Chrome does — set, order and casing — with the client's
headers overriding values, never positions.

The order is the one Chromium 156 sent from this machine to a local server
(``new WebSocket("wss://…")``) and matches Chromium's source and published
captures (docs/decisions/0012-browser-impersonation.md cites them).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

import attrs

from relay.wire.closecodes import Outcome, SessionError

__all__ = [
    "DEFLATE_OFFER",
    "NONE",
    "BrowserProfile",
    "known_profile",
    "origin_of",
    "profile",
    "profile_names",
    "session_profile",
    "upgrade_headers",
]

NONE = "none"
# Chrome's Accept-Language for an en-US install; curl-impersonate sends the same.
ACCEPT_LANGUAGE = "en-US,en;q=0.9"
# What Chrome offers on every WebSocket (RFC 7692).
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"
# Chrome 123 and later (zstd); the same for navigations and WebSocket upgrades.
ACCEPT_ENCODING = "gzip, deflate, br, zstd"
_PINNED = re.compile(r"chrome(\d+)[a-z]?(_macos)?")
_UA_OS = {
    "Windows": "Windows NT 10.0; Win64; x64",
    "macOS": "Macintosh; Intel Mac OS X 10_15_7",
}


@attrs.frozen
class BrowserProfile:
    """One browser build to look like: its TLS target and header values."""

    name: str  # as configured: "chrome" or a pinned target such as "chrome146"
    target: str  # the curl-impersonate target, e.g. "chrome152"
    user_agent: str
    accept_language: str = ACCEPT_LANGUAGE
    accept_encoding: str = ACCEPT_ENCODING


@functools.cache
def _targets() -> dict[str, str]:
    """Desktop Chrome targets of the installed curl_cffi, with their OS ("Windows", "macOS").

    Imported lazily: validating a connect message must not load the curl library.
    """
    from curl_cffi import fingerprints
    from curl_cffi.requests import BrowserType

    systems = {
        str(entry["target_name"]): str(entry.get("os", "Windows"))
        for entry in fingerprints.NATIVE_IMPERSONATE_TARGETS
    }
    found: dict[str, str] = {}
    for member in BrowserType:
        name = str(member.value)
        if _PINNED.fullmatch(name) and "android" not in name:
            found[name] = "macOS" if name.endswith("_macos") else systems.get(name, "Windows")
    return found


@functools.cache
def _default_chrome() -> str:
    from curl_cffi.requests.impersonate import DEFAULT_CHROME

    return str(DEFAULT_CHROME)


def profile_names() -> list[str]:
    """Every accepted ``impersonate`` value: "none", "chrome" and pinned desktop Chrome targets."""
    return [NONE, "chrome", *sorted(_targets())]


def known_profile(name: str) -> bool:
    """Whether ``name`` is an accepted ``impersonate`` value."""
    return name in (NONE, "chrome") or name in _targets()


def profile(name: str) -> BrowserProfile | None:
    """The profile ``name`` stands for (None for "none"); raises ValueError if unknown."""
    if name == NONE:
        return None
    target = _default_chrome() if name == "chrome" else name
    system = _targets().get(target)
    match = _PINNED.fullmatch(target)
    if system is None or match is None:
        raise ValueError(f"unknown browser profile {name!r}")
    version = match.group(1)
    user_agent = (
        f"Mozilla/5.0 ({_UA_OS[system]}) AppleWebKit/537.36 (KHTML, like Gecko) "
        f"Chrome/{version}.0.0.0 Safari/537.36"
    )
    return BrowserProfile(name, target, user_agent)


def session_profile(
    slug: str, configured: str, allowed: bool, requested: str | None
) -> BrowserProfile | None:
    """The profile a session dials with on agent ``slug``: its own ``impersonate``
    field where the agent allows choosing (``allow_impersonate``), else the agent's.

    Raises a ``SessionError`` that names the field when the choice is not allowed
    or the profile is unknown.
    """
    if requested is None:
        return profile(configured)
    if not allowed:
        raise SessionError(
            Outcome.BAD_REQUEST,
            f"Invalid connect message: impersonate: agent {slug} does not allow choosing "
            "a browser profile (allow_impersonate)",
        )
    if not known_profile(requested):
        raise SessionError(
            Outcome.BAD_REQUEST,
            f"Invalid connect message: impersonate: unknown browser profile {requested!r} "
            f"(known: {', '.join(profile_names())})",
        )
    return profile(requested)


def upgrade_headers(
    browser: BrowserProfile,
    *,
    host: str,
    origin: str,
    key: bytes,
    client_headers: Iterable[tuple[str, str]] = (),
) -> list[tuple[bytes, bytes]]:
    """The upgrade request's headers, in Chrome's order and casing.

    ``client_headers`` (cookies already merged into ``Cookie``) replace the
    values of Chrome's headers of the same name, whatever their casing; other
    headers a page cannot make Chrome send go after ``Accept-Language``, in
    the client's order and casing; ``Sec-WebSocket-Extensions`` (Chrome's
    permessage-deflate offer) and ``Sec-WebSocket-Protocol`` go last, where
    Chromium adds them.
    """
    given = {name.lower(): (name, text) for name, text in client_headers}

    def value(name: str, default: str) -> str:
        return given.pop(name.lower(), (name, default))[1]

    layout: list[tuple[str, str]] = [
        ("Host", host),
        ("Connection", "Upgrade"),
        ("Pragma", value("Pragma", "no-cache")),
        ("Cache-Control", value("Cache-Control", "no-cache")),
        ("User-Agent", value("User-Agent", browser.user_agent)),
        ("Upgrade", "websocket"),
        ("Origin", value("Origin", origin)),
        ("Sec-WebSocket-Version", "13"),
        ("Accept-Encoding", value("Accept-Encoding", browser.accept_encoding)),
        ("Accept-Language", value("Accept-Language", browser.accept_language)),
    ]
    protocol = given.pop("sec-websocket-protocol", None)
    cookie = given.pop("cookie", None)
    layout.extend(given.values())
    if cookie is not None:
        layout.append(("Cookie", cookie[1]))
    encoded = [(name.encode("ascii"), text.encode("utf-8")) for name, text in layout]
    encoded.append((b"Sec-WebSocket-Key", key))
    # Inflated for the client if the target compresses (relay/browser/deflate.py).
    encoded.append((b"Sec-WebSocket-Extensions", DEFLATE_OFFER.encode("ascii")))
    if protocol is not None:
        encoded.append((b"Sec-WebSocket-Protocol", protocol[1].encode("utf-8")))
    return encoded


def origin_of(secure: bool, host_header: str) -> str:
    """The ``Origin`` a page served by the target itself would send."""
    return f"{'https' if secure else 'http'}://{host_header}"
