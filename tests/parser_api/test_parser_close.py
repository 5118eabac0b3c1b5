"""Every close the parser API starts completes the RFC 6455 section 7.1.1 handshake.

A raw socket client sends ``configure`` and ``fetch`` frames right behind its
upgrade request (as the protocol document's JavaScript example does in
``onopen``), reads the server's close frame, and checks that the server keeps
the TCP connection open until the client's own close arrives, then ends it
cleanly. Before this, the server dropped the connection right after its close
frame; early frames then met a closed socket, the reset could destroy the close
frame, and browsers reported 1006 instead of 4401.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import attrs
import trio

from tests.conftest import require
from tests.parser_api.parser_fake_marketplace import FakeMarketplace
from tests.parser_api.parser_testkit import (
    TOKEN,
    ParserServer,
    ThreadedServers,
    make_config,
    start_parser,
)
from tests.support.gateway import make_config as gateway_config
from tests.support.gateway import start_gateway

EARLY = [
    {"action": "parser.configure", "payload": {"parser_type": "poshmark", "batch_size": 5}},
    {"action": "parser.fetch", "payload": {}},
]


def masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (clients must mask)."""
    key = os.urandom(4)
    head = bytes([0x80 | opcode])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    else:
        head += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_frame(code: int) -> bytes:
    return masked(0x8, struct.pack("!H", code))


