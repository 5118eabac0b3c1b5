"""The strict head parser (relay/wire/httphead.py) against h11 on the same bytes.

Whatever the strict parser accepts must be exactly what h11 reports for those
bytes; whatever it declines goes to h11, so it may decline anything.  The
101 and the target's upgrade request, now written without h11, must be h11's
bytes.
"""

from __future__ import annotations

import h11
import pytest

from relay.wire.handshake import ClientHandshake, HandshakeError, accept_key, server_accept
from relay.wire.httphead import parse_request, parse_response

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = (
    b"GET /ws?x=1 HTTP/1.1\r\nHost: relay.example:8080\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
)

# Heads the strict parser takes (each also checked against h11 below).
COMMON = [
    UPGRADE,
    UPGRADE + b"\x81\x85frame bytes after the head",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nhost:a\r\nX-Empty:\r\nX-Spaces:   padded  value \t \r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n",
    b"GET /%7e?q=%20 HTTP/1.1\r\nHOST: A\r\nCookie: a=b; c=d\r\n\r\n",
]

# Heads it must leave to h11: every one is either refused by h11 or of a shape
# (version, method, line ends, bytes, framing headers) the strict parser does not take.
UNUSUAL = [
    b"POST /ws HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"GET /ws HTTP/1.0\r\n\r\n",
    b"GET /ws HTTP/2.0\r\nHost: a\r\n\r\n",
    b"GET /ws HTTP/1.1\nHost: a\n\n",
    b"GET /ws HTTP/1.1\r\nHost: a\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nX: folded\r\n  on\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nX: tab\there\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nX: nul\x00\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nX: no host\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nBad Name: a\r\nHost: a\r\n\r\n",
    b"GET  /ws HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /w s HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\n",  # incomplete
    b"GET /ws HTTP/1.1\r\nHost: a\r\n\r",
    b"get /ws HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\r\nGET /ws HTTP/1.1\r\nHost: a\r\n\r\n",
]


def _h11_request(data: bytes) -> tuple[h11.Request | None, bytes]:
    conn = h11.Connection(h11.SERVER)
    try:
        conn.receive_data(data)
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None, b""
    if not isinstance(event, h11.Request):
        return None, b""
    return event, bytes(conn.trailing_data[0])


@pytest.mark.parametrize("data", COMMON)
def test_common_heads_parse_as_h11_parses_them(data: bytes) -> None:
    parsed = parse_request(data)
    request, trailing = _h11_request(data)
    assert parsed is not None
    assert request is not None
    assert parsed.method == request.method
    assert parsed.target == request.target
    assert parsed.http_version == request.http_version
    assert parsed.headers == list(request.headers)
    assert parsed.trailing == trailing
    assert data[: parsed.head_size] + parsed.trailing == data


@pytest.mark.parametrize("data", UNUSUAL)
def test_unusual_heads_are_left_to_h11(data: bytes) -> None:
    assert parse_request(data) is None


def test_a_head_over_the_bound_is_measured_by_its_size() -> None:
    # take_request_head refuses it with 431 from head_size, as it did from h11's trailing data.
    big = b"GET /ws HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 20_000 + b"\r\n\r\nrest"
    parsed = parse_request(big)
    request, trailing = _h11_request(big)
    assert parsed is not None
    assert request is not None
    assert parsed.head_size == len(big) - len(trailing) == len(big) - 4


def _h11_101(data: bytes) -> bytes:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    request = conn.next_event()
    assert isinstance(request, h11.Request)
    key = dict(request.headers)[b"sec-websocket-key"]
    response = h11.InformationalResponse(
        status_code=101,
        headers=[
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", accept_key(key)),
        ],
        reason=b"Switching Protocols",
    )
    return conn.send(response) or b""


