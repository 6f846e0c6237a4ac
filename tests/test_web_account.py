"""Acceptance: the web page's Account view shows the balance, usage per day, the ledger (a
failed task's charge and its refund, each linking to the task) and the account's keys,
whose revoking on the page makes the key refused; the callback secret is revealed and
rotated. A real Chromium against the real server and its sandbox (live keys, charged)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from accounts_helpers import ADMIN_TOKEN, admin_ok, call, new_account
from browser import Browser
from conftest import Server, prompt_body
from test_web_quality import tab_to
from web_helpers import assert_clean, scrolls_sideways, serious_violations, shoot, sign_in

PRICE = 18


@pytest.fixture
def billed(start_server: Callable[..., Server]) -> Server:
    return start_server(live_provider="sandbox", admin_token=ADMIN_TOKEN)


def open_account(page: Page) -> None:
    page.get_by_role("link", name="Account").click()
    page.get_by_role("heading", name="Ledger").wait_for()
    page.locator(".account-view .ledger > *").wait_for()
    page.locator(".account-view .keys table").wait_for()


def ledger_rows(page: Page) -> list[list[str]]:
    rows: list[list[str]] = page.locator(".account-view .ledger tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    return rows


def test_the_account_shows_a_failed_tasks_charge_and_refund_linking_to_the_task(
    billed: Server, browser: Browser, tmp_path: Path
) -> None:
    _, key = new_account(billed, credits=100)
    done = billed.wait(key, billed.create(key, prompt_body("a banana"))["data"]["taskId"])
    task_id = billed.create(key, prompt_body("[sandbox:fail=upstream] a banana"))["data"]["taskId"]
    assert billed.wait(key, task_id)["state"] == "fail"

    def look(page: Page) -> dict[str, Any]:
        sign_in(page, key)
        open_account(page)
        # The balance is filled in when its request answers: read it once it says so.
        balance = page.locator(".balance", has_text="credits")
        balance.wait_for()
        seen: dict[str, Any] = {
            "balance": balance.inner_text(),
            "rows": [row[1:4] for row in ledger_rows(page)],
            "chart": page.get_by_role("img", name="Tasks per day").get_attribute("aria-label"),
            "bars": page.locator(".usage-chart rect").count(),
            "violations": serious_violations(page),
        }
        shoot(page, tmp_path / "screenshots", "account")
        page.set_viewport_size({"width": 375, "height": 812})
        seen["sideways"] = scrolls_sideways(page)
        shoot(page, tmp_path / "screenshots", "phone-account")
        page.get_by_role("link", name=task_id).first.click()
        page.get_by_role("heading", name="Outputs").wait_for()
        seen["opened"] = page.evaluate("() => location.hash")
        return seen

    visit = browser.visit(billed.base_url + "/", look)
    seen = visit.result
    assert seen["balance"] == f"{100 - PRICE} credits"
    assert seen["rows"] == [
        ["refund", f"+{PRICE}", task_id],
        ["charge", f"-{PRICE}", task_id],
        ["charge", f"-{PRICE}", done["taskId"]],
        ["grant", "+100", "—"],
    ]
    assert "2 tasks and 18 credits in the last 30 days" in seen["chart"]
    assert seen["bars"] == 30
    assert seen["violations"] == []
    assert seen["sideways"] is False
    assert seen["opened"] == f"#/task/{task_id}"
    assert_clean(visit)


def test_revoking_a_key_on_the_page_makes_it_answer_401(billed: Server, browser: Browser) -> None:
    account_id, key = new_account(billed)
    spare = admin_ok(billed, "POST", f"/admin/accounts/{account_id}/keys", {"name": "laptop"})
    assert call(billed, "GET", "/api/v1/chat/credit", spare["secret"]).json()["code"] == 200

    def look(page: Page) -> dict[str, Any]:
        sign_in(page, key)
        open_account(page)
        page.get_by_role("button", name=f"Revoke key {spare['prefix']}…").click()
        row = page.locator("tr", has_text="laptop")
        row.get_by_text("revoked", exact=False).wait_for()
        still_signed_in = page.get_by_role("heading", name="Account").is_visible()
        # Revoking the key the tab signed in with signs the tab out.
        page.get_by_role("button", name="(the key you signed in with)").click()
        page.get_by_role("heading", name="Sign in").wait_for()
        return {"still_signed_in": still_signed_in, "buttons": row.get_by_role("button").count()}

    visit = browser.visit(billed.base_url + "/", look)
    assert visit.result == {"still_signed_in": True, "buttons": 0}
    for revoked in (spare["secret"], key):
        answer = call(billed, "GET", "/api/v1/chat/credit", revoked).json()
        assert (answer["code"], answer["msg"]) == (401, "unknown, revoked or expired API key")
    assert_clean(visit)


def test_the_callback_secret_is_hidden_until_revealed_and_rotates(
    billed: Server, browser: Browser
) -> None:
    _, key = new_account(billed)
    before = call(billed, "GET", "/api/v1/account/webhook-secret", key).json()["data"]["secret"]

    def look(page: Page) -> dict[str, Any]:
        sign_in(page, key)
        open_account(page)
        secret = page.locator(".secret-value")
        hidden = secret.inner_text()
        page.get_by_role("button", name="Reveal").click()
        revealed = secret.inner_text()
        page.get_by_role("button", name="Rotate").click()
        page.get_by_text("The previous secret still signs callbacks").wait_for()
        page.get_by_role("button", name="Reveal").click()
        return {"hidden": hidden, "revealed": revealed, "rotated": secret.inner_text()}

    visit = browser.visit(billed.base_url + "/", look)
    seen = visit.result
    assert before not in seen["hidden"]
    assert seen["revealed"] == before
    after = call(billed, "GET", "/api/v1/account/webhook-secret", key).json()["data"]
    assert seen["rotated"] == after["secret"] != before
    assert after["previousSecret"] == before
    assert_clean(visit)


def test_the_keyboard_alone_reveals_the_secret_and_revokes_a_key(
    billed: Server, browser: Browser
) -> None:
    account_id, key = new_account(billed)
    spare = admin_ok(billed, "POST", f"/admin/accounts/{account_id}/keys", {"name": "phone"})

    def look(page: Page) -> dict[str, Any]:
        sign_in(page, key)
        tab_to(page, "Account")
        page.keyboard.press("Enter")
        page.locator(".account-view .keys table").wait_for()
        tab_to(page, f"Revoke key {spare['prefix']}…")
        page.keyboard.press("Enter")
        page.locator("tr", has_text="phone").get_by_text("revoked", exact=False).wait_for()
        tab_to(page, "Reveal")
        page.keyboard.press("Enter")
        return {"pressed": page.get_by_role("button", name="Hide").get_attribute("aria-pressed")}

    visit = browser.visit(billed.base_url + "/", look)
    assert visit.result == {"pressed": "true"}
    answer = call(billed, "GET", "/api/v1/chat/credit", spare["secret"]).json()
    assert answer["code"] == 401
    assert_clean(visit)
