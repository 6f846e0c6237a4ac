"""Unit: which URLs `LinkSigner` takes for its own, wherever they were handed out."""

from __future__ import annotations

import pytest

from bananastand.storage.links import LinkSigner

SECRET = b"a secret of sixteen bytes or more"
NOW = 1_800_000_000


def signer(public_url: str = "https://img.example/banana") -> LinkSigner:
    return LinkSigner(SECRET, public_url, clock=lambda: NOW)


def test_a_link_made_for_another_public_url_is_still_ours() -> None:
    old = signer("http://127.0.0.1:8000").url("results/task_x/a b.png", NOW + 60)
    now = signer()
    assert now.parse(old) == "results/task_x/a b.png"
    assert now.is_ours(old)
    assert now.url("results/task_x/a b.png", NOW + 60).startswith(
        "https://img.example/banana/files/"
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://elsewhere.example/files/1900000000/" + "A" * 32 + "/results/x.png",  # forged
        "https://elsewhere.example/pictures/cat.png",
        "https://elsewhere.example/files/cat.png",
        "http://[::1/files/x",  # not a URL
        "",
    ],
)
def test_other_urls_are_not(url: str) -> None:
    assert signer().parse(url, allow_expired=True) is None
    assert not signer().is_ours(url)


def test_under_our_own_prefix_every_url_is_ours_authentic_or_not() -> None:
    """So that a bad link of ours fails as ours, and is never fetched over HTTP."""
    assert signer().is_ours("https://img.example/banana/files/nonsense")
    assert signer().parse("https://img.example/banana/files/nonsense") is None


def test_an_expired_link_parses_only_when_asked() -> None:
    expired = signer().url("uploads/acct/x.png", NOW - 1)
    assert signer().parse(expired) is None
    assert signer().parse(expired, allow_expired=True) == "uploads/acct/x.png"
    tampered = expired.replace("/x.png", "/y.png")
    assert signer().parse(tampered, allow_expired=True) is None
