"""Gateway configuration: attrs classes, loaded from TOML through the converter.

Every table rejects unknown keys, so a typo in a config file is an error at
start-up rather than a default silently kept.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
from cattrs.gen import make_dict_structure_fn

from parser_api.config import ParserConfig
from relay.browser.profiles import known_profile
from relay.converter import (
    FieldError,
    InputError,
    check,
    converter,
    secret_digest,
    secret_field,
    sha256_field,
    structure,
)
from relay.targets import Rules, TargetPolicy, parse_port_range, parse_rule
from relay.wire.connect import (
    MAX_URL_LENGTH,
    ConnectLimits,
    parse_target_url,
    valid_country,
    valid_slug,
)

__all__ = [
    "AgentConfig",
    "Config",
    "ConfigError",
    "KeyConfig",
    "NodeConfig",
    "NodeSettings",
    "RateLimitConfig",
    "ServerConfig",
    "TargetsConfig",
    "load_config",
    "load_node_config",
    "parse_bind",
    "valid_ip",
]

DEFAULT_BIND = "127.0.0.1:8080"
LOG_LEVELS = ("debug", "info", "warning", "error")


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
    drain_period: float = attrs.field(
        default=10.0, validator=check(lambda v: v >= 0, "must be >= 0")
    )
    # End a session whose client or target has accepted no byte for this long while
    # a write to it waits (1011 to the other side, outcome send_stalled); 0: off.
    send_stall_timeout: float = attrs.field(
        default=0.0, validator=check(lambda v: v >= 0, "must be >= 0")
    )
    # TCP keepalive on client and target connections (relay/keepalive.py); 0: off.
    tcp_keepalive: float = attrs.field(
        default=60.0, validator=check(lambda v: v >= 0, "must be >= 0")
    )
    certfile: str | None = None  # PEM certificate (chain): serve wss:// and https://
    keyfile: str | None = None  # its private key, if not in certfile
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
    # Log threshold when --log-level is not given; re-read on reload.
    log_level: str | None = attrs.field(
        default=None,
        validator=check(
            lambda v: v is None or v in LOG_LEVELS, "must be 'debug', 'info', 'warning' or 'error'"
        ),
    )
    # On reload, end open sessions of keys no longer configured (1008 "API key revoked").
    end_revoked: bool = False

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

    key: str | None = secret_field()
    key_sha256: str | None = sha256_field(_one_key)
    rate: float = attrs.field(default=1.0, validator=check(lambda v: v >= 0, "must be >= 0"))
    burst: int = attrs.field(default=10, validator=check(lambda v: v >= 1, "must be >= 1"))
    name: str | None = None  # shown in logs instead of the key
    # Concurrent sessions this key may hold (across every gateway sharing the
    # limits backend); None: only [server] max_sessions applies.  Over it: 1008.
    max_sessions: int | None = attrs.field(
        default=None, validator=check(lambda v: v is None or v >= 1, "must be >= 1")
    )

    @property
    def digest(self) -> bytes:
        """SHA-256 of the key: the only form the gateway keeps."""
        digest = secret_digest(self.key, self.key_sha256)
        assert digest is not None  # _one_key: one of them is set
        return digest

    @property
    def key_id(self) -> str:
        """A label for logs and metrics that does not reveal the key."""
        return self.name or "key-" + self.digest.hex()[:8]


_REDIS_URL = re.compile(r"^(redis|rediss|unix)://", re.IGNORECASE)


def _redis_url(instance: Any, _attribute: Any, value: str | None) -> None:
    if value is None:
        if instance.backend == "redis":
            raise FieldError("url", "is required when backend = 'redis'")
    elif not _REDIS_URL.match(value):
        raise FieldError("url", "must be a redis://, rediss:// or unix:// URL")


def _below_ttl(instance: Any, _attribute: Any, value: float | None) -> None:
    if value is not None and not 0 < value < instance.session_ttl:
        raise FieldError("session_heartbeat", "must be > 0 and below session_ttl")


@attrs.frozen
class RateLimitConfig:
    """The ``[ratelimit]`` table: where token buckets and session counts live.

    ``memory`` keeps them in this process; ``redis`` shares them with every
    gateway process using the same Redis and ``prefix``.
    """

    backend: str = attrs.field(
        default="memory",
        validator=check(lambda v: v in ("memory", "redis"), "must be 'memory' or 'redis'"),
    )
    url: str | None = attrs.field(default=None, validator=_redis_url, repr=False)
    # What admission does while Redis cannot be reached: fall back to this
    # process's own limits, or refuse (docs/decisions/0005-shared-limits-in-redis.md).
    on_redis_error: str = attrs.field(
        default="fail-open",
        validator=check(
            lambda v: v in ("fail-open", "fail-closed"), "must be 'fail-open' or 'fail-closed'"
        ),
    )
    prefix: str = attrs.field(
        default="relay",
        validator=check(
            lambda v: bool(re.match(r"^[A-Za-z0-9_.:-]{1,64}$", v)),
            "must be 1-64 letters, digits or _.:-",
        ),
    )
    timeout: float = attrs.field(default=1.0, validator=check(_positive, "must be > 0"))
    # A session's claim on its key's concurrent-session quota expires this long
    # after its gateway last refreshed it (so a dead gateway's sessions stop
    # counting); live sessions refresh every session_heartbeat (default ttl/3).
    session_ttl: float = attrs.field(default=30.0, validator=check(_positive, "must be > 0"))
    session_heartbeat: float | None = attrs.field(default=None, validator=_below_ttl)

    @property
    def heartbeat(self) -> float:
        """Seconds between refreshes of a live session's claim."""
        return self.session_heartbeat or self.session_ttl / 3


