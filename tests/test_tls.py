"""wss:// and https:// on the gateway's one port, with a private CA (trustme)."""

from __future__ import annotations

import ssl
from pathlib import Path

import attrs
import httpx
import pytest
import trio
import trustme

from relay.client import open_relay
from tests.support.gateway import KEY, make_config, start_gateway
from tests.support.target import TargetServer


async def test_wss_and_https_on_one_port(
    nursery: trio.Nursery, target: TargetServer, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, cafile = tmp_path / "cert.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    ca.cert_pem.write_to_path(str(cafile))
    config = make_config()
    config = attrs.evolve(config, server=attrs.evolve(config.server, certfile=str(certfile)))
    running = await start_gateway(nursery, config)
    assert running.ws_url.startswith("wss://")

    trusting = ssl.create_default_context(cafile=str(cafile))
    async with open_relay(
        running.ws_url, api_key=KEY, url=f"{target.url}/echo", ssl_context=trusting
    ) as relayed:
        await relayed.websocket.send_message("over TLS")
        assert await relayed.websocket.get_message() == "over TLS"
        await relayed.websocket.send_message(b"\x00" * 200_000)
        assert await relayed.websocket.get_message() == b"\x00" * 200_000

    async with httpx.AsyncClient(verify=trusting) as client:
        health = await client.get(running.address.http_url + "/healthz")
        docs = await client.get(running.address.http_url + "/ws/docs")
    assert health.status_code == 200
    assert docs.json()["protocol"]["websocket_url"] == running.ws_url

    # Plain HTTP and an untrusting client are turned away; the gateway carries on.
    stream = await trio.open_tcp_stream("127.0.0.1", running.address.port)
    await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some():
            answer += chunk
    assert not answer.startswith(b"HTTP/")  # at most a TLS alert, then the close
    await stream.aclose()
    async with httpx.AsyncClient() as untrusting:
        with pytest.raises(httpx.ConnectError):
            await untrusting.get(running.address.http_url + "/healthz")
    async with open_relay(
        running.ws_url, api_key=KEY, url=f"{target.url}/echo", ssl_context=trusting
    ) as relayed:
        assert relayed.status == 101


async def test_wss_target_through_a_private_ca(
    nursery: trio.Nursery, target: TargetServer, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    listeners = await trio.open_ssl_over_tcp_listeners(0, server_context, host="127.0.0.1")
    port = listeners[0].transport_listener.socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, target.handle, listeners)
    config = make_config()
    config = attrs.evolve(config, targets=attrs.evolve(config.targets, ca_file=str(cafile)))
    running = await start_gateway(nursery, config)
    async with open_relay(running.ws_url, api_key=KEY, url=f"wss://127.0.0.1:{port}/echo") as r:
        for message in ("small", b"\x01" * 100_000, "x" * 70_000):
            await r.websocket.send_message(message)
            assert await r.websocket.get_message() == message
        await r.websocket.aclose(4003, "bye over TLS")
    record = target.connections[-1]
    with trio.fail_after(10):
        await record.ended.wait()
    assert (record.close_code, record.close_reason) == (4003, "bye over TLS")
