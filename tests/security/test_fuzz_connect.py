"""Property-based tests of the connect request, in both forms.

Whatever a client sends, the parser gives either a :class:`ConnectRequest` or an
:class:`InputError` that names a field (or says the message is not a JSON
object) — never any other exception.  A request it accepts can always be
dialed: the target's upgrade request can be built from it (h11 refuses nothing)
and the policy can judge its host.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from urllib.parse import quote, urlencode

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.converter import InputError
from relay.targets import TargetPolicy
from relay.wire.connect import (
    ConnectLimits,
    ConnectRequest,
    parse_connect_message,
    parse_connect_query,
)
from relay.wire.handshake import ClientHandshake

FIELDS = ("apiKey", "key", "url", "headers", "cookies", "geo", "agent", "idle_timeout")
_FIELD = "|".join(FIELDS)
MESSAGE_ERROR = re.compile(
    rf"^(Invalid connect message: ({_FIELD})\b|connect message is not valid JSON: |"
    r"connect message must be a JSON object, got )"
)
QUERY_ERROR = re.compile(rf"^Invalid connect query: ({_FIELD}|header|cookie|connected)\b")
CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = ConnectLimits(max_url_length=400, max_headers=4, max_header_size=200)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
hosts = st.sampled_from(
    ["h", "example.com", "bücher.example", "127.0.0.1", "[::1]", "[::ffff:10.0.0.1]", "a..b", ""]
) | st.text(max_size=12)
urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
    st.sampled_from(["ws", "wss", "WS", "http", ""]),
    hosts,
    st.sampled_from(["", ":0", ":443", ":65536", ":x", ":8080"]),
    st.sampled_from(["", "/", "/?", "/p?q=", "?", "#"]).flatmap(
        lambda start: st.text(max_size=20).map(lambda rest: start + rest)
    ),
)
header_maps = st.dictionaries(
    st.sampled_from(["Authorization", "Host", "Sec-WebSocket-Protocol", "Cookie", "X-A"])
    | st.text(max_size=8),
    st.text(max_size=40) | json_scalars,
    max_size=6,
)
messages = st.fixed_dictionaries(
    {"url": urls | json_values},
    optional={
        "apiKey": st.text(max_size=10) | json_values,
        "key": st.text(max_size=10),
        "headers": header_maps | json_values,
        "cookies": header_maps | json_values,
        "geo": st.sampled_from(["US", "us,DE", "USA", ""]) | st.text(max_size=6) | json_values,
        "agent": st.sampled_from(["de1", "de1,at5", "bad slug"]) | st.text(max_size=6),
        "idle_timeout": st.floats() | st.integers() | json_scalars,
        "extra": json_values,
    },
)


# Small alphabets of the characters that matter to HTTP, mixed with any text.
tricky_text = st.text(st.sampled_from(' \t\r\n\x00\x01\x7f;=,:"aZ9é日\ud800'), max_size=12)
values = tricky_text | st.text(max_size=40)
# Mostly valid messages, so the checks after the first field failure get exercised too.
valid_urls = st.builds(
    lambda scheme, host, rest: f"{scheme}://{host}/{rest}",
    st.sampled_from(["ws", "wss"]),
    st.sampled_from(
        ["h", "example.com", "127.0.0.1", "[::1]", "bücher.example", "xn--d1acufc.xn--p1ai"]
    ),
    values,
)
token_names = st.sampled_from(
    ["Authorization", "Origin", "X-A", "Cookie", "sid", "Sec-WebSocket-Protocol"]
)
near_valid = st.fixed_dictionaries(
    {
        "apiKey": st.text(max_size=10),
        "url": valid_urls,
        "headers": st.dictionaries(token_names, values, max_size=5),
        "cookies": st.dictionaries(token_names, values, max_size=5),
    }
)


def _dialable(request: ConnectRequest) -> None:
    """What the dial does with an accepted request must not raise."""
    target = request.target
    handshake = ClientHandshake(target.host_header, target.resource, request.upgrade_headers())
    assert handshake.request_bytes.startswith(b"GET ")
    # h11 lets some controls through; the relay promises none reach the target.
    for name, value in request.upgrade_headers():
        assert not CONTROLS.search(name + value), (name, value)
    assert target.host.isascii()
    assert 0 <= target.port <= 65535
    TargetPolicy().target_refusal(target.host, target.port)
    TargetPolicy().refusal(target.host, host=target.host)
    assert len(request.url) <= LIMITS.max_url_length
    assert len(request.headers) <= LIMITS.max_headers + 1  # the merged Cookie header


def _parsed(parse: Callable[[], ConnectRequest | None]) -> ConnectRequest | str | None:
    """The request, or the text of the InputError; any other exception fails the test."""
    try:
        return parse()
    except InputError as error:
        return str(error)


def _check_message(text: str | bytes) -> None:
    result = _parsed(lambda: parse_connect_message(text, LIMITS))
    if isinstance(result, str):
        assert MESSAGE_ERROR.match(result), result
    else:
        assert result is not None
        _dialable(result)


@SETTINGS
@given(message=messages)
def test_structured_messages(message: dict[str, object]) -> None:
    _check_message(json.dumps(message))


@SETTINGS
@given(message=near_valid)
def test_near_valid_messages(message: dict[str, object]) -> None:
    _check_message(json.dumps(message))


@SETTINGS
@given(value=json_values)
def test_any_json(value: object) -> None:
    _check_message(json.dumps(value))


@SETTINGS
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(bytes))
def test_any_text_or_bytes(text: str | bytes) -> None:
    _check_message(text)


query_names = st.sampled_from([*FIELDS, "header", "cookie", "connected"]) | st.text(max_size=6)
query_pairs = st.lists(st.tuples(query_names, st.text(max_size=40)), max_size=8)


def _check_query(query: str) -> None:
    result = _parsed(lambda: parse_connect_query(query, LIMITS))
    if isinstance(result, str):
        assert QUERY_ERROR.match(result), result
    elif result is not None:
        _dialable(result)


@SETTINGS
@given(pairs=query_pairs, url=urls)
def test_query_string_form(pairs: list[tuple[str, str]], url: str) -> None:
    _check_query(urlencode([("url", url), *pairs]))
    _check_query(urlencode(pairs))


@SETTINGS
@given(raw=st.text(max_size=200))
def test_query_string_raw(raw: str) -> None:
    _check_query(raw)
    _check_query("url=" + quote("ws://h/") + "&" + raw)


def test_examples_hypothesis_once_found() -> None:
    """Inputs that used to pass validation and then crash the dial."""
    for url in ("ws://h/é", "ws://a\x01b/", "ws://a..b/", "ws://h\ud800/", "ws://h/\x7f"):
        _check_message(json.dumps({"apiKey": "k", "url": url}))
    for value in (" lead", "trail ", "a\x01b", "\ud800"):
        _check_message(json.dumps({"apiKey": "k", "url": "ws://h/", "headers": {"X": value}}))
    _check_message(json.dumps({"apiKey": "k", "url": "ws://h/", "headers": {"X\n": "v"}}))
