"""Real upstream proxies for the agent tests, started as processes on loopback:
Debian's ``microsocks`` (SOCKS5) and ``tinyproxy`` (HTTP CONNECT), plus a TLS
front so a plain proxy can be reached as ``https://``.

Both take an outgoing bind address, so a target can tell which proxy dialed it.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import attrs
import trio

from tests.conftest import require


@attrs.define
class ProxyProcess:
    """A running proxy; ``url()`` builds its URL with or without credentials."""

    scheme: str
    port: int
    process: trio.Process | None = None

    def url(self, user: str | None = None, password: str | None = None) -> str:
        auth = f"{user}:{password}@" if user is not None else ""
        return f"{self.scheme}://{auth}127.0.0.1:{self.port}"


def free_port() -> int:
    """A port nothing listens on right now (for proxies that cannot pick their own)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_listening(port: int, process: trio.Process, within: float = 15) -> None:
    """Until ``port`` accepts connections; fails if the process exits first."""
    with trio.fail_after(within):  # a hang guard only
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"proxy exited with {process.returncode} before listening")
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.02)
                continue
            await stream.aclose()
            return


@asynccontextmanager
async def _proxy_process(argv: list[str], scheme: str, port: int) -> AsyncIterator[ProxyProcess]:
    async with trio.open_nursery() as nursery:
        run = partial(
            trio.run_process,
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        process: trio.Process = await nursery.start(run)
        await _wait_listening(port, process)
        try:
            yield ProxyProcess(scheme, port, process)
        finally:
            nursery.cancel_scope.cancel()  # run_process terminates it


@asynccontextmanager
async def microsocks(
    *,
    user: str | None = None,
    password: str | None = None,
    bind: str | None = None,
    port: int | None = None,
) -> AsyncIterator[ProxyProcess]:
    """A SOCKS5 proxy; ``bind`` is the source address of its outgoing connections."""
    require(shutil.which("microsocks") is not None, "microsocks (apt-get install microsocks)")
    port = port or free_port()
    argv = ["microsocks", "-i", "127.0.0.1", "-p", str(port)]
    if user is not None and password is not None:
        argv += ["-u", user, "-P", password]
    if bind is not None:
        argv += ["-b", bind]
    async with _proxy_process(argv, "socks5", port) as proxy:
        yield proxy


@asynccontextmanager
async def tinyproxy(
    *,
    user: str | None = None,
    password: str | None = None,
    bind: str | None = None,
    port: int | None = None,
) -> AsyncIterator[ProxyProcess]:
    """An HTTP CONNECT proxy (any port allowed); ``bind`` as for :func:`microsocks`."""
    require(shutil.which("tinyproxy") is not None, "tinyproxy (apt-get install tinyproxy)")
    port = port or free_port()
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 60",
        "MaxClients 100",
        "LogLevel Critical",
        "DisableViaHeader Yes",
    ]
    if user is not None and password is not None:
        lines.append(f"BasicAuth {user} {password}")
    if bind is not None:
        lines.append(f"Bind {bind}")
    with tempfile.TemporaryDirectory() as directory:
        conf = Path(directory) / "tinyproxy.conf"
        conf.write_text("\n".join(lines) + "\n")
        async with _proxy_process(["tinyproxy", "-d", "-c", str(conf)], "http", port) as proxy:
            yield proxy


async def _pipe(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
    try:
        while data := await src.receive_some(65536):
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


@asynccontextmanager
async def tls_front(backend_port: int, context: ssl.SSLContext) -> AsyncIterator[ProxyProcess]:
    """TLS on a free port, forwarded to ``backend_port``: makes a plain proxy ``https://``."""

    async def handle(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, context, server_side=True)
        try:
            await tls.do_handshake()
            backend = await trio.open_tcp_stream("127.0.0.1", backend_port)
        except (trio.BrokenResourceError, OSError):
            await trio.aclose_forcefully(stream)
            return
        async with backend, tls, trio.open_nursery() as pipes:
            pipes.start_soon(_pipe, tls, backend)
            await _pipe(backend, tls)
            pipes.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        try:
            yield ProxyProcess("https", port)
        finally:
            nursery.cancel_scope.cancel()
