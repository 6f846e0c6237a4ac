"""Acceptance: the web page's gallery lists the account's tasks newest first, a page at a
time, filtered by state and by model, and "use as reference" takes a result back into the
playground. A real Chromium against the real server and its sandbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from playwright.sync_api import Page

from browser import Browser
from conftest import Server, prompt_body
from test_jobs_api import list_page
from web_helpers import assert_clean, generate, shoot, sign_in, wait_final

PAGE_SIZE = 24


def tiles(page: Page) -> list[str]:
    """The task ids of the gallery's tiles, in the order shown."""
    ids: list[str] = page.locator(".tile").evaluate_all("tiles => tiles.map(t => t.dataset.taskId)")
    return ids


def shown(page: Page, count: int) -> list[str]:
    page.get_by_text(f"{count} task{'s' if count != 1 else ''} shown", exact=True).wait_for()
    return tiles(page)


def test_the_gallery_pages_newest_first_and_filters_by_state_and_model(
    server: Server, browser: Browser, tmp_path: Path
) -> None:
    key = server.key()
    bodies = [prompt_body(f"banana {n}") for n in range(PAGE_SIZE - 3)]
    bodies += [prompt_body(f"[sandbox:fail=input] banana {n}") for n in range(3)]
    bodies += [{**prompt_body(f"light banana {n}"), "model": "nano-banana-2"} for n in range(2)]
    made = [server.create(key, body)["data"]["taskId"] for body in bodies]
    for task_id in made:
        server.wait(key, task_id)
    newest_first = made[::-1]

    def look(page: Page) -> dict[str, Any]:
        sign_in(page, key)
        page.get_by_role("link", name="Gallery").click()
        first_page = shown(page, PAGE_SIZE)
        page.wait_for_function(
            "() => [...document.querySelectorAll('.tile img')].every(img => img.complete)"
        )
        shoot(page, tmp_path / "screenshots", "gallery")
        page.get_by_role("button", name="Show more").click()
        everything = shown(page, len(made))
        more_after_the_end = page.get_by_role("button", name="Show more").is_visible()
        gallery = page.get_by_role("region", name="Gallery")
        gallery.get_by_label("State").select_option("fail")
        failed = shown(page, 3)
        placeholders = page.locator(".tile-placeholder").all_inner_texts()
        gallery.get_by_label("State").select_option("")
        gallery.get_by_label("Model").select_option("nano-banana-2")
        light = shown(page, 2)
        return {
            "first_page": first_page,
            "everything": everything,
            "more": more_after_the_end,
            "failed": failed,
            "placeholders": placeholders,
            "light": light,
        }

    visit = browser.visit(server.base_url + "/", look)
    seen = visit.result
    assert seen["first_page"] == newest_first[:PAGE_SIZE]
    assert seen["everything"] == newest_first
    assert seen["more"] is False
    assert seen["failed"] == made[PAGE_SIZE - 3 : PAGE_SIZE][::-1]
    assert seen["placeholders"] == ["failed"] * 3
    assert seen["light"] == made[-2:][::-1]
    assert_clean(visit)


def test_use_as_reference_sends_a_result_into_the_next_task(
    server: Server, browser: Browser
) -> None:
    key = server.key()

    def look(page: Page) -> dict[str, Any]:
        sign_in(page, key)
        assert wait_final(generate(page, "a banana to build on")) == "success"
        page.get_by_role("link", name="Details").click()
        page.get_by_role("button", name="Use as reference").click()
        page.get_by_role("heading", name="Playground").wait_for()
        reference = page.locator("li.thumb.ready img")
        reference.wait_for()
        count = page.locator(".references .count").inner_text()
        card = generate(page, "the same banana, in a hat")
        assert wait_final(card) == "success"
        return {"count": count, "task_id": card.get_attribute("data-task-id")}

    visit = browser.visit(server.base_url + "/", look)
    assert visit.result["count"] == "(1 / 8)"
    second = server.record(key, visit.result["task_id"])["data"]
    first = list_page(server, key)["data"]["items"][1]
    used = json.loads(second["param"])["input"]["image_input"]
    assert used == json.loads(first["resultJson"])["resultUrls"]
    assert_clean(visit)
