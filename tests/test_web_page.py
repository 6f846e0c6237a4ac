"""Acceptance: the web page at ``/`` in a real Chromium against the real server and its
sandbox: signing in, generating with a reference image and following the task live to its
result, finding it in the gallery, opening it and resending its callback. The screenshots
the tests take land in the test's folder (``screenshots/``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from browser import Browser
from conftest import Server
from receiver import Receiver
from web_helpers import (
    assert_clean,
    elapsed_seconds,
    image_size,
    in_lifecycle_order,
    layout_shift,
    measure_layout_shift,
    png,
    record_card_states,
    seen_states,
    shoot,
    sign_in,
    wait_final,
)

LOOPBACK = ["127.0.0.1"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver()
    yield started
    started.close()


def test_a_task_from_sign_in_to_its_resent_callback(
    start_server: Callable[..., Server], browser: Browser, receiver: Receiver, tmp_path: Path
) -> None:
    server = start_server(allow_private_networks=LOOPBACK)
    key = server.key()
    prompt = "a banana surfing at dawn [sandbox:delay=4000]"
    shots = tmp_path / "screenshots"

    def look(page: Page) -> dict[str, Any]:
        sign_in(page, key)
        assert page.locator(".badge").inner_text() == "sandbox"
        page.get_by_label("Drop images here, or choose them:").set_input_files(
            {"name": "reference.png", "mimeType": "image/png", "buffer": png(300, 200)}
        )
        page.locator("li.thumb.ready").wait_for()
        assert page.get_by_role("img", name="Reference 1: reference.png").is_visible()
        page.get_by_label("Aspect ratio").select_option("16:9")
        page.get_by_label("Resolution").select_option("2K")
        summary = page.locator(".summary").inner_text()
        page.get_by_text("Callback", exact=True).click()
        page.get_by_label("Callback URL").fill(receiver.url)
        page.get_by_label("Prompt", exact=True).fill(prompt)
        record_card_states(page)
        page.get_by_role("button", name="Generate").click()
        card = page.locator("article.card").first
        card.wait_for()
        measure_layout_shift(page)
        assert wait_final(card) == "success"
        shift = layout_shift(page)
        result = card.get_by_role("img", name=prompt)
        natural = image_size(result)
        links = {
            name: card.get_by_role("link", name=name).get_attribute("href")
            for name in ("Download", "Open full size")
        }
        shoot(page, shots, "playground")

        page.get_by_role("link", name="Gallery").click()
        thumbnail = page.get_by_role("img", name=prompt)
        thumbnail_size = image_size(thumbnail)
        shoot(page, shots, "gallery")

        thumbnail.click()
        page.get_by_role("heading", name="Outputs").wait_for()
        shown_prompt = page.locator(".prompt-text").inner_text()
        facts = page.locator(".facts").all_inner_texts()
        inputs = page.get_by_role("img", name="Reference 1").count()
        page.locator("table.attempts tbody tr").first.wait_for()
        served_by = page.locator(".callback-upstream").inner_text()
        page.get_by_role("button", name="Resend callback").click()
        page.get_by_text("Sent again").wait_for()
        # The new attempt shows up in the table once the server has made it.
        page.locator("table.attempts tbody tr").nth(1).wait_for()
        shoot(page, shots, "task")
        return {
            "summary": summary,
            "states": seen_states(page),
            "shift": shift,
            "natural": natural,
            "links": links,
            "thumbnail": thumbnail_size,
            "prompt": shown_prompt,
            "facts": "\n".join(facts),
            "inputs": inputs,
            "served_by": served_by,
            "url": page.url,
            "session": page.evaluate("() => Object.keys(sessionStorage)"),
        }

    visit = browser.visit(server.base_url + "/", look)
    seen = visit.result
    assert_clean(visit)

    assert "Output: 16:9 · 2K → 2752×1536" in seen["summary"]
    assert "Price: free (test key)" in seen["summary"]
    states = [text.split(" · ")[0] for text in seen["states"]]
    assert states[-1] == "done"
    assert in_lifecycle_order(states), states
    # Live, without a reload: the card showed the task generating, with its time running.
    generating = [text for text in seen["states"] if text.startswith("generating")]
    assert any((elapsed_seconds(text) or 0) >= 1 for text in generating), seen["states"]
    assert seen["shift"] < 0.01
    assert seen["natural"] == (2752, 1536)
    links = seen["links"]
    assert links["Download"] == links["Open full size"]
    assert links["Download"].startswith(server.base_url + "/files/")
    width, height = seen["thumbnail"]
    assert max(width, height) <= 256
    assert seen["prompt"] == prompt
    for fact in ("16:9", "2K", "png", receiver.url):
        assert fact in seen["facts"]
    assert seen["inputs"] == 1
    assert seen["served_by"] == "Served by upstream sandbox"  # the callback log's
    assert seen["url"].startswith(server.base_url + "/#/task/")
    assert seen["session"] == ["bananastand.apiKey"]

    delivered = receiver.wait_for(2)
    assert delivered[0].headers["webhook-id"] == delivered[1].headers["webhook-id"]
