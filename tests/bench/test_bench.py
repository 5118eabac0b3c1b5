"""The bench keeps working: its echo target, its peer relays and every scenario.

Not timed: the runs are short and only their correctness is checked (messages
counted, sessions opened, the JSON and chart written with the expected keys).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from bench.cli import auto_in_flight, main, parse_size
from bench.runner import saturation
from bench.systems import SYSTEMS, Context, Running, nginx_config
from tests.conftest import IN_CI

# Short runs: each scenario for about a second per system in all.
SHORT = ["--duration", "0.3", "--warmup", "0.1", "--repeat", "1", "--sessions", "20"]
SCENARIO_KEYS = {
    "throughput": ("rate", "mb_per_s", "relay_cpu_us_per_op", "load_cpu_frac", "count"),
    "latency": ("p50_us", "p99_us", "p999_us", "rate", "count"),
    "sessions": ("sessions", "kib_per_session", "relay_rss_after_kib", "failed"),
    "connect-rate": ("rate", "relay_cpu_us_per_op", "failed", "count"),
}


def run_bench(out: Path, *args: str) -> dict[str, Any]:
    """Run the bench CLI in-process and return its JSON results."""
    code = main([*SHORT, "--out", str(out), *args])
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    assert code == 0, json.dumps(results["systems"], indent=1)
    return results


def check_results(results: dict[str, Any], relays: list[str]) -> None:
    """Every plan ran on every system without errors and counted something."""
    assert set(results) >= {"meta", "systems", "plans"}
    assert results["meta"]["machine"]["cores"] >= 1
    scenarios = {plan["scenario"] for plan in results["plans"]}
    assert scenarios == set(SCENARIO_KEYS)
    for plan in results["plans"]:
        for system in relays:
            runs = plan["runs"][system]
            assert runs, f"{plan['label']}: no run for {system}"
            for run in runs:
                assert "error" not in run, f"{plan['label']} on {system}: {run['error']}"
                for key in SCENARIO_KEYS[plan["scenario"]]:
                    assert key in run, f"{plan['label']} on {system}: no {key}"
                if plan["scenario"] == "sessions":
                    assert run["sessions"] == 20
                    assert run["failed"] == 0
                else:
                    assert run["count"] > 0
            summary = plan["summary"][system]
            assert summary["ok_runs"] == len(runs)


def test_echo_target_echoes_frames_as_sent(echo_url: str) -> None:
    with connect(echo_url, max_size=None, compression=None) as ws:
        ws.send("text stays text")
        assert ws.recv() == "text stays text"
        big = bytes(range(256)) * 4096  # 1 MiB: streamed back across many reads
        ws.send(big)
        assert ws.recv() == big
        ws.send(["frag", "mented"])  # a fragmented message comes back whole
        assert ws.recv() == "fragmented"
        ws.ping(b"p").wait(5)


def test_websockets_peer_speaks_the_connect_protocol(websockets_peer: Running) -> None:
    assert websockets_peer.connect is not None
    with connect(websockets_peer.url, compression=None) as ws:
        ws.send(json.dumps(websockets_peer.connect))
        reply = json.loads(ws.recv())
        assert reply["type"] == "connected"
        assert reply["status"] == 101
        ws.send(b"\x00\x01binary")
        assert ws.recv() == b"\x00\x01binary"


def test_every_scenario_direct_and_websockets_peer(tmp_path: Path) -> None:
    results = run_bench(tmp_path, "--systems", "direct,websockets", "--size", "32,256KiB")
    check_results(results, ["direct", "websockets"])
    assert results["systems"]["websockets"]["status"] == "ok"
    sessions = next(p for p in results["plans"] if p["scenario"] == "sessions")
    assert sessions["runs"]["websockets"][0]["kib_per_session"] is not None
    throughput = [p for p in results["plans"] if p["scenario"] == "throughput"]
    assert [p["params"]["size"] for p in throughput] == [32, 256 * 1024]
    assert (tmp_path / "results.png").stat().st_size > 10_000


def test_every_scenario_through_our_relay(tmp_path: Path) -> None:
    reason = SYSTEMS["relay"].unavailable(Context(target_url="ws://x/", relay_cores=None))
    if reason:
        pytest.skip(reason)
    results = run_bench(tmp_path, "--systems", "relay", "--no-chart")
    check_results(results, ["relay"])


def test_external_relay_url(tmp_path: Path, websockets_peer: Running) -> None:
    """``--relay-url`` drives an already running relay (here: the websockets peer)."""
    args = ["--systems", "relay", "--scenarios", "throughput", "--size", "32", "--no-chart"]
    args += ["--relay-url", websockets_peer.url, "--relay-pid", str(websockets_peer.pids[0])]
    args += ["--target", str(websockets_peer.connect and websockets_peer.connect["url"])]
    results = run_bench(tmp_path, *args)
    run = results["plans"][0]["runs"]["relay"][0]
    assert run["count"] > 0
    assert run["relay_cpu_s"] > 0  # the given PID's CPU was read


def test_missing_peers_are_skipped_not_errors(tmp_path: Path) -> None:
    results = run_bench(
        tmp_path, "--systems", "direct,nginx,picows", "--scenarios", "latency", "--no-chart"
    )
    for name in ("nginx", "picows"):
        info = results["systems"][name]
        # .ci/run installs nginx and tox the bench extra: in CI both must run.
        assert info["status"] in (("ok",) if IN_CI else ("ok", "skipped")), info
        if info["status"] == "ok":
            assert results["plans"][0]["runs"][name][0]["count"] > 0


def test_sizes_windows_and_saturation() -> None:
    assert parse_size("32") == 32
    assert parse_size("64KiB") == 65536
    assert parse_size("1MiB") == 2**20
    assert auto_in_flight(32) == 64
    assert auto_in_flight(2**20) == 4
    busy = {"relay_cpu_frac": 0.97, "client_cpu_s": 0.2, "target_cpu_s": 0.2, "wall_s": 1.0}
    assert saturation(busy, 1) == "relay"
    assert saturation({**busy, "relay_cpu_frac": 0.3, "client_cpu_s": 0.75}, 1) == "load"


def test_nginx_config_uses_64k_buffers_on_loopback(tmp_path: Path) -> None:
    text = nginx_config(tmp_path, 8080, "127.0.0.1:9000", 100)
    assert "listen 127.0.0.1:8080" in text
    assert "proxy_buffer_size 64k;" in text
    assert "proxy_pass http://127.0.0.1:9000;" in text
    assert "daemon off;" in text
