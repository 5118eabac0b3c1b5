"""Target dials as Chrome (issue: "Target dials that look like a browser").

A local TLS server records the raw ClientHello and the upgrade request of a
relayed ``wss://`` dial (tests/support/clienthello.py).  With
``impersonate = "chrome"`` its JA3N/JA4 equal curl_cffi's own Chrome profile
for a plain HTTPS request (forced to HTTP/1.1, the ALPN a browser offers for
WebSocket) and differ from Python ``ssl``'s; the upgrade request has
Chrome's header order and casing — for direct, SOCKS5 (microsocks) and
remote agents, and per session where the agent allows it.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Sequence
from functools import partial

import attrs
import pytest
import trio
import trustme
from curl_cffi import requests as curl_requests
from trio_websocket import open_websocket_url

from relay.browser.profiles import profile, upgrade_headers
from relay.client import open_relay
from relay.config import AgentConfig, Config
from tests.agents.conftest import TOKEN, start_node
from tests.support.clienthello import Connection, HelloRecorder, ja3n, ja4
from tests.support.gateway import KEY, connect_json, make_config, refusal, start_gateway
from tests.support.proxies import microsocks, tinyproxy
from tests.support.target import TargetServer

# What Chromium 156 sent for new WebSocket("wss://…") on this machine; the same order
# appears in Chromium's source and in published captures (docs/decisions/0012).
CHROME_ORDER = [
    "Host",
    "Connection",
    "Pragma",
    "Cache-Control",
    "User-Agent",
    "Upgrade",
    "Origin",
    "Sec-WebSocket-Version",
    "Accept-Encoding",
    "Accept-Language",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Extensions",
]
SECRET = "pr0xy-s3cret"
REFUSED = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def _with_ca(config: Config, ca_file: str) -> Config:
    return attrs.evolve(config, targets=attrs.evolve(config.targets, ca_file=ca_file))


def _recorder(ca: trustme.CA) -> HelloRecorder:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return HelloRecorder(context, response=REFUSED)


async def _dial(ws_url: str, url: str, **fields: object) -> tuple[str | None, int | None]:
    """One relayed dial the recorder refuses; the error message and close code."""
    message, code, _reason = await refusal(ws_url, connect_json(url, **fields))
    return message, code


async def _recorded(recorder: HelloRecorder, count: int) -> Connection:
    connections = await trio.to_thread.run_sync(recorder.wait_for, count)
    return connections[count - 1]


async def _library_chrome(recorder: HelloRecorder, ca_file: str, count: int) -> Connection:
    """curl_cffi's own Chrome request (HTTP/1.1) to the recorder: the reference hello."""

    def get() -> None:
        # An address literal: curl looks names up for ECH (a DNS query) otherwise.
        curl_requests.get(
            recorder.url("/", host="127.0.0.1"),
            impersonate="chrome",
            http_version="v1",
            verify=ca_file,
        )

    await trio.to_thread.run_sync(get)
    return await _recorded(recorder, count)


def _names(connection: Connection) -> list[str]:
    return [name for name, _ in connection.headers]


