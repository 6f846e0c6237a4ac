"""Tokens: letters and digits only, every one of them equally likely."""

from __future__ import annotations

import collections
import string

from bananastand.ids import new_task_id, random_token


def test_tokens_have_the_length_asked_and_only_letters_and_digits() -> None:
    for length in (1, 16, 26, 64, 300):
        token = random_token(length)
        assert len(token) == length
        assert set(token) <= set(string.ascii_letters + string.digits)
    assert new_task_id().startswith("task_")
    assert len({new_task_id() for _ in range(1000)}) == 1000


def test_every_letter_and_digit_is_equally_likely() -> None:
    # 620,000 characters: 10,000 expected of each of the 62; the standard deviation is
    # ~100, so +-1,000 fails only for a real bias (e.g. the modulo bias of raw bytes, which
    # would give the first 8 letters ~1/4 more than the rest).
    counts = collections.Counter("".join(random_token(62) for _ in range(10_000)))
    assert len(counts) == 62
    assert all(9_000 < count < 11_000 for count in counts.values()), counts
