"""Every request-head bound of ``[server]`` holds on both ports that face the internet:
the gateway's and a ``relay agent``'s (relay/request_head.py serves both).

Each test runs twice, once per port, with the same assertions.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Sequence

import attrs
import pytest
import trio
import trio.testing
import trustme

from relay.asgi import GatewayApp
from relay.capacity import Capacity
from relay.config import NodeConfig, NodeSettings, ServerConfig
from relay.gateway import Gateway
from relay.httpserver import AsgiServer
from relay.listener import handle_connection
from relay.node.node import Node
from relay.node.server import handle_link
from tests.agents.conftest import TOKEN, start_node
from tests.support.gateway import make_config, start_gateway

Serve = Callable[[trio.abc.Stream], Awaitable[None]]


@attrs.frozen
class Port:
    """One listener under test: how to serve an in-memory connection, and its bound state."""

    name: str
    path: str  # a WebSocket path of this port: a plain GET of it is answered 426
    serve: Serve
    capacity: Capacity


def _port(name: str, tls: ssl.SSLContext | None = None, **server: object) -> Port:
    if name == "gateway":
        gateway = Gateway.from_config(make_config(**server))
        app = AsgiServer(GatewayApp(gateway))

        async def serve_gateway(stream: trio.abc.Stream) -> None:
            await handle_connection(gateway, app, stream, tls)

        return Port(name, "/ws", serve_gateway, gateway.capacity)
    config = NodeConfig(
        server=ServerConfig(bind="127.0.0.1:0", **server),  # type: ignore[arg-type]
        agent=NodeSettings(token=TOKEN),
    )
    node = attrs.evolve(Node.from_config(config), tls=tls)

    async def serve_agent(stream: trio.abc.Stream) -> None:
        await handle_link(node, stream)

    return Port(name, "/agent", serve_agent, node.capacity)


async def _connect(port: Port, nursery: trio.Nursery) -> trio.testing.MemoryStreamPair:
    ours, theirs = trio.testing.memory_stream_pair()
    nursery.start_soon(port.serve, theirs)
    return ours  # type: ignore[return-value]


async def _tcp_port(name: str, nursery: trio.Nursery) -> int:
    """A real listener of kind ``name`` on 127.0.0.1; its port."""
    if name == "gateway":
        running = await start_gateway(nursery)
        return running.address.port
    return (await start_node(nursery)).port


PORTS = ["gateway", "agent"]


@pytest.mark.parametrize("name", PORTS)
async def test_connections_in_their_handshake_are_capped(
    name: str, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """Slowloris: beyond max_handshakes, a new connection is closed at once; a
    connection that finishes its request head frees its place; the rest are
    dropped at the handshake deadline."""
    port = _port(name, max_handshakes=3, handshake_timeout=10.0)
    slow: Sequence[trio.abc.Stream] = [await _connect(port, nursery) for _ in range(3)]
    for stream in slow:
        await stream.send_all(f"GET {port.path} HTTP/1.1\r\nHost: x\r\n".encode())  # unfinished
    await trio.testing.wait_all_tasks_blocked()
    assert port.capacity.handshakes == 3
    start = trio.current_time()
    extra = await _connect(port, nursery)
    assert await extra.receive_some() == b""  # closed without a byte read or written
    assert trio.current_time() == start
    await slow[0].send_all(b"\r\n")
    assert (await slow[0].receive_some()).startswith(b"HTTP/1.1 426")
    await trio.testing.wait_all_tasks_blocked()
    assert port.capacity.handshakes == 2
    served = await _connect(port, nursery)
    await served.send_all(f"GET {port.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert (await served.receive_some()).startswith(b"HTTP/1.1 426")
    for stream in slow[1:]:
        assert await stream.receive_some() == b""
    assert trio.current_time() - start >= 10.0
    await trio.testing.wait_all_tasks_blocked()
    assert port.capacity.handshakes == 0


@pytest.mark.parametrize("name", PORTS)
async def test_a_tls_handshake_counts_and_has_the_same_deadline(
    name: str, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """On a TLS port, a connection that never finishes its TLS handshake holds a
    place under the cap and is dropped at handshake_timeout."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    port = _port(name, context, max_handshakes=1, handshake_timeout=10.0)
    silent = await _connect(port, nursery)
    await trio.testing.wait_all_tasks_blocked()
    assert port.capacity.handshakes == 1
    refused = await _connect(port, nursery)
    assert await refused.receive_some() == b""
    start = trio.current_time()
    assert await silent.receive_some() == b""
    assert trio.current_time() - start == pytest.approx(10.0)
    await trio.testing.wait_all_tasks_blocked()
    assert port.capacity.handshakes == 0


@pytest.mark.parametrize("name", PORTS)
async def test_request_head_size(name: str, nursery: trio.Nursery) -> None:
    port = _port(name)
    big = f"GET {port.path} HTTP/1.1\r\nHost: x\r\nX-Big: ".encode() + b"a" * 20000 + b"\r\n\r\n"
    # Whole in one read: measured once parsed (431). In memory, one send is one read.
    stream = await _connect(port, nursery)
    await stream.send_all(big)
    assert (await stream.receive_some()).startswith(b"HTTP/1.1 431")
    # Over TCP it may arrive in pieces, and then h11 stops at the bound (400).
    sock = await trio.open_tcp_stream("127.0.0.1", await _tcp_port(name, nursery))
    await sock.send_all(big)
    answer = b""
    while chunk := await sock.receive_some():
        answer += chunk
    assert answer.split(b" ")[1] in (b"400", b"431")
    await sock.aclose()


@pytest.mark.parametrize("name", PORTS)
async def test_garbage_gets_400(name: str, nursery: trio.Nursery) -> None:
    stream = await _connect(_port(name), nursery)
    await stream.send_all(b"\x16\x03\x01 not http at all\r\n\r\n")
    answer = await stream.receive_some()
    assert answer.startswith(b"HTTP/1.1 400")


@pytest.mark.parametrize("name", PORTS)
async def test_http2_is_refused_so_no_connection_outlives_the_router(
    name: str, nursery: trio.Nursery
) -> None:
    """An HTTP/2 preface or an h2c upgrade would keep the connection open, out of
    reach of the handshake deadline: the router answers them itself."""
    tcp_port = await _tcp_port(name, nursery)
    path = "/healthz" if name == "gateway" else "/agent/health"
    h2c = f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
    for request, status in ((b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"505"), (h2c.encode(), b"400")):
        stream = await trio.open_tcp_stream("127.0.0.1", tcp_port)
        await stream.send_all(request)
        answer = b""
        while chunk := await stream.receive_some():
            answer += chunk
        assert answer.split(b" ")[1] == status
        await stream.aclose()
