"""Opaque identifiers and secrets: URL-safe, unguessable, recognisable by their prefix."""

from __future__ import annotations

import secrets
import string
import time

_ALPHABET = string.ascii_letters + string.digits


def random_token(length: int) -> str:
    """Letters and digits only: safe unencoded in URLs and matched whole by secret scanners."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_task_id() -> str:
    return "task_" + random_token(26)  # ~155 bits


def new_account_id() -> str:
    return "acct_" + random_token(16)


def new_key_id() -> str:
    return "key_" + random_token(16)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