def _upper(value: str | None) -> str | None:
    return value.upper() if isinstance(value, str) else value


_KINDS = ("direct", "proxy", "remote")
_PROXY_SCHEMES = ("socks5", "socks4", "http", "https")


def valid_ip(value: str | None) -> bool:
    """True for None or an IP address (validator of ``source_address``)."""
    if value is None:
        return True
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _proxy_url(value: str | None) -> bool:
    if value is None:
        return True
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme.lower() in _PROXY_SCHEMES
        and bool(parts.hostname)
        and port is not None
        and parts.path in ("", "/")
        and not parts.query
        and not parts.fragment
    )


def _agent_url(value: str | None) -> bool:
    return value is None or parse_target_url(value) is not None


def _known_profile(value: str) -> bool:
    return known_profile(value)


def _impersonation_fits(instance: Any, _attribute: Any, _value: Any) -> None:
    """A browser's TLS runs over a plain TCP tunnel: not through an ``https://`` proxy."""
    uses = instance.impersonate != "none" or instance.allow_impersonate
    if uses and instance.kind == "proxy" and (instance.proxy or "").lower().startswith("https:"):
        raise FieldError(
            "impersonate", "not available through an https:// proxy (the proxy itself is TLS)"
        )


def _kind_fields(instance: Any, _attribute: Any, _value: Any) -> None:
    """Each kind needs its own fields, and only those."""
    kind = instance.kind
    if kind == "proxy" and instance.proxy is None:
        raise FieldError("kind", "kind 'proxy' needs proxy = 'socks5://…'")
    if kind == "remote" and (instance.url is None or instance.token is None):
        raise FieldError("kind", "kind 'remote' needs url and token")
    if kind != "proxy" and instance.proxy is not None:
        raise FieldError("proxy", "only for kind 'proxy'")
    if kind != "remote" and (instance.url is not None or instance.token is not None):
        raise FieldError("url" if instance.url is not None else "token", "only for kind 'remote'")


@attrs.frozen
class AgentConfig:
    """One ``[[agents]]`` entry: where target connections leave from."""

    slug: str = attrs.field(validator=check(valid_slug, "must be a slug like 'de1'"))
    country: str | None = attrs.field(
        default=None,
        converter=_upper,
        validator=check(valid_country, "must be a two-letter ISO code"),
    )
    node_id: str | None = None
    kind: str = attrs.field(
        default="direct",
        validator=[
            check(lambda v: v in _KINDS, "must be 'direct', 'proxy' or 'remote'"),
            _kind_fields,  # attrs runs validators once every field is set
        ],
    )
    # Local IP the dial is bound to: the target connection (direct), the agent's
    # target connection (remote, sent to the agent), the connection to the proxy (proxy).
    source_address: str | None = attrs.field(
        default=None, validator=check(valid_ip, "must be an IP address")
    )
    # kind = "proxy": the upstream proxy; the URL may carry credentials, so no repr.
    proxy: str | None = attrs.field(
        default=None,
        validator=check(
            _proxy_url, "must be socks5://, socks4://, http:// or https:// [user:pass@]host:port"
        ),
        repr=False,
    )
    remote_dns: bool = True  # proxy: let the proxy resolve target names (SOCKS5, SOCKS4a, HTTP)
    # kind = "remote": the agent's endpoint and the token it expects.
    url: str | None = attrs.field(
        default=None,
        validator=check(_agent_url, "must be a ws:// or wss:// URL, e.g. ws://host:9090/agent"),
    )
    token: str | None = attrs.field(
        default=None,
        validator=check(lambda v: v is None or len(v) >= 1, "must not be empty"),
        repr=False,
    )
    ca_file: str | None = None  # extra CA trusted for a wss:// agent or an https:// proxy
    health_interval: float = attrs.field(default=10.0, validator=check(_positive, "must be > 0"))
    health_timeout: float = attrs.field(default=5.0, validator=check(_positive, "must be > 0"))
    # A WebSocket dialed through the agent as its health check (a full upgrade and close).
    health_url: str | None = attrs.field(
        default=None, validator=check(_agent_url, "must be a ws:// or wss:// URL")
    )
    # Dial targets as this browser: "chrome", a pinned profile ("chrome146") or "none".
    # A remote agent sends it to its node, which dials.  docs/decisions/0012-*.md
    impersonate: str = attrs.field(
        default="none", validator=check(_known_profile, "must be 'none', 'chrome' or a profile")
    )
    # Whether a session may choose its own profile with the connect message's impersonate.
    allow_impersonate: bool = attrs.field(default=False, validator=_impersonation_fits)

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
    ratelimit: RateLimitConfig = attrs.Factory(RateLimitConfig)
    keys: tuple[KeyConfig, ...] = ()
    agents: tuple[AgentConfig, ...] = attrs.field(
        default=(AgentConfig(slug="local"),),
        validator=[check(lambda v: len(v) >= 1, "at least one agent is required"), _unique_slugs],
    )
    # The parser API at /ws/parser; served when it has an admin token.
    parser: ParserConfig = attrs.Factory(ParserConfig)

    def with_dev_key(self) -> tuple[Config, str | None]:
        """Add a generated development key when no key is configured.

        Returns the new config and the generated key (None if keys existed).
        """
        if self.keys:
            return self, None
        key = "dev-" + secrets.token_urlsafe(18)
        return attrs.evolve(self, keys=(KeyConfig(key=key, name="dev"),)), key


