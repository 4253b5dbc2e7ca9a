"""A real browser for page tests: Playwright driving Debian's chromium (Playwright's own browser
download is not reachable here), one context per user, screenshots in the run's output dir."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("HPCGATE_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("HPCGATE_SCREENSHOTS", "/var/tmp/hpcgate-screenshots"))


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium, closed at the end even when the test fails."""
    from playwright.sync_api import sync_playwright

    if not shutil.which(CHROMIUM):
        raise RuntimeError(f"{CHROMIUM} is missing: `make setup` installs Debian's chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def login(browser: Any, base_url: str, user: str, password: str, **context: Any) -> Any:
    """A page logged in as `user` through the hub's own login form."""
    page = browser.new_context(**context).new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{base_url}/hub/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("#login_submit")
    page.wait_for_url(lambda url: "/hub/login" not in url)  # home, or a running server
    return page


def shot(page: Any, name: str) -> Path:
    """Save a screenshot of `page` as SHOTS/name.png (never committed; CI keeps the directory)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
