"""Fixtures for the agent tests: a private CA, a wss:// target, in-process agent nodes."""

from __future__ import annotations

import ssl

import httpx
import pytest
import trio
import trustme

from relay.agents.health import Health
from relay.config import NodeConfig, NodeSettings, ServerConfig, TargetsConfig
from relay.node.node import NodeAddress
from relay.node.server import serve_node
from tests.support.target import TargetServer

TOKEN = "agent-secret-7f3a"


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """One private CA for every TLS endpoint in these tests (proxies, targets, agents)."""
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The CA certificate as a PEM file, for ``ca_file`` settings."""
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="session")
def leaf_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as PEM files (cert, key)."""
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    directory = tmp_path_factory.mktemp("leaf")
    cert, key = directory / "cert.pem", directory / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for blob in leaf.cert_chain_pems[1:]:
        blob.write_to_path(str(cert), append=True)
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    """A server-side TLS context with a certificate for 127.0.0.1."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
async def tls_target(nursery: trio.Nursery, ca: trustme.CA) -> TargetServer:
    """The scripted target, served as wss://127.0.0.1:PORT."""
    server: TargetServer = await nursery.start(TargetServer(server_context(ca)).serve)
    return server


async def start_node(
    nursery: trio.Nursery,
    *,
    allow_private: bool = True,
    targets_ca: str | None = None,
    **settings: object,
) -> NodeAddress:
    """A ``relay agent`` inside the test's nursery (the same code the process runs)."""
    config = NodeConfig(
        server=ServerConfig(bind="127.0.0.1:0"),
        targets=TargetsConfig(allow_private=allow_private, ca_file=targets_ca),
        agent=NodeSettings(token=TOKEN, **settings),  # type: ignore[arg-type]
    )
    address: NodeAddress = await nursery.start(
        lambda task_status: serve_node(config, task_status=task_status)
    )
    return address


async def until_state(health: Health, state: str, within: float = 20) -> None:
    """Wait (for finished checks, no polling) until ``health`` reaches ``state``."""
    with trio.fail_after(within):  # a hang guard only
        while health.state != state:
            await health.checked.wait()


async def healthz(http_url: str) -> dict[str, object]:
    """The gateway's ``/healthz`` document."""
    async with httpx.AsyncClient() as client:
        response = await client.get(http_url + "/healthz")
    assert response.status_code == 200
    body: dict[str, object] = response.json()
    return body
