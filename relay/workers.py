"""``relay serve --workers N``: N gateway processes on one port.

Each worker is a whole gateway (``python -m relay.workers``) with its own
SO_REUSEPORT listener on the same address; the kernel spreads new connections
across them.  The supervisor keeps a bound, non-listening socket on the port
(so port 0 picks one port for all), restarts a worker that dies, and on
SIGTERM/SIGINT passes the signal on and waits for the workers' graceful exits.

The configuration reaches workers through the environment (as JSON from the
one converter), not the command line, where other users could read a key.
So does its source (the file and the command line's additions): on SIGHUP or
SIGUSR2 the supervisor passes the signal to every worker, and each re-reads
the file itself (relay/reload.py); the supervisor re-reads it too, so a
worker restarted later starts with the configuration the others reloaded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from functools import partial

import attrs
import trio

from relay.config import Config, ConfigError, config_from_dict
from relay.configsource import ConfigSource
from relay.converter import converter, structure
from relay.logs import configure_logging
from relay.malloc import tune_malloc
from relay.server import BoundAddress, run_until_signalled

__all__ = ["reserve_port", "run_workers"]

log = logging.getLogger("relay.workers")

CONFIG_ENV = "RELAY_WORKER_CONFIG"
SOURCE_ENV = "RELAY_WORKER_SOURCE"
RELOAD_SIGNALS = (signal.SIGHUP, signal.SIGUSR2)
LOG_ENV = "RELAY_WORKER_LOG"
READY = "relay worker ready"
RESTART_DELAY = 1.0  # seconds before a crashed worker is started again


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) an SO_REUSEPORT socket: the port every worker shares."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _worker_env(
    config: Config, source: ConfigSource | None, log_level: str | None, log_format: str
) -> dict[str, str]:
    env = dict(os.environ)
    env[CONFIG_ENV] = json.dumps(converter.unstructure(config))
    if source is not None:
        env[SOURCE_ENV] = json.dumps(converter.unstructure(source))
    env[LOG_ENV] = f"{log_level or ''},{log_format}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def _run_worker(
    index: int,
    env: dict[str, str],
    pids: dict[int, int],
    stopping: trio.Event,
    ready: trio.Semaphore,
) -> None:
    """Keep worker ``index`` running until the supervisor stops."""
    first = True
    while not stopping.is_set():
        command = [sys.executable, "-m", "relay.workers"]
        async with trio.open_nursery() as nursery:
            run = partial(trio.run_process, command, env=env, stdout=subprocess.PIPE, check=False)
            process: trio.Process = await nursery.start(run)
            pids[index] = process.pid
            assert process.stdout is not None
            output = b""
            while READY.encode() not in output:
                chunk = await process.stdout.receive_some()
                if not chunk:
                    break
                output += chunk
            if first and READY.encode() in output:
                first = False
                ready.release()
            nursery.start_soon(_copy_output, process.stdout)
            await process.wait()
        if not stopping.is_set():
            log.warning(
                "worker %d (pid %d) exited with %s; restarting",
                index,
                process.pid,
                process.returncode,
            )
            await trio.sleep(RESTART_DELAY)


async def _copy_output(stream: trio.abc.ReceiveStream) -> None:
    while chunk := await stream.receive_some():
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()


async def run_workers(
    config: Config,
    count: int,
    *,
    source: ConfigSource | None = None,
    log_level: str | None,
    log_format: str,
    task_status: trio.TaskStatus[tuple[BoundAddress, list[int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Supervise ``count`` workers until SIGTERM/SIGINT; reports the address and first PIDs."""
    host, port = config.server.host, config.server.port
    reservation = reserve_port(host, port)
    port = reservation.getsockname()[1]
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    config = attrs.evolve(config, server=attrs.evolve(config.server, bind=bind))
    if source is not None:
        source = attrs.evolve(source, bind=bind)  # port 0 stays the port chosen here
    env = _worker_env(config, source, log_level, log_format)
    pids: dict[int, int] = {}
    stopping = trio.Event()
    ready = trio.Semaphore(0)
    watched = (signal.SIGTERM, signal.SIGINT, *RELOAD_SIGNALS)
    with reservation, trio.open_signal_receiver(*watched) as signals:
        async with trio.open_nursery() as supervisor:

            async def pass_signals_on() -> None:
                async for signum in signals:
                    if signum in RELOAD_SIGNALS:
                        _refresh_env(env, source)
                    else:
                        stopping.set()
                    for pid in pids.values():
                        # A worker drains on the first signal and stops on a second.
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signum)

            supervisor.start_soon(pass_signals_on)
            async with trio.open_nursery() as workers:
                for index in range(count):
                    workers.start_soon(_run_worker, index, env, pids, stopping, ready)
                for _ in range(count):
                    await ready.acquire()
                address = BoundAddress(host, port, tls=config.server.certfile is not None)
                task_status.started((address, [pids[i] for i in range(count)]))
            supervisor.cancel_scope.cancel()  # every worker has exited


def _refresh_env(env: dict[str, str], source: ConfigSource | None) -> None:
    """The configuration a worker restarted from now on starts with (unchanged if invalid:
    the workers log why)."""
    if source is None:
        return
    try:
        config = source.read()
    except ConfigError:
        return
    env[CONFIG_ENV] = json.dumps(converter.unstructure(config))


async def _worker_main(cli_log_level: str | None) -> None:
    config = config_from_dict(json.loads(os.environ[CONFIG_ENV]))
    if cli_log_level is None and config.server.log_level is not None:
        logging.getLogger().setLevel(config.server.log_level.upper())
    source: ConfigSource | None = None
    if SOURCE_ENV in os.environ:
        data = json.loads(os.environ[SOURCE_ENV])
        source = structure(data, ConfigSource, what="worker configuration source")
    await run_until_signalled(
        config,
        source=source,
        cli_log_level=cli_log_level,
        reuse_port=True,
        on_ready=lambda address: print(f"{READY} pid={os.getpid()}", flush=True),
    )


if __name__ == "__main__":
    level, _, fmt = os.environ.get(LOG_ENV, "info,text").partition(",")
    configure_logging(level or "info", fmt or "text")
    tune_malloc()
    trio.run(_worker_main, level or None)
