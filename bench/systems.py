"""Systems under test: how each is found, started, measured and stopped.

Every system ends up as a :class:`Running`: the URL the load client dials, the
connect message it sends first (None for ``direct`` and nginx, which cannot
speak the gateway's protocol), and the PIDs whose CPU time and memory count as
"the relay". Processes are started through ``bench.pin`` so they are born on the
relay core.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.osutil import process_tree
from bench.procs import StartError, free_port, spawn, stop_process, wait_port, wait_ready_line

__all__ = ["SYSTEMS", "Context", "Running", "SystemSpec", "nginx_config", "relay_config_text"]


@dataclass
class Context:
    """What every system needs to know to start."""

    target_url: str
    relay_cores: set[int] | None
    api_key: str = "bench-key"
    relay_url: str | None = None
    relay_pids: list[int] = field(default_factory=list)
    relay_config: str | None = None
    max_sessions: int = 10000


@dataclass
class Running:
    """A started (or external) system."""

    name: str
    url: str
    connect: dict[str, Any] | None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    note: str = ""
    workdir: tempfile.TemporaryDirectory[str] | None = None

    def stop(self) -> None:
        """Stop what this system started and remove its files."""
        for proc in self.procs:
            stop_process(proc)
        if self.workdir is not None:
            self.workdir.cleanup()


def _await_port(
    proc: subprocess.Popen[bytes],
    port: int,
    log: Path,
    workdir: tempfile.TemporaryDirectory[str],
) -> None:
    """Until ``proc`` listens on ``port``; if it never does, stop it and remove ``workdir``."""
    try:
        wait_port(proc, port, log)
    except StartError:
        stop_process(proc)
        workdir.cleanup()
        raise


def _start_python_peer(name: str, module: str, ctx: Context) -> Running:
    workdir = tempfile.TemporaryDirectory(prefix=f"bench-{name}-")
    log = Path(workdir.name) / "log"
    with log.open("wb") as fh:
        proc = spawn([sys.executable, "-m", module, "--port", "0"], ctx.relay_cores, fh)
    try:
        port = wait_ready_line(proc, log)
    except StartError:
        workdir.cleanup()
        raise
    return Running(
        name,
        f"ws://127.0.0.1:{port}/ws",
        {"apiKey": ctx.api_key, "url": ctx.target_url},
        procs=[proc],
        pids=[proc.pid],
        workdir=workdir,
    )


def _missing(*modules: str) -> str | None:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            return f"{module} not importable (pip install '.[bench]')"
    return None


# -- direct -----------------------------------------------------------------------------


def _direct_start(ctx: Context) -> Running:
    return Running("direct", ctx.target_url, None, note="the target itself: the ceiling")


# -- our relay --------------------------------------------------------------------------


def _relay_command() -> list[str]:
    exe = shutil.which("relay", path=str(Path(sys.executable).parent)) or shutil.which("relay")
    if exe:
        return [exe]
    return [sys.executable, "-c", "import sys; from relay.cli import main; sys.exit(main())"]


def _relay_unavailable(ctx: Context) -> str | None:
    if ctx.relay_url:
        return None
    try:
        found = importlib.util.find_spec("relay.cli") is not None
    except ImportError:
        found = False
    return None if found else "`relay serve` not available yet (relay.cli not importable)"


def relay_config_text(port: int, api_key: str) -> str:
    """The config the bench runs ``relay serve`` with: loopback, private targets allowed
    (the echo target is on 127.0.0.1) and a key whose bucket never runs dry."""
    return (
        "[server]\n"
        f'bind = "127.0.0.1:{port}"\n\n'
        "[targets]\n"
        "allow_private = true\n\n"
        "[[keys]]\n"
        f'key = "{api_key}"\n'
        "rate = 1000000000\n"
        "burst = 1000000000\n"
    )


def _relay_start(ctx: Context) -> Running:
    connect = {"apiKey": ctx.api_key, "url": ctx.target_url}
    if ctx.relay_url:
        note = "external relay" + (
            "" if ctx.relay_pids else " (no --relay-pid: CPU/RSS not measured)"
        )
        return Running("relay", ctx.relay_url, connect, pids=list(ctx.relay_pids), note=note)
    workdir = tempfile.TemporaryDirectory(prefix="bench-relay-")
    tmp = Path(workdir.name)
    if ctx.relay_config:
        import tomllib

        config = Path(ctx.relay_config)
        port = int(str(tomllib.loads(config.read_text())["server"]["bind"]).rsplit(":", 1)[1])
    else:
        port = free_port()
        config = tmp / "relay.toml"
        config.write_text(relay_config_text(port, ctx.api_key))
    log = tmp / "log"
    with log.open("wb") as fh:
        proc = spawn([*_relay_command(), "serve", "--config", str(config)], ctx.relay_cores, fh)
    _await_port(proc, port, log, workdir)
    url = f"ws://127.0.0.1:{port}/ws"
    return Running(
        "relay", url, connect, procs=[proc], pids=process_tree(proc.pid), workdir=workdir
    )


# -- nginx ------------------------------------------------------------------------------


def _nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def _nginx_unavailable(ctx: Context) -> str | None:
    if _nginx_binary() is None:
        return "nginx not installed (Debian: apt-get install nginx)"
    if urlsplit(ctx.target_url).scheme != "ws":
        return "nginx peer: ws:// targets only"
    return None


def nginx_config(tmp: Path, port: int, upstream: str, max_sessions: int) -> str:
    """nginx as a plain WebSocket reverse proxy: one worker, 64 KiB proxy buffers."""
    user = ""
    if os.geteuid() == 0:
        # Otherwise the worker would drop to "nobody"; the bench runs as whoever runs it.
        user = f"user {pwd.getpwuid(os.getuid()).pw_name};\n"
    conns = 2 * max_sessions + 1024
    temps = "\n".join(
        f"    {kind}_temp_path {tmp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
worker_rlimit_nofile {conns + 1024};
events {{
    worker_connections {conns};
}}
http {{
    access_log off;
{temps}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $proxy_host;
            proxy_buffer_size 64k;
            proxy_buffers 8 64k;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"""


