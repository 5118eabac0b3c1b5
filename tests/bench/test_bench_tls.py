"""The bench's TLS runs and write patterns: options, generated configs, a real run.

The real run is tiny (a few tenths of a second per system and plan): it checks that
every system serves and dials ``wss://`` with the test certificate and the pinned
suite, not how fast any of them is.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from bench.cli import _parser, build_plans
from bench.procs import stop_process, wait_ready_line
from bench.systems import SYSTEMS, Context, nginx_config, relay_config_text
from bench.tls import CIPHER_SUITE, TLSFiles, client_context, make_tls_files
from tests.bench.test_bench import SHORT, run_bench
from tests.conftest import IN_CI

PINNED = f"TLSv1.3 {CIPHER_SUITE}"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A CA, certificate and OpenSSL config as the bench makes them."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_echo_url(tmp_path: Path, tls_files: TLSFiles) -> Iterator[str]:
    """``wss://`` URL of a ``bench.echo`` serving the test certificate."""
    log = tmp_path / "echo.log"
    cmd = [sys.executable, "-m", "bench.echo", "--port", "0"]
    cmd += ["--cert", tls_files.cert, "--key", tls_files.key, "--tls-log", str(tmp_path / "tls")]
    env = {**os.environ, **tls_files.env}
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=fh, env=env)
    try:
        yield f"wss://127.0.0.1:{wait_ready_line(proc, log)}/"
    finally:
        stop_process(proc)


def plans_for(*argv: str) -> list[tuple[str, str, bool, str]]:
    """``(scenario, tls, whole, label)`` of each plan the options produce."""
    args = _parser("relay bench").parse_args([*SHORT, *argv])
    return [(p.scenario, p.tls, p.whole, p.label) for p in build_plans(args)]


def test_tls_and_write_pattern_options_make_one_plan_each() -> None:
    plans = plans_for(
        "--scenarios", "connect-rate,throughput,latency", "--size", "1MiB",
        "--tls", "client,target,both", "--write-pattern", "stream,whole",
    )  # fmt: skip
    # latency always runs plain; the other two once per TLS mode, throughput per pattern.
    assert [(s, t, w) for s, t, w, _ in plans] == [
        ("latency", "none", False),
        *[
            (scenario, mode, whole)
            for mode in ("client", "target", "both")
            for scenario, whole in (("connect-rate", False), ("throughput", False),
                                    ("throughput", True))
        ],
    ]  # fmt: skip
    labels = [label for *_, label in plans]
    assert "connect-rate, 8 parallel openers, TLS both hops" in labels
    assert (
        "throughput 1 MiB binary, 1 conn x 4 in flight, whole-message writes, TLS client hop"
        in labels
    )
    assert len(set(labels)) == len(labels)
    # The default is today's plain runs with the streamed echo, labels unchanged.
    assert plans_for("--scenarios", "throughput", "--size", "32") == [
        ("throughput", "none", False, "throughput 32 B binary, 1 conn x 64 in flight")
    ]
    assert [t for _, t, _, _ in plans_for("--scenarios", "connect-rate", "--tls", "none,both")] == [
        "none",
        "both",
    ]


@pytest.mark.parametrize("bad", ["tls", "client,nope", ""])
def test_unknown_tls_modes_are_refused(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser("relay bench").parse_args(["--tls", bad])
    assert "comma list of none, client, target, both" in capsys.readouterr().err


def test_generated_configs_do_the_same_tls_work(tls_files: TLSFiles, tmp_path: Path) -> None:
    relay = tomllib.loads(relay_config_text(9000, "k", tls_files, client_tls=True))
    assert relay["server"]["certfile"] == tls_files.cert
    assert relay["server"]["keyfile"] == tls_files.key
    assert relay["targets"]["ca_file"] == tls_files.ca
    assert "certfile" not in tomllib.loads(relay_config_text(9000, "k", tls_files))["server"]
    text = nginx_config(
        tmp_path, 8443, "127.0.0.1:9443", 10, tls=tls_files, client_tls=True, upstream_tls=True
    )
    assert "listen 127.0.0.1:8443 ssl backlog=4096;" in text
    assert f"ssl_certificate {tls_files.cert};" in text
    assert f"ssl_conf_command Ciphersuites {CIPHER_SUITE};" in text
    assert "proxy_pass https://127.0.0.1:9443;" in text
    assert "proxy_ssl_verify on;" in text
    assert "proxy_ssl_session_reuse off;" in text  # a full handshake per session, as ours
    plain = nginx_config(tmp_path, 8080, "127.0.0.1:9000", 10)
    assert "ssl" not in plain
    assert "proxy_pass http://127.0.0.1:9000;" in plain


def test_echo_serves_the_pinned_suite_and_whole_writes(
    tls_echo_url: str, tls_files: TLSFiles, tmp_path: Path
) -> None:
    context = client_context(tls_files.ca)
    big = bytes(range(256)) * 4096  # 1 MiB
    with connect(tls_echo_url + "whole", ssl=context, max_size=None, compression=None) as ws:
        ws.send(big)
        assert ws.recv() == big
        ws.send("small")
        assert ws.recv() == "small"
    # The test process has no OPENSSL_CONF: the echo's pin decided the suite.
    assert (tmp_path / "tls").read_text().split("\n")[0] == PINNED
    untrusting = ssl.create_default_context()  # without the test CA
    with pytest.raises(ssl.SSLCertVerificationError), connect(tls_echo_url, ssl=untrusting):
        pass


def test_tiny_run_with_tls_on_both_hops(tmp_path: Path) -> None:
    """Every system serves and dials wss:// with the pinned suite; the report says so."""
    relay_missing = SYSTEMS["relay"].unavailable(Context(target_url="ws://x/", relay_cores=None))
    systems = "direct,websockets,nginx,picows" + ("" if relay_missing else ",relay")
    results = run_bench(
        tmp_path, "--systems", systems, "--scenarios", "connect-rate,throughput",
        "--size", "256KiB", "--tls", "both", "--write-pattern", "stream,whole", "--no-chart",
    )  # fmt: skip
    assert results["meta"]["tls"]["target_hop_negotiated"] == [PINNED]
    assert [(p["scenario"], p["tls"], p["write_pattern"]) for p in results["plans"]] == [
        ("connect-rate", "both", "stream"),
        ("throughput", "both", "stream"),
        ("throughput", "both", "whole"),
    ]
    running = [name for name, info in results["systems"].items() if info["status"] == "ok"]
    assert {"direct", "websockets"} <= set(running)
    if IN_CI:  # .ci/run installs nginx, tox the bench extra
        assert set(running) == set(systems.split(","))
    for plan in results["plans"]:
        for name in running:
            (run,) = plan["runs"][name]
            assert "error" not in run, f"{plan['label']} on {name}: {run['error']}"
            assert run["count"] > 0
            assert run["tls"] == PINNED, f"{plan['label']} on {name}"
            if name != "direct":
                assert run["relay_cpu_us_per_op"] > 0
    assert json.dumps(results)  # the whole result stays JSON


def test_tls_dir_keeps_the_ca_for_an_external_relay(tmp_path: Path) -> None:
    first = make_tls_files(tmp_path, reuse=True)
    ca = Path(first.ca).read_bytes()
    assert Path(make_tls_files(tmp_path, reuse=True).ca).read_bytes() == ca
    assert Path(make_tls_files(tmp_path).ca).read_bytes() != ca  # without reuse: a new CA
    assert CIPHER_SUITE in Path(first.openssl_conf).read_text()
