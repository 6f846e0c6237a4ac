"""A headless Chromium for tests of the pages the server serves, cut off from the internet.

Playwright for Python drives the system's Chromium (Debian's ``chromium`` package);
Playwright's own browser downloads are never used. Every request whose host is not
loopback is aborted and recorded, so a page that still needs a CDN shows it.

The browser lives in a thread of its own. Playwright's sync API keeps its event loop
marked as running in the thread that drives it, where ``asyncio.run`` then refuses to
start (and the fixtures call it, to make keys): tests hand the thread a function to run
against the page (`Browser.visit`) and get its result back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser as PlaywrightBrowser
from playwright.sync_api import ConsoleMessage, Page, Playwright, Route, sync_playwright

T = TypeVar("T")

CHROMIUM = Path("/usr/bin/chromium")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
#: Playwright's calls wait this long (ms) for a page or an element before they fail.
TIMEOUT_MS = 30_000


@dataclass
class Visit(Generic[T]):
    """What a look at a page returned, and what the page tried that it was refused."""

    result: T
    #: Requests aborted because their host is not loopback.
    blocked: list[str] = field(default_factory=list)
    #: Uncaught exceptions in the page's scripts.
    errors: list[str] = field(default_factory=list)
    #: What the page logged as errors: a refused resource, a policy violation, a failed load.
    console_errors: list[str] = field(default_factory=list)


class Browser:
    def __init__(self, executable: Path) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="browser")
        self._playwright, self._chromium = self._thread.submit(_launch, executable).result()

    def visit(self, url: str, look: Callable[[Page], T]) -> Visit[T]:
        """Open ``url`` in a fresh page, return what ``look(page)`` returns (run in the
        browser's thread), and close the page."""
        return self._thread.submit(self._visit, url, look).result()

    def _visit(self, url: str, look: Callable[[Page], T]) -> Visit[T]:
        blocked: list[str] = []
        errors: list[str] = []
        console_errors: list[str] = []

        def loopback_only(route: Route) -> None:
            parts = urlsplit(route.request.url)
            if parts.scheme in ("data", "blob") or parts.hostname in LOOPBACK:
                route.continue_()
            else:
                blocked.append(route.request.url)
                route.abort("blockedbyclient")

        context = self._chromium.new_context()
        try:
            context.set_default_timeout(TIMEOUT_MS)
            context.route("**/*", loopback_only)
            page = context.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))

            def console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    console_errors.append(f"{message.text} ({message.location.get('url')})")

            page.on("console", console)
            page.goto(url)
            return Visit(look(page), blocked, errors, console_errors)
        finally:
            context.close()

    def close(self) -> None:
        def stop() -> None:
            self._chromium.close()
            self._playwright.stop()

        self._thread.submit(stop).result()
        self._thread.shutdown()


def _launch(executable: Path) -> tuple[Playwright, PlaywrightBrowser]:
    playwright = sync_playwright().start()
    # No sandbox: CI runs as root, where Chromium refuses to start with one.
    return playwright, playwright.chromium.launch(
        executable_path=str(executable), args=["--no-sandbox"]
    )


def browser_session() -> Iterator[Browser]:
    """The session's browser; without Chromium the test is skipped, or fails under CI
    (``CI`` set), which must never skip silently."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the browser tests")
        pytest.skip(reason)
    browser = Browser(CHROMIUM)
    try:
        yield browser
    finally:
        browser.close()