def test_the_101_is_h11s_bytes() -> None:
    parsed = parse_request(UPGRADE)
    assert parsed is not None
    assert server_accept(parsed.method, parsed.headers) == _h11_101(UPGRADE)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (UPGRADE.replace(b"GET", b"PUT"), 405),
        (UPGRADE.replace(b"Connection: Upgrade", b"Connection: keep-alive"), 426),
        (UPGRADE.replace(b"Version: 13", b"Version: 8"), 426),
        (UPGRADE.replace(KEY, b"short"), 400),
    ],
)
def test_unusable_upgrades_are_refused_with_their_status(data: bytes, status: int) -> None:
    request, _ = _h11_request(data)
    assert request is not None
    with pytest.raises(HandshakeError) as caught:
        server_accept(request.method, request.headers)
    assert caught.value.status == status


def _h11_upgrade_request(handshake: ClientHandshake) -> bytes:
    resource, headers = handshake._request
    conn = h11.Connection(h11.CLIENT)
    return conn.send(h11.Request(method="GET", target=resource, headers=headers)) or b""


@pytest.mark.parametrize(
    ("host", "resource", "extra"),
    [
        ("example.com", "/", ()),
        ("[::1]:8443", "/a/b?c=d&e=%20", (("Origin", "https://x"), ("Cookie", "a=b; c=d"))),
        ("example.com", "/", (("X-Tab", "a\tb"), ("X-Utf8", "café"))),
    ],
)
def test_the_upgrade_request_is_h11s_bytes(
    host: str, resource: str, extra: tuple[tuple[str, str], ...]
) -> None:
    handshake = ClientHandshake(host, resource, extra)
    assert handshake.request_bytes == _h11_upgrade_request(handshake)


def test_a_header_h11_refuses_is_refused_as_before() -> None:
    with pytest.raises(h11.LocalProtocolError):
        ClientHandshake("example.com", "/", (("X-Bad", "a\r\nInjected: 1"),))


def _answer(handshake: ClientHandshake, extra: bytes = b"") -> bytes:
    key = handshake._key
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n" + extra + b"\r\n"
    )


def test_a_plain_101_is_judged_without_h11_as_h11_would() -> None:
    handshake = ClientHandshake("example.com", "/", ())
    answer = _answer(handshake) + b"\x81\x02hi"
    parsed = parse_response(answer)
    assert parsed is not None
    assert parsed.status == 101
    result = handshake.receive(answer)
    assert result is not None
    assert result.trailing == b"\x81\x02hi"
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=handshake._request[1]))
    conn.receive_data(answer)
    event = conn.next_event()
    assert isinstance(event, h11.InformationalResponse)
    assert result.headers == tuple(event.headers)
    assert result.trailing == bytes(conn.trailing_data[0])


def test_a_split_101_and_refusals_still_go_through_h11() -> None:
    handshake = ClientHandshake("example.com", "/", ())
    answer = _answer(handshake)
    assert handshake.receive(answer[:20]) is None
    result = handshake.receive(answer[20:])
    assert result is not None
    assert result.status == 101
    refused = ClientHandshake("example.com", "/", ())
    with pytest.raises(HandshakeError) as caught:
        refused.receive(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    assert caught.value.status == 403
    assert str(caught.value) == "target refused the WebSocket upgrade: HTTP 403 Forbidden"
    wrong = ClientHandshake("example.com", "/", ())
    with pytest.raises(HandshakeError, match="wrong Sec-WebSocket-Accept"):
        wrong.receive(_answer(handshake))
    extension = ClientHandshake("example.com", "/", ())
    with pytest.raises(HandshakeError, match="extension that was not offered"):
        extension.receive(_answer(extension, b"Sec-WebSocket-Extensions: permessage-deflate\r\n"))


def test_a_browser_layout_is_written_by_h11_and_judged_as_before() -> None:
    def layout(key: bytes) -> list[tuple[bytes, bytes]]:
        return [
            (b"Host", b"example.com"),
            (b"Upgrade", b"websocket"),
            (b"Connection", b"Upgrade"),
            (b"Sec-WebSocket-Key", key),
            (b"Sec-WebSocket-Version", b"13"),
        ]

    handshake = ClientHandshake("example.com", "/", (), layout=layout)
    assert handshake.request_bytes == _h11_upgrade_request(handshake)
    result = handshake.receive(_answer(handshake))
    assert result is not None
    assert result.status == 101
