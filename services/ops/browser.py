"""Headless Chromium (Debian's `chromium`, which `make chromium` installs where missing) driven by Playwright for
Python, never a browser of Playwright's own: the report page's screenshot (`make demo`, `mieux report --screenshot`)
and the browser test (tests/e2e/test_report_browser.py).

Run as root in a container, with a fresh profile, with everything that would reach out turned off (this machine's
network is closed: without them Chromium's background connections are refused and logged as errors), and with
every request the page makes other than the page itself refused and recorded: a self-contained page makes none.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = (
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
WIDTH, HEIGHT = 1280, 900


class NoBrowser(RuntimeError):
    pass


def chromium() -> str:
    """The Chromium executable: `chromium` on the PATH, else /usr/bin/chromium."""
    for candidate in (shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).exists():
            return candidate
    raise NoBrowser("no Chromium: install Debian's (make chromium, or apt-get install -y chromium chromium-driver)")


@dataclass
class Visit:
    """What loading a page showed: its console messages by type, page errors, and the requests refused."""

    page: Any
    console: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def console_errors(self) -> list[str]:
        return [text for kind, text in self.console if kind == "error"] + self.errors


@contextmanager
def visit(
    url: str, *, width: int = WIDTH, height: int = HEIGHT, headers: dict[str, str] | None = None
) -> Iterator[Visit]:
    """`url` loaded in a fresh headless Chromium (sync Playwright: call it off an event loop's thread)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:  # a dev extra
        raise NoBrowser("Playwright for Python is not installed (pip install -e '.[dev]')") from e
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=list(FLAGS), headless=True)
        try:
            context = browser.new_context(viewport={"width": width, "height": height}, extra_http_headers=headers)
            page = context.new_page()
            seen = Visit(page)
            page.on("console", lambda m: seen.console.append((m.type, m.text)))
            page.on("pageerror", lambda e: seen.errors.append(str(e)))

            def route(r: Any) -> None:
                if r.request.url.split("?")[0] == url.split("?")[0] or r.request.url.startswith("data:"):
                    r.continue_()
                else:
                    seen.refused.append(r.request.url)
                    r.abort()

            context.route("**/*", route)
            page.goto(url, wait_until="load")
            yield seen
        finally:
            browser.close()


def screenshot(html: Path, png: Path, *, width: int = WIDTH, full_page: bool = True) -> Path:
    """A PNG of the page in `html` (the whole page, or the first screen)."""
    with visit(html.resolve().as_uri(), width=width) as v:
        v.page.screenshot(path=str(png), full_page=full_page)
    return png
