"""``serve()``: the gateway on one port, inside the caller's Trio nursery."""

from __future__ import annotations

import logging
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import trio

from parser_api.app import ParserApp, create_app
from parser_api.protocol import ENDPOINT as PARSER_PATH
from relay.agents.health import HealthChecks
from relay.asgi import ASGIApp, GatewayApp
from relay.config import Config
from relay.configsource import ConfigSource, server_tls_context
from relay.gateway import Gateway
from relay.httpserver import AsgiServer
from relay.limits import open_limits
from relay.listener import handle_connection
from relay.parser_egress import agent_egress
from relay.reload import Reloader

__all__ = ["BoundAddress", "run_until_signalled", "serve", "server_tls_context"]

# SIGHUP re-reads the configuration; SIGUSR2 also ends sessions of revoked keys.
RELOAD_SIGNALS = (signal.SIGHUP, signal.SIGUSR2)

log = logging.getLogger("relay.server")


@attrs.frozen
class BoundAddress:
    """Where the gateway listens, as given to ``task_status.started()``."""

    host: str
    port: int
    tls: bool = False

    @property
    def ws_url(self) -> str:
        """The relay endpoint's URL."""
        return f"{'wss' if self.tls else 'ws'}://{self._netloc}/ws"

    @property
    def http_url(self) -> str:
        """The base URL of the HTTP endpoints."""
        return f"{'https' if self.tls else 'http'}://{self._netloc}"

    @property
    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _reuse_port_listeners(host: str, port: int) -> list[trio.SocketListener]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(socket.SOMAXCONN)
    return [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]


def _parser_app(config: Config, gateway: Gateway, mounts: dict[str, ASGIApp]) -> ParserApp | None:
    """Mount the parser API at /ws/parser when it has a token (and nothing else is there)."""
    if not config.parser.has_token or PARSER_PATH in mounts:
        return None
    app = create_app(config.parser, egress=agent_egress(gateway.agents))
    mounts[PARSER_PATH] = app
    mounts[PARSER_PATH + "/"] = app
    gateway.registry.metrics.watch_parser(app)
    return app


async def _drain_parser(app: ParserApp, period: float) -> None:
    """Parser connections get the same drain period, then 1001."""
    with trio.move_on_after(period):
        await app.wait_idle()
    await app.shutdown(grace=2.0)


