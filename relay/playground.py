"""``GET /playground``: one self-contained page to try the relay (and the parser API)
from a browser, without installing wscat.  ``GET /`` redirects to it.

The page has no external assets; its inline script and style are allowed by
their hashes in a Content-Security-Policy, so nothing else can run in it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Awaitable, Callable, MutableMapping
from importlib import resources
from typing import Any

__all__ = ["PLAYGROUND_PATH", "page", "send_page", "send_redirect"]

PLAYGROUND_PATH = "/playground"

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def _hashes(html: str, tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
        for b in blocks
    )


@functools.cache
def page() -> tuple[bytes, str]:
    """The page's bytes and the Content-Security-Policy that lets exactly it run."""
    html = resources.files("relay").joinpath("playground.html").read_text("utf-8")
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_hashes(html, 'script')}",
            f"style-src {_hashes(html, 'style')}",
            # Any gateway: the endpoint field may point elsewhere.
            "connect-src 'self' ws: wss:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return html.encode("utf-8"), policy


async def send_page(send: Send, *, method: str = "GET") -> None:
    """Answer with the playground page."""
    body, policy = page()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"content-security-policy", policy.encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"referrer-policy", b"no-referrer"),
                (b"cache-control", b"no-cache"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


async def send_redirect(send: Send, location: str) -> None:
    """A 302 to ``location`` (``/`` → the playground)."""
    await send(
        {
            "type": "http.response.start",
            "status": 302,
            "headers": [(b"location", location.encode()), (b"content-length", b"0")],
        }
    )
    await send({"type": "http.response.body", "body": b""})
