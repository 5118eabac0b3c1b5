"""The ``[parser]`` TOML table, token handling and token generation."""

from __future__ import annotations

import hashlib
import tomllib

import pytest

from parser_api.app import create_app
from parser_api.config import ParserConfig
from relay.converter import InputError, structure

DOCUMENTED = """
[parser]
admin_token = "change-me"          # or admin_token_sha256 = "<hex>"
max_connections = 10
max_batch = 200

[parser.poshmark]
base_url_com = "https://poshmark.com"
base_url_ca = "https://poshmark.ca"

[parser.depop]
base_url = "https://www.depop.com"
"""


def load(table: object) -> ParserConfig:
    return structure(table, ParserConfig, what="[parser] config")


def test_the_documented_table_structures_as_written() -> None:
    config = load(tomllib.loads(DOCUMENTED)["parser"])
    assert config.max_connections == 10
    assert config.max_batch == 200
    assert config.poshmark.base_url_com == "https://poshmark.com"
    assert config.poshmark.base_url_ca == "https://poshmark.ca"
    assert config.depop.base_url == "https://www.depop.com"
    assert config.verify_token("change-me")
    assert not config.verify_token("change-me ")
    assert not config.verify_token(None)


def test_every_key_has_a_default() -> None:
    config = load({})
    assert (config.max_connections, config.max_batch) == (10, 200)
    assert config.http.request_spacing == 1.0
    assert not config.has_token


def test_sha256_token() -> None:
    digest = hashlib.sha256(b"s3cret").hexdigest().upper()  # any case of hex
    config = load({"admin_token_sha256": digest})
    assert config.verify_token("s3cret")
    assert not config.verify_token(digest)


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        (
            {"admin_token": "a", "admin_token_sha256": "0" * 64},
            "admin_token_sha256: set admin_token or",
        ),
        ({"admin_token_sha256": "abc"}, "admin_token_sha256: must be 64 hex digits"),
        ({"admin_token": ""}, "admin_token: must not be empty"),
        ({"max_batch": 201}, "max_batch: must be 1..200"),
        ({"max_batch": 0}, "max_batch: must be 1..200"),
        ({"max_connections": "10"}, "max_connections: expected an integer, got a string"),
        ({"max_connections": 0}, "max_connections: must be 1..10000"),
        ({"fetch_timeout": 0}, "fetch_timeout: must be > 0"),
        ({"poshmark": {"base_url_com": "ftp://x"}}, "poshmark.base_url_com: must be an http://"),
        ({"depop": {"base_url": "https://d?x=1"}}, "depop.base_url: must be an http://"),
        ({"http": {"request_spacing": -1}}, "http.request_spacing: must be >= 0"),
        ({"http": {"user_agent": "a\nb"}}, "http.user_agent: must be one line"),
        ({"admin_tokn": "x"}, "unknown field(s): admin_tokn"),
        ({"depop": {"base": "x"}}, "depop: unknown field(s): base"),
        ({"poshmark": {"base_url_us": "x"}}, "poshmark: unknown field(s): base_url_us"),
    ],
)
def test_bad_tables_name_the_key(table: dict[str, object], problem: str) -> None:
    with pytest.raises(InputError) as caught:
        load({"admin_token": "the-secret-value", **table} if "admin_token" not in table else table)
    assert problem in str(caught.value)
    assert "the-secret-value" not in str(caught.value)


def test_generated_tokens() -> None:
    first, second = ParserConfig.generate(), ParserConfig.generate(max_connections=3)
    assert first.admin_token is not None
    assert second.admin_token is not None
    assert len(first.admin_token) >= 32
    assert first.admin_token != second.admin_token
    assert second.max_connections == 3
    assert first.verify_token(first.admin_token)
    configured, generated = load({}).ensure_token()
    assert generated is not None
    assert configured.admin_token == generated
    kept, none = load({"admin_token": "x"}).ensure_token()
    assert none is None
    assert kept.admin_token == "x"


def test_tokens_stay_out_of_repr_and_errors() -> None:
    config = load({"admin_token": "the-secret-value"})
    assert "the-secret-value" not in repr(config)
    with pytest.raises(ValueError, match="admin_token") as caught:
        create_app(load({}))
    assert "the-secret-value" not in str(caught.value)
