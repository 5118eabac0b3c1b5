"""Where ``relay serve``'s configuration comes from, and the one way it is checked.

A running gateway reads its file more than once (``SIGHUP``, ``relay reload``),
so what the command line added to it (``--bind``, ``--api-key``,
``--allow-private-targets``, TLS files) and the secrets made up at start-up
(a development key, the parser API's token) are kept in a
:class:`ConfigSource` and applied again on every read: a reload sees the
same gateway the operator started, with the file's new contents.

:func:`prepare` builds everything that can still fail once the file has
validated (CA bundles, proxy URLs, the TLS certificate), so ``relay serve``,
``relay config check`` and a reload refuse a file for the same reasons, with
the same message.
"""

from __future__ import annotations

import hashlib
import json
import ssl
from collections.abc import Sequence

import attrs

from relay.agents.base import Agent
from relay.agents.factory import build_agent
from relay.config import Config, ConfigError, KeyConfig, load_config
from relay.converter import converter
from relay.dial import DialSettings
from relay.targets import Resolver, system_resolver

__all__ = ["ConfigSource", "Prepared", "config_hash", "prepare", "server_tls_context"]

DEV_KEY_NAME = "dev"


@attrs.frozen
class ConfigSource:
    """A configuration file (or none) and what the command line puts on top of it."""

    path: str | None = None
    bind: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    allow_private_targets: bool = False
    api_keys: tuple[str, ...] = attrs.field(default=(), repr=False)
    # Made up at the first read, reused by every later one (never logged).
    dev_key: str | None = attrs.field(default=None, repr=False)
    parser_token: str | None = attrs.field(default=None, repr=False)

    def read(self) -> Config:
        """Load the file and apply the command line; raises :class:`ConfigError`."""
        config = load_config(self.path) if self.path else Config()
        server = config.server
        if self.bind:
            server = attrs.evolve(server, bind=self.bind)
        if self.certfile:
            server = attrs.evolve(server, certfile=self.certfile, keyfile=self.keyfile)
        targets = config.targets
        if self.allow_private_targets:
            targets = attrs.evolve(targets, allow_private=True)
        extra = tuple(KeyConfig(key=key, name=f"cli-{n}") for n, key in enumerate(self.api_keys, 1))
        keys = config.keys + extra
        if not keys and self.dev_key is not None:
            keys = (KeyConfig(key=self.dev_key, name=DEV_KEY_NAME),)
        parser = config.parser
        if not parser.has_token and self.parser_token is not None:
            parser = attrs.evolve(parser, admin_token=self.parser_token)
        return attrs.evolve(config, server=server, targets=targets, keys=keys, parser=parser)

    def first_read(self) -> tuple[ConfigSource, Config]:
        """The start-up read: secrets the configuration lacks are generated (and kept)."""
        config = self.read()
        config, dev_key = config.with_dev_key()
        parser, parser_token = config.parser.ensure_token()
        config = attrs.evolve(config, parser=parser)
        source = attrs.evolve(
            self,
            dev_key=dev_key if dev_key is not None else self.dev_key,
            parser_token=parser_token if parser_token is not None else self.parser_token,
        )
        return source, config


def config_hash(config: Config) -> str:
    """A short fingerprint of the effective configuration (shown by ``/healthz``).

    Taken over the canonical JSON of the whole configuration, so two workers
    (or two gateways) running the same settings show the same value.
    """
    text = json.dumps(converter.unstructure(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def server_tls_context(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    """The TLS context for ``wss://``/``https://``: HTTP/1.1 only (the router reads
    HTTP/1.1 request heads), TLS 1.2 at least."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    context.set_alpn_protocols(["http/1.1"])
    return context


@attrs.frozen
class Prepared:
    """What a validated configuration builds: dial settings, agents, the TLS context."""

    config: Config
    dial: DialSettings
    agents: Sequence[Agent]
    tls: ssl.SSLContext | None


def _problem(what: str, exc: Exception) -> ConfigError:
    detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return ConfigError(f"{what}: {detail}")


def prepare(config: Config, resolver: Resolver = system_resolver) -> Prepared:
    """Build what ``config`` needs beyond validation; raises :class:`ConfigError`."""
    # Imported here: relay.gateway imports the session machinery, which this
    # module (used by `relay config check`) has no other need of.
    from relay.gateway import dial_settings

    try:
        dial = dial_settings(config, resolver)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise _problem(f"cannot load [targets] ca_file {config.targets.ca_file}", exc) from None
    agents: list[Agent] = []
    for agent in config.agents:
        try:
            agents.append(build_agent(agent, dial))
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise _problem(f"agent {agent.slug}", exc) from None
    server = config.server
    tls: ssl.SSLContext | None = None
    if server.certfile is not None:
        try:
            tls = server_tls_context(server.certfile, server.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise _problem(f"cannot load TLS certificate {server.certfile}", exc) from None
    return Prepared(config, dial, agents, tls)
