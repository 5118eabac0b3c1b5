"""Live reload of a real gateway on 127.0.0.1: keys, agents, target policy, buckets,
a broken file, and what needs a restart — with real clients and a real target."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trustme
from trio_websocket import ConnectionClosed

from relay.client import RelayError, open_relay
from relay.config import ConfigError
from relay.configsource import ConfigSource
from relay.gateway import Gateway
from relay.reload import Reloader
from relay.server import BoundAddress, serve
from tests.support.target import TargetServer

BASE = """
[server]
bind = "127.0.0.1:0"

[targets]
allow_private = {private}

[[keys]]
name = "alpha"
key = "alpha-key"
rate = {rate}
burst = {burst}
"""

BETA = """
[[keys]]
name = "beta"
key = "beta-key"
"""


def config_text(*, private: str = "true", rate: float = 100.0, burst: int = 100) -> str:
    """The base file: one key, loopback targets allowed."""
    return BASE.format(private=private, rate=rate, burst=burst)


class Running:
    """A gateway served from a file, and its reloader."""

    def __init__(self, path: Path, address: BoundAddress, reloader: Reloader) -> None:
        self.path = path
        self.address = address
        self.reloader = reloader

    @property
    def gateway(self) -> Gateway:
        return self.reloader.gateway

    async def healthz(self) -> dict[str, object]:
        async with httpx.AsyncClient() as client:
            response = await client.get(self.address.http_url + "/healthz")
            data: dict[str, object] = response.json()
            return data

    async def metrics(self) -> str:
        async with httpx.AsyncClient() as client:
            return (await client.get(self.address.http_url + "/metrics")).text


def write(path: Path, text: str) -> None:
    """Replace the configuration file's contents."""
    path.write_text(text)


async def start(nursery: trio.Nursery, path: Path, text: str) -> Running:
    """Serve ``text`` (written to ``path``) as relay serve would, with a reloader."""
    write(path, text)
    source, config = ConfigSource(path=str(path)).first_read()
    gateway = Gateway.from_config(config)
    reloader = Reloader(gateway, source)
    address = await nursery.start(partial(serve, config, gateway=gateway, reloader=reloader))
    return Running(path, address, reloader)


async def echo(ws_url: str, key: str, url: str, **fields: object) -> str:
    """Open a session, echo one message, close; returns the node_id it went through."""
    async with open_relay(ws_url, api_key=key, url=url, **fields) as relayed:  # type: ignore[arg-type]
        await relayed.websocket.send_message("ping")
        assert await relayed.websocket.get_message() == "ping"
        return relayed.node_id


async def refused(ws_url: str, key: str, url: str, **fields: object) -> RelayError:
    with pytest.raises(RelayError) as caught:
        async with open_relay(ws_url, api_key=key, url=url, **fields):  # type: ignore[arg-type]
            pass
    return caught.value


async def test_reload_adds_a_key_at_once_and_revokes_one_without_touching_open_sessions(
    nursery: trio.Nursery, tmp_path: Path, target: TargetServer
) -> None:
    relay = await start(nursery, tmp_path / "relay.toml", config_text())
    url = f"{target.url}/echo"
    assert (await refused(relay.address.ws_url, "beta-key", url)).code == 1008
    before = await relay.healthz()
    async with open_relay(relay.address.ws_url, api_key="alpha-key", url=url) as open_session:
        write(relay.path, config_text().replace('"alpha-key"', '"gamma-key"') + BETA)
        result = await relay.reloader.reload()
        assert result.ok, result.message
        assert result.ended == 0
        # The new key works at once; the removed one is refused for new sessions.
        await echo(relay.address.ws_url, "beta-key", url)
        revoked = await refused(relay.address.ws_url, "alpha-key", url)
        assert (revoked.code, revoked.message) == (1008, "Invalid or missing API key")
        # The session opened with the revoked key relays on.
        await open_session.websocket.send_message("still here")
        assert await open_session.websocket.get_message() == "still here"
    after = await relay.healthz()
    config_before, config_after = before["config"], after["config"]
    assert isinstance(config_before, dict)
    assert isinstance(config_after, dict)
    assert config_before["hash"] != config_after["hash"]
    assert config_after["loaded_at"] >= config_before["loaded_at"]
    assert 'relay_config_reloads_total{result="ok"} 1.0' in await relay.metrics()


@pytest.mark.parametrize("how", ["asked", "config switch"])
async def test_sessions_of_revoked_keys_end_with_1008_when_asked(
    nursery: trio.Nursery, tmp_path: Path, target: TargetServer, how: str
) -> None:
    relay = await start(nursery, tmp_path / "relay.toml", config_text() + BETA)
    url = f"{target.url}/echo"
    async with (
        open_relay(relay.address.ws_url, api_key="alpha-key", url=url) as revoked_session,
        open_relay(relay.address.ws_url, api_key="beta-key", url=url) as kept_session,
    ):
        await revoked_session.websocket.send_message("before")
        assert await revoked_session.websocket.get_message() == "before"
        text = config_text().replace('"alpha-key"', '"other-key"') + BETA
        if how == "config switch":
            text = text.replace('bind = "127.0.0.1:0"', 'bind = "127.0.0.1:0"\nend_revoked = true')
        write(relay.path, text)
        result = await relay.reloader.reload(end_revoked=how == "asked")
        assert result.ended == 1
        with trio.fail_after(5):
            with pytest.raises(ConnectionClosed) as ended:
                await revoked_session.websocket.get_message()
        reason = ended.value.reason
        assert reason is not None
        assert (reason.code, reason.reason) == (1008, "API key revoked")
        # A key still configured is not touched.
        await kept_session.websocket.send_message("kept")
        assert await kept_session.websocket.get_message() == "kept"