async def test_direct_agent_dials_as_chrome(
    nursery: trio.Nursery, ca: trustme.CA, ca_file: str
) -> None:
    agents = (AgentConfig(slug="chrome", impersonate="chrome"), AgentConfig(slug="plain"))
    running = await start_gateway(nursery, _with_ca(make_config(agents=agents), ca_file))
    with _recorder(ca) as recorder:
        url = f"wss://127.0.0.1:{recorder.port}/feed?room=1"
        message, code = await _dial(
            running.ws_url,
            url,
            agent="chrome",
            headers={"origin": "https://app.example", "X-Trace": "7"},
            cookies={"sid": "abc"},
        )
        # The 101 is judged as for any dial: today's wording and close code.
        assert message == "Target refused the WebSocket upgrade: HTTP 403 Forbidden"
        assert code == 1011
        relayed = await _recorded(recorder, 1)
        await _dial(running.ws_url, url, agent="plain")
        python_ssl = await _recorded(recorder, 2)
        library = await _library_chrome(recorder, ca_file, 3)

    hello = relayed.hello
    assert hello.alpn == (b"http/1.1",)  # what Chrome offers for a WebSocket
    assert relayed.alpn == "http/1.1"
    assert ja4(hello) == ja4(library.hello)
    assert ja3n(hello) == ja3n(library.hello)
    assert ja4(hello).startswith("t13i1515h1_8daaf6152771_")  # Chrome's cipher list
    assert ja4(python_ssl.hello) != ja4(hello)
    assert ja3n(python_ssl.hello) != ja3n(hello)
    # Chrome shuffles its extensions per connection; GREASE values change too.
    assert sorted(hello.extension_types) != sorted(python_ssl.hello.extension_types)

    assert relayed.request_line == "GET /feed?room=1 HTTP/1.1"
    names = _names(relayed)
    # Chrome's order and casing; the client's extra header after Accept-Language,
    # its cookie where Chrome puts cookies, Chrome's extension offer last.
    expected = [*CHROME_ORDER[:10], "X-Trace", "Cookie", *CHROME_ORDER[10:]]
    assert names == expected
    assert relayed.header("Origin") == "https://app.example"  # value overridden, not order
    assert relayed.header("Cookie") == "sid=abc"
    chrome = profile("chrome")
    assert chrome is not None
    assert relayed.header("User-Agent") == chrome.user_agent
    assert f"Chrome/{chrome.target.removeprefix('chrome')}" in chrome.user_agent
    assert relayed.header("Accept-Encoding") == "gzip, deflate, br, zstd"
    assert relayed.header("Accept-Language") == "en-US,en;q=0.9"
    assert relayed.header("Pragma") == relayed.header("Cache-Control") == "no-cache"
    offer = "permessage-deflate; client_max_window_bits"
    assert relayed.header("Sec-WebSocket-Extensions") == offer
    # The relay's own request stays as it was.
    assert _names(python_ssl)[:3] == ["host", "upgrade", "connection"]


async def test_a_name_is_sent_as_sni_and_never_looked_up_by_curl(
    nursery: trio.Nursery, ca: trustme.CA, ca_file: str
) -> None:
    agents = (AgentConfig(slug="chrome", impersonate="chrome"),)
    running = await start_gateway(nursery, _with_ca(make_config(agents=agents), ca_file))
    with _recorder(ca) as recorder:
        await _dial(running.ws_url, f"wss://localhost:{recorder.port}/")
        relayed = await _recorded(recorder, 1)
    assert relayed.hello.server_name == "localhost"
    assert ja4(relayed.hello).startswith("t13d1516h1_8daaf6152771_")
    assert relayed.header("Host") == f"localhost:{recorder.port}"
    assert relayed.header("Origin") == f"https://localhost:{recorder.port}"


async def test_socks5_agent_dials_as_chrome(
    nursery: trio.Nursery, ca: trustme.CA, ca_file: str
) -> None:
    async with microsocks(bind="127.0.0.5") as socks:
        agents = (AgentConfig(slug="s5", kind="proxy", proxy=socks.url(), impersonate="chrome"),)
        running = await start_gateway(nursery, _with_ca(make_config(agents=agents), ca_file))
        with _recorder(ca) as recorder:
            message, _ = await _dial(running.ws_url, f"wss://127.0.0.1:{recorder.port}/")
            assert message == "Target refused the WebSocket upgrade: HTTP 403 Forbidden"
            relayed = await _recorded(recorder, 1)
            library = await _library_chrome(recorder, ca_file, 2)
    assert relayed.peer[0] == "127.0.0.5"  # it really went through the proxy
    assert ja4(relayed.hello) == ja4(library.hello)
    assert ja3n(relayed.hello) == ja3n(library.hello)
    assert _names(relayed) == CHROME_ORDER


