"""Autobahn conformance (kosoku) through an agent that dials as Chrome, to a wss://
echo target trusted through ``[targets] ca_file``: every case the relay passes
over a plain dial must pass over the browser's TLS too — and against a target
that accepts the browser's permessage-deflate offer and compresses every echo,
which the relay inflates.  Compression between kosoku and the gateway (12.*,
13.*) is excluded as in tests/test_conformance.py: the client negotiates none.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from urllib.parse import quote

import attrs
import pytest
import trio

from relay.config import AgentConfig, KeyConfig
from tests.conftest import require
from tests.support.gateway import make_config, start_gateway
from tests.support.proxies import free_port
from tests.test_conformance import _kosoku


@asynccontextmanager
async def _wss_echo(cert: str, key: str, *extra: str) -> AsyncIterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "tests.support.echo_server", str(port), cert, key, *extra]
    async with trio.open_nursery() as nursery:
        run = partial(trio.run_process, command, stdout=subprocess.PIPE, check=False)
        process: trio.Process = await nursery.start(run)
        assert process.stdout is not None
        with trio.fail_after(30):  # a hang guard only
            assert b"ready" in await process.stdout.receive_some()
        try:
            yield f"wss://127.0.0.1:{port}/"
        finally:
            process.kill()


@pytest.mark.conformance
async def test_autobahn_cases_pass_over_browser_tls(
    nursery: trio.Nursery, ca_file: str, leaf_files: tuple[str, str]
) -> None:
    try:
        import kosoku  # noqa: F401
    except ImportError:
        require(False, "kosoku (pip install kosoku)")
    agents = (AgentConfig(slug="plain"), AgentConfig(slug="chrome", impersonate="chrome"))
    config = make_config(
        keys=[KeyConfig(key="conformance", rate=1e6, burst=1_000_000)], agents=agents
    )
    config = attrs.evolve(config, targets=attrs.evolve(config.targets, ca_file=ca_file))
    running = await start_gateway(nursery, config)
    results = {}
    for extra in ((), ("--deflate",)):
        async with _wss_echo(*leaf_files, *extra) as target_url:
            for agent in ("plain", "chrome") if not extra else ("chrome",):
                relay_url = (
                    f"{running.ws_url}?apiKey=conformance&url={quote(target_url, safe='')}"
                    f"&agent={agent}&connected=false"
                )
                results[agent + "".join(extra)] = await _kosoku(relay_url)
    plain = results["plain"]
    assert len(plain) > 290  # the whole suite ran (301 cases without 12.* and 13.*)
    passed_plain = {case for case, result in plain.items() if result[0]}
    assert len(passed_plain) > 290
    for variant in ("chrome", "chrome--deflate"):
        chrome = results[variant]
        assert set(chrome) == set(plain)
        failed = {case: chrome[case] for case in passed_plain if not chrome[case][0]}
        assert failed == {}, variant
