"""Who may choose a browser profile: a session's ``impersonate`` field only where the
agent has ``allow_impersonate`` (selection skips the others, else a field-named 1008),
and ``relay agent``'s ``[agent] impersonate`` / ``--impersonate``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from trio_websocket import open_websocket_url

from relay.cli import _parser, build_node_config
from relay.config import AgentConfig, ConfigError, config_from_dict
from tests.agents.test_impersonate import _dial, _with_ca
from tests.support.gateway import connect_json, make_config, start_gateway
from tests.support.target import TargetServer


@pytest.mark.parametrize(
    ("agent", "choice", "expected"),
    [
        (
            "fixed",
            "chrome",
            "Invalid connect message: impersonate: agent fixed does not allow choosing a "
            "browser profile (allow_impersonate)",
        ),
        ("open", "netscape4", "Invalid connect message: impersonate: unknown browser profile"),
        ("open", "Chrome 1", "Invalid connect message: impersonate: must be a browser profile"),
    ],
)
async def test_a_session_chooses_only_where_the_agent_allows(
    nursery: trio.Nursery, tls_target: TargetServer, agent: str, choice: str, expected: str
) -> None:
    agents = (AgentConfig(slug="fixed"), AgentConfig(slug="open", allow_impersonate=True))
    running = await start_gateway(nursery, make_config(agents=agents))
    message, code = await _dial(
        running.ws_url, f"{tls_target.url}/echo", agent=agent, impersonate=choice
    )
    assert message is not None
    assert message.startswith(expected), message
    assert code == 1008
    assert tls_target.connections == []  # refused before any dial


async def test_a_session_choice_goes_to_an_agent_that_allows_it(
    nursery: trio.Nursery, tls_target: TargetServer, ca_file: str
) -> None:
    agents = (
        AgentConfig(slug="fixed", country="DE"),
        AgentConfig(slug="open", country="DE", allow_impersonate=True),
        AgentConfig(slug="other", country="AT"),
    )
    running = await start_gateway(nursery, _with_ca(make_config(agents=agents), ca_file))
    for _ in range(6):
        async with open_websocket_url(running.ws_url) as ws:
            await ws.send_message(
                connect_json(f"{tls_target.url}/echo", geo="DE", impersonate="chrome")
            )
            assert json.loads(await ws.get_message())["node_id"] == "relay-open"
    url = f"{tls_target.url}/echo"
    message, code = await _dial(
        running.ws_url, url, geo="AT,DE", agent="fixed,other", impersonate="chrome"
    )
    assert message is not None
    assert message.startswith(
        "Invalid connect message: impersonate: no matching agent allows choosing"
    )
    assert code == 1008
    assert all(c.headers["user-agent"].startswith("Mozilla/5.0") for c in tls_target.connections)


def test_relay_agent_takes_impersonate_from_file_and_option(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[agent]\ntoken = "t"\nimpersonate = "chrome"\n')
    config = build_node_config(_parser().parse_args(["agent", "--config", str(path)]))
    assert config.agent.impersonate == "chrome"
    assert config.agent.egress().allow_impersonate  # links choose: the gateway already did
    args = ["agent", "--config", str(path), "--impersonate", "none"]
    assert build_node_config(_parser().parse_args(args)).agent.impersonate == "none"
    with pytest.raises(ConfigError, match="impersonate: must be 'none', 'chrome' or a profile"):
        build_node_config(_parser().parse_args([*args[:3], "--impersonate", "lynx"]))
    with pytest.raises(ConfigError, match="impersonate: not available through an https:// proxy"):
        config_from_dict(
            {
                "agents": [
                    {"slug": "p", "kind": "proxy", "proxy": "https://h:1", "impersonate": "chrome"}
                ]
            }
        )
