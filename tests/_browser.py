"""Open an HTML file in Debian's headless Chromium (Playwright) and record what a person would see."""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not shutil.which("chromium"),
    reason="Debian's chromium is not installed (apt-get install -y chromium, or make install)",
)


@contextmanager
def open_page(path: Path):
    """Yield (page, seen): the loaded page with plotly drawn, and the console errors, requests and dialogs."""
    from playwright.sync_api import sync_playwright  # in the test extra; missing it is a failure, not a skip

    seen = {"errors": [], "requests": [], "dialogs": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: seen["errors"].append(str(e)))
            page.on("request", lambda r: seen["requests"].append(r.url))
            page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
            page.goto(path.resolve().as_uri(), wait_until="load")
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=20_000)
            yield page, seen
        finally:
            browser.close()


def visit(path: Path, screenshot: Path | None = None) -> dict:
    """What the page shows: plotly trace counts and body text, plus errors, requests and dialogs."""
    with open_page(path) as (page, seen):
        seen["traces"] = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].map(d => d.data.length)")
        seen["text"] = page.inner_text("body")
        if screenshot is not None:
            page.screenshot(path=str(screenshot), full_page=True)
    return seen
