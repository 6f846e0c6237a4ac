"""Driving the web page in the browser tests as a person would: by labels, roles and keys.

Everything here runs in the browser's thread (inside a `Browser.visit` look): keys and
accounts are made before the visit, since making a key runs an event loop of its own.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

from axe_playwright_python.sync_playwright import Axe
from PIL import Image
from playwright.sync_api import Locator, Page

from browser import Visit

#: The states a card can show, in the order a task goes through them.
LIFECYCLE = ["waiting", "queuing", "generating", "done", "failed"]


def assert_clean(visit: Visit[Any]) -> None:
    """The page asked for nothing beyond loopback, threw nothing and logged no error (a
    policy violation, a failed load)."""
    assert visit.blocked == []
    assert visit.errors == []
    assert visit.console_errors == []


def png(width: int = 300, height: int = 200, color: tuple[int, int, int] = (30, 160, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def sign_in(page: Page, key: str) -> None:
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Playground").wait_for()


def sign_out(page: Page) -> None:
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("heading", name="Sign in").wait_for()


def choose(page: Page, **choices: str) -> None:
    """``choose(page, aspect_ratio="16:9")`` picks from the select labelled "Aspect ratio"."""
    for name, value in choices.items():
        page.get_by_label(name.replace("_", " ").capitalize(), exact=True).select_option(value)


def generate(page: Page, prompt: str, **choices: str) -> Locator:
    """Sends a task from the playground; returns its card (the last one)."""
    before = page.locator("article.card").count()
    page.get_by_label("Prompt", exact=True).fill(prompt)
    choose(page, **choices)
    page.get_by_role("button", name="Generate").click()
    card = page.locator("article.card").nth(before)
    card.wait_for()
    return card


def problem(page: Page) -> str:
    """The playground's refusal, once it shows one."""
    alert = page.locator(".playground-form [role=alert]")
    page.wait_for_function("el => el.textContent.trim() !== ''", arg=alert.element_handle())
    return alert.inner_text()


def wait_final(card: Locator) -> str:
    """Waits for the card's task to end; returns its state (success or fail)."""
    card.page.wait_for_function(
        "card => ['success', 'fail'].includes(card.dataset.state)", arg=card.element_handle()
    )
    state: str = card.get_attribute("data-state") or ""
    return state


def record_card_states(page: Page) -> None:
    """From now on, every text the cards' state lines show is kept in ``window.seenStates``
    (with the elapsed time), however briefly it was shown."""
    page.evaluate(
        """() => {
        window.seenStates = [];
        const keep = () => {
          for (const line of document.querySelectorAll('.card-state')) {
            const text = line.textContent;
            if (window.seenStates.at(-1) !== text) window.seenStates.push(text);
          }
        };
        new MutationObserver(keep).observe(document.querySelector('.cards'),
          {subtree: true, childList: true, characterData: true});
      }"""
    )


def seen_states(page: Page) -> list[str]:
    states: list[str] = page.evaluate("() => window.seenStates")
    return states


def in_lifecycle_order(states: list[str]) -> bool:
    positions = [LIFECYCLE.index(state) for state in states]
    return positions == sorted(positions)


def measure_layout_shift(page: Page) -> None:
    """From now on, the layout-shift entries Chromium reports add up in ``window.shifted``."""
    page.evaluate(
        """() => {
        window.shifted = 0;
        new PerformanceObserver(list => {
          for (const entry of list.getEntries()) window.shifted += entry.value;
        }).observe({type: 'layout-shift'});
      }"""
    )


def layout_shift(page: Page) -> float:
    # Entries are delivered after the frame they belong to: one more frame first.
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => setTimeout(done, 0)))")
    shifted: float = page.evaluate("() => window.shifted")
    return shifted


def scrolls_sideways(page: Page) -> bool:
    result: bool = page.evaluate(
        "() => document.documentElement.scrollWidth > document.documentElement.clientWidth"
    )
    return result


def serious_violations(page: Page) -> list[str]:
    """axe-core's serious and critical findings on the page as it is now."""
    results = Axe().run(page)
    return [
        f"{violation['id']} ({violation['impact']}): "
        + json.dumps([node["target"] for node in violation["nodes"]])
        for violation in results.response["violations"]
        if violation["impact"] in ("serious", "critical")
    ]


def image_size(image: Locator) -> tuple[int, int]:
    """The natural size of a loaded image (waits for it to load)."""
    image.page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
    )
    width, height = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    return width, height


def shoot(page: Page, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def elapsed_seconds(state_text: str) -> int | None:
    """``generating · 3 s`` -> 3."""
    found = re.search(r"· (\d+) s$", state_text)
    return int(found.group(1)) if found else None
