"""The orchestrator: starts the echo target, the load worker and the systems, then
measures every plan on every system interleaved (A B C A B C ...).

Interleaving spreads slow drifts of the machine (thermal, noisy neighbours, page
cache) over all systems instead of charging them to whichever ran last.

Plans with TLS (``Plan.tls``) run in phases, one per TLS mode: the systems are
started for that mode (serving ``wss://``, dialing the ``wss://`` echo, or both),
measured interleaved as above, and stopped before the next mode.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.osutil import hold_idle_poll, process_tree, split_cores
from bench.procs import StartError, spawn, stop_process, wait_ready_line
from bench.systems import SYSTEMS, Context, Running
from bench.tls import CIPHER_SUITE, TLSFiles, make_tls_files

__all__ = ["Plan", "Runner", "saturation", "with_path"]

SATURATED = 0.9


@dataclass
class Plan:
    """One measured variant of a scenario, e.g. throughput at 32 B."""

    scenario: str
    label: str
    params: dict[str, Any]
    fresh: bool = False  # restart the system before every run (memory per session)
    timeout: float = 120.0
    tls: str = "none"  # none | client | target | both (bench.tls.TLS_MODES)
    whole: bool = False  # the echo writes each message in one call (path /whole)


def with_path(url: str, path: str) -> str:
    """``url`` with its path replaced by ``path`` (query dropped)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


@dataclass
class SystemState:
    """A requested system: its status and, while it runs, its process handles."""

    name: str
    status: str = "pending"  # ok | skipped | error
    reason: str = ""
    running: Running | None = None
    info: dict[str, Any] = field(default_factory=dict)


def saturation(run: dict[str, Any], load_cores: int) -> str:
    """Which side was the limit in a run: relay, load, both, or '-' (neither)."""
    relay = (run.get("relay_cpu_frac") or 0.0) >= SATURATED
    client, target = run.get("client_cpu_s", 0.0), run.get("target_cpu_s", 0.0)
    wall = run.get("wall_s") or 1.0
    # Client and echo are one process each, so with >= 2 load cores either one can
    # saturate alone; with one core they saturate together.
    usable = min(load_cores, 2)
    load = (client + target) / wall >= SATURATED * usable or max(client, target) / wall >= SATURATED
    return {(True, True): "both", (True, False): "relay", (False, True): "load"}.get(
        (relay, load), "-"
    )


