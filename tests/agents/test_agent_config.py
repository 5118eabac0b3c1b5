"""Agent configuration: the issue's [[agents]] example as written, mistakes named,
secrets out of reprs, and ``relay agent``'s own configuration and options."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from relay.agents.proxy import ProxyAgent
from relay.agents.remote import RemoteAgent
from relay.cli import _parser, build_node_config, main
from relay.config import ConfigError, config_from_dict, load_config, load_node_config
from relay.gateway import Gateway

ISSUE_EXAMPLE = """
[[agents]]
slug = "us2"
country = "US"
kind = "proxy"
proxy = "socks5://user:pass@127.0.0.1:1080"   # socks4://, http://, https:// likewise

[[agents]]
slug = "de1"
country = "DE"
node_id = "scraping-de1"
kind = "remote"
url = "ws://127.0.0.1:9090/agent"
token = "agent-secret"
"""


def test_the_issue_example_works_as_written() -> None:
    config = config_from_dict(tomllib.loads(ISSUE_EXAMPLE))
    us2, de1 = config.agents
    assert (us2.kind, us2.proxy, us2.remote_dns) == (
        "proxy",
        "socks5://user:pass@127.0.0.1:1080",
        True,
    )
    assert (de1.kind, de1.url, de1.token, de1.reported_node_id) == (
        "remote",
        "ws://127.0.0.1:9090/agent",
        "agent-secret",
        "scraping-de1",
    )
    for secret in ("pass", "agent-secret"):
        assert secret not in repr(config)
    proxy, remote = Gateway.from_config(config).agents.agents
    assert isinstance(proxy, ProxyAgent)
    assert isinstance(remote, RemoteAgent)
    assert (proxy.proxy.username, proxy.proxy.password) == ("user", "pass")
    for agent in (proxy, remote):
        assert "pass" not in repr(agent)
        assert "agent-secret" not in repr(agent)


@pytest.mark.parametrize(
    ("agent", "problem"),
    [
        ({"kind": "proxy"}, "agents[0].kind: kind 'proxy' needs proxy"),
        ({"kind": "remote", "url": "ws://h:1/agent"}, "kind 'remote' needs url and token"),
        ({"proxy": "socks5://h:1"}, "agents[0].proxy: only for kind 'proxy'"),
        ({"token": "t"}, "agents[0].token: only for kind 'remote'"),
        ({"kind": "proxy", "proxy": "ftp://h:21"}, "agents[0].proxy: must be socks5://"),
        ({"kind": "proxy", "proxy": "socks5://h"}, "agents[0].proxy: must be socks5://"),
        ({"kind": "remote", "url": "http://h/agent", "token": "t"}, "agents[0].url: must be"),
        ({"source_address": "eth0"}, "agents[0].source_address: must be an IP address"),
        ({"health_interval": 0}, "agents[0].health_interval: must be > 0"),
        ({"kind": "teleport"}, "agents[0].kind: must be 'direct', 'proxy' or 'remote'"),
    ],
)
def test_agent_mistakes_are_named(agent: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict({"agents": [{"slug": "a", **agent}]})
    assert problem in str(error.value)


def test_node_config_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        "[server]\ndial_timeout = 5.0\n[targets]\nallow_private = true\n"
        '[agent]\ntoken_sha256 = "' + "ab" * 32 + '"\nslug = "de1"\ncountry = "de"\n'
        'proxy = "http://u:secret-p@127.0.0.1:3128"\n'
    )
    config = load_node_config(path)
    assert config.server.bind == "127.0.0.1:9090"  # the agent's default, not the gateway's
    assert config.server.dial_timeout == 5.0
    assert config.targets.allow_private
    assert (config.agent.slug, config.agent.country) == ("de1", "DE")
    assert config.agent.token_digest == bytes.fromhex("ab" * 32)
    assert config.agent.egress().kind == "proxy"
    assert "secret-p" not in repr(config)
    path.write_text("[agent]\ntokn = 'x'\n")
    with pytest.raises(ConfigError, match=r"agent\.tokn|unknown field\(s\): tokn"):
        load_node_config(path)


def test_agent_options_override_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[agent]\ntoken_sha256 = "' + "ab" * 32 + '"\nslug = "de1"\n')
    monkeypatch.delenv("RELAY_AGENT_TOKEN", raising=False)
    args = _parser().parse_args(["agent", "--config", str(path), "--bind", "127.0.0.1:0"])
    assert build_node_config(args).agent.token_sha256 == "ab" * 32
    args = _parser().parse_args(["agent", "--config", str(path), "--token", "t", "--slug", "x"])
    config = build_node_config(args)
    assert (config.agent.token, config.agent.token_sha256, config.agent.slug) == ("t", None, "x")
    monkeypatch.setenv("RELAY_AGENT_TOKEN", "from-env")
    config = build_node_config(_parser().parse_args(["agent", "--country", "us"]))
    assert (config.agent.token, config.agent.country) == ("from-env", "US")


def test_agent_without_a_token_or_with_bad_options_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("RELAY_AGENT_TOKEN", raising=False)
    assert main(["agent", "--bind", "127.0.0.1:0"]) == 2
    assert "a token is required" in capsys.readouterr().err
    assert main(["agent", "--token", "t", "--source-address", "nowhere"]) == 2
    assert "source_address: must be an IP address" in capsys.readouterr().err
    assert main(["agent", "--token", "t", "--tls-cert", "/nonexistent.pem"]) == 2
    assert "cannot load TLS certificate /nonexistent.pem" in capsys.readouterr().err


def test_shipped_examples_and_readme_blocks_load() -> None:
    root = Path(__file__).parent.parent.parent
    config = load_config(root / "examples" / "gateway-agents.toml")
    assert [(a.slug, a.kind) for a in config.agents] == [
        ("local", "direct"),
        ("us2", "proxy"),
        ("de1", "remote"),
    ]
    node = load_node_config(root / "examples" / "agent.toml")
    assert (node.agent.slug, node.agent.country, node.server.bind) == ("de1", "DE", "0.0.0.0:9090")
    readme = (root / "README.md").read_text()
    for block in re.findall(r"```toml\n(.*?)```", readme, flags=re.S):
        config_from_dict(tomllib.loads(block))
