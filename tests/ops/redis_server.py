"""A real ``redis-server`` on a free loopback port, started and stopped by the tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import attrs

START_WITHIN = 30.0  # seconds; a generous hang guard, not an expectation


def redis_available() -> bool:
    """Whether ``redis-server`` is installed."""
    return shutil.which("redis-server") is not None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@attrs.define
class RedisServer:
    """One ``redis-server`` process; ``stop()`` and ``start()`` keep its port."""

    directory: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (on a new free port the first time) and wait until it answers."""
        for _attempt in range(5):
            port = self.port or _free_port()
            process = subprocess.Popen(
                [
                    "redis-server",
                    "--port", str(port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(self.directory),
                    "--loglevel", "warning",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            deadline = time.monotonic() + START_WITHIN
            while process.poll() is None and time.monotonic() < deadline:
                if _answers_ping(port):
                    self.port, self.process = port, process
                    return
                time.sleep(0.02)
            process.kill()
            process.wait()
            if self.port:  # a restart must keep its port: no second chance elsewhere
                break
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        """Kill it at once (like a crash: nothing is saved)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
