"""``relay serve --workers N``: N gateway processes on one port.

Each worker is a whole gateway (``python -m relay.workers``) with its own
SO_REUSEPORT listener on the same address; the kernel spreads new connections
across them.  The supervisor keeps a bound, non-listening socket on the port
(so port 0 picks one port for all), restarts a worker that dies, and on
SIGTERM/SIGINT passes the signal on and waits for the workers' graceful exits.

The configuration reaches workers through the environment (as JSON from the
one converter), not the command line, where other users could read a key.
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

from relay.config import Config, config_from_dict
from relay.converter import converter
from relay.logs import configure_logging
from relay.malloc import tune_malloc
from relay.server import BoundAddress, run_until_signalled

__all__ = ["reserve_port", "run_workers"]

log = logging.getLogger("relay.workers")

CONFIG_ENV = "RELAY_WORKER_CONFIG"
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


def _worker_env(config: Config, log_level: str, log_format: str) -> dict[str, str]:
    env = dict(os.environ)
    env[CONFIG_ENV] = json.dumps(converter.unstructure(config))
    env[LOG_ENV] = f"{log_level},{log_format}"
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
    log_level: str,
    log_format: str,
    task_status: trio.TaskStatus[tuple[BoundAddress, list[int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Supervise ``count`` workers until SIGTERM/SIGINT; reports the address and first PIDs."""
    host, port = config.server.host, config.server.port
    reservation = reserve_port(host, port)
    port = reservation.getsockname()[1]
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    config = attrs.evolve(config, server=attrs.evolve(config.server, bind=bind))
    env = _worker_env(config, log_level, log_format)
    pids: dict[int, int] = {}
    stopping = trio.Event()
    ready = trio.Semaphore(0)
    with reservation, trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as supervisor:

            async def pass_signals_on() -> None:
                async for signum in signals:
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


async def _worker_main() -> None:
    config = config_from_dict(json.loads(os.environ[CONFIG_ENV]))
    await run_until_signalled(
        config,
        reuse_port=True,
        on_ready=lambda address: print(f"{READY} pid={os.getpid()}", flush=True),
    )


if __name__ == "__main__":
    level, _, fmt = os.environ.get(LOG_ENV, "info,text").partition(",")
    configure_logging(level, fmt or "text")
    tune_malloc()
    trio.run(_worker_main)
