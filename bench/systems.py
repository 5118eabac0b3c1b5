"""Systems under test: how each is found, started, measured and stopped.

Every system ends up as a :class:`Running`: the URL the load client dials, the
connect message it sends first (None for ``direct`` and nginx, which cannot
speak the gateway's protocol), and the PIDs whose CPU time and memory count as
"the relay". Processes are started through ``bench.pin`` so they are born on the
relay core.

With ``Context.tls`` set, every system does the same TLS work: with
``client_tls`` it serves ``wss://`` with the bench's test certificate, and when the
target URL is ``wss://`` it verifies the echo's certificate against the test CA.
"""

from __future__ import annotations

import importlib.util
import os
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

from bench.nginx import nginx_config
from bench.osutil import process_tree
from bench.procs import StartError, free_port, spawn, stop_process, wait_port, wait_ready_line
from bench.tls import TLSFiles

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
    tls: TLSFiles | None = None  # the run's certificate, CA and cipher pin
    client_tls: bool = False  # serve wss:// to the load client
    direct_url: str = ""  # what `direct` dials, when not target_url (the wss:// echo)

    @property
    def env(self) -> dict[str, str]:
        """Environment added to every started system (the TLS cipher pin)."""
        return self.tls.env if self.tls else {}

    @property
    def scheme(self) -> str:
        """The scheme the load client speaks to the system."""
        return "wss" if self.client_tls else "ws"

    def tls_args(self) -> list[str]:
        """Command-line TLS options for the Python peers."""
        if self.tls is None:
            return []
        args = ["--ca-file", self.tls.ca]
        if self.client_tls:
            args += ["--cert", self.tls.cert, "--key", self.tls.key]
        return args


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
        cmd = [sys.executable, "-m", module, "--port", "0", *ctx.tls_args()]
        proc = spawn(cmd, ctx.relay_cores, fh, env=ctx.env)
    try:
        port = wait_ready_line(proc, log)
    except StartError:
        workdir.cleanup()
        raise
    return Running(
        name,
        f"{ctx.scheme}://127.0.0.1:{port}/ws",
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
    return Running(
        "direct",
        ctx.direct_url or ctx.target_url,
        None,
        note="the target itself: the ceiling (over TLS in TLS runs: one hop)",
    )


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


def relay_config_text(
    port: int,
    api_key: str,
    tls: TLSFiles | None = None,
    client_tls: bool = False,
    impersonate: str | None = None,
) -> str:
    """The config the bench runs ``relay serve`` with: loopback, private targets allowed
    (the echo target is on 127.0.0.1) and a key whose bucket never runs dry; with
    ``tls``, the test CA trusted for wss:// targets and, with ``client_tls``, wss://
    served with the test certificate."""
    served = ""
    trusted = ""
    if tls is not None:
        trusted = f"ca_file = {_toml_str(tls.ca)}\n"
        if client_tls:
            served = f"certfile = {_toml_str(tls.cert)}\nkeyfile = {_toml_str(tls.key)}\n"
    return (
        "[server]\n"
        f'bind = "127.0.0.1:{port}"\n'
        f"{served}\n"
        "[targets]\n"
        "allow_private = true\n"
        f"{trusted}\n"
        "[[keys]]\n"
        f'key = "{api_key}"\n'
        "rate = 1000000000\n"
        "burst = 1000000000\n"
        # relay-chrome: target dials as a browser (relay/browser), the rest alike.
        + (f'\n[[agents]]\nslug = "local"\nimpersonate = "{impersonate}"\n' if impersonate else "")
    )


def _toml_str(text: str) -> str:
    # A TOML literal string: paths from tempfile hold no single quote.
    return f"'{text}'"


def _relay_start(ctx: Context, name: str = "relay", impersonate: str | None = None) -> Running:
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
        config.write_text(
            relay_config_text(port, ctx.api_key, ctx.tls, ctx.client_tls, impersonate)
        )
    log = tmp / "log"
    with log.open("wb") as fh:
        cmd = [*_relay_command(), "serve", "--config", str(config)]
        proc = spawn(cmd, ctx.relay_cores, fh, env=ctx.env)
    _await_port(proc, port, log, workdir)
    url = f"{ctx.scheme}://127.0.0.1:{port}/ws"
    return Running(name, url, connect, procs=[proc], pids=process_tree(proc.pid), workdir=workdir)


# -- nginx ------------------------------------------------------------------------------


def _nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def _nginx_unavailable(ctx: Context) -> str | None:
    if _nginx_binary() is None:
        return "nginx not installed (Debian: apt-get install nginx)"
    if urlsplit(ctx.target_url).scheme not in ("ws", "wss"):
        return "nginx peer: ws:// or wss:// targets only"
    return None


def _nginx_start(ctx: Context) -> Running:
    binary = _nginx_binary()
    assert binary is not None
    target = urlsplit(ctx.target_url)
    upstream_tls = target.scheme == "wss"
    upstream = f"{target.hostname}:{target.port or (443 if upstream_tls else 80)}"
    workdir = tempfile.TemporaryDirectory(prefix="bench-nginx-")
    tmp = Path(workdir.name)
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(
        nginx_config(
            tmp,
            port,
            upstream,
            ctx.max_sessions,
            tls=ctx.tls,
            client_tls=ctx.client_tls,
            upstream_tls=upstream_tls,
        )
    )
    log = tmp / "error.log"
    with (tmp / "stderr").open("wb") as fh:
        cmd = [binary, "-p", str(tmp), "-e", str(log), "-c", str(conf)]
        proc = spawn(cmd, ctx.relay_cores, fh, env=ctx.env)
    _await_port(proc, port, log, workdir)
    pids = process_tree(proc.pid)
    deadline = time.monotonic() + 5
    while len(pids) < 2 and time.monotonic() < deadline:  # wait for the worker to fork
        time.sleep(0.05)
        pids = process_tree(proc.pid)
    path = (target.path or "/") + (f"?{target.query}" if target.query else "")
    return Running(
        "nginx",
        f"{ctx.scheme}://127.0.0.1:{port}{path}",
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
        SystemSpec(
            "relay-chrome",
            _relay_unavailable,
            lambda ctx: _relay_start(ctx, "relay-chrome", impersonate="chrome"),
            "ours: relay serve, target dials as Chrome (impersonate = chrome)",
        ),
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
