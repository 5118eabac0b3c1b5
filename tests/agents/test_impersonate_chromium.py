"""The real thing: the Chromium installed here opens ``new WebSocket("wss://…")`` to the
same recording server as a relayed dial with ``impersonate = "chrome"``.  The upgrade
requests must have the same header names in the same order and casing, and the
ClientHellos the same TLS version, cipher suites, extension set and ALPN (the
library's Chrome profile may trail the installed Chromium by a few versions, so the
signature algorithm list, part of JA4's last hash, is not compared)."""

from __future__ import annotations

import shutil
import subprocess
from functools import partial
from pathlib import Path

import trio
import trustme

from relay.config import AgentConfig
from tests.agents.test_impersonate import REFUSED, _dial, _recorded, _with_ca
from tests.conftest import require
from tests.support.chromium import CHROMIUM
from tests.support.chromium import FLAGS as CHROMIUM_FLAGS
from tests.support.clienthello import HelloRecorder, is_grease, ja4
from tests.support.gateway import make_config, start_gateway

# The shared launch flags, plus: the recorder's certificate is from a test CA.
FLAGS = [*CHROMIUM_FLAGS, "--ignore-certificate-errors"]


async def _page_server(nursery: trio.Nursery, wss_url: str) -> int:
    page = f"<script>new WebSocket({wss_url!r});</script>".encode()

    async def serve(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = await stream.receive_some()
            if not chunk:
                return
            request += chunk
        body = page if request.startswith(b"GET / ") else b""
        status = b"200 OK" if body else b"404 Not Found"
        await stream.send_all(
            b"HTTP/1.1 " + status + b"\r\ncontent-type: text/html\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body
        )
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def test_the_relay_and_chromium_send_the_same_upgrade_and_hello_shape(
    nursery: trio.Nursery, ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    require(shutil.which("chromium") is not None, "chromium (Debian package)")
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    agents = (AgentConfig(slug="chrome", impersonate="chrome"),)
    running = await start_gateway(nursery, _with_ca(make_config(agents=agents), ca_file))
    with HelloRecorder(context, response=REFUSED) as recorder:
        url = f"wss://127.0.0.1:{recorder.port}/socket"
        await _dial(running.ws_url, url)
        relayed = await _recorded(recorder, 1)
        port = await _page_server(nursery, url)
        command = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path}", f"http://127.0.0.1:{port}/"]
        async with trio.open_nursery() as browser:
            run = partial(
                trio.run_process,
                command,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            await browser.start(run)
            with trio.fail_after(60):  # a hang guard only
                chromium = await _recorded(recorder, 2)
            browser.cancel_scope.cancel()  # run_process terminates it

    assert chromium.request_line == relayed.request_line == "GET /socket HTTP/1.1"
    assert [name for name, _ in relayed.headers] == [name for name, _ in chromium.headers]
    same_values = ("Connection", "Pragma", "Cache-Control", "Upgrade", "Sec-WebSocket-Version")
    for name in (*same_values, "Accept-Encoding", "Sec-WebSocket-Extensions"):
        assert relayed.header(name) == chromium.header(name), name

    ours, theirs = relayed.hello, chromium.hello
    assert ours.alpn == theirs.alpn == (b"http/1.1",)
    assert ja4(ours).split("_")[:2] == ja4(theirs).split("_")[:2]  # version, counts, ciphers
    assert [c for c in ours.cipher_suites if not is_grease(c)] == [
        c for c in theirs.cipher_suites if not is_grease(c)
    ]
    assert {t for t in ours.extension_types if not is_grease(t)} == {
        t for t in theirs.extension_types if not is_grease(t)
    }
    assert ours.supported_groups == theirs.supported_groups or [
        g for g in ours.supported_groups if not is_grease(g)
    ] == [g for g in theirs.supported_groups if not is_grease(g)]