async def test_remote_agent_dials_as_chrome_where_the_node_dials(
    nursery: trio.Nursery, ca: trustme.CA, ca_file: str
) -> None:
    node = await start_node(nursery, targets_ca=ca_file)
    remote = {"kind": "remote", "url": node.url, "token": TOKEN}
    agents = (
        AgentConfig(slug="far", impersonate="chrome", **remote),  # type: ignore[arg-type]
        AgentConfig(slug="pick", allow_impersonate=True, **remote),  # type: ignore[arg-type]
        AgentConfig(slug="asis", **remote),  # type: ignore[arg-type]
    )
    running = await start_gateway(nursery, make_config(agents=agents))
    with _recorder(ca) as recorder:
        url = f"wss://127.0.0.1:{recorder.port}/"
        message, code = await _dial(running.ws_url, url, agent="far")
        assert (message, code) == ("Target refused the WebSocket upgrade: HTTP 403 Forbidden", 1011)
        by_agent = await _recorded(recorder, 1)
        await _dial(running.ws_url, url, agent="pick", impersonate="chrome")
        by_session = await _recorded(recorder, 2)
        await _dial(running.ws_url, url, agent="asis")
        python_ssl = await _recorded(recorder, 3)
        library = await _library_chrome(recorder, ca_file, 4)
    for relayed in (by_agent, by_session):
        assert ja4(relayed.hello) == ja4(library.hello)
        assert _names(relayed) == CHROME_ORDER
    assert ja4(python_ssl.hello) != ja4(library.hello)


async def _echo_session(ws_url: str, url: str, agent: str, **fields: object) -> None:
    """Relay big and small messages both ways, then a close with a code and reason."""
    async with open_websocket_url(ws_url, max_message_size=1 << 24) as ws:
        await ws.send_message(connect_json(url, agent=agent, **fields))
        assert json.loads(await ws.get_message())["type"] == "connected"
        messages: Sequence[str | bytes] = ("small", b"\x01" * 300_000, "x" * 70_000, b"")
        for item in messages:
            await ws.send_message(item)
            assert await ws.get_message() == item
        await ws.aclose(4003, "bye over browser TLS")


async def test_frames_and_closes_relay_unchanged_over_browser_tls(
    nursery: trio.Nursery, tls_target: TargetServer, ca_file: str
) -> None:
    agents = (AgentConfig(slug="chrome", impersonate="chrome"),)
    running = await start_gateway(nursery, _with_ca(make_config(agents=agents), ca_file))
    await _echo_session(running.ws_url, f"{tls_target.url}/echo", "chrome")
    record = tls_target.connections[-1]
    with trio.fail_after(10):  # a hang guard only
        await record.ended.wait()
    assert (record.close_code, record.close_reason) == (4003, "bye over browser TLS")
    assert record.headers["user-agent"].startswith("Mozilla/5.0")
    # A target's close reaches the client with its code and reason.
    async with open_relay(
        running.ws_url, api_key=KEY, url=f"{tls_target.url}/close?code=4011&reason=gone"
    ) as relayed:
        with pytest.raises(Exception) as closed:  # noqa: PT011 - trio_websocket's close
            await relayed.websocket.get_message()
    reason = getattr(closed.value, "reason", None)
    assert reason is not None
    assert (reason.code, reason.reason) == (4011, "gone")


async def test_errors_keep_their_wording(
    nursery: trio.Nursery, tls_target: TargetServer, ca_file: str
) -> None:
    agents = (
        AgentConfig(slug="trusting", impersonate="chrome"),
        AgentConfig(slug="plain"),
    )
    trusting = await start_gateway(nursery, _with_ca(make_config(agents=agents), ca_file))
    untrusting = await start_gateway(nursery, make_config(agents=agents))
    # No CA: the browser TLS fails verification, named like Python's.
    message, code = await _dial(untrusting.ws_url, f"{tls_target.url}/echo", agent="trusting")
    assert message is not None
    assert message.startswith("TLS handshake with target failed: ")
    assert "certificate" in message
    assert code == 1011
    with trio.socket.socket() as unused:
        await unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    for agent in ("trusting", "plain"):
        message, code = await _dial(trusting.ws_url, f"wss://127.0.0.1:{port}/", agent=agent)
        assert (message, code) == (f"Target connection refused: 127.0.0.1:{port}", 1011)
        message, code = await _dial(
            trusting.ws_url, f"{tls_target.url}/reject?status=403", agent=agent
        )
        assert (message, code) == ("Target refused the WebSocket upgrade: HTTP 403 Forbidden", 1011)


