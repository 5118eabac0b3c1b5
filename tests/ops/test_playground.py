"""The playground page: served self-contained, and driven end to end by a real browser
(Debian's headless Chromium through Playwright) relaying to a local target."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import httpx
import trio

from tests.conftest import require
from tests.support.chromium import CHROMIUM, FLAGS
from tests.support.gateway import KEY, start_gateway
from tests.support.target import TargetServer

# RELAY_SCREENSHOT=docs/playground.png refreshes the README's picture.
SCREENSHOT = os.environ.get("RELAY_SCREENSHOT")


async def test_the_page_is_served_self_contained(nursery: trio.Nursery) -> None:
    running = await start_gateway(nursery)
    async with httpx.AsyncClient(base_url=running.address.http_url) as http:
        root = await http.get("/")
        assert (root.status_code, root.headers["location"]) == (302, "/playground")
        page = await http.get("/playground")
        head = await http.head("/playground")
    assert page.status_code == head.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert head.content == b""
    html = page.text
    # Nothing is fetched from anywhere: no external script, style, image or font.
    assert not re.search(r"<(link|img|iframe|object|embed)\b|\bsrc\s*=|@import", html)
    assert not re.search(r"url\(\s*['\"]?[\w/]|https?://", html)
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/=]+'", policy)
    assert len(page.content) < 32 * 1024


def _drive(http_url: str, echo_url: str, close_url: str, shot: Path) -> dict[str, str]:
    """Drive the playground in Chromium (blocking: runs in a worker thread)."""
    from playwright.sync_api import expect, sync_playwright

    seen: dict[str, str] = {}
    console: list[str] = []
    expect.set_options(timeout=30_000)  # hang guards, not expectations
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1180, "height": 760})
            page.set_default_timeout(30_000)
            page.on("console", lambda message: console.append(message.text))
            page.goto(http_url + "/")
            assert page.url.endswith("/playground")
            status, log = page.locator("#relay-status"), page.locator("#log")
            connect = {"apiKey": KEY, "url": echo_url}
            page.fill("#connect-message", json.dumps(connect, indent=2))
            page.click("#relay-connect")
            expect(status).to_contain_text("connected via relay-local (status 101)")
            page.fill("#relay-message", "hello through the relay")
            page.click("#send-text")
            expect(log.locator("li.in", has_text="hello through the relay")).to_have_count(1)
            page.select_option("#binary-format", "hex")
            page.fill("#relay-message", "de ad be ef")
            page.click("#send-binary")
            expect(log.locator("li.in", has_text="binary 4 B de ad be ef")).to_have_count(1)
            # The browser closes with 4000; the target answers it, relayed back.
            page.fill("#relay-close-code", "4000")
            page.fill("#relay-close-reason", "done here")
            page.click("#relay-disconnect")
            expect(status).to_have_text('closed: code 4000 reason "done here"')
            seen["browser close"] = status.inner_text()
            # The target closes first: its code and reason reach the page.
            page.fill("#connect-message", json.dumps({"apiKey": KEY, "url": close_url}))
            page.check("#use-query")  # the query-string form this time
            page.click("#relay-connect")
            expect(status).to_have_text('closed: code 4001 reason "target says bye"')
            seen["target close"] = status.inner_text()
            page.uncheck("#use-query")
            page.fill("#connect-message", json.dumps(connect, indent=2))
            page.fill("#relay-message", "hello through the relay")
            page.click("#relay-connect")
            expect(status).to_contain_text("connected via relay-local")
            page.click("#send-text")
            expect(log.locator("li.in", has_text="hello through the relay")).to_have_count(2)
            page.screenshot(path=str(shot))
            page.fill("#relay-close-code", "1000")
            page.fill("#relay-close-reason", "")
            page.click("#relay-disconnect")
            expect(status).to_contain_text("closed: code 1000")
        finally:
            browser.close()
    # Everything on the page ran under its Content-Security-Policy.
    assert not [line for line in console if "Content Security Policy" in line], console
    return seen


async def test_a_browser_relays_through_the_playground(
    nursery: trio.Nursery, target: TargetServer, tmp_path: Path
) -> None:
    require(shutil.which("chromium") is not None, "chromium (Debian package)")
    running = await start_gateway(nursery)
    shot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "playground.png"
    close_url = f"{target.url}/close?code=4001&reason=target%20says%20bye"
    seen = await trio.to_thread.run_sync(
        _drive, running.address.http_url, f"{target.url}/echo", close_url, shot
    )
    assert seen == {
        "browser close": 'closed: code 4000 reason "done here"',
        "target close": 'closed: code 4001 reason "target says bye"',
    }
    # What the target saw: the browser's frames, relayed untouched.
    first = target.connections[0]
    assert first.messages == ["hello through the relay", b"\xde\xad\xbe\xef"]
    assert (first.close_code, first.close_reason) == (4000, "done here")
    assert shot.stat().st_size > 10_000
