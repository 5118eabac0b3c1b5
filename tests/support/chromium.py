"""Debian's Chromium as the tests launch it: headless, and silent on the network.

Background services are off, and every name Chromium would look up (its
updater's, e.g. clients2.google.com) is answered "not found" by its own
resolver, so not even a DNS query leaves the machine; pages are served on
127.0.0.1.
"""

from __future__ import annotations

import shutil

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