def upgrade(port: int, token: str | None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    query = f"?token={token}" if token is not None else ""
    return (
        f"GET /ws/parser{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class RawClient:
    """A WebSocket client on a bare socket that reads server frames one at a time."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def connect(cls, server: ParserServer, token: str | None, *, delay: float) -> RawClient:
        """Upgrade, and send the early frames as soon as the 101 arrives (as ``onopen``
        does), at once (``delay`` 0) or a moment later; frames sent before the 101
        would be an HTTP protocol error."""
        port = int(server.http_base.rsplit(":", 1)[1])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = cls(stream)
        await stream.send_all(upgrade(port, token))
        await client._read_until(b"\r\n\r\n")
        head, client.buffer = client.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        if delay:
            await trio.sleep(delay)
        await stream.send_all(b"".join(masked(0x1, json.dumps(m).encode()) for m in EARLY))
        return client

    async def _read_until(self, marker: bytes) -> None:
        while marker not in self.buffer:
            chunk = await self.stream.receive_some()
            assert chunk, "server closed the connection"
            self.buffer += chunk

    async def _fill(self, size: int) -> None:
        while len(self.buffer) < size:
            chunk = await self.stream.receive_some()
            assert chunk, "server closed the connection mid-frame"
            self.buffer += chunk

    async def frame(self) -> tuple[int, bytes]:
        """The next server frame: (opcode, payload)."""
        await self._fill(2)
        opcode, length = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
        offset = 2
        if length == 126:
            await self._fill(4)
            length, offset = struct.unpack("!H", self.buffer[2:4])[0], 4
        elif length == 127:
            await self._fill(10)
            length, offset = struct.unpack("!Q", self.buffer[2:10])[0], 10
        await self._fill(offset + length)
        payload = self.buffer[offset : offset + length]
        self.buffer = self.buffer[offset + length :]
        return opcode, payload

    async def close_code(self) -> int:
        """Skip data frames up to the server's close; its status code."""
        while True:
            opcode, payload = await self.frame()
            if opcode == 0x8:
                return int(struct.unpack("!H", payload[:2])[0])

    async def still_open(self, seconds: float) -> bool:
        """True if the server sends nothing and keeps the connection for ``seconds``."""
        with trio.move_on_after(seconds):
            data = await self.stream.receive_some()
            return bool(data)  # an EOF here means the server did not wait for our close
        return True

    async def answer_close_and_expect_eof(self, code: int) -> None:
        """Send a stray frame and our close; the server must then end the connection cleanly."""
        await self.stream.send_all(masked(0x1, b"{}") + close_frame(code))
        with trio.fail_after(10):  # a hang guard only
            assert await self.stream.receive_some() == b""
        await self.stream.aclose()


async def test_wrong_token_with_early_frames_gets_4401_every_time(parser: ParserServer) -> None:
    tries = 200
    for attempt in range(tries):
        # Frames right behind the 101, or a moment later.
        delay = (0.0, 0.0005, 0.002)[attempt % 3]
        client = await RawClient.connect(parser, "wrong-token", delay=delay)
        with trio.fail_after(10):
            assert await client.close_code() == 4401, f"attempt {attempt}"
        if attempt < 3:
            # The server waits for our close instead of dropping the connection.
            assert await client.still_open(0.1)
        await client.answer_close_and_expect_eof(4401)
    assert parser.app.refused["unauthorized"] == tries


async def test_missing_token_with_early_frames_gets_4401(parser: ParserServer) -> None:
    client = await RawClient.connect(parser, None, delay=0)
    with trio.fail_after(10):
        assert await client.close_code() == 4401
    assert await client.still_open(0.1)
    await client.answer_close_and_expect_eof(1000)


async def test_connection_limit_close_completes_the_handshake(
    nursery: trio.Nursery, market: FakeMarketplace
) -> None:
    server = await start_parser(nursery, market, max_connections=1)
    holder = await RawClient.connect(server, TOKEN, delay=0)
    with trio.fail_after(10):
        opcode, greeting = await holder.frame()
    assert opcode == 0x1
    assert json.loads(greeting)["action"] == "connected"
    for attempt in range(20):
        client = await RawClient.connect(server, TOKEN, delay=(0.0, 0.001)[attempt % 2])
        with trio.fail_after(10):
            assert await client.close_code() == 1013
        if attempt == 0:
            assert await client.still_open(0.1)
        await client.answer_close_and_expect_eof(1013)
    await holder.stream.aclose()


async def test_shutdown_close_completes_the_handshake(parser: ParserServer) -> None:
    client = await RawClient.connect(parser, TOKEN, delay=0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(parser.app.shutdown)
        with trio.fail_after(10):
            assert await client.close_code() == 1001
        assert await client.still_open(0.1)
        await client.answer_close_and_expect_eof(1001)
    # Refused while shutting down: 1001, and that close completes too.
    late = await RawClient.connect(parser, TOKEN, delay=0)
    with trio.fail_after(10):
        assert await late.close_code() == 1001
    await late.answer_close_and_expect_eof(1001)


async def test_a_client_that_never_answers_is_dropped_after_close_timeout(
    nursery: trio.Nursery, market: FakeMarketplace
) -> None:
    server = await start_parser(nursery, market, close_timeout=0.2)
    client = await RawClient.connect(server, "wrong-token", delay=0)
    with trio.fail_after(10):
        assert await client.close_code() == 4401
        # No close from us: the server gives up waiting and ends the connection.
        assert await client.stream.receive_some() == b""
    await client.stream.aclose()


NODE_REFUSALS = """
// The protocol document's pattern: configure and fetch sent in onopen.
const [url, tries] = [process.argv[2], Number(process.argv[3])];
const codes = {};
const once = () => new Promise((resolve) => {
  const ws = new WebSocket(url);
  ws.onopen = () => {
    ws.send(JSON.stringify({action: "parser.configure",
                            payload: {parser_type: "poshmark", batch_size: 25}}));
    ws.send(JSON.stringify({action: "parser.fetch", payload: {}}));
  };
  ws.onerror = () => {};
  ws.onclose = (event) => resolve(event.code);
});
(async () => {
  for (let i = 0; i < tries; i++) {
    const code = await once();
    codes[code] = (codes[code] || 0) + 1;
  }
  console.log(JSON.stringify(codes));
})();
"""


def test_nodes_websocket_sees_4401_every_time(threaded: ThreadedServers, tmp_path: Path) -> None:
    """Node 20's built-in WebSocket, as a new user runs the protocol document's example."""
    node = shutil.which("node")
    require(node is not None, "node (apt-get install nodejs)")
    assert node is not None
    script = tmp_path / "refusals.js"
    script.write_text(NODE_REFUSALS)
    url = f"ws://{threaded.host_port}/ws/parser?token=wrong-token"
    result = subprocess.run(
        [node, "--experimental-websocket", str(script), url, "200"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"4401": 200}


async def test_through_the_gateways_listener_too(
    nursery: trio.Nursery, market: FakeMarketplace
) -> None:
    """``relay serve`` hands /ws/parser to Hypercorn behind its own listener: same result."""
    config = attrs.evolve(gateway_config(), parser=make_config(market))
    running = await start_gateway(nursery, config)
    server = ParserServer(app=None, http_base=running.address.http_url, market=market)  # type: ignore[arg-type]
    for attempt in range(50):
        client = await RawClient.connect(server, "wrong-token", delay=(0.0, 0.001)[attempt % 2])
        with trio.fail_after(10):
            assert await client.close_code() == 4401, f"attempt {attempt}"
        if attempt == 0:
            assert await client.still_open(0.1)
        await client.answer_close_and_expect_eof(4401)
