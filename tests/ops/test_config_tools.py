"""``relay config check`` and ``relay keys new`` as real commands."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from relay.client import open_relay
from relay.config import load_config
from tests.support.process import relay_process
from tests.support.target import TargetServer

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "relay.toml"


def _relay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args], capture_output=True, text=True, check=False
    )


def test_check_accepts_the_documented_example() -> None:
    result = _relay("config", "check", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert f"{EXAMPLE} is valid: 1 key(s), agents de1" in result.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\nbindd = 'x'\n", "server: unknown field(s): bindd"),
        ("[[keys]]\nkey = 'a'\nburst = 0\n", "keys[0].burst: must be >= 1"),
        ("[server\n", "is not valid TOML"),
        ("[targets]\nca_file = '/nonexistent/ca.pem'\n", "cannot load [targets] ca_file"),
        (
            "[server]\ncertfile = '/nonexistent/cert.pem'\n",
            "cannot load TLS certificate /nonexistent/cert.pem: No such file or directory",
        ),
    ],
)
def test_check_refuses_with_the_message_serve_prints(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    checked = _relay("config", "check", str(path))
    served = _relay("serve", "--config", str(path), "--bind", "127.0.0.1:0")
    assert checked.returncode == 2
    assert expected in checked.stderr
    # The same path refuses it: serve exits with the same status and line.
    assert served.returncode == 2
    assert served.stderr == checked.stderr
    assert checked.stdout == ""


def test_check_says_when_serve_would_generate_a_key(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text("[server]\nbind = '127.0.0.1:0'\n")
    result = _relay("config", "check", str(path))
    assert result.returncode == 0
    assert "no keys (serve would generate a development key)" in result.stdout


def test_keys_new_prints_the_key_once_and_a_hash_only_block(tmp_path: Path) -> None:
    result = _relay(
        "keys", "new", "--name", "acme", "--rate", "2", "--burst", "20", "--max-sessions", "5"
    )
    assert result.returncode == 0, result.stderr
    key = result.stderr.rsplit(": ", 1)[1].strip()
    assert key.startswith("rk-")
    assert len(key) >= 40
    assert key not in result.stdout  # the block never holds the key itself
    path = tmp_path / "keys.toml"
    path.write_text(result.stdout)
    (entry,) = load_config(path).keys
    assert entry.key is None
    assert entry.key_sha256 == hashlib.sha256(key.encode()).hexdigest()
    assert (entry.name, entry.rate, entry.burst, entry.max_sessions) == ("acme", 2.0, 20, 5)
    again = _relay("keys", "new")
    assert again.stderr.rsplit(": ", 1)[1].strip() != key  # fresh every time


def test_keys_new_refuses_what_the_config_refuses() -> None:
    result = _relay("keys", "new", "--burst", "0")
    assert result.returncode == 2
    assert "burst: must be >= 1" in result.stderr
    assert result.stdout == ""


async def test_a_generated_key_admits_through_a_real_gateway(
    tmp_path: Path, target: TargetServer
) -> None:
    made = _relay("keys", "new", "--name", "fresh")
    key = made.stderr.rsplit(": ", 1)[1].strip()
    path = tmp_path / "relay.toml"
    path.write_text("[targets]\nallow_private = true\n\n" + made.stdout)
    assert _relay("config", "check", str(path)).returncode == 0
    async with relay_process(["--config", str(path), "--bind", "127.0.0.1:0"]) as relay:
        assert relay.dev_key is None
        async with open_relay(relay.ws_url, api_key=key, url=f"{target.url}/echo") as relayed:
            await relayed.websocket.send_message("admitted by its hash")
            assert await relayed.websocket.get_message() == "admitted by its hash"


def test_reload_without_a_gateway_says_so(tmp_path: Path) -> None:
    missing = _relay("reload", "--pid-file", str(tmp_path / "none.pid"))
    assert missing.returncode == 1
    assert "cannot read" in missing.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nbindd = 1\n")
    refused = _relay("reload", "--pid-file", str(tmp_path / "none.pid"), "--config", str(bad))
    assert refused.returncode == 2
    assert "unknown field(s): bindd" in refused.stderr
    assert "nothing was reloaded" in refused.stderr