class Worker:
    """The long-lived load worker process (``bench.loadgen``) on the load cores."""

    def __init__(self, cores: set[int] | None, logdir: Path) -> None:
        self.cores = cores
        self.log = logdir / "loadgen.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as fh:
            return spawn(
                [sys.executable, "-m", "bench.loadgen"], self.cores, fh, stdin=-1, load_side=True
            )

    def request(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run one command; a hung or dead worker is replaced and the run reported failed."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.close()
            tail = self.log.read_text(errors="replace")[-600:].strip()
            return {"error": f"load worker failed or timed out: {tail or 'no output'}"}
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        """End the worker (closing stdin ends its loop)."""
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


class Runner:
    """Runs ``plans`` against ``systems`` and returns the raw results."""

    def __init__(
        self,
        plans: list[Plan],
        systems: list[str],
        ctx: Context,
        *,
        repeat: int,
        pin: bool = True,
        external_target: bool = False,
        coalesce: bool = False,
        idle_poll: bool = False,
        tls_dir: str | None = None,
        on_progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.plans = plans
        self.states = [SystemState(name) for name in systems]
        self.ctx = ctx
        self.repeat = repeat
        self.external_target = external_target
        self.coalesce = coalesce
        self.idle_poll = idle_poll
        self.idle_poll_state = "off"
        self.load_cores, self.relay_cores = split_cores() if pin else (None, None)
        ctx.relay_cores = self.relay_cores
        self.on_progress = on_progress or (lambda label, done, total: None)
        self.target_pids: list[int] = []
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-")
        self.tls: TLSFiles | None = None
        self.tls_dir = tls_dir
        self.plain_url = ctx.target_url
        self.tls_url = ""
        self.tls_info: dict[str, Any] = {}

    @property
    def total_runs(self) -> int:
        """How many measurements the run will make (for the progress bar)."""
        usable = [s for s in self.states if s.status in ("pending", "ok")]
        return len(self.plans) * self.repeat * len(usable)

    def _check_systems(self) -> None:
        for state in self.states:
            spec = SYSTEMS.get(state.name)
            if spec is None:
                state.status, state.reason = "error", "unknown system"
                continue
            reason = spec.unavailable(self.ctx)
            if reason:
                state.status, state.reason = "skipped", reason

    def _start(self, state: SystemState) -> None:
        try:
            state.running = SYSTEMS[state.name].start(self.ctx)
        except (StartError, OSError) as exc:
            state.status, state.reason = "error", f"failed to start: {exc}"
            state.running = None
            return
        state.status = "ok"
        state.info = {"url": state.running.url, "note": state.running.note}

    def _stop(self, state: SystemState) -> None:
        if state.running is not None:
            state.running.stop()
            state.running = None

    def _start_echo(self, stack: list[subprocess.Popen[bytes]], tls: bool = False) -> str:
        """Start an echo target (``wss://`` with ``tls``); returns its URL."""
        log = Path(self.tmp.name) / f"echo{'-tls' if tls else ''}.log"
        with log.open("wb") as fh:
            cmd = [sys.executable, "-m", "bench.echo", "--port", "0"]
            if self.coalesce:
                cmd.append("--coalesce")
            env = None
            if tls:
                assert self.tls is not None
                cmd += ["--cert", self.tls.cert, "--key", self.tls.key]
                cmd += ["--tls-log", str(Path(self.tmp.name) / "echo-tls.txt")]
                env = self.tls.env
            proc = spawn(cmd, self.load_cores, fh, load_side=True, env=env)
        stack.append(proc)
        port = wait_ready_line(proc, log)
        self.target_pids.append(proc.pid)  # an idle echo's CPU adds nothing
        return f"{'wss' if tls else 'ws'}://127.0.0.1:{port}/"

    def _enter_phase(self, mode: str) -> None:
        """Point the context at this TLS mode's echo and hop settings."""
        ctx = self.ctx
        ctx.tls = self.tls if mode != "none" else None
        ctx.client_tls = mode in ("client", "both")
        ctx.target_url = self.tls_url if mode in ("target", "both") else self.plain_url
        ctx.direct_url = self.tls_url if mode != "none" else ""
        for state in self.states:
            if state.status in ("ok", "error"):
                state.status, state.reason = "pending", ""

    def _read_tls_log(self) -> None:
        if self.tls is None:
            return
        seen = Path(self.tmp.name) / "echo-tls.txt"
        lines = seen.read_text().split("\n") if seen.exists() else []
        self.tls_info = {
            "pinned": f"TLSv1.3 {CIPHER_SUITE} (OPENSSL_CONF for every process; nginx "
            "ssl_conf_command too)",
            "certificate": "ECDSA P-256, for 127.0.0.1, from a CA made at bench start",
            "target_hop_negotiated": sorted({ln for ln in lines if ln}),
        }

    def run(self) -> dict[str, Any]:
        """Measure everything; returns ``{"systems": ..., "plans": [...]}``."""
        owned: list[subprocess.Popen[bytes]] = []
        worker = Worker(self.load_cores, Path(self.tmp.name))
        saved = os.sched_getaffinity(0)
        poll_fd = hold_idle_poll() if self.idle_poll else None
        if self.idle_poll:
            self.idle_poll_state = "on" if poll_fd is not None else "not permitted"
        if self.load_cores:
            # This thread (and the progress display's thread it starts) stays off the
            # relay core; restored afterwards for callers that embed the bench.
            os.sched_setaffinity(0, self.load_cores)
        failed: dict[str, str] = {}
        try:
            if any(plan.tls != "none" for plan in self.plans):
                if self.tls_dir:
                    self.tls = make_tls_files(Path(self.tls_dir), reuse=True)
                else:
                    self.tls = make_tls_files(Path(self.tmp.name) / "tls")
            if not self.external_target:
                self.plain_url = self.ctx.target_url = self._start_echo(owned)
                if self.tls is not None:
                    self.tls_url = self._start_echo(owned, tls=True)
            plans: list[dict[str, Any]] = []
            done = 0
            for mode, group in groupby(self.plans, key=lambda plan: plan.tls):
                self._enter_phase(mode)
                self._check_systems()  # after the echo: some checks depend on the target URL
                for state in self.states:
                    if state.status == "pending":
                        self._start(state)
                    if state.status == "error":
                        failed[state.name] = state.reason
                try:
                    done = self._measure(worker, list(group), plans, done)
                finally:
                    for state in self.states:
                        self._stop(state)
        finally:
            worker.close()
            for state in self.states:
                self._stop(state)
            for proc in owned:
                stop_process(proc)
            os.sched_setaffinity(0, saved)
            if poll_fd is not None:
                os.close(poll_fd)
            self._read_tls_log()
            self.tmp.cleanup()
        for name, reason in failed.items():  # a start failure in any phase is reported
            state = next(s for s in self.states if s.name == name)
            state.status, state.reason = "error", reason
        systems = {s.name: {"status": s.status, "reason": s.reason, **s.info} for s in self.states}
        return {"systems": systems, "plans": plans}

    def _measure(
        self, worker: Worker, group: list[Plan], out: list[dict[str, Any]], done: int
    ) -> int:
        """Measure ``group`` (one TLS mode) into ``out``; returns the runs done so far."""
        for plan in group:
            runs: dict[str, list[dict[str, Any]]] = {
                s.name: [] for s in self.states if s.status in ("ok", "error")
            }
            for rep in range(self.repeat):
                for state in self.states:
                    if state.status == "error":  # failed to start in this phase
                        runs[state.name].append({"error": state.reason})
                        continue
                    if state.status != "ok" or state.running is None:
                        continue
                    label = f"{plan.label} · {state.name} · run {rep + 1}/{self.repeat}"
                    self.on_progress(label, done, self.total_runs)
                    result = self._one(plan, state, worker)
                    runs.setdefault(state.name, []).append(result)
                    done += 1
            self.on_progress(plan.label, done, self.total_runs)
            out.append(
                {
                    "scenario": plan.scenario,
                    "label": plan.label,
                    "params": plan.params,
                    "tls": plan.tls,
                    "write_pattern": "whole" if plan.whole else "stream",
                    "runs": runs,
                }
            )
        return done

    def _one(self, plan: Plan, state: SystemState, worker: Worker) -> dict[str, Any]:
        if plan.fresh and state.running is not None and state.running.procs:
            self._stop(state)
            self._start(state)
        running = state.running
        if running is None:
            return {"error": state.reason or "not running"}
        # Re-read the tree: a relay may fork workers after start-up.
        pids = running.pids
        if running.procs:
            pids = sorted({p for proc in running.procs for p in process_tree(proc.pid)})
        url, connect = running.url, running.connect
        if plan.whole:
            # The echo answers a /whole connection with whole-message writes; nginx
            # and direct carry the path in their URL, relays in the connect message.
            if connect is None:
                url = with_path(url, "/whole")
            else:
                connect = {**connect, "url": with_path(str(connect["url"]), "/whole")}
        cmd = {
            "scenario": plan.scenario,
            "url": url,
            "connect": connect,
            "ca_file": self.tls.ca if self.tls else None,
            "relay_pids": pids,
            "target_pids": self.target_pids,
            **plan.params,
        }
        result = worker.request(cmd, plan.timeout)
        if "error" not in result:
            result["limit"] = saturation(result, len(self.load_cores or {0}))
        return result
