"""Unit: tokens: letters and digits only, every one of them equally likely."""

from __future__ import annotations

import collections
import string
import time

from bananastand.ids import _sortable_time, new_task_id, random_token


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


def test_task_ids_sort_by_creation_time() -> None:
    earlier = new_task_id()
    time.sleep(0.002)
    later = new_task_id()
    assert earlier < later
    assert _sortable_time(0) == "00000000"
    assert _sortable_time(61) == "0000000z"
    assert _sortable_time(62) == "00000010"
    # Fixed width and byte order: string order is number order, also across digit classes.
    numbers = [0, 9, 10, 35, 36, 61, 62, 3843, 3844, 1_765_178_625_768, 62**8 - 1]
    encoded = [_sortable_time(number) for number in numbers]
    assert encoded == sorted(encoded)
    assert {len(text) for text in encoded} == {8}