DEFAULT_AGENT_BIND = "127.0.0.1:9090"


@attrs.frozen
class NodeSettings:
    """The ``[agent]`` table of ``relay agent``: who this egress node is and how it dials."""

    token: str | None = secret_field()
    token_sha256: str | None = sha256_field()
    slug: str = attrs.field(default="agent", validator=check(valid_slug, "must be a slug"))
    country: str | None = attrs.field(
        default=None,
        converter=_upper,
        validator=check(valid_country, "must be a two-letter ISO code"),
    )
    node_id: str | None = None
    # Optional upstream proxy for this node's dials (credentials: no repr).
    proxy: str | None = attrs.field(
        default=None,
        validator=check(
            _proxy_url, "must be socks5://, socks4://, http:// or https:// [user:pass@]host:port"
        ),
        repr=False,
    )
    remote_dns: bool = True
    ca_file: str | None = None  # extra CA trusted for an https:// proxy
    source_address: str | None = attrs.field(
        default=None, validator=check(valid_ip, "must be an IP address")
    )
    # This node's browser profile for links that name none (a link's own choice wins:
    # the gateway, authenticated by the token, already applied its agent's rules).
    impersonate: str = attrs.field(
        default="none", validator=check(_known_profile, "must be 'none', 'chrome' or a profile")
    )
    tls_cert: str | None = None  # PEM certificate chain: serve wss:// instead of ws://
    tls_key: str | None = None
    # After a reload (SIGHUP) brings a new token, the old one is still accepted this
    # many seconds, so gateways can be moved to the new one without refused links.
    token_overlap: float = attrs.field(
        default=300.0, validator=check(lambda v: v >= 0, "must be >= 0")
    )

    @property
    def token_digest(self) -> bytes | None:
        """SHA-256 of the token: the only form the node compares."""
        return secret_digest(self.token, self.token_sha256)

    def egress(self) -> AgentConfig:
        """This node's own way out, as an agent of kind ``direct`` or ``proxy``."""
        return AgentConfig(
            slug=self.slug,
            country=self.country,
            node_id=self.node_id,
            kind="direct" if self.proxy is None else "proxy",
            proxy=self.proxy,
            remote_dns=self.remote_dns,
            ca_file=self.ca_file,
            source_address=self.source_address,
            impersonate=self.impersonate,
            # Links choose freely, except where no browser TLS is possible.
            allow_impersonate=not (self.proxy or "").lower().startswith("https:"),
        )


@attrs.frozen
class NodeConfig:
    """``relay agent --config``: ``[server]`` and ``[targets]`` as a gateway's, and ``[agent]``."""

    server: ServerConfig = attrs.Factory(lambda: ServerConfig(bind=DEFAULT_AGENT_BIND))
    targets: TargetsConfig = attrs.Factory(TargetsConfig)
    agent: NodeSettings = attrs.Factory(NodeSettings)


def load_node_config(path: str | Path) -> NodeConfig:
    """Read and validate a ``relay agent`` TOML file."""
    data = _read_toml(path)
    server = data.get("server")
    if isinstance(server, dict):
        server.setdefault("bind", DEFAULT_AGENT_BIND)
    try:
        return structure(data, NodeConfig, what="agent configuration")
    except InputError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _forbid_extra(cls: type) -> None:
    converter.register_structure_hook(
        cls, make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True)
    )


for _cls in (
    ServerConfig,
    TargetsConfig,
    RateLimitConfig,
    KeyConfig,
    AgentConfig,
    Config,
    NodeSettings,
    NodeConfig,
):
    _forbid_extra(_cls)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Structure an already-parsed TOML document."""
    try:
        return structure(data, Config, what="configuration")
    except InputError as exc:
        raise ConfigError(str(exc)) from None


def _read_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML configuration file."""
    data = _read_toml(path)
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
