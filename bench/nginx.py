"""The nginx peer's generated configuration: a plain WebSocket reverse proxy, and
with TLS the same certificate, protocol and suite as every other system (see
:mod:`bench.tls`). Pure text, so it is tested without starting nginx.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from bench.tls import CIPHER_SUITE, TLSFiles

__all__ = ["nginx_config"]


def _nginx_tls(tls: TLSFiles | None, client_tls: bool, upstream_tls: bool) -> tuple[str, str]:
    """The ``listen`` suffix and the TLS directives for the server block."""
    if tls is None:
        return "", ""
    lines = []
    if client_tls:
        # The same certificate, protocol and suite as every other system; session
        # tickets stay at nginx's default (on), as Python's servers issue them too.
        lines += [
            f"ssl_certificate {tls.cert};",
            f"ssl_certificate_key {tls.key};",
            "ssl_protocols TLSv1.3;",
            f"ssl_conf_command Ciphersuites {CIPHER_SUITE};",
        ]
    if upstream_tls:
        # Verified like the relay does, and no session reuse towards the target: the
        # Python relays do a full handshake per session, so nginx must too.
        lines += [
            "proxy_ssl_protocols TLSv1.3;",
            f"proxy_ssl_conf_command Ciphersuites {CIPHER_SUITE};",
            "proxy_ssl_verify on;",
            f"proxy_ssl_trusted_certificate {tls.ca};",
            "proxy_ssl_name localhost;",
            "proxy_ssl_session_reuse off;",
        ]
    body = "".join(f"        {line}\n" for line in lines)
    return (" ssl" if client_tls else ""), body


def nginx_config(
    tmp: Path,
    port: int,
    upstream: str,
    max_sessions: int,
    *,
    tls: TLSFiles | None = None,
    client_tls: bool = False,
    upstream_tls: bool = False,
) -> str:
    """nginx as a plain WebSocket reverse proxy: one worker, 64 KiB proxy buffers;
    with ``tls``, TLS on the client hop (``client_tls``) and/or towards the target
    (``upstream_tls``) with the bench's certificate and cipher suite."""
    listen_ssl, tls_lines = _nginx_tls(tls, client_tls, upstream_tls)
    scheme = "https" if upstream_tls else "http"
    user = ""
    if os.geteuid() == 0:
        # Otherwise the worker would drop to "nobody"; the bench runs as whoever runs it.
        user = f"user {pwd.getpwuid(os.getuid()).pw_name};\n"
    conns = 2 * max_sessions + 1024
    temps = "\n".join(
        f"    {kind}_temp_path {tmp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
worker_rlimit_nofile {conns + 1024};
events {{
    worker_connections {conns};
}}
http {{
    access_log off;
{temps}
    server {{
        listen 127.0.0.1:{port}{listen_ssl} backlog=4096;
{tls_lines}        location / {{
            proxy_pass {scheme}://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $proxy_host;
            proxy_buffer_size 64k;
            proxy_buffers 8 64k;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"""
