"""Running ``relay serve`` and ``relay agent`` as real processes for tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial

import attrs
import trio

_URL = re.compile(r"relay listening on (ws://\S+/ws)")
_AGENT_URL = re.compile(r"listening on (wss?://\S+/agent)")
# The last line of each command's banner (printed in one write).
_READY = {"serve": "agents: ", "agent": "egress: "}
_KEY = re.compile(r"development API key \(generated for this run\): (\S+)")


@attrs.define
class RelayProcess:
    """A running ``relay serve`` and what its banner said."""

    process: trio.Process
    ws_url: str
    dev_key: str | None
    output: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kib(self) -> int:
        """Resident set size of the relay process, from /proc."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS line")


@asynccontextmanager
async def relay_process(
    args: Sequence[str],
    *,
    command: str = "serve",
    start_within: float = 30,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[RelayProcess]:
    """Start ``python -m relay.cli COMMAND ARGS`` and wait for its banner.

    ``ws_url`` is the gateway's ``/ws`` (serve) or the agent's ``/agent`` (agent).
    """
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    ready = _READY[command]
    async with trio.open_nursery() as nursery:
        argv = [sys.executable, "-m", "relay.cli", command, *args]
        run = partial(
            trio.run_process,
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        )
        process: trio.Process = await nursery.start(run)
        assert process.stdout is not None
        output = ""
        with trio.fail_after(start_within):
            while ready not in output:
                chunk = await process.stdout.receive_some()
                if not chunk:
                    raise RuntimeError(f"relay exited before its banner:\n{output}")
                output += chunk.decode()
        url = (_URL if command == "serve" else _AGENT_URL).search(output)
        key = _KEY.search(output)
        assert url is not None
        relay = RelayProcess(process, url.group(1), key.group(1) if key else None, output)
        nursery.start_soon(_drain, process.stdout, relay)
        try:
            yield relay
        finally:
            if process.returncode is None:
                # Twice: the first starts a graceful drain, the second ends it.
                process.send_signal(signal.SIGINT)
                process.send_signal(signal.SIGINT)
                with trio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()


async def _drain(stream: trio.abc.ReceiveStream, relay: RelayProcess) -> None:
    """Keep reading the relay's output (into ``relay.output``) so it never blocks on a pipe."""
    while chunk := await stream.receive_some():
        relay.output += chunk.decode(errors="replace")
