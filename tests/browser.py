"""A real browser for the page's tests: Debian's Chromium, headless, driven by Playwright's Python package (no
browser download), and a static server for a folder. As a script it takes the README's screenshot:

    python -m tests.browser SITE_DIR docs/demo.png      # SITE_DIR from `python export.py ... page=true`
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# as root in a sandbox, with no network: no sandbox, no GPU, and none of Chromium's own connections
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def static_server(folder: Path):
    """`python -m http.server` on a free localhost port, serving `folder`; yields its address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait()


@contextlib.contextmanager
def browser_page():
    """A fresh page in headless Chromium; its console errors are collected in `page.errors`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 1100})
            page.errors = []
            page.on("pageerror", lambda error: page.errors.append(str(error)))
            yield page
        finally:
            browser.close()


@contextlib.contextmanager
def served_page(site: Path, ready: bool = True):
    """The page of `site`, served on localhost and open in headless Chromium; with `ready`, once its model
    has loaded and its first samples are drawn."""
    with static_server(site) as address, browser_page() as page:
        page.goto(address)
        if ready:
            page.wait_for_selector("body[data-ready=true]", state="attached", timeout=60_000)
        yield page


def screenshot(site: Path, out: Path) -> None:
    """The page of `site` after a click on 7 and a drawn stroke, as a PNG."""
    with served_page(site) as page:
        page.click("#digits button[data-digit='7']")
        page.wait_for_selector("#samples[data-digit='7']")
        draw_stroke(page)
        page.wait_for_selector("#styles[data-digits]")
        page.screenshot(path=str(out), full_page=True)


def draw_stroke(page, points=((0.55, 0.2), (0.5, 0.5), (0.45, 0.8))) -> None:
    """A stroke through `points` (fractions of the drawing pad), drawn with the mouse."""
    page.locator("#pad").scroll_into_view_if_needed()  # the mouse reaches what the viewport shows
    box = page.locator("#pad").bounding_box()
    xy = [(box["x"] + u * box["width"], box["y"] + v * box["height"]) for u, v in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=8)
    page.mouse.up()


if __name__ == "__main__":
    screenshot(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"wrote {sys.argv[2]}")
