"""Gateway configuration: attrs classes, loaded from TOML through the converter.

Every table rejects unknown keys, so a typo in a config file is an error at
start-up rather than a default silently kept.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from cattrs.gen import make_dict_structure_fn

from relay.converter import FieldError, InputError, check, converter, structure
from relay.protocol import MAX_URL_LENGTH, ConnectLimits
from relay.targets import Rules, TargetPolicy, parse_port_range, parse_rule

__all__ = [
    "AgentConfig",
    "Config",
    "ConfigError",
    "KeyConfig",
    "ServerConfig",
    "TargetsConfig",
    "load_config",
    "parse_bind",
]

DEFAULT_BIND = "127.0.0.1:8080"
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class ConfigError(Exception):
    """A configuration that cannot be used; the message says where and why."""


def parse_bind(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:8080`` for IPv6) into its parts."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _bind_ok(value: str) -> bool:
    try:
        parse_bind(value)
    except ValueError:
        return False
    return True


def _positive(value: float) -> bool:
    return value > 0


@attrs.frozen
class ServerConfig:
    """The ``[server]`` table."""

    bind: str = attrs.field(default=DEFAULT_BIND, validator=check(_bind_ok, "must be HOST:PORT"))
    connect_timeout: float = attrs.field(default=10.0, validator=check(_positive, "must be > 0"))
    max_message_size: int = attrs.field(
        default=16 * 1024 * 1024, validator=check(lambda v: v >= 125, "must be >= 125")
    )
    max_connect_message_size: int = attrs.field(
        default=64 * 1024,
        validator=check(lambda v: 256 <= v <= 16 * 1024 * 1024, "must be 256..16777216"),
    )
    dial_timeout: float = attrs.field(default=10.0, validator=check(_positive, "must be > 0"))
    close_timeout: float = attrs.field(default=5.0, validator=check(_positive, "must be > 0"))
    handshake_timeout: float = attrs.field(default=10.0, validator=check(_positive, "must be > 0"))
    max_request_head: int = attrs.field(
        default=16 * 1024, validator=check(lambda v: v >= 1024, "must be >= 1024")
    )
    # Bounds on the connect request (docs: README "Security").
    max_url_length: int = attrs.field(
        default=MAX_URL_LENGTH, validator=check(lambda v: 16 <= v <= 65536, "must be 16..65536")
    )
    max_headers: int = attrs.field(
        default=32, validator=check(lambda v: 0 <= v <= 1000, "must be 0..1000")
    )
    max_header_size: int = attrs.field(
        default=8192, validator=check(lambda v: 64 <= v <= 65536, "must be 64..65536")
    )
    # Relay sessions at once (from the WebSocket handshake on); over it: 1013.
    max_sessions: int = attrs.field(
        default=10000, validator=check(lambda v: v >= 1, "must be >= 1")
    )
    # Connections still sending their request head; beyond it new ones are closed at once.
    max_handshakes: int = attrs.field(
        default=2048, validator=check(lambda v: v >= 1, "must be >= 1")
    )

    @property
    def connect_limits(self) -> ConnectLimits:
        """The bounds connect requests are parsed with."""
        return ConnectLimits(self.max_url_length, self.max_headers, self.max_header_size)

    @property
    def host(self) -> str:
        """The host part of ``bind``."""
        return parse_bind(self.bind)[0]

    @property
    def port(self) -> int:
        """The port part of ``bind``."""
        return parse_bind(self.bind)[1]


def _each(parse: Callable[[Any], object]) -> Callable[[Any, Any, Any], None]:
    """An attrs validator running ``parse`` on every entry; its ValueError names the entry."""

    def validator(_instance: Any, attribute: Any, values: Any) -> None:
        for value in values:
            try:
                parse(value)
            except ValueError as exc:
                raise FieldError(attribute.name, str(exc)) from None

    return validator


def _allow_only_needs_allow(instance: Any, attribute: Any, value: bool) -> None:
    if value and not instance.allow:
        raise FieldError(attribute.name, "needs at least one allow entry")


@attrs.frozen
class TargetsConfig:
    """The ``[targets]`` table: which targets may be dialed (see :mod:`relay.targets`)."""

    allow_private: bool = False
    # CIDRs and host patterns ("10.1.0.0/16", "*.internal.example"): always refused.
    deny: tuple[str, ...] = attrs.field(default=(), validator=_each(parse_rule))
    # CIDRs and host patterns dialable even when private (or, with allow_only, the only ones).
    allow: tuple[str, ...] = attrs.field(default=(), validator=_each(parse_rule))
    allow_only: bool = attrs.field(default=False, validator=_allow_only_needs_allow)
    # Allowed target ports: 443, "8000-8999"; empty means any port.
    ports: tuple[int | str, ...] = attrs.field(default=(), validator=_each(parse_port_range))
    ca_file: str | None = None  # extra CA bundle trusted for wss:// targets

    def policy(self) -> TargetPolicy:
        """The :class:`~relay.targets.TargetPolicy` this table describes."""
        return TargetPolicy(
            allow_private=self.allow_private,
            allow=Rules.parse(self.allow),
            deny=Rules.parse(self.deny),
            allow_only=self.allow_only,
            ports=tuple(parse_port_range(port) for port in self.ports),
        )


def _one_key(instance: Any, _attribute: Any, _value: Any) -> None:
    if (instance.key is None) == (instance.key_sha256 is None):
        raise ValueError("each [[keys]] entry needs exactly one of key or key_sha256")


@attrs.frozen
class KeyConfig:
    """One ``[[keys]]`` entry: an API key (or its SHA-256) and its token bucket."""

    key: str | None = attrs.field(
        default=None,
        validator=check(lambda v: v is None or len(v) >= 1, "must not be empty"),
        repr=False,
    )
    key_sha256: str | None = attrs.field(
        default=None,
        validator=attrs.validators.and_(
            check(lambda v: v is None or bool(_HEX64.match(v)), "must be 64 hex digits"),
            _one_key,
        ),
        repr=False,
    )
    rate: float = attrs.field(default=1.0, validator=check(lambda v: v >= 0, "must be >= 0"))
    burst: int = attrs.field(default=10, validator=check(lambda v: v >= 1, "must be >= 1"))
    name: str | None = None  # shown in logs instead of the key
    # Concurrent sessions this key may hold; None: only [server] max_sessions applies.
    max_sessions: int | None = attrs.field(
        default=None, validator=check(lambda v: v is None or v >= 1, "must be >= 1")
    )

    @property
    def digest(self) -> bytes:
        """SHA-256 of the key: the only form the gateway keeps."""
        if self.key_sha256 is not None:
            return bytes.fromhex(self.key_sha256)
        assert self.key is not None
        return hashlib.sha256(self.key.encode()).digest()

    @property
    def key_id(self) -> str:
        """A label for logs and metrics that does not reveal the key."""
        return self.name or "key-" + self.digest.hex()[:8]


def _upper(value: str | None) -> str | None:
    return value.upper() if isinstance(value, str) else value


@attrs.frozen
class AgentConfig:
    """One ``[[agents]]`` entry: where target connections leave from."""

    slug: str = attrs.field(
        validator=check(lambda v: bool(_SLUG.match(v)), "must be a slug like 'de1'")
    )
    country: str | None = attrs.field(
        default=None,
        converter=_upper,
        validator=check(
            lambda v: v is None or bool(re.match(r"^[A-Z]{2}$", v)), "must be a two-letter ISO code"
        ),
    )
    node_id: str | None = None
    kind: str = attrs.field(
        default="direct", validator=check(lambda v: v in ("direct",), "must be 'direct'")
    )
    source_address: str | None = None

    @property
    def reported_node_id(self) -> str:
        """The ``node_id`` reported in ``connected``."""
        return self.node_id or f"relay-{self.slug}"


def _unique_slugs(_instance: object, _attribute: object, agents: tuple[AgentConfig, ...]) -> None:
    seen: set[str] = set()
    for agent in agents:
        if agent.slug in seen:
            raise ValueError(f"agent slug {agent.slug!r} appears twice")
        seen.add(agent.slug)


@attrs.frozen
class Config:
    """The whole gateway configuration."""

    server: ServerConfig = attrs.Factory(ServerConfig)
    targets: TargetsConfig = attrs.Factory(TargetsConfig)
    keys: tuple[KeyConfig, ...] = ()
    agents: tuple[AgentConfig, ...] = attrs.field(
        default=(AgentConfig(slug="local"),),
        validator=[check(lambda v: len(v) >= 1, "at least one agent is required"), _unique_slugs],
    )

    def with_dev_key(self) -> tuple[Config, str | None]:
        """Add a generated development key when no key is configured.

        Returns the new config and the generated key (None if keys existed).
        """
        if self.keys:
            return self, None
        key = "dev-" + secrets.token_urlsafe(18)
        return attrs.evolve(self, keys=(KeyConfig(key=key, name="dev"),)), key


def _forbid_extra(cls: type) -> None:
    converter.register_structure_hook(
        cls, make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True)
    )


for _cls in (ServerConfig, TargetsConfig, KeyConfig, AgentConfig, Config):
    _forbid_extra(_cls)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Structure an already-parsed TOML document."""
    try:
        return structure(data, Config, what="configuration")
    except InputError as exc:
        raise ConfigError(str(exc)) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML configuration file."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
