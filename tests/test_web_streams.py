"""Acceptance: the web page follows several tasks at once, each in its own card, with at most
four event streams open (browsers allow six connections per host); the other cards poll,
and every card hears its task end. A real Chromium against a real server without a worker,
so that the tasks wait until the test cancels them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from playwright.sync_api import Page, Request

from browser import Browser
from conftest import Server
from test_jobs_api import cancel
from web_helpers import assert_clean, generate, sign_in, wait_final

TASKS = 6
STREAM_LIMIT = 4


class RecordInfoCalls:
    """The page's recordInfo calls as they come and go: streams open now, the most open
    at once, and the tasks that were polled."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open: dict[Request, str] = {}
        self.most_open = 0
        self.streamed: set[str] = set()
        self.polled: set[str] = set()

    def watch(self, page: Page) -> None:
        page.on("request", self._started)
        page.on("requestfinished", self._ended)
        page.on("requestfailed", self._ended)

    def _started(self, request: Request) -> None:
        parts = urlsplit(request.url)
        if not parts.path.endswith("/api/v1/jobs/recordInfo"):
            return
        task_id = parse_qs(parts.query)["taskId"][0]
        with self._lock:
            if "text/event-stream" in request.headers.get("accept", ""):
                self.open[request] = task_id
                self.streamed.add(task_id)
                self.most_open = max(self.most_open, len(self.open))
            else:
                self.polled.add(task_id)

    def _ended(self, request: Request) -> None:
        with self._lock:
            self.open.pop(request, None)


def wait_until(page: Page, condition: Callable[[], bool], what: str) -> None:
    """Lets the page run until ``condition`` holds (a generous deadline, not a measure)."""
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what}")
        page.wait_for_timeout(100)


def test_at_most_four_streams_at_once_and_the_other_cards_poll(
    start_server: Callable[..., Server], browser: Browser
) -> None:
    server = start_server(run_worker=False)
    key = server.key()
    calls = RecordInfoCalls()

    def look(page: Page) -> dict[str, Any]:
        calls.watch(page)
        sign_in(page, key)
        cards = [generate(page, f"banana number {n}") for n in range(TASKS)]
        task_ids = [card.get_attribute("data-task-id") or "" for card in cards]
        wait_until(
            page,
            lambda: len(calls.open) == STREAM_LIMIT and len(calls.polled) == TASKS - STREAM_LIMIT,
            "four streams and two polling cards",
        )
        waiting = [card.locator(".state").inner_text() for card in cards]
        for task_id in task_ids:
            answer = cancel(server, key, {"taskId": task_id})
            assert answer["code"] == 200, answer
        ended = [(wait_final(card), card.locator(".frame-message").inner_text()) for card in cards]
        return {"task_ids": task_ids, "waiting": waiting, "ended": ended}

    visit = browser.visit(server.base_url + "/", look)
    seen = visit.result
    assert seen["waiting"] == ["waiting"] * TASKS
    assert calls.most_open == STREAM_LIMIT
    assert len(calls.streamed) >= STREAM_LIMIT
    assert calls.streamed | calls.polled == set(seen["task_ids"])
    # The polling cards heard of the cancel as the streaming ones did.
    assert seen["ended"] == [("fail", "Canceled.")] * TASKS
    assert_clean(visit)
