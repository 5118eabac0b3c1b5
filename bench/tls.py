"""TLS for the bench's ``--tls`` runs: one test CA and certificate, one pinned cipher suite.

Every system must do the same TLS work for the figures to compare, so one
certificate (ECDSA P-256, for 127.0.0.1 and localhost, from a throw-away CA made
with ``trustme`` at bench start: no key is ever committed) serves the client hop
and the echo target, and every process the bench starts gets an OpenSSL config
(``OPENSSL_CONF``) that allows TLS 1.3 only with ``TLS_AES_128_GCM_SHA256``.
OpenSSL applies that config's ``system_default`` section to every TLS context it
creates, so the pin reaches the relay, the Python peers, uvloop's TLS and nginx
alike without a TLS option in any of them (Python 3.11's ``ssl`` cannot set TLS 1.3
suites itself). nginx gets the same pin in its own config as well.

The load client and the echo target report what was negotiated on their side
of each hop, so the report states it instead of assuming it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CIPHER_SUITE",
    "TLS_MODES",
    "TLSFiles",
    "client_context",
    "describe",
    "make_tls_files",
    "server_context",
]

CIPHER_SUITE = "TLS_AES_128_GCM_SHA256"
# none: plain ws:// everywhere; client: wss:// from the load client to the system;
# target: the system dials a wss:// echo; both: both hops.
TLS_MODES = ("none", "client", "target", "both")

_OPENSSL_CONF = f"""openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MinProtocol = TLSv1.3
Ciphersuites = {CIPHER_SUITE}
"""


@dataclass(frozen=True)
class TLSFiles:
    """Paths of the run's CA, certificate chain, key and OpenSSL config."""

    ca: str
    cert: str
    key: str
    openssl_conf: str

    @property
    def env(self) -> dict[str, str]:
        """Environment for every process of a TLS run: the cipher suite pin."""
        return {"OPENSSL_CONF": self.openssl_conf}


def make_tls_files(directory: Path, reuse: bool = False) -> TLSFiles:
    """A fresh CA and a certificate for 127.0.0.1/localhost, written to ``directory``;
    with ``reuse``, files already there are kept (an external relay configured with
    them can then be measured with ``--tls``)."""
    import trustme

    paths = TLSFiles(
        ca=str(directory / "ca.pem"),
        cert=str(directory / "cert.pem"),
        key=str(directory / "key.pem"),
        openssl_conf=str(directory / "openssl.cnf"),
    )
    if reuse and all(Path(p).is_file() for p in (paths.ca, paths.cert, paths.key)):
        Path(paths.openssl_conf).write_text(_OPENSSL_CONF)
        return paths
    ca = trustme.CA()  # ECDSA P-256 keys (trustme's default)
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    directory.mkdir(parents=True, exist_ok=True)
    ca.cert_pem.write_to_path(paths.ca)
    with open(paths.cert, "wb") as fh:
        for blob in leaf.cert_chain_pems:
            fh.write(blob.bytes())
    leaf.private_key_pem.write_to_path(paths.key)
    Path(paths.openssl_conf).write_text(_OPENSSL_CONF)
    return paths


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context with ``cert``/``key`` (suites as OPENSSL_CONF allows)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def client_context(ca: str | None) -> ssl.SSLContext:
    """A verifying client context that also trusts ``ca``."""
    context = ssl.create_default_context()
    if ca:
        context.load_verify_locations(ca)
    return context


def describe(obj: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """``"TLSv1.3 TLS_AES_128_GCM_SHA256"`` for a finished handshake, else None."""
    if obj is None:
        return None
    cipher = obj.cipher()
    return f"{obj.version()} {cipher[0]}" if cipher else None
