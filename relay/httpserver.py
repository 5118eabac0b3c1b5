"""Serving the ASGI app (``/ws/docs``, ``/healthz``, ``/ws/parser``, …) with
Hypercorn's Trio connection handler, on connections the relay's own listener
accepted and already began to read.

Hypercorn's ``TCPServer`` is an internal API (pinned to 0.18.x in
pyproject.toml); see docs/decisions/0002-one-listener.md for why the relay
owns the listener.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, LifespanState

__all__ = ["AsgiServer", "ReplayStream"]


class ReplayStream(trio.abc.HalfCloseableStream):
    """A socket stream that first yields bytes already read from it."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        # Hypercorn asks the stream for ``socket`` (plain TCP) or for
        # ``do_handshake``/``transport_stream``/``selected_alpn_protocol`` (TLS),
        # and tells the two apart by which ones raise AttributeError.
        return getattr(self._stream, name)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Replay the prefix, then read the socket."""
        if self._prefix:
            if max_bytes is None or max_bytes >= len(self._prefix):
                data, self._prefix = self._prefix, b""
            else:
                data, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write to the socket."""
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        """Delegate to the socket stream."""
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Half-close the socket (a no-op for streams that cannot)."""
        if isinstance(self._stream, trio.abc.HalfCloseableStream):
            await self._stream.send_eof()

    async def aclose(self) -> None:
        """Close the socket."""
        await self._stream.aclose()


class AsgiServer:
    """Hypercorn's lifespan and per-connection protocol handling for one ASGI app."""

    def __init__(self, app: Any, *, max_request_head: int = 16 * 1024) -> None:
        config = HypercornConfig()
        config.accesslog = None
        config.errorlog = logging.getLogger("relay.http")
        config.h11_max_incomplete_size = max_request_head
        # One request per connection: every request then reaches the relay's
        # router, so a WebSocket upgrade to /ws is never hidden behind an
        # earlier keep-alive request that Hypercorn owns.
        config.keep_alive_max_requests = 1
        self.config = config
        self._app = ASGIWrapper(app)
        self._context = WorkerContext(None)
        self._state: LifespanState = {}
        self._lifespan = Lifespan(self._app, config, self._state)

    async def run_lifespan(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the app's lifespan: ready once startup completes; shuts down when cancelled."""
        # The app's lifespan task must outlive the cancellation that stops the
        # server, or the shutdown event could never be delivered to it.
        lifespan_scope = trio.CancelScope(shield=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._lifespan_task, lifespan_scope)
            await self._lifespan.wait_for_startup()
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(self.config.graceful_timeout),
                ):
                    await self._lifespan.wait_for_shutdown()
                lifespan_scope.cancel()

    async def _lifespan_task(self, scope: trio.CancelScope) -> None:
        with scope:
            await self._lifespan.handle_lifespan()

    async def serve_connection(self, stream: ReplayStream) -> None:
        """Serve HTTP (and ASGI WebSockets) on one accepted connection."""
        server = TCPServer(
            self._app,
            self.config,
            self._context,
            ConnectionState(self._state.copy()),
            stream,  # type: ignore[arg-type]
        )
        await server.run()
