"""Acceptance: the playground's reference images: dropped files and picked ones are uploaded
through the upload API, links are taken as they are, each shows a thumbnail with a remove
button, and no more than the model allows are kept. A real Chromium against the real
server and its sandbox."""

from __future__ import annotations

import base64
import json
from typing import Any

from playwright.sync_api import Page

from browser import Browser
from conftest import Server
from test_files_api import stream_upload, uploaded
from web_helpers import assert_clean, generate, png, sign_in, wait_final

LIMIT = 8  # nano-banana-pro's


def drop(page: Page, files: list[tuple[str, bytes]]) -> None:
    """Drops files on the drop zone, as a person dragging them from their desktop does."""
    encoded = [(name, base64.b64encode(data).decode()) for name, data in files]
    transfer = page.evaluate_handle(
        """files => {
        const transfer = new DataTransfer();
        for (const [name, data] of files) {
          const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
          transfer.items.add(new File([bytes], name, {type: 'image/png'}));
        }
        return transfer;
      }""",
        encoded,
    )
    zone = page.locator(".drop-zone")
    zone.dispatch_event("dragover", {"dataTransfer": transfer})
    zone.dispatch_event("drop", {"dataTransfer": transfer})


def thumbnails(page: Page) -> list[str]:
    """The alternative texts of the reference thumbnails, once none is uploading."""
    page.wait_for_function("() => !document.querySelector('li.thumb.uploading')")
    names: list[str] = page.locator("li.thumb img").evaluate_all("imgs => imgs.map(i => i.alt)")
    return names


def test_dropped_files_and_links_up_to_the_models_limit(server: Server, browser: Browser) -> None:
    key = server.key()
    link = uploaded(stream_upload(server, key, png(64, 64)))["downloadUrl"]
    # Two, then seven more into the six places left.
    files = [(f"drop-{n}.png", png(50 + n, 40)) for n in range(LIMIT + 1)]

    def look(page: Page) -> dict[str, Any]:
        sign_in(page, key)
        seen: dict[str, Any] = {}
        drop(page, files[:2])
        seen["dropped"] = thumbnails(page)
        page.get_by_label("Image URL").fill(link)
        page.get_by_role("button", name="Add URL").click()
        seen["linked"] = thumbnails(page)
        page.get_by_role("button", name="Remove reference 1 (drop-0.png)").click()
        seen["removed"] = thumbnails(page)
        drop(page, files[2:])
        seen["full"] = thumbnails(page)
        seen["count"] = page.locator(".references .count").inner_text()
        seen["refusal"] = page.locator(".references .field-error").inner_text()
        seen["url disabled"] = page.get_by_label("Image URL").is_disabled()
        page.get_by_label("Model").select_option("google/nano-banana")
        seen["text-only hides them"] = page.locator(".references").is_hidden()
        page.get_by_label("Model").select_option("nano-banana-pro")
        card = generate(page, "a banana made of eight others")
        assert wait_final(card) == "success"
        seen["task_id"] = card.get_attribute("data-task-id")
        return seen

    visit = browser.visit(server.base_url + "/", look)
    seen = visit.result
    assert seen["dropped"] == ["Reference 1: drop-0.png", "Reference 2: drop-1.png"]
    assert seen["linked"][2].startswith("Reference 3: ")
    assert seen["removed"] == ["Reference 1: drop-1.png", seen["linked"][2].replace("3", "2", 1)]
    assert len(seen["full"]) == LIMIT
    assert seen["count"] == f"({LIMIT} / {LIMIT})"
    assert seen["refusal"] == f"This model takes at most {LIMIT} reference images."
    assert seen["url disabled"] is True
    assert seen["text-only hides them"] is True
    param = json.loads(server.record(key, seen["task_id"])["data"]["param"])
    images = param["input"]["image_input"]
    assert len(images) == LIMIT
    assert images[1] == link
    assert all(url.startswith(server.base_url + "/files/") for url in images)
    assert_clean(visit)
