"""Configuration files: the documented example works as written; mistakes are named."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from relay.config import ConfigError, load_config

EXAMPLE = Path(__file__).parent.parent / "examples" / "relay.toml"


def test_documented_example_loads_as_written() -> None:
    config = load_config(EXAMPLE)
    assert config.server.bind == "127.0.0.1:8080"
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert config.server.connect_timeout == 10.0
    assert config.server.max_message_size == 16777216
    assert config.targets.allow_private is True
    (key,) = config.keys
    assert (key.key, key.rate, key.burst) == ("test-key-1", 1.0, 5)
    assert key.digest == hashlib.sha256(b"test-key-1").digest()
    (agent,) = config.agents
    assert (agent.slug, agent.country, agent.kind) == ("de1", "DE", "direct")
    assert agent.reported_node_id == "scraping-de1"


def test_defaults_without_a_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("")
    config = load_config(path)
    assert config.server.bind == "127.0.0.1:8080"
    assert config.targets.allow_private is False
    assert [a.slug for a in config.agents] == ["local"]
    assert config.keys == ()
    with_key, generated = config.with_dev_key()
    assert generated is not None
    assert with_key.keys[0].key == generated
    assert with_key.with_dev_key() == (with_key, None)


def test_secrets_are_not_in_reprs() -> None:
    config = load_config(EXAMPLE)
    assert "test-key-1" not in repr(config)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[server]\nbnd = '1'", "unknown field(s): bnd"),
        ("[server]\nbind = 'localhost'", "server.bind: must be HOST:PORT"),
        ("[server]\nconnect_timeout = 0", "server.connect_timeout: must be > 0"),
        ("[server]\nconnect_timeout = '10'", "server.connect_timeout: expected a number"),
        ("[server]\ntcp_keepalive = -1", "server.tcp_keepalive: must be >= 0"),
        ("[targets]\nallow_private = 'yes'", "targets.allow_private: expected true or false"),
        ("[[keys]]\nrate = 1.0", "exactly one of key or key_sha256"),
        (
            "[[keys]]\nkey = 'a'\nkey_sha256 = '" + "0" * 64 + "'",
            "exactly one of key or key_sha256",
        ),
        ("[[keys]]\nkey_sha256 = 'abc'", "keys[0].key_sha256: must be 64 hex digits"),
        ("[[keys]]\nkey = 'a'\nburst = 0", "keys[0].burst: must be >= 1"),
        ("keys = 'a'", "keys: expected an array"),
        ("[[agents]]\nslug = 'bad slug'", "agents[0].slug: must be a slug"),
        ("[[agents]]\nslug = 'a'\ncountry = 'Germany'", "agents[0].country: must be a two-letter"),
        ("[[agents]]\nslug = 'a'\nkind = 'teleport'", "agents[0].kind: must be"),
        ("[[agents]]\nslug = 'a'\n[[agents]]\nslug = 'a'", "agent slug 'a' appears twice"),
        ("agents = []", "agents: at least one agent is required"),
        ("[server\n", "is not valid TOML"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert problem in str(error.value)
    assert str(path) in str(error.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read .*nope\.toml"):
        load_config(tmp_path / "nope.toml")
