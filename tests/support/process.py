"""Running ``relay serve`` as a real process for tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial

import attrs
import trio

_URL = re.compile(r"relay listening on (ws://\S+/ws)")
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
    args: Sequence[str], *, start_within: float = 30
) -> AsyncIterator[RelayProcess]:
    """Start ``python -m relay.cli serve ARGS`` and wait for its banner."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    async with trio.open_nursery() as nursery:
        command = [sys.executable, "-m", "relay.cli", "serve", *args]
        run = partial(
            trio.run_process,
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        )
        process: trio.Process = await nursery.start(run)
        assert process.stdout is not None
        output = ""
        # The banner is printed in one write that contains "agents:".
        with trio.fail_after(start_within):
            while "agents: " not in output:
                chunk = await process.stdout.receive_some()
                if not chunk:
                    raise RuntimeError(f"relay exited before its banner:\n{output}")
                output += chunk.decode()
        url = _URL.search(output)
        key = _KEY.search(output)
        assert url is not None
        nursery.start_soon(_drain, process.stdout)
        try:
            yield RelayProcess(process, url.group(1), key.group(1) if key else None, output)
        finally:
            if process.returncode is None:
                # Twice: the first starts a graceful drain, the second ends it.
                process.send_signal(signal.SIGINT)
                process.send_signal(signal.SIGINT)
                with trio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    """Keep reading the relay's output so it never blocks on a full pipe."""
    while await stream.receive_some():
        pass
