"""Acceptance: what keeps the web page safe. Its responses carry a Content-Security-Policy
of its own (scripts only from the server, named by a fresh nonce; no inline styles); what
people typed is shown as text, never run; the API key stays in the tab's sessionStorage
and leaves only as the Bearer header of the page's API calls. Real server, real HTTP, a
real Chromium."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import Page, Request

from browser import Browser
from conftest import Server
from web_helpers import assert_clean, generate, sign_in, sign_out, wait_final

POLICY = [
    "default-src 'self'",
    "script-src 'self' 'nonce-{nonce}'",
    "style-src 'self'",
    "img-src 'self' data: blob: {origin}",
    "connect-src 'self'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
    "form-action 'self'",
    "object-src 'none'",
]


def test_the_page_carries_its_own_policy_with_a_fresh_nonce(server: Server) -> None:
    nonces = []
    for _ in range(2):
        response = server.client.get("/")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["cache-control"] == "no-store"
        policy = response.headers["content-security-policy"]
        assert "unsafe-inline" not in policy
        nonce = re.search(r"'nonce-([A-Za-z0-9_-]{20,})'", policy)
        assert nonce is not None, policy
        nonces.append(nonce.group(1))
        expected = [part.format(nonce=nonce.group(1), origin=server.base_url) for part in POLICY]
        assert policy.split("; ") == expected
        # The one script the shell names carries the nonce; nothing inline.
        scripts = re.findall(r"<script\b[^>]*>", response.text)
        assert scripts == [f'<script type="module" src="assets/app.js" nonce="{nonce.group(1)}">']
        assert "style=" not in response.text
    assert nonces[0] != nonces[1]
    module = server.client.get("/assets/app.js")
    assert module.status_code == 200
    assert module.headers["content-type"].startswith("text/javascript")
    assert module.headers["cache-control"] == "no-cache"
    assert "content-security-policy" not in server.client.get("/api/v1/chat/credit").headers


def test_prompts_are_shown_as_text_and_never_run(server: Server, browser: Browser) -> None:
    key = server.key()
    prompt = '<img src=x onerror="window.pwned=1"> "quoted" & <b>bold</b>'

    def look(page: Page) -> dict[str, Any]:
        sign_in(page, key)
        card = generate(page, prompt)
        assert wait_final(card) == "success"
        in_card = card.locator(".card-prompt").inner_text()
        page.get_by_role("link", name="Gallery").click()
        tile = page.locator(".tile-prompt").first
        tile.wait_for()
        in_gallery = tile.inner_text()
        tile.click()
        shown = page.locator(".prompt-text")
        shown.wait_for()
        return {
            "card": in_card,
            "gallery": in_gallery,
            "task": shown.inner_text(),
            "injected": page.locator("img[src=x], b").count(),
            "ran": page.evaluate("() => window.pwned === undefined ? null : window.pwned"),
        }

    visit = browser.visit(server.base_url + "/", look)
    assert visit.result == {
        "card": prompt,
        "gallery": prompt,
        "task": prompt,
        "injected": 0,
        "ran": None,
    }
    assert_clean(visit)


def test_the_key_stays_in_the_tab_and_goes_out_only_as_the_bearer_header(
    server: Server, browser: Browser
) -> None:
    key = server.key()
    api_calls: list[Request] = []

    def look(page: Page) -> dict[str, Any]:
        page.on("request", lambda request: api_calls.append(request))
        page.get_by_label("API key").fill("bs_test_" + "x" * 40)
        page.get_by_role("button", name="Sign in").click()
        refused = page.get_by_role("alert").filter(has_text="This API key was refused")
        refused_text = refused.inner_text()
        stored_after_refusal = page.evaluate("() => sessionStorage.length")
        sign_in(page, key)
        kept = {
            "session": page.evaluate("() => ({...sessionStorage})"),
            "local": page.evaluate("() => localStorage.length"),
            "cookie": page.evaluate("() => document.cookie"),
            "cookies": page.context.cookies(),
            "url": page.url,
        }
        page.reload()  # the tab keeps its sessionStorage: still signed in
        page.get_by_role("heading", name="Playground").wait_for()
        sign_out(page)
        page.reload()
        page.get_by_role("heading", name="Sign in").wait_for()
        return {
            "refused": refused_text,
            "stored_after_refusal": stored_after_refusal,
            "kept": kept,
            "after_sign_out": page.evaluate("() => sessionStorage.length"),
        }

    visit = browser.visit(server.base_url + "/", look)
    seen = visit.result
    assert seen["refused"].startswith("This API key was refused (")
    assert seen["stored_after_refusal"] == 0
    assert seen["kept"] == {
        "session": {"bananastand.apiKey": key},
        "local": 0,
        "cookie": "",
        "cookies": [],
        "url": server.base_url + "/",
    }
    assert seen["after_sign_out"] == 0
    api = [request for request in api_calls if "/api/" in request.url]
    assert api, "the page made no API call"
    for request in api:
        assert key not in request.url
        assert request.headers.get("authorization", "").startswith("Bearer bs_test_")
    assert any(request.headers["authorization"] == f"Bearer {key}" for request in api)
    assert all(
        "authorization" not in request.headers for request in api_calls if request not in api
    )
    assert_clean(visit)
