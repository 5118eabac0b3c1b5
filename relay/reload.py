"""Live reconfiguration: re-read the file and swap what new sessions use.

A reload reads and builds everything first (:func:`relay.configsource.prepare`,
in a worker thread: it may load CA bundles and certificates), and only then
swaps, in one step without a checkpoint, so no session ever sees half of
two configurations.  A file that does not validate changes nothing.

What a session needs is taken when it starts (its ``[server]`` limits, its
key, the agent and target it dialed), so open sessions run on to their end
with the settings they started with; only an operator's explicit request
ends the sessions of revoked keys.  Decision record:
docs/decisions/0013-live-reload.md.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Collection
from typing import Any

import attrs
import trio

from relay.agents.base import Agent
from relay.agents.health import HealthChecks
from relay.auth import KeyStore
from relay.config import Config, ConfigError, KeyConfig
from relay.configsource import ConfigSource, Prepared, config_hash, prepare
from relay.gateway import Gateway
from relay.registry import LiveSession
from relay.wire.closecodes import Outcome

__all__ = ["REVOKED_REASON", "LoadedConfig", "ReloadResult", "Reloader"]

log = logging.getLogger("relay.reload")

REVOKED_REASON = "API key revoked"
# [server] options read once, when the listener or the HTTP server is built.
_SERVER_RESTART = ("bind", "max_request_head")
# [parser] tables its HTTP client and sources are built from.
_PARSER_RESTART = ("http", "poshmark", "depop")


@attrs.frozen
class LoadedConfig:
    """The configuration in force: its fingerprint and when it was loaded (``/healthz``)."""

    hash: str
    loaded_at: float  # wall-clock time
    path: str | None

    def as_dict(self) -> dict[str, Any]:
        """The ``config`` entry of ``/healthz``."""
        return {"hash": self.hash, "loaded_at": self.loaded_at, "path": self.path}


@attrs.frozen
class ReloadResult:
    """What one reload did."""

    ok: bool
    message: str  # the error (exactly as `relay serve` prints it, after "relay: "), or a summary
    needs_restart: tuple[str, ...] = ()
    ended: int = 0  # sessions of revoked keys ended


def _needs_restart(old: Config, new: Config) -> list[str]:
    found = [
        f"[server] {name}"
        for name in _SERVER_RESTART
        if getattr(old.server, name) != getattr(new.server, name)
    ]
    if (old.server.certfile is None) != (new.server.certfile is None):
        found.append("[server] certfile (TLS on/off)")
    if old.ratelimit != new.ratelimit:
        found.append("[ratelimit] backend settings")
    found += [
        f"[parser.{name}]"
        for name in _PARSER_RESTART
        if getattr(old.parser, name) != getattr(new.parser, name)
    ]
    return found


def _running(old: Config, new: Config) -> Config:
    """``new`` with what cannot change without a restart kept as it runs now."""
    server = attrs.evolve(
        new.server, **{name: getattr(old.server, name) for name in _SERVER_RESTART}
    )
    if (old.server.certfile is None) != (new.server.certfile is None):
        server = attrs.evolve(server, certfile=old.server.certfile, keyfile=old.server.keyfile)
    parser = attrs.evolve(
        new.parser, **{name: getattr(old.parser, name) for name in _PARSER_RESTART}
    )
    return attrs.evolve(new, server=server, ratelimit=old.ratelimit, parser=parser)


def _key_digest(session: object) -> bytes | None:
    """The digest of the key a gateway session was admitted with (None before admission)."""
    key = getattr(getattr(session, "front", None), "key", None)
    return key.digest if isinstance(key, KeyConfig) else None


def _end_revoked(session: LiveSession) -> bool:
    """End a relaying session with 1008 ``API key revoked``; False if it is not relaying."""
    # A session in its connect phase was admitted a moment ago under the old
    # keys; it is left to finish like any session admitted before the reload.
    return session.end(Outcome.KEY_REVOKED, REVOKED_REASON)


class Reloader:
    """Re-reads ``source`` into the live ``gateway`` (and its health checks, parser, TLS)."""

    def __init__(
        self,
        gateway: Gateway,
        source: ConfigSource,
        *,
        set_log_level: bool = False,
        cli_log_level: str | None = None,
    ) -> None:
        self.gateway = gateway
        self.source = source
        # The process's log threshold is the command's to manage (relay serve), not
        # an embedding program's; and --log-level wins over the file's.
        self.set_log_level = set_log_level
        self.cli_log_level = cli_log_level
        self.health = HealthChecks()
        self.parser: Any = None  # the mounted parser API app, set by serve()
        self.tls: ssl.SSLContext | None = None  # for new connections, set by serve()
        self.loaded = LoadedConfig(config_hash(gateway.config), time.time(), source.path)

    def status(self) -> dict[str, Any]:
        """What ``/healthz`` shows about the configuration."""
        return self.loaded.as_dict()

    def _read(self) -> Prepared:
        return prepare(self.source.read(), self.gateway.dial.resolver)

    async def reload(self, *, end_revoked: bool = False) -> ReloadResult:
        """Re-read the file and apply it; a file that does not validate changes nothing."""
        metrics = self.gateway.registry.metrics
        try:
            prepared = await trio.to_thread.run_sync(self._read)
        except ConfigError as exc:
            metrics.reloads.labels("invalid").inc()
            # The message names the field at fault; a traceback would add nothing.
            log.error("configuration not reloaded, nothing changed: %s", exc)  # noqa: TRY400
            return ReloadResult(False, str(exc))
        result = self.apply(prepared, end_revoked=end_revoked)
        metrics.reloads.labels("ok").inc()
        return result

    def apply(self, prepared: Prepared, *, end_revoked: bool = False) -> ReloadResult:
        """Swap in ``prepared`` (no checkpoint: sessions see the old or the new, never half)."""
        gateway = self.gateway
        old = gateway.config
        restart = _needs_restart(old, prepared.config)
        new = _running(old, prepared.config)
        revoked = {key.digest for key in old.keys} - {key.digest for key in new.keys}
        added = {key.digest for key in new.keys} - {key.digest for key in old.keys}

        gateway.keys = KeyStore(new.keys)
        retain = getattr(gateway.limiter, "retain", None)
        if retain is not None:
            retain({key.digest for key in new.keys})
        gateway.dial = prepared.dial
        agents_added, agents_removed = self._swap_agents(old, new, prepared)
        gateway.capacity.max_handshakes = new.server.max_handshakes
        if self.parser is not None:
            self.parser.config = new.parser
        if self.tls is not None and prepared.tls is not None:
            self.tls = prepared.tls  # renewed certificates serve new connections
        if self.set_log_level and self.cli_log_level is None:
            logging.getLogger().setLevel((new.server.log_level or "info").upper())
        gateway.config = new
        self.loaded = LoadedConfig(config_hash(new), time.time(), self.source.path)

        ended = 0
        if end_revoked or new.server.end_revoked:
            ended = self._end_sessions({key.digest for key in new.keys})
        message = (
            f"keys +{len(added)} -{len(revoked)}, agents +{len(agents_added)} "
            f"-{len(agents_removed)}; {ended} sessions of revoked keys ended; "
            f"config {self.loaded.hash}"
        )
        log.info("configuration reloaded: %s", message)
        for item in restart:
            log.warning("%s changed: it needs a restart (still running with the old value)", item)
        return ReloadResult(True, message, tuple(restart), ended)

    def _swap_agents(
        self, old: Config, new: Config, prepared: Prepared
    ) -> tuple[list[str], list[str]]:
        """Keep agents whose entry did not change (with their health), build the rest."""
        pool = self.gateway.agents
        previous = {entry.slug: entry for entry in old.agents}
        current = {agent.slug: agent for agent in pool.agents}
        chosen: list[Agent] = []
        for entry, built in zip(new.agents, prepared.agents, strict=True):
            existing = current.get(entry.slug)
            if existing is not None and previous.get(entry.slug) == entry:
                if hasattr(existing, "settings"):
                    existing.settings = prepared.dial  # the new [targets] policy and timeouts
                chosen.append(existing)
            else:
                chosen.append(built)
        kept = {id(agent) for agent in chosen}
        removed = [agent for agent in pool.agents if id(agent) not in kept]
        before = {id(agent) for agent in pool.agents}
        pool.replace(chosen)
        for agent in removed:
            self.health.stop(agent)
        for agent in chosen:
            self.health.start(agent)
        added = [agent.slug for agent in chosen if id(agent) not in before]
        return added, [agent.slug for agent in removed]

    def _end_sessions(self, configured: Collection[bytes]) -> int:
        """End relaying sessions whose key is no longer configured (revoked by this
        reload or an earlier one)."""
        ended = 0
        for session in list(self.gateway.registry.sessions):
            digest = _key_digest(session)
            if digest is not None and digest not in configured and _end_revoked(session):
                ended += 1
        return ended
