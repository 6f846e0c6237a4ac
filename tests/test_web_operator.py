"""Acceptance: the web page's Operator view, signed in with the admin token: credits it
grants show on the account page; maintenance it switches on shows its message in the
playground; model switches; the queue and live workers follow without a reload; the
token stays in the tab's sessionStorage. A real Chromium against the real server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import Page

from accounts_helpers import ADMIN_TOKEN, admin_ok, new_account
from browser import Browser
from conftest import Server, prompt_body
from web_helpers import (
    assert_clean,
    problem,
    scrolls_sideways,
    serious_violations,
    shoot,
    sign_in,
)

MESSAGE = "Back at 14:00 UTC <b>after</b> the upgrade"
#: An account name that would run a script if the page ever parsed it as HTML.
MARKUP_NAME = '<img src=x onerror="window.hacked = 1">studio'


def operator_sign_in(page: Page, token: str = ADMIN_TOKEN) -> None:
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in as operator").click()
    page.get_by_role("heading", name="Queue").wait_for()


def open_operator(page: Page) -> None:
    page.get_by_role("link", name="Operator").click()
    operator_sign_in(page)


def test_credits_granted_by_the_operator_show_on_the_account_page(
    start_server: Callable[..., Server], browser: Browser, tmp_path: Path
) -> None:
    server = start_server(live_provider="sandbox", admin_token=ADMIN_TOKEN)
    account_id, key = new_account(server, credits=10)

    def look(page: Page) -> dict[str, Any]:
        sign_in(page, key)
        open_operator(page)
        page.get_by_label("Account", exact=True).select_option(account_id)
        page.get_by_label("Amount (negative takes away)").fill("250")
        page.get_by_label("Note").fill("welcome")
        page.get_by_role("button", name="Grant").click()
        row = page.locator("tr", has=page.get_by_text(account_id, exact=True))
        row.get_by_role("cell", name="260", exact=True).wait_for()
        workers = page.get_by_role("table", name="Live workers")
        seen: dict[str, Any] = {
            "violations": serious_violations(page),
            "worker": workers.locator("tbody tr").all_inner_texts(),
        }
        shoot(page, tmp_path / "screenshots", "operator")
        page.set_viewport_size({"width": 375, "height": 812})
        seen["sideways"] = scrolls_sideways(page)
        page.get_by_role("link", name="Account").click()
        page.get_by_text("260 credits", exact=True).wait_for()
        seen["note"] = page.locator(".ledger tbody tr").first.inner_text()
        seen["stored"] = page.evaluate("() => ({...sessionStorage})")
        seen["local"] = page.evaluate("() => localStorage.length")
        return seen

    visit = browser.visit(server.base_url + "/", look)
    seen = visit.result
    assert seen["violations"] == []
    assert seen["sideways"] is False
    [worker] = seen["worker"]
    assert "serve" in worker
    assert "0 of " in worker  # tasks in flight of its concurrency
    assert "+250" in seen["note"]
    assert "welcome" in seen["note"]
    assert seen["stored"] == {"bananastand.apiKey": key, "bananastand.adminToken": ADMIN_TOKEN}
    assert seen["local"] == 0
    assert_clean(visit)


def test_maintenance_switched_on_shows_its_message_in_the_playground(
    start_server: Callable[..., Server], browser: Browser
) -> None:
    server = start_server(admin_token=ADMIN_TOKEN)
    key = server.key()

    def look(page: Page) -> dict[str, str]:
        sign_in(page, key)
        open_operator(page)
        page.get_by_label("Maintenance on").check()
        page.get_by_label("Message shown to clients").fill(MESSAGE)
        page.get_by_role("button", name="Save maintenance").click()
        page.get_by_text(f"On: {MESSAGE}", exact=True).wait_for()
        page.get_by_role("link", name="Playground").click()
        page.get_by_label("Prompt", exact=True).fill("a banana")
        page.get_by_role("button", name="Generate").click()
        return {"problem": problem(page)}

    visit = browser.visit(server.base_url + "/", look)
    assert visit.result == {"problem": f"The service is under maintenance: {MESSAGE}"}
    assert admin_ok(server, "GET", "/admin/switches")["maintenanceMessage"] == MESSAGE
    assert_clean(visit)


def test_accounts_keys_limits_and_model_switches_from_the_operator_view(
    start_server: Callable[..., Server], browser: Browser
) -> None:
    server = start_server(admin_token=ADMIN_TOKEN, run_worker=False)

    def look(page: Page) -> dict[str, Any]:
        # Signed out of any API key: the operator view alone.
        page.get_by_role("link", name="Operator view").click()
        page.get_by_label("Admin token").fill("not-the-token")
        page.get_by_role("button", name="Sign in as operator").click()
        refused = page.get_by_role("alert").filter(has_text="admin token").inner_text()
        operator_sign_in(page)
        page.get_by_label("New account name").fill(MARKUP_NAME)
        page.get_by_role("button", name="Create account").click()
        page.get_by_role("cell", name=MARKUP_NAME, exact=True).wait_for()
        page.get_by_label("Account", exact=True).select_option(
            label=page.locator("option", has_text="studio").first.inner_text()
        )
        page.get_by_label("Max waiting tasks").fill("3")
        page.get_by_label("Create rate").fill("5/minute")
        page.get_by_role("button", name="Save limits").click()
        page.get_by_role("cell", name="create 5/minute, 3 waiting").wait_for()
        page.get_by_label("Key name").fill("ci")
        page.get_by_label("Test key (sandbox, free)").check()
        page.get_by_role("button", name="Make key").click()
        made = page.locator(".made-key")
        made.get_by_text("bs_test_", exact=False).wait_for()
        page.get_by_label("Model", exact=True).fill("nano-banana-2")
        page.get_by_role("button", name="Switch off").click()
        switch_on = page.get_by_role("button", name="Switch nano-banana-2 on for everyone")
        switch_on.wait_for()
        return {
            "refused": refused,
            "made": made.inner_text(),
            "parsed": page.evaluate("() => document.querySelectorAll('.operator img').length"),
            "ran": page.evaluate("() => window.hacked !== undefined"),
        }

    visit = browser.visit(server.base_url + "/", look)
    seen = visit.result
    assert "admin token was refused" in seen["refused"]
    assert (seen["parsed"], seen["ran"]) == (0, False)
    [studio] = [a for a in admin_ok(server, "GET", "/admin/accounts") if a["name"] == MARKUP_NAME]
    assert (studio["maxWaiting"], studio["createRate"]) == (3, "5/minute")
    secret = seen["made"].rsplit(" ", 1)[-1]
    keys = admin_ok(server, "GET", f"/admin/accounts/{studio['id']}")["keys"]
    assert [(k["name"], k["kind"]) for k in keys] == [("ci", "test")]
    assert secret.startswith(keys[0]["prefix"])
    switches = admin_ok(server, "GET", "/admin/switches")
    assert switches["disabledModels"] == [{"model": "nano-banana-2", "accountId": None}]
    assert_clean(visit)


def test_the_queue_follows_new_tasks_without_a_reload(
    start_server: Callable[..., Server], browser: Browser
) -> None:
    server = start_server(admin_token=ADMIN_TOKEN, run_worker=False)
    key = server.key()
    server.create(key, prompt_body())

    def look(page: Page) -> dict[str, Any]:
        page.goto(server.base_url + "/#/operator")
        operator_sign_in(page)
        waiting = page.locator(".queue-waiting")
        first = waiting.inner_text()
        no_workers = page.get_by_text("No live workers", exact=False).is_visible()
        page.evaluate("() => { window.notReloaded = true; }")
        for _ in range(2):
            server.create(key, prompt_body())
        # Each refresh draws the numbers anew: ask the page, not an element found before.
        page.wait_for_function("() => document.querySelector('.queue-waiting').textContent === '3'")
        return {
            "first": first,
            "no_workers": no_workers,
            "same_page": page.evaluate("() => window.notReloaded === true"),
            "oldest": page.locator(".queue-oldest").inner_text(),
        }

    visit = browser.visit(server.base_url + "/", look)
    seen = visit.result
    assert (seen["first"], seen["no_workers"], seen["same_page"]) == ("1", True, True)
    assert seen["oldest"].endswith("ago)")
    assert_clean(visit)
