"""The hops' TLS path (relay/dataplane/tls.py): every record a read completed comes
back at once, the peer's end reads as EOF, and a TLS hop relays byte for byte
over real sockets with Trio's own ``SSLStream`` (an independent TLS driver) as
the other side."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import attrs
import pytest
import trio
import trustme

from relay.dataplane.hop import Hop
from relay.dataplane.pumps import Ending, relay_frames
from relay.dataplane.tls import TLSStream, TLSWire, open_tls
from relay.wire.closecodes import Outcome
from relay.wire.frames import BINARY, TEXT, Frame, FrameReader, encode_frame
from tests.support.gateway import make_config, start_gateway

CA = trustme.CA()


def _contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    CA.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    client = ssl.create_default_context()
    CA.configure_trust(client)
    return server, client


def _pass(source: TLSWire, destination: TLSWire) -> None:
    data = source.outgoing()
    if data:  # (an empty feed would mean EOF)
        destination.feed(data)


def _shake(client: TLSWire, server: TLSWire) -> None:
    """Run a handshake between two wires, in memory."""
    for _ in range(10):
        client_done = client.handshake_step()
        _pass(client, server)
        server_done = server.handshake_step()
        _pass(server, client)
        if client_done and server_done:
            return
    raise AssertionError("no handshake")


def test_a_read_returns_the_plaintext_of_every_record_it_completed() -> None:
    server_context, client_context = _contexts()
    client = TLSWire(client_context, server_side=False, server_hostname="localhost")
    server = TLSWire(server_context, server_side=True, server_hostname=None)
    _shake(client, server)
    # 200 writes: 200 records, as 200 small frames relayed one by one would be.
    ciphertext = b"".join(server.encrypt(b"m%03d" % i) for i in range(200))
    client.feed(ciphertext)
    assert client.decrypt(1 << 20) == b"".join(b"m%03d" % i for i in range(200))
    assert client.decrypt(1 << 20) is None  # nothing more until more arrives
    # A limit is honoured; the rest stays for the next read.
    client.feed(server.encrypt(b"x" * 100_000))
    first = client.decrypt(40_000)
    assert first is not None
    assert len(first) == 40_000
    rest = client.decrypt(1 << 20)
    assert rest is not None
    assert len(first) + len(rest) == 100_000
    client.feed(b"")
    assert client.decrypt(1 << 20) == b""  # EOF, with or without close_notify


async def _tcp() -> tuple[trio.SocketStream, trio.SocketStream]:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        accepted: list[trio.SocketStream] = []

        async def accept() -> None:
            accepted.append(await listener.accept())

        nursery.start_soon(accept)
        connected = await trio.open_tcp_stream("127.0.0.1", port)
    await listener.aclose()
    return connected, accepted[0]


async def test_a_tls_target_hop_relays_byte_for_byte(nursery: trio.Nursery) -> None:
    server_context, client_context = _contexts()
    # The relay's end of the target: its TLS client, on a plain socket.
    relay_target, target_raw = await _tcp()
    target_peer = trio.SSLStream(target_raw, server_context, server_side=True)
    relay_tls, _ = await _both(
        open_tls(relay_target, client_context, server_side=False, server_hostname="localhost"),
        target_peer.do_handshake(),
    )
    assert type(relay_tls) is TLSStream
    target = Hop("target", relay_tls, is_target=True, max_message_size=1 << 24)
    assert target.tls is not None  # the direct path, through the TLS wire
    client_sock, client_peer_sock = socket.socketpair()
    client_sock.setblocking(False)
    client = Hop(
        "client",
        trio.SocketStream(trio.socket.from_stdlib_socket(client_sock)),
        is_target=False,
        max_message_size=1 << 24,
        sock=client_sock,
    )
    client_peer_sock.setblocking(False)
    client_peer = trio.SocketStream(trio.socket.from_stdlib_socket(client_peer_sock))
    small = [b"%05d" % i for i in range(500)]
    large = bytes(range(256)) * 4096  # 1 MiB
    frames = b"".join(encode_frame(TEXT, m) for m in small) + encode_frame(BINARY, large)
    received: list[bytes] = []

    async def read_client() -> None:
        reader = FrameReader(from_client=False, max_frame=1 << 24)
        while len(received) < len(small) + 1:
            reader.feed(await client_peer.receive_some())
            while isinstance(frame := reader.next_frame(), Frame):
                received.append(frame.payload)

    watch: list[object] = []
    nursery.start_soon(
        lambda: relay_frames(
            client, target, idle_timeout=0.0, close_timeout=5.0, on_start=watch.append
        )
    )
    async with trio.open_nursery() as inner:
        inner.start_soon(read_client)
        await target_peer.send_all(frames)  # many records, read in few reads
    assert received == [*small, large]
    # And the other way: the client's masked frames reach the TLS target unmasked.
    await client_peer.send_all(encode_frame(BINARY, b"up" * 50_000, mask=b"abcd"))
    reader = FrameReader(from_client=True, max_frame=1 << 24)
    while not isinstance(frame := reader.next_frame(), Frame):
        reader.feed(await target_peer.receive_some())
    assert frame.payload == b"up" * 50_000
    watch[0].finish(Ending(Outcome.SHUTDOWN))  # type: ignore[attr-defined]


async def _both(first: object, second: object) -> tuple[object, object]:
    results: list[object] = [None, None]

    async def run(index: int, awaitable: object) -> None:
        results[index] = await awaitable  # type: ignore[misc]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, 0, first)
        nursery.start_soon(run, 1, second)
    return results[0], results[1]


async def test_a_failed_handshake_closes_the_socket_it_took() -> None:
    _, client_context = _contexts()
    relay_end, peer = await _tcp()
    async with trio.open_nursery() as nursery:

        async def answer_garbage() -> None:
            await peer.receive_some()
            await peer.send_all(b"HTTP/1.1 400 not TLS\r\n\r\n")

        nursery.start_soon(answer_garbage)
        with pytest.raises(trio.BrokenResourceError) as failed:
            await open_tls(relay_end, client_context, server_side=False, server_hostname="x")
        assert isinstance(failed.value.__cause__, ssl.SSLError)
    # The relay's end is closed: the peer sees EOF rather than a connection left open.
    assert await peer.receive_some() == b""


async def test_a_tls_client_refused_at_its_request_head_is_answered_and_closed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The gateway's TLS port: after the handshake the socket belongs to the TLS
    stream, so a head refused there (400) must still close the connection."""
    _server_context, client_context = _contexts()
    cert = tmp_path / "cert.pem"
    CA.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(cert))
    config = make_config()
    config = attrs.evolve(config, server=attrs.evolve(config.server, certfile=str(cert)))
    running = await start_gateway(nursery, config)
    plain = await trio.open_tcp_stream("127.0.0.1", running.address.port)
    client = trio.SSLStream(
        plain, client_context, server_hostname="127.0.0.1", https_compatible=True
    )
    await client.send_all(b"\x01\x02 not a request\r\n\r\n")
    answer = b""
    with trio.fail_after(30):  # a hang guard: a socket left open never sends EOF
        while chunk := await client.receive_some():
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400")  # and then EOF: the loop ended
    assert running.gateway.capacity.handshakes == 0
