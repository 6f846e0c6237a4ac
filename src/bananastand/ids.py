"""Opaque identifiers and secrets: URL-safe, unguessable, recognisable by their prefix."""

from __future__ import annotations

import secrets
import string
import time

_ALPHABET = string.ascii_letters + string.digits


_UNBIASED = 256 - 256 % len(_ALPHABET)  # bytes at or above this would favour some letters


def random_token(length: int) -> str:
    """Letters and digits only: safe unencoded in URLs and matched whole by secret scanners.

    One ``token_bytes`` call per token rather than one ``secrets.choice`` per letter: ids
    are made on the createTask hot path.
    """
    chars: list[str] = []
    while len(chars) < length:
        chars.extend(
            _ALPHABET[byte % len(_ALPHABET)]
            for byte in secrets.token_bytes(length + 8)
            if byte < _UNBIASED
        )
    return "".join(chars[:length])


def new_task_id() -> str:
    return "task_" + random_token(26)  # ~155 bits


def new_account_id() -> str:
    return "acct_" + random_token(16)


def new_key_id() -> str:
    return "key_" + random_token(16)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
