"""Acceptance: the web page says what went wrong in plain words: not enough credits (with
the balance and the price), a rate limit (with the wait), maintenance (with the operator's
message), a model switched off, a field the server refused, a failed task. A real
Chromium against the real server; live keys run on the sandbox."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from playwright.sync_api import Page

from accounts_helpers import ADMIN_TOKEN, admin_ok, new_account
from browser import Browser
from conftest import Server
from web_helpers import assert_clean, generate, problem, sign_in, sign_out, wait_final


def test_refusals_and_failures_are_told_in_plain_words(
    start_server: Callable[..., Server], browser: Browser
) -> None:
    server = start_server(live_provider="sandbox", admin_token=ADMIN_TOKEN)
    _, poor = new_account(server, credits=10)
    limited_account, limited = new_account(server, credits=100)
    admin_ok(server, "POST", f"/admin/accounts/{limited_account}/limits", {"createRate": "1/hour"})
    tester_account, tester = new_account(server, test=True)

    def look(page: Page) -> dict[str, Any]:
        told: dict[str, Any] = {}
        sign_in(page, poor)
        page.locator(".credits").get_by_text("Credits: 10").wait_for()
        generate_refused(page, "a banana")
        told["402"] = problem(page)
        sign_out(page)

        sign_in(page, limited)
        assert wait_final(generate(page, "the first banana")) == "success"
        generate_refused(page, "a second banana")
        told["429"] = problem(page)
        sign_out(page)

        sign_in(page, tester)
        told["fail"] = failed_card_text(page, "a banana [sandbox:fail=safety]")
        generate_refused(page, "b" * 10_001)
        told["422"] = problem(page)
        told["422 invalid"] = page.get_by_label("Prompt", exact=True).get_attribute("aria-invalid")
        told["counter"] = page.locator(".counter").get_attribute("class")
        admin_ok(
            server,
            "POST",
            "/admin/models/nano-banana-pro",
            {"enabled": False, "accountId": tester_account},
        )
        generate_refused(page, "a switched-off banana")
        told["505"] = problem(page)
        admin_ok(server, "POST", "/admin/maintenance", {"on": True, "message": "back at noon"})
        generate_refused(page, "a banana during maintenance")
        told["455"] = problem(page)
        return told

    visit = browser.visit(server.base_url + "/", look)
    told = visit.result
    assert told["402"] == "Not enough credits: balance 10, this costs 18."
    wait = re.fullmatch(r"Too many requests: try again in (\d+) s\.", told["429"])
    assert wait is not None, told["429"]
    assert 0 < int(wait.group(1)) <= 3600
    assert told["fail"] == (
        "Failed: blocked by the safety filters. sandbox: blocked by safety filters (IMAGE_SAFETY)"
    )
    assert told["422"] == "Prompt: nano-banana-pro takes at most 10000 characters"
    assert told["422 invalid"] == "true"
    assert "over" in told["counter"]
    assert told["505"] == (
        "Not available here: model nano-banana-pro is disabled on this server for now."
    )
    assert told["455"] == "The service is under maintenance: back at noon"
    assert_clean(visit)


def generate_refused(page: Page, prompt: str) -> None:
    """Clicks Generate; the page clears its last refusal as it sends, so `problem` reads
    the answer to this one."""
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_role("button", name="Generate").click()


def failed_card_text(page: Page, prompt: str) -> str:
    card = generate(page, prompt)
    assert wait_final(card) == "fail"
    return card.locator(".frame-message").inner_text()


def test_a_key_that_may_use_no_model_is_told_why(
    start_server: Callable[..., Server], browser: Browser
) -> None:
    """Live keys on a server given no provider for them (and no Google credentials)."""
    server = start_server(live_provider="auto", admin_token=ADMIN_TOKEN)
    _, live = new_account(server, credits=100)

    def look(page: Page) -> str:
        sign_in(page, live)
        return page.locator(".playground .problem").inner_text()

    visit = browser.visit(server.base_url + "/", look)
    assert visit.result.startswith("This key may use no model on this server right now")
    assert_clean(visit)
