"""API key lookup.  Keys are kept only as SHA-256 digests and compared in
constant time, so neither memory nor timing reveals a configured key."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from relay.config import KeyConfig

__all__ = ["KeyStore"]


class KeyStore:
    """The configured API keys."""

    def __init__(self, keys: Iterable[KeyConfig]) -> None:
        self._keys = [(key.digest, key) for key in keys]

    def __len__(self) -> int:
        return len(self._keys)

    def lookup(self, presented: str | None) -> KeyConfig | None:
        """The key entry matching ``presented``, or None.

        Every configured digest is compared, match or not, so the time taken
        does not depend on which key (if any) matched.
        """
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found: KeyConfig | None = None
        for candidate, entry in self._keys:
            if hmac.compare_digest(candidate, digest) and found is None:
                found = entry
        return found