async def serve(
    config: Config,
    *,
    gateway: Gateway | None = None,
    mounts: dict[str, ASGIApp] | None = None,
    reuse_port: bool = False,
    reloader: Reloader | None = None,
    task_status: trio.TaskStatus[BoundAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the gateway until cancelled, or until ``gateway.registry.request_shutdown()``.

    Use ``address = await nursery.start(serve, config)``: the address it
    reports is bound and accepting (port 0 in ``config`` picks a free port).
    After a shutdown request it refuses new sessions (``/healthz`` answers
    503), lets open ones end for up to ``drain_period`` seconds, closes the
    rest with 1001, stops listening, and returns.
    ``gateway`` supplies prebuilt shared state (custom agents, resolver);
    without it the limits backend of ``[ratelimit]`` is opened first (Redis
    unreachable: :class:`relay.ratelimit.LimitsUnavailable`, nothing bound).
    ``mounts`` adds ASGI apps by exact path (e.g. ``/ws/parser``);
    ``reuse_port`` lets several processes listen on the same address;
    ``reloader`` (built on ``gateway``) gets the health checks, the parser app
    and the TLS context to swap on a reload, and ``/healthz`` shows its config.
    """
    if gateway is None:
        async with open_limits(config.ratelimit) as limits:
            built = Gateway.from_config(config, limiter=limits.limiter, slots=limits.slots)
            await serve(
                config, gateway=built, mounts=mounts, reuse_port=reuse_port, task_status=task_status
            )
        return
    server = config.server
    if reuse_port:
        listeners = _reuse_port_listeners(server.host, server.port)
    else:
        listeners = await trio.open_tcp_listeners(server.port, host=server.host)
    sockname = listeners[0].socket.getsockname()
    address = BoundAddress(str(sockname[0]), int(sockname[1]), tls=server.certfile is not None)
    mounts = dict(mounts or {})
    parser = _parser_app(config, gateway, mounts)
    status = reloader.status if reloader is not None else None
    app = GatewayApp(gateway, mounts, config_status=status)
    http = AsgiServer(app, max_request_head=server.max_request_head)
    tls = server_tls_context(server.certfile, server.keyfile) if server.certfile else None
    health = reloader.health if reloader is not None else HealthChecks()
    if reloader is not None:
        reloader.parser, reloader.tls = parser, tls
    async with trio.open_nursery() as nursery:
        await nursery.start(http.run_lifespan)
        await nursery.start(health.run, gateway.agents.agents)
        log.info("relay listening on %s", address.ws_url)
        async with trio.open_nursery() as accepting:
            accepting.start_soon(
                partial(trio.serve_listeners, handler_nursery=nursery),
                _handler(gateway, http, tls, reloader),
                listeners,
            )
            task_status.started(address)
            await gateway.registry.shutdown_requested.wait()
            server = gateway.config.server  # a reload may have changed drain_period
            # Still listening while draining: /healthz says so (503), new /ws
            # upgrades are refused with 503, open sessions go on.
            log.info(
                "draining %d sessions (up to %g s)",
                len(gateway.registry.sessions),
                server.drain_period,
            )
            async with trio.open_nursery() as draining:
                # After drain_period, each session gets close_timeout to finish
                # a frame in flight to each side, then close_timeout for the
                # 1001 to be answered (relay/dataplane/closing.py).
                draining.start_soon(
                    gateway.registry.drain, server.drain_period, 2 * server.close_timeout + 1.0
                )
                if parser is not None:
                    draining.start_soon(_drain_parser, parser, server.drain_period)
            accepting.cancel_scope.cancel()  # the listeners close
        log.info("drained; stopping")
        nursery.cancel_scope.cancel()


def _handler(
    gateway: Gateway, http: AsgiServer, tls: ssl.SSLContext | None, reloader: Reloader | None
) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """The connection handler; with a reloader, TLS takes its current context."""
    if reloader is None or tls is None:
        return partial(handle_connection, gateway, http, tls=tls)

    def handler(stream: trio.SocketStream) -> Awaitable[None]:
        # Not a coroutine of its own: no extra frame is kept for a session's life.
        return handle_connection(gateway, http, stream, tls=reloader.tls)

    return handler


async def run_until_signalled(
    config: Config,
    *,
    source: ConfigSource | None = None,
    cli_log_level: str | None = None,
    reuse_port: bool = False,
    on_ready: Callable[[BoundAddress], None] = lambda address: None,
) -> None:
    """``serve()`` with the configured limits backend until SIGTERM or SIGINT.

    The first signal drains (see :func:`serve`); a second one stops at once.
    With a ``source`` (where ``config`` was read from), SIGHUP re-reads it
    and SIGUSR2 does too, ending sessions of keys it no longer has
    (relay/reload.py); ``cli_log_level`` is a ``--log-level`` the file must
    not override.  ``on_ready`` is called with the bound address once the
    gateway accepts.
    """
    async with open_limits(config.ratelimit) as limits:
        gateway = Gateway.from_config(config, limiter=limits.limiter, slots=limits.slots)
        reloader = None
        if source is not None:
            reloader = Reloader(gateway, source, set_log_level=True, cli_log_level=cli_log_level)
        watched = (signal.SIGTERM, signal.SIGINT, *RELOAD_SIGNALS)
        with trio.open_signal_receiver(*watched) as signals:
            async with trio.open_nursery() as nursery:

                async def run_gateway(task_status: trio.TaskStatus[BoundAddress]) -> None:
                    await serve(
                        config,
                        gateway=gateway,
                        reuse_port=reuse_port,
                        reloader=reloader,
                        task_status=task_status,
                    )
                    nursery.cancel_scope.cancel()  # drained: stop watching signals

                async def watch_signals() -> None:
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        if signum in RELOAD_SIGNALS:
                            if reloader is None:
                                log.warning("%s: no configuration file to re-read", name)
                            else:
                                log.info("%s: re-reading the configuration", name)
                                await reloader.reload(end_revoked=signum == signal.SIGUSR2)
                            continue
                        if gateway.registry.shutdown_requested.is_set():
                            log.warning("second %s: stopping now", name)
                            nursery.cancel_scope.cancel()
                            return
                        log.info("%s: shutting down gracefully", name)
                        gateway.registry.request_shutdown()

                address = await nursery.start(run_gateway)
                nursery.start_soon(watch_signals)
                on_ready(address)
