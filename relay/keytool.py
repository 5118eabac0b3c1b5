"""``relay keys new``: a fresh API key and the ``[[keys]]`` block that admits it.

The gateway only ever compares SHA-256 digests (relay/auth.py), so a
configuration file needs nothing but ``key_sha256``: the key itself is shown
once, to be handed to its customer, and never has to sit in the file.  The
block is built through :class:`relay.config.KeyConfig`, so a value the
gateway would refuse is refused here, with the same message.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

import attrs

from relay.config import ConfigError, KeyConfig
from relay.converter import InputError, structure

__all__ = ["KEY_PREFIX", "NewKey", "new_key"]

KEY_PREFIX = "rk-"
KEY_BYTES = 32  # 256 random bits: guessing is hopeless, and a SHA-256 of it is safe to publish


@attrs.frozen
class NewKey:
    """A generated key (shown once) and its configuration entry (safe to store)."""

    key: str = attrs.field(repr=False)
    entry: KeyConfig

    def toml(self) -> str:
        """The ``[[keys]]`` block for the configuration file, with the digest only."""
        entry = self.entry
        lines = ["[[keys]]"]
        if entry.name is not None:
            lines.append(f"name = {_toml_string(entry.name)}")
        lines += [
            f'key_sha256 = "{entry.key_sha256}"',
            f"rate = {entry.rate!r}",
            f"burst = {entry.burst}",
        ]
        if entry.max_sessions is not None:
            lines.append(f"max_sessions = {entry.max_sessions}")
        return "\n".join(lines) + "\n"


def _toml_string(value: str) -> str:
    # A JSON string (ASCII, \uXXXX escapes) is a valid TOML basic string.
    return json.dumps(value)


def new_key(
    *,
    name: str | None = None,
    rate: float | None = None,
    burst: int | None = None,
    max_sessions: int | None = None,
) -> NewKey:
    """A random key and its entry; raises :class:`ConfigError` for values ``[[keys]]`` refuses."""
    key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
    fields: dict[str, Any] = {"key_sha256": hashlib.sha256(key.encode()).hexdigest()}
    for field, value in (
        ("name", name),
        ("rate", rate),
        ("burst", burst),
        ("max_sessions", max_sessions),
    ):
        if value is not None:
            fields[field] = value
    try:
        entry = structure(fields, KeyConfig, what="[[keys]] entry")
    except InputError as exc:
        raise ConfigError(str(exc)) from None
    return NewKey(key, entry)
