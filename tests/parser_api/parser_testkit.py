"""Helpers for the parser API tests: a fake marketplace and the parser app, on loopback.

Both are served by Hypercorn's Trio worker on ephemeral 127.0.0.1 ports. Trio
tests get them in the test's own nursery; tests that must run their own event
loop (asyncio examples, Node) use :class:`ThreadedServers`, which runs the same
servers in a background ``trio.run``.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import hypercorn.config
import hypercorn.trio
import trio
import trio_websocket

from parser_api.app import ParserApp, create_app
from parser_api.config import (
    DepopSourceConfig,
    HttpConfig,
    ParserConfig,
    PoshmarkSourceConfig,
)
from tests.parser_api.parser_fake_marketplace import FakeMarketplace

TOKEN = "test-admin-token-0123456789"
REPO_ROOT = Path(__file__).resolve().parents[2]


def make_config(market: FakeMarketplace, **overrides: Any) -> ParserConfig:
    """A config pointing at ``market``, with politeness timings shrunk to milliseconds."""
    http = HttpConfig(
        request_spacing=0.0, max_retries=2, backoff_base=0.01, backoff_max=0.05, timeout=10.0
    )
    values: dict[str, Any] = {
        "admin_token": TOKEN,
        "poshmark": PoshmarkSourceConfig(
            base_url_com=market.url("com"), base_url_ca=market.url("ca")
        ),
        "depop": DepopSourceConfig(base_url=market.url("depop"), request_spacing=0.0),
        "http": http,
        "fetch_timeout": 30.0,
    }
    values.update(overrides)
    return ParserConfig(**values)


def hypercorn_config() -> hypercorn.config.Config:
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.5
    return config


async def serve(
    nursery: trio.Nursery, app: Any, config: hypercorn.config.Config | None = None
) -> str:
    """Serve ``app`` in ``nursery``; returns ``http://127.0.0.1:PORT`` (or ``https://``)."""
    binds = await nursery.start(_serve, app, config or hypercorn_config())
    return str(binds[0])


async def _serve(
    app: Any, config: hypercorn.config.Config, *, task_status: trio.TaskStatus[list[str]]
) -> None:
    try:
        await hypercorn.trio.serve(app, config, task_status=task_status)
    finally:
        # Tests stop servers by cancelling them, so lifespan.shutdown never runs:
        # close the app's upstream connection pools here instead.
        if isinstance(app, ParserApp):
            with trio.CancelScope(shield=True):
                await app.client.aclose()


async def wait_until(predicate: Callable[[], bool], *, seconds: float = 10.0) -> None:
    """Poll ``predicate`` (server-side state has no event to wait on) for at most ``seconds``."""
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        await trio.sleep(0.01)
    raise AssertionError("condition not reached in time")


@attrs.define
class ParserServer:
    """A running parser app and where to reach it."""

    app: ParserApp
    http_base: str
    market: FakeMarketplace

    @property
    def ws_base(self) -> str:
        return self.http_base.replace("http://", "ws://") + "/ws/parser"

    def ws_url(self, token: str | None = TOKEN) -> str:
        return self.ws_base + (f"?token={token}" if token is not None else "")


async def start_parser(
    nursery: trio.Nursery, market: FakeMarketplace, **overrides: Any
) -> ParserServer:
    app = create_app(make_config(market, **overrides))
    return ParserServer(app=app, http_base=await serve(nursery, app), market=market)


class Client:
    """A raw protocol client (trio-websocket) that speaks JSON."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws

    async def send(self, message: Any) -> None:
        await self.ws.send_message(
            message if isinstance(message, str | bytes) else json.dumps(message)
        )

    async def recv(self) -> dict[str, Any]:
        with trio.fail_after(30):
            result: dict[str, Any] = json.loads(await self.ws.get_message())
        return result

    async def request(self, action: str, payload: Any = None, **envelope: Any) -> dict[str, Any]:
        message: dict[str, Any] = {"action": action, **envelope}
        if payload is not None:
            message["payload"] = payload
        await self.send(message)
        return await self.recv()


class ThreadedServers:
    """The fake marketplace and the parser app in a background thread's ``trio.run``."""

    def __init__(self, **overrides: Any) -> None:
        self.market = FakeMarketplace()
        self.overrides = overrides
        self.http_base = ""
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._error: BaseException | None = None

    async def _main(self) -> None:
        try:
            self._token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:
                    self.market.base = await serve(nursery, self.market)
                    app = create_app(make_config(self.market, **self.overrides))
                    self.http_base = await serve(nursery, app)
                    self._ready.set()
        except BaseException as exc:  # reported by start()/stop()
            self._error = exc
            self._ready.set()

    def start(self) -> ThreadedServers:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"servers did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._token is not None and self._scope is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(10)

    @property
    def host_port(self) -> str:
        return self.http_base.removeprefix("http://")
