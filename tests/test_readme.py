"""The README's commands and snippets are the ones that work."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import trio

from relay.config import KeyConfig
from tests.support.gateway import make_config, start_gateway
from tests.support.target import TargetServer

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_quickstart_has_two_commands_and_ci_runs_the_test_one() -> None:
    commands = re.findall(r"```sh\n(.*?)\n```", _section("Quickstart"), flags=re.S)
    assert len(commands) == 2
    serve_command, test_command = commands
    assert serve_command.endswith("relay serve")
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_configuration_example_is_the_shipped_file() -> None:
    toml_blocks = _blocks("toml")
    shipped = (ROOT / "examples" / "relay.toml").read_text()
    assert shipped in toml_blocks


def _snippet(marker: str) -> dict[str, Any]:
    (code,) = [block for block in _blocks("python") if marker in block]
    namespace: dict[str, Any] = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


async def test_embedding_snippet_runs(target: TargetServer, capsys: Any) -> None:
    main = _snippet("async def main(target_url")["main"]
    with trio.fail_after(10):
        await main(f"{target.url}/echo")
    assert capsys.readouterr().out == "relay-local hello\n"


async def test_refusal_snippet_runs(
    nursery: trio.Nursery, target: TargetServer, capsys: Any
) -> None:
    running = await start_gateway(nursery, make_config(keys=[KeyConfig(key="right")]))
    try_bad_key = _snippet("async def try_bad_key")["try_bad_key"]
    with trio.fail_after(10):
        await try_bad_key(running.ws_url, f"{target.url}/echo")
    assert capsys.readouterr().out == "1008 Invalid or missing API key\n"