async def test_reload_changes_the_agent_set_and_their_health_checks(
    nursery: trio.Nursery, tmp_path: Path, target: TargetServer
) -> None:
    closed = trio.socket.socket()
    await closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]  # bound, never listening: refused at once
    agents = f"""
[[agents]]
slug = "local"

[[agents]]
slug = "far"
kind = "remote"
url = "ws://127.0.0.1:{dead_port}/agent"
token = "t"
health_interval = 0.2
health_timeout = 1.0
"""
    relay = await start(nursery, tmp_path / "relay.toml", config_text() + agents)
    url = f"{target.url}/echo"
    reloader = relay.reloader
    assert reloader.health.watched == ["far"]
    (far,) = [a for a in relay.gateway.agents.agents if a.slug == "far"]
    with trio.fail_after(5):
        await far.health.checked.wait()  # type: ignore[attr-defined]
    assert (await refused(relay.address.ws_url, "alpha-key", url, agent="de2")).message == (
        "No agent available"
    )

    write(relay.path, config_text() + '\n[[agents]]\nslug = "local"\n\n[[agents]]\nslug = "de2"\n')
    result = await reloader.reload()
    assert result.ok, result.message
    assert reloader.health.watched == []
    assert [a.slug for a in relay.gateway.agents.agents] == ["local", "de2"]
    # The new agent is chosen at once; the removed one's checks have stopped.
    assert await echo(relay.address.ws_url, "alpha-key", url, agent="de2") == "relay-de2"
    stopped_at = far.health.last_check  # type: ignore[attr-defined]
    await trio.sleep(1.0)  # five check intervals
    assert far.health.last_check == stopped_at  # type: ignore[attr-defined]
    assert (await refused(relay.address.ws_url, "alpha-key", url, agent="far")).message == (
        "No agent available"
    )
    health = await relay.healthz()
    agents_shown = health["agents"]
    assert isinstance(agents_shown, list)
    assert [entry["slug"] for entry in agents_shown] == ["local", "de2"]

    # Adding it back starts its checks again, with a fresh agent.
    write(relay.path, config_text() + agents)
    assert (await reloader.reload()).ok
    assert reloader.health.watched == ["far"]
    closed.close()


async def test_reload_tightens_the_target_policy_for_new_sessions_only(
    nursery: trio.Nursery, tmp_path: Path, target: TargetServer
) -> None:
    relay = await start(nursery, tmp_path / "relay.toml", config_text())
    url = f"{target.url}/echo"
    async with open_relay(relay.address.ws_url, api_key="alpha-key", url=url) as open_session:
        write(relay.path, config_text(private="false"))
        assert (await relay.reloader.reload()).ok
        refusal = await refused(relay.address.ws_url, "alpha-key", url)
        assert refusal.code == 1008
        assert refusal.message.startswith("Target address not allowed")
        await open_session.websocket.send_message("unaffected")
        assert await open_session.websocket.get_message() == "unaffected"
    write(relay.path, config_text(private="true"))
    assert (await relay.reloader.reload()).ok
    await echo(relay.address.ws_url, "alpha-key", url)


async def test_buckets_of_unchanged_keys_keep_their_tokens(
    nursery: trio.Nursery, tmp_path: Path, target: TargetServer
) -> None:
    # Two tokens and practically no refill: a fresh bucket would admit twice more.
    relay = await start(nursery, tmp_path / "relay.toml", config_text(rate=0.001, burst=2))
    url = f"{target.url}/echo"
    await echo(relay.address.ws_url, "alpha-key", url)
    await echo(relay.address.ws_url, "alpha-key", url)
    write(relay.path, config_text(rate=0.001, burst=2) + BETA)
    assert (await relay.reloader.reload()).ok
    limited = await refused(relay.address.ws_url, "alpha-key", url)
    assert limited.message == "Rate limit exceeded"
    await echo(relay.address.ws_url, "beta-key", url)  # the new key has its own, full bucket
    # A revoked key's bucket is forgotten (it would otherwise stay for the process's life).
    write(relay.path, config_text(rate=0.001, burst=2))
    assert (await relay.reloader.reload()).ok
    assert len(relay.gateway.limiter) == 1  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "broken",
    [
        "[server]\nbindd = 1\n",
        "[[keys]]\nkey = 'x'\nburst = 0\n",
        "not toml at all [",
        "[targets]\nca_file = '/nonexistent/ca.pem'\n",
    ],
)
async def test_a_broken_file_changes_nothing_and_is_reported(
    nursery: trio.Nursery,
    tmp_path: Path,
    target: TargetServer,
    caplog: pytest.LogCaptureFixture,
    broken: str,
) -> None:
    relay = await start(nursery, tmp_path / "relay.toml", config_text())
    before = await relay.healthz()
    write(relay.path, broken)
    with caplog.at_level(logging.ERROR, logger="relay.reload"):
        result = await relay.reloader.reload()
    assert not result.ok
    # The message relay serve (and relay config check) would print after "relay: ".
    expected = _serve_message(lambda: relay.reloader.source, relay.path)
    assert result.message == expected
    assert any(expected in record.getMessage() for record in caplog.records)
    await echo(relay.address.ws_url, "alpha-key", f"{target.url}/echo")
    assert (await relay.healthz())["config"] == before["config"]
    assert 'relay_config_reloads_total{result="invalid"} 1.0' in await relay.metrics()


