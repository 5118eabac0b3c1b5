"""Sans-I/O WebSocket opening handshakes (RFC 6455 section 4) on top of h11.

The server side answers a client's upgrade request once the router has read
it; the client side builds the upgrade request sent to a target and judges the
target's answer.  Bytes that arrive after either handshake belong to the frame
stream and are handed back as ``trailing``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Callable, Iterable
from http import HTTPStatus

import attrs
import h11

from relay.wire.httphead import parse_response

__all__ = [
    "ClientHandshake",
    "HandshakeError",
    "UpgradeResult",
    "accept_key",
    "forbidden_header",
    "server_accept",
    "server_reject",
    "websocket_key",
]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# The 101 as h11 writes it for these headers, up to the accept key.
_SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
    b"sec-websocket-accept: "
)

# Headers the relay itself owns on the target's upgrade request.
_HANDSHAKE_HEADERS = frozenset(
    {
        "host",
        "upgrade",
        "connection",
        "content-length",
        "transfer-encoding",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-accept",
        "sec-websocket-extensions",
    }
)


class HandshakeError(Exception):
    """A failed opening handshake; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def accept_key(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value for a ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def websocket_key() -> bytes:
    """A fresh random ``Sec-WebSocket-Key``."""
    return base64.b64encode(os.urandom(16))


def forbidden_header(name: str) -> bool:
    """True for headers a client may not set on the target's upgrade request."""
    lower = name.lower()
    return lower in _HANDSHAKE_HEADERS or (
        lower.startswith("sec-websocket-") and lower != "sec-websocket-protocol"
    )


def _standard_reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _tokens(value: bytes | None) -> set[bytes]:
    if value is None:
        return set()
    return {token.strip().lower() for token in value.split(b",")}


# h11's grammar for what it writes (h11/_abnf.py): a token name, a field value, a request target.
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_FIELD_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
_TARGET = re.compile(r"[\x21-\x7e]+")


def _request_bytes(resource: str, headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The upgrade request as h11 writes it (Host first), or None when h11 should
    judge it: a header or target it might refuse, not exactly one Host."""
    if not _TARGET.fullmatch(resource):
        return None
    hosts = [value for name, value in headers if name.lower() == b"host"]
    if len(hosts) != 1:
        return None
    lines = [b"GET ", resource.encode("ascii"), b" HTTP/1.1\r\n"]
    for name, value in headers:
        lower = name.lower()
        if not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            return None
        if lower in (b"content-length", b"transfer-encoding"):
            return None
        if lower == b"host":
            lines[3:3] = [name, b": ", value, b"\r\n"]
        else:
            lines += [name, b": ", value, b"\r\n"]
    lines.append(b"\r\n")
    return b"".join(lines)


def is_upgrade(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """True when a request with these headers asks for a WebSocket upgrade at all."""
    return b"websocket" in _tokens(_header(headers, b"upgrade"))


def server_accept(method: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Validate a client's upgrade request and return the 101 response bytes.

    Raises :class:`HandshakeError` (with the HTTP status to answer) when the
    request is not a usable WebSocket upgrade.  The bytes are those h11 writes
    for this response (tests/test_request_parser.py compares them), built
    without a connection object: nothing follows the 101 over HTTP.
    """
    headers = list(headers)
    if method != b"GET":
        raise HandshakeError("WebSocket upgrade must use GET", 405)
    if b"upgrade" not in _tokens(_header(headers, b"connection")) or not is_upgrade(headers):
        raise HandshakeError("expected a WebSocket upgrade request", 426)
    if _header(headers, b"sec-websocket-version") != b"13":
        raise HandshakeError("unsupported Sec-WebSocket-Version (13 required)", 426)
    key = _header(headers, b"sec-websocket-key")
    try:
        valid_key = key is not None and len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid_key = False
    if not valid_key or key is None:
        raise HandshakeError("missing or malformed Sec-WebSocket-Key", 400)
    # No extension or subprotocol is negotiated: the client's handshake ends
    # before the target is known, and frames must relay untouched.
    return _SWITCHING + accept_key(key) + b"\r\n\r\n"


def server_reject(conn: h11.Connection, status: int, message: str) -> bytes:
    """Bytes of a plain-text HTTP error answer that closes the connection."""
    body = (message + "\n").encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    if status == 426:
        headers.append((b"sec-websocket-version", b"13"))
    try:
        data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
        data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
    except h11.LocalProtocolError:
        # h11 refuses to answer some malformed requests (e.g. a bad HTTP
        # version); a raw status line still tells the peer what happened.
        data = f"HTTP/1.1 {status} Error\r\nconnection: close\r\n\r\n".encode()
    return data


@attrs.frozen
class UpgradeResult:
    """A target's successful answer; ``trailing`` are frame bytes already received."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    trailing: bytes


class ClientHandshake:
    """The relay's upgrade request to a target, and the judgement of its answer."""

    def __init__(
        self,
        host_header: str,
        resource: str,
        extra_headers: Iterable[tuple[str, str]] = (),
        *,
        max_response_head: int = 64 * 1024,
        layout: Callable[[bytes], list[tuple[bytes, bytes]]] | None = None,
        extension_ok: Callable[[bytes], bool] | None = None,
    ) -> None:
        self._max_response_head = max_response_head
        # h11 is brought in only for an answer of an unusual shape (see receive).
        self._conn: h11.Connection | None = None
        self._key = websocket_key()
        # Judges the target's Sec-WebSocket-Extensions when the layout offered one.
        self._extension_ok = extension_ok
        headers: list[tuple[bytes, bytes]]
        if layout is not None:
            # A browser's request (relay/browser): every header, in its order
            # and casing, from the key; the answer is judged as any other.
            headers = layout(self._key)
        else:
            headers = [
                (b"host", host_header.encode("idna" if not host_header.isascii() else "ascii")),
                (b"upgrade", b"websocket"),
                (b"connection", b"Upgrade"),
                (b"sec-websocket-key", self._key),
                (b"sec-websocket-version", b"13"),
            ]
            # Values are sent as UTF-8: servers that accept non-ASCII headers expect it.
            headers.extend(
                (name.encode("ascii"), value.encode("utf-8")) for name, value in extra_headers
            )
        self._request = (resource, headers)
        written = None if layout is not None else _request_bytes(resource, headers)
        if written is None:
            # Anything h11 might refuse or lay out differently is written by h11.
            written = self._h11_request()
        self.request_bytes = written

    def _h11_request(self) -> bytes:
        """Hand the request to h11 (its client state then follows it); its bytes."""
        conn = self._conn = h11.Connection(
            h11.CLIENT, max_incomplete_event_size=self._max_response_head
        )
        resource, headers = self._request
        return conn.send(h11.Request(method="GET", target=resource, headers=headers)) or b""

    def _h11(self) -> h11.Connection:
        """h11's client state, as it is after sending this request."""
        if self._conn is None:
            self._h11_request()
        assert self._conn is not None
        return self._conn

    def receive(self, data: bytes) -> UpgradeResult | None:
        """Feed the target's bytes; None while its answer is incomplete.

        Raises :class:`HandshakeError` for a refusal or a malformed answer.
        """
        if self._conn is None:
            # The common case: a plain 101 whole in the first read, judged
            # without h11; any other answer goes to h11 from its first byte.
            parsed = parse_response(data)
            if parsed is not None and parsed.status == 101:
                return self._switched(parsed.headers, parsed.trailing)
        conn = self._h11()
        try:
            conn.receive_data(data)
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise HandshakeError(f"target sent an invalid HTTP response: {exc}") from None
        if event is h11.NEED_DATA:
            if not data:
                raise HandshakeError("target closed the connection during the handshake")
            return None
        if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            trailing, _closed = conn.trailing_data
            return self._switched(list(event.headers), bytes(trailing))
        if isinstance(event, h11.InformationalResponse | h11.Response):
            status = event.status_code
            reason = event.reason.decode("latin-1").strip() or _standard_reason(status)
            raise HandshakeError(
                f"target refused the WebSocket upgrade: HTTP {status}"
                + (f" {reason}" if reason else ""),
                status,
            )
        raise HandshakeError("target closed the connection during the handshake")

    def _switched(self, headers: list[tuple[bytes, bytes]], trailing: bytes) -> UpgradeResult:
        """Judge a 101 answer's headers."""
        if not is_upgrade_response(headers):
            raise HandshakeError("target answered 101 without upgrading to websocket", 101)
        if _header(headers, b"sec-websocket-accept") != accept_key(self._key):
            raise HandshakeError("target sent a wrong Sec-WebSocket-Accept", 101)
        extension = _header(headers, b"sec-websocket-extensions")
        if extension is not None:
            if self._extension_ok is None:
                raise HandshakeError("target negotiated an extension that was not offered", 101)
            if not self._extension_ok(extension):
                raise HandshakeError(
                    "target answered the extension offer with one it cannot accept", 101
                )
        return UpgradeResult(101, tuple(headers), trailing)


def is_upgrade_response(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """True when a 101 answer really switches to WebSocket."""
    headers = list(headers)
    return b"websocket" in _tokens(_header(headers, b"upgrade")) and b"upgrade" in _tokens(
        _header(headers, b"connection")
    )
