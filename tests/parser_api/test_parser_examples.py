"""The seed's three examples run as written (address and token aside) against the server.

The examples are kept verbatim in ``examples/``; when the seed itself is
present beside the repository, a test checks the copies still match it.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import pytest

from tests.parser_api.parser_testkit import REPO_ROOT, TOKEN, ThreadedServers

EXAMPLES = Path(__file__).parent / "examples"
SEED = REPO_ROOT.parent / "shared" / "seeds" / "000_60ca073c2ba5f598.txt"
SEED_HOST = "djdjdj.cyou"


def example(name: str, servers: ThreadedServers) -> str:
    text = (EXAMPLES / name).read_text()
    assert SEED_HOST in text
    assert "YOUR_ADMIN_TOKEN" in text
    return text.replace(SEED_HOST, servers.host_port).replace("YOUR_ADMIN_TOKEN", TOKEN)


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.mark.skipif(not SEED.exists(), reason="the seed is not checked out beside the repository")
def test_embedded_examples_match_the_seed() -> None:
    seed = SEED.read_text()
    for name in ("seed_example.js", "seed_python_example.txt", "seed_sdk_example.txt"):
        assert (EXAMPLES / name).read_text().strip() in seed


def test_seed_python_example_runs(threaded: ThreadedServers, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(example("seed_python_example.txt", threaded))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=python_env()
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert '"action":"connected"' in lines[0]
    assert '"action":"parser.configure"' in lines[1]
    assert '"country_filter":"gb"' in lines[1]
    assert lines[2] == "Fetched 30 items"


def test_seed_sdk_example_runs(threaded: ThreadedServers, tmp_path: Path) -> None:
    script = tmp_path / "sdk_example.py"
    script.write_text(example("seed_sdk_example.txt", threaded))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=python_env()
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "50 items"


def _pump(stream: IO[str] | None, lines: queue.Queue[str]) -> None:
    for line in stream or ():
        lines.put(line)


def test_seed_javascript_example_runs_in_node(threaded: ThreadedServers, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is required in CI")
        pytest.skip("node is not installed")
    script = tmp_path / "example.js"
    script.write_text(example("seed_example.js", threaded))
    # The example never closes its socket, so wait for its line and then stop it.
    with subprocess.Popen(
        [node, "--experimental-websocket", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
        try:
            line = lines.get(timeout=60)
        except queue.Empty:
            line = "(no output)"
        finally:
            process.kill()
        assert line.strip() == "Got 25 items", process.stderr.read() if process.stderr else line