def test_client_headers_override_values_never_positions() -> None:
    chrome = profile("chrome")
    assert chrome is not None
    headers = upgrade_headers(
        chrome,
        host="feed.example",
        origin="https://feed.example",
        key=b"a2V5a2V5a2V5a2V5a2V5aw==",
        client_headers=[
            ("sec-websocket-protocol", "v2.feed"),
            ("user-agent", "Mozilla/5.0 (custom)"),
            ("Authorization", "Bearer t"),
            ("Cookie", "a=1"),
        ],
    )
    names = [name.decode() for name, _ in headers]
    assert names == [
        *CHROME_ORDER[:10],
        "Authorization",
        "Cookie",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Extensions",
        "Sec-WebSocket-Protocol",  # last, where Chromium adds it
    ]
    assert dict(headers)[b"User-Agent"] == b"Mozilla/5.0 (custom)"
    assert profile("none") is None
    with pytest.raises(ValueError, match="unknown browser profile"):
        profile("chrome1")


async def test_a_plain_ws_target_gets_chromes_request(nursery: trio.Nursery) -> None:
    heads: list[bytes] = []

    async def answer(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some()
            if not chunk:
                return
            head += chunk
        heads.append(head.split(b"\r\n\r\n", 1)[0])
        await stream.send_all(REFUSED)
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, answer, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    agents = (AgentConfig(slug="chrome", impersonate="chrome"),)
    running = await start_gateway(nursery, make_config(agents=agents))
    message, code = await _dial(running.ws_url, f"ws://127.0.0.1:{port}/plain")
    assert (message, code) == ("Target refused the WebSocket upgrade: HTTP 403 Forbidden", 1011)
    lines = heads[0].decode().split("\r\n")
    assert lines[0] == "GET /plain HTTP/1.1"
    assert [line.split(":", 1)[0] for line in lines[1:]] == CHROME_ORDER
    assert f"Origin: http://127.0.0.1:{port}" in lines


async def test_http_connect_proxy_and_source_address_keep_working(
    nursery: trio.Nursery, ca: trustme.CA, ca_file: str
) -> None:
    async with tinyproxy(user="u", password=SECRET, bind="127.0.0.7") as http:
        agents = (
            AgentConfig(
                slug="h",
                kind="proxy",
                proxy=http.url("u", SECRET),
                impersonate="chrome",
                remote_dns=False,
            ),
            AgentConfig(slug="bound", source_address="127.0.0.9", impersonate="chrome"),
        )
        running = await start_gateway(nursery, _with_ca(make_config(agents=agents), ca_file))
        with _recorder(ca) as recorder:
            url = f"wss://localhost:{recorder.port}/"
            for count, agent in enumerate(("h", "bound"), start=1):
                message, _ = await _dial(running.ws_url, url, agent=agent)
                assert message == "Target refused the WebSocket upgrade: HTTP 403 Forbidden"
                await _recorded(recorder, count)
            through_proxy, bound = recorder.wait_for(2)
    assert through_proxy.peer[0] == "127.0.0.7"  # tinyproxy's own outgoing address
    assert bound.peer[0] == "127.0.0.9"
    for relayed in (through_proxy, bound):
        assert relayed.hello.server_name == "localhost"  # the name, though the address was dialed
        assert ja4(relayed.hello).startswith("t13d1516h1_8daaf6152771_")
        assert _names(relayed) == CHROME_ORDER
