"""Acceptance: the web page is usable by everyone: axe-core finds no serious or critical
violation on any view, the keyboard alone takes a task from signing in to running it again
with the focus always visible, and at phone width (375 px) nothing scrolls sideways. A
real Chromium against the real server and its sandbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.sync_api import FileChooser, Page

from browser import Browser
from conftest import Server
from waiting import DEADLINE_S
from web_helpers import (
    assert_clean,
    generate,
    png,
    scrolls_sideways,
    serious_violations,
    shoot,
    sign_in,
    wait_final,
)

PROMPT = "a banana reading a map"
REFERENCE = {"name": "reference.png", "mimeType": "image/png", "buffer": png(240, 320)}

#: The name a person hears for the focused element (its aria-label, its label, its text).
FOCUSED = """() => {
  const el = document.activeElement;
  if (!el || el === document.body) return {name: '', visible: false};
  const name = el.getAttribute('aria-label') || el.labels?.[0]?.textContent || el.textContent;
  const style = getComputedStyle(el);
  return {name: (name || '').trim(), visible: style.outlineStyle !== 'none'
    && parseFloat(style.outlineWidth) > 0};
}"""


def tab_to(page: Page, name: str, *, back: bool = False) -> None:
    """Presses Tab (Shift+Tab with ``back``) until the focus is on what is called ``name``
    (or starts with it), checking on the way there that the focus can be seen."""
    for _ in range(80):
        page.keyboard.press("Shift+Tab" if back else "Tab")
        focused = page.evaluate(FOCUSED)
        if focused["name"].startswith(name):
            assert focused["visible"], f"the focus on {name!r} cannot be seen"
            return
    raise AssertionError(f"Tab never reached {name!r}")


def test_the_keyboard_alone_works_end_to_end(server: Server, browser: Browser) -> None:
    key = server.key()

    def look(page: Page) -> dict[str, Any]:
        # Listening from the start: the interception of file choosers is switched on by a
        # listener without waiting for the browser's answer, and a chooser opened before
        # it took effect was never reported (``expect_file_chooser`` timed out once in a
        # full run); by the time Space is pressed this one has long been in place.
        choosers: list[FileChooser] = []
        page.on("filechooser", lambda chooser: choosers.append(chooser))
        tab_to(page, "API key")
        page.keyboard.type(key)
        page.keyboard.press("Enter")
        page.get_by_role("heading", name="Playground").wait_for()
        tab_to(page, "Prompt")
        page.keyboard.type(PROMPT)
        tab_to(page, "Sandbox prompts")
        page.keyboard.press("Enter")
        popover = page.get_by_role("dialog", name="Sandbox prompts")
        popover.wait_for()
        page.keyboard.press("Escape")
        popover.wait_for(state="hidden")
        page.keyboard.press("Enter")
        tab_to(page, "Insert [sandbox:delay=MS]")
        page.keyboard.press("Enter")
        popover.wait_for(state="hidden")
        page.keyboard.type("1500")  # over the MS the insertion left selected
        tab_to(page, "Drop images here")
        page.keyboard.press("Space")
        for _ in range(int(DEADLINE_S * 10)):  # events arrive while Playwright is called
            if choosers:
                break
            page.wait_for_timeout(100)
        [chooser] = choosers
        chooser.set_files(REFERENCE)
        page.locator("li.thumb.ready").wait_for()
        tab_to(page, "Generate")
        page.keyboard.press("Enter")
        card = page.locator("article.card").first
        assert wait_final(card) == "success"
        tab_to(page, "Gallery", back=True)
        page.keyboard.press("Enter")
        page.get_by_role("img", name=f"{PROMPT} [sandbox:delay=1500]").wait_for()
        tab_to(page, PROMPT)
        page.keyboard.press("Enter")
        page.get_by_role("heading", name="Outputs").wait_for()
        tab_to(page, "Run again with changes")
        page.keyboard.press("Enter")
        page.get_by_role("heading", name="Playground").wait_for()
        return {
            "focused": page.evaluate(FOCUSED)["name"],
            "prompt": page.get_by_label("Prompt", exact=True).input_value(),
        }

    visit = browser.visit(server.base_url + "/", look)
    # "Run again with changes" filled the playground and left the focus in the prompt.
    assert visit.result == {"focused": "Prompt", "prompt": f"{PROMPT} [sandbox:delay=1500]"}
    assert_clean(visit)


def test_axe_finds_nothing_serious_on_any_view(server: Server, browser: Browser) -> None:
    key = server.key()

    def look(page: Page) -> dict[str, list[str]]:
        found = {"sign-in": serious_violations(page)}
        sign_in(page, key)
        page.get_by_label("Drop images here, or choose them:").set_input_files(REFERENCE)
        page.locator("li.thumb.ready").wait_for()
        assert wait_final(generate(page, PROMPT)) == "success"
        assert wait_final(generate(page, "[sandbox:fail=safety] a banana")) == "fail"
        found["playground"] = serious_violations(page)
        page.get_by_role("button", name="Sandbox prompts").click()
        found["sandbox prompts"] = serious_violations(page)
        page.keyboard.press("Escape")
        page.get_by_role("link", name="Gallery").click()
        page.get_by_role("img", name=PROMPT).wait_for()
        found["gallery"] = serious_violations(page)
        page.get_by_role("img", name=PROMPT).click()
        page.get_by_role("heading", name="Outputs").wait_for()
        found["task"] = serious_violations(page)
        return found

    visit = browser.visit(server.base_url + "/", look)
    assert visit.result == {
        "sign-in": [],
        "playground": [],
        "sandbox prompts": [],
        "gallery": [],
        "task": [],
    }
    assert_clean(visit)


def test_at_phone_width_nothing_scrolls_sideways(
    server: Server, browser: Browser, tmp_path: Path
) -> None:
    key = server.key()
    long_prompt = "an-unbroken-banana-prompt-" * 12

    def look(page: Page) -> dict[str, bool]:
        page.set_viewport_size({"width": 375, "height": 812})
        sideways = {"sign-in": scrolls_sideways(page)}
        sign_in(page, key)
        page.get_by_label("Drop images here, or choose them:").set_input_files(REFERENCE)
        page.locator("li.thumb.ready").wait_for()
        card = generate(page, long_prompt, aspect_ratio="21:9")
        assert wait_final(card) == "success"
        sideways["playground"] = scrolls_sideways(page)
        shoot(page, tmp_path / "screenshots", "phone-playground")
        page.get_by_role("link", name="Gallery").click()
        page.locator(".tile img").first.wait_for()
        sideways["gallery"] = scrolls_sideways(page)
        page.locator(".tile a").first.click()
        page.get_by_role("heading", name="Outputs").wait_for()
        sideways["task"] = scrolls_sideways(page)
        shoot(page, tmp_path / "screenshots", "phone-task")
        return sideways

    visit = browser.visit(server.base_url + "/", look)
    assert visit.result == {"sign-in": False, "playground": False, "gallery": False, "task": False}
    assert_clean(visit)
