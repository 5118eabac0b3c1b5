"""``[ratelimit]`` and ``[[keys]] max_sessions``: defaults, and mistakes named."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import Config, ConfigError, RateLimitConfig, load_config


def _load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return load_config(path)


def test_memory_is_the_default_backend() -> None:
    config = RateLimitConfig()
    assert (config.backend, config.url, config.on_redis_error) == ("memory", None, "fail-open")
    assert config.heartbeat == pytest.approx(config.session_ttl / 3)


def test_a_redis_table_loads(tmp_path: Path) -> None:
    text = """
[ratelimit]
backend = "redis"
url = "redis://:secret@127.0.0.1:6379/2"
on_redis_error = "fail-closed"
prefix = "edge"
session_ttl = 6.0
session_heartbeat = 1.5

[[keys]]
key = "k"
max_sessions = 3
"""
    config = _load(tmp_path, text)
    assert config.ratelimit.backend == "redis"
    assert config.ratelimit.on_redis_error == "fail-closed"
    assert config.ratelimit.heartbeat == 1.5
    assert config.keys[0].max_sessions == 3
    assert "secret" not in repr(config)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[ratelimit]\nbackend = 'etcd'", "ratelimit.backend: must be 'memory' or 'redis'"),
        ("[ratelimit]\nbackend = 'redis'", "ratelimit.url: is required when backend = 'redis'"),
        ("[ratelimit]\nurl = 'http://x'", "ratelimit.url: must be a redis://"),
        ("[ratelimit]\non_redis_error = 'open'", "ratelimit.on_redis_error: must be 'fail-open'"),
        ("[ratelimit]\nsession_ttl = 0", "ratelimit.session_ttl: must be > 0"),
        (
            "[ratelimit]\nsession_ttl = 5.0\nsession_heartbeat = 5.0",
            "ratelimit.session_heartbeat: must be > 0 and below session_ttl",
        ),
        ("[ratelimit]\nprefix = 'a b'", "ratelimit.prefix: must be 1-64"),
        ("[ratelimit]\nurl_ = 'redis://x'", "unknown field(s): url_"),
        ("[[keys]]\nkey = 'a'\nmax_sessions = 0", "keys[0].max_sessions: must be >= 1"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, text)
    assert problem in str(error.value)


def test_the_readme_redis_example_is_the_shipped_file_and_loads() -> None:
    root = Path(__file__).parent.parent.parent
    shipped = (root / "examples" / "relay-redis.toml").read_text()
    assert f"```toml\n{shipped}```" in (root / "README.md").read_text()
    config = load_config(root / "examples" / "relay-redis.toml")
    assert (config.ratelimit.backend, config.ratelimit.on_redis_error) == ("redis", "fail-open")
    assert config.keys[0].max_sessions == 50