def _serve_message(source: Callable[[], ConfigSource], path: Path) -> str:
    from relay.cli import _parser, load_for_serve

    try:
        load_for_serve(_parser().parse_args(["serve", "--config", str(path)]))
    except ConfigError as exc:
        return str(exc)
    raise AssertionError(f"{path} loaded; the test needs a broken file ({source()})")


async def test_options_needing_a_new_socket_are_reported_not_applied(
    nursery: trio.Nursery, tmp_path: Path, target: TargetServer
) -> None:
    relay = await start(nursery, tmp_path / "relay.toml", config_text())
    write(
        relay.path,
        config_text().replace(
            'bind = "127.0.0.1:0"', 'bind = "127.0.0.1:1"\nconnect_timeout = 3.0'
        ),
    )
    result = await relay.reloader.reload()
    assert result.ok
    assert result.needs_restart == ("[server] bind",)
    server = relay.gateway.config.server
    assert (server.bind, server.connect_timeout) == ("127.0.0.1:0", 3.0)
    await echo(relay.address.ws_url, "alpha-key", f"{target.url}/echo")  # still where it was


async def test_reload_sets_the_log_level_unless_the_command_line_did(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start(nursery, tmp_path / "relay.toml", config_text())
    root = logging.getLogger()
    saved = root.level
    quiet = config_text().replace(
        'bind = "127.0.0.1:0"', 'bind = "127.0.0.1:0"\nlog_level = "error"'
    )
    try:
        write(relay.path, quiet)
        assert (await relay.reloader.reload()).ok
        assert root.level == saved  # an embedding program's logging is its own
        relay.reloader.set_log_level = True  # as relay serve's reloader does
        assert (await relay.reloader.reload()).ok
        assert root.level == logging.ERROR
        relay.reloader.cli_log_level = "debug"
        write(relay.path, config_text())
        assert (await relay.reloader.reload()).ok
        assert root.level == logging.ERROR  # --log-level was given: the file does not decide
    finally:
        root.setLevel(saved)


async def test_a_renewed_certificate_serves_new_connections(
    nursery: trio.Nursery, tmp_path: Path, target: TargetServer
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    old_ca, new_ca = trustme.CA(), trustme.CA()

    def install(ca: trustme.CA) -> None:
        leaf = ca.issue_cert("127.0.0.1")
        leaf.private_key_pem.write_to_path(str(key))
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        for blob in leaf.cert_chain_pems[1:]:
            blob.write_to_path(str(cert), append=True)

    def trusting(ca: trustme.CA) -> ssl.SSLContext:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        return context

    install(old_ca)
    tls = f'bind = "127.0.0.1:0"\ncertfile = "{cert}"\nkeyfile = "{key}"'
    relay = await start(
        nursery, tmp_path / "relay.toml", config_text().replace('bind = "127.0.0.1:0"', tls)
    )
    ws_url, url = relay.address.ws_url, f"{target.url}/echo"
    assert ws_url.startswith("wss://")
    old, new = trusting(old_ca), trusting(new_ca)
    async with open_relay(ws_url, api_key="alpha-key", url=url, ssl_context=old) as open_session:
        install(new_ca)  # renewed in place, as a certificate manager does
        result = await relay.reloader.reload()
        assert result.ok, result.message
        assert result.needs_restart == ()
        async with open_relay(ws_url, api_key="alpha-key", url=url, ssl_context=new) as renewed:
            await renewed.websocket.send_message("new certificate")
            assert await renewed.websocket.get_message() == "new certificate"
        # The old CA no longer vouches for what new connections are served.
        tcp = await trio.open_tcp_stream(relay.address.host, relay.address.port)
        tls_stream = trio.SSLStream(tcp, old, server_hostname="127.0.0.1")
        with pytest.raises(trio.BrokenResourceError) as refused:
            await tls_stream.do_handshake()
        assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
        await trio.aclose_forcefully(tls_stream)
        await open_session.websocket.send_message("old session")
        assert await open_session.websocket.get_message() == "old session"
