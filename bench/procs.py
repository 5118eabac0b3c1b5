"""Starting, watching and stopping the bench's helper processes.

Every process is started through ``bench.pin`` so it is born on its core with the
open-file limit lifted, and reports readiness either with a ``READY <port>`` line
on stdout (the bench's own Python processes) or by accepting connections.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

__all__ = [
    "LOAD_MALLOC_ENV",
    "StartError",
    "free_port",
    "spawn",
    "stop_process",
    "wait_port",
    "wait_ready_line",
]

_BENCH_ROOT = str(Path(__file__).resolve().parent.parent)
START_TIMEOUT = 20.0


class StartError(Exception):
    """A system did not come up; the message says why (with its log's tail)."""


# For the load side only (echo target, load worker): glibc's default mmap threshold
# makes every 256 KiB read buffer a fresh mmap + page faults + munmap, which halved
# the echo's 1 MiB throughput in about three runs out of four (docs/performance.md).
# Systems under test run with the environment as it is.
LOAD_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(16 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**27)}


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # Children must import ``bench`` even when it is run from a source checkout.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_BENCH_ROOT, env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def spawn(
    cmd: list[str],
    cores: set[int] | None,
    log: IO[bytes],
    *,
    stdin: int | None = None,
    load_side: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` pinned to ``cores`` with a raised fd limit; stdout is a pipe.
    ``load_side`` processes get the malloc settings above; ``env`` is added to the
    environment (a TLS run's OpenSSL config)."""
    pin = ",".join(str(c) for c in sorted(cores)) if cores else "-"
    return subprocess.Popen(
        [sys.executable, "-m", "bench.pin", pin, "--", *cmd],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=log,
        env=_env({**(LOAD_MALLOC_ENV if load_side else {}), **(env or {})}),
    )


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 5 s; only ever the process we started."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _log_tail(path: Path, limit: int = 800) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return ""


def wait_ready_line(
    proc: subprocess.Popen[bytes], log: Path, timeout: float = START_TIMEOUT
) -> int:
    """Wait for the child's ``READY <port>`` line; returns the port."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline().decode(errors="replace")
            if line.startswith("READY "):
                return int(line.split()[1])
            if not line:
                break
        elif proc.poll() is not None:
            break
    stop_process(proc)
    raise StartError(f"did not start: {_log_tail(log) or 'no output'}")


def wait_port(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Wait until ``127.0.0.1:port`` accepts connections (or the process dies)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(f"exited with {proc.returncode}: {_log_tail(log) or 'no output'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    stop_process(proc)
    raise StartError(f"not listening on port {port} after {START_TIMEOUT:.0f} s")


def free_port() -> int:
    """A port that was free a moment ago (the child binds it right after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