def _nginx_start(ctx: Context) -> Running:
    binary = _nginx_binary()
    assert binary is not None
    target = urlsplit(ctx.target_url)
    upstream = f"{target.hostname}:{target.port or 80}"
    workdir = tempfile.TemporaryDirectory(prefix="bench-nginx-")
    tmp = Path(workdir.name)
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_config(tmp, port, upstream, ctx.max_sessions))
    log = tmp / "error.log"
    with (tmp / "stderr").open("wb") as fh:
        cmd = [binary, "-p", str(tmp), "-e", str(log), "-c", str(conf)]
        proc = spawn(cmd, ctx.relay_cores, fh)
    _await_port(proc, port, log, workdir)
    pids = process_tree(proc.pid)
    deadline = time.monotonic() + 5
    while len(pids) < 2 and time.monotonic() < deadline:  # wait for the worker to fork
        time.sleep(0.05)
        pids = process_tree(proc.pid)
    path = (target.path or "/") + (f"?{target.query}" if target.query else "")
    return Running(
        "nginx",
        f"ws://127.0.0.1:{port}{path}",
        None,
        procs=[proc],
        pids=pids,
        note="proxies straight to the target: no connect message",
        workdir=workdir,
    )


@dataclass(frozen=True)
class SystemSpec:
    """A named system: why it cannot run (or None) and how to start it."""

    name: str
    unavailable: Callable[[Context], str | None]
    start: Callable[[Context], Running]
    description: str


SYSTEMS: dict[str, SystemSpec] = {
    spec.name: spec
    for spec in (
        SystemSpec("direct", lambda ctx: None, _direct_start, "no relay: the target itself"),
        SystemSpec("relay", _relay_unavailable, _relay_start, "ours: relay serve"),
        SystemSpec("nginx", _nginx_unavailable, _nginx_start, "nginx reverse proxy"),
        SystemSpec(
            "websockets",
            lambda ctx: _missing("websockets"),
            lambda ctx: _start_python_peer("websockets", "bench.peers.websockets_relay", ctx),
            "asyncio + websockets relay",
        ),
        SystemSpec(
            "picows",
            lambda ctx: _missing("picows", "uvloop"),
            lambda ctx: _start_python_peer("picows", "bench.peers.picows_relay", ctx),
            "uvloop + picows relay",
        ),
    )
}
