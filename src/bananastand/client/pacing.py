"""When the client tries again and how often it polls: which failures a request may be
sent again after, the backoff between tries, and the pace of a polling wait.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

import httpx

from bananastand.client.errors import MaintenanceError, RateLimitError, ServerError, TransportError

#: Called before each retry with the request, the error and the delay chosen.
RetryHook: TypeAlias = Callable[[httpx.Request, Exception, float], None]


class Replay(enum.Enum):
    """Which failures a request may be sent again after."""

    #: Idempotent requests (reads, uploads to a content-named path, createTask under an
    #: Idempotency-Key): every transient failure, lost answers included.
    ANY_TRANSIENT = "any"
    #: Requests that must not run twice: only answers proving nothing happened (429, 455).
    REFUSALS = "refusals"

    def allows(self, error: Exception) -> bool:
        if isinstance(error, RateLimitError | MaintenanceError):
            return True
        return self is Replay.ANY_TRANSIENT and isinstance(error, ServerError | TransportError)


@dataclass(frozen=True)
class RetryPolicy:
    """Jittered exponential backoff within a number of attempts and a time budget.

    A ``Retry-After`` the server sent is a floor: the client never comes back earlier.
    ``unreachable_budget_s`` (default: ``budget_s``) bounds the retrying of connections
    that could not be made at all (refused, name not resolved): a server that is being
    restarted comes back within seconds, one that is not running never does, and a
    person at a prompt (the CLI uses 1 s) would rather hear so at once.
    """

    max_attempts: int = 6
    budget_s: float = 120.0
    base_s: float = 0.5
    cap_s: float = 30.0
    unreachable_budget_s: float | None = None

    def delay(self, attempt: int, error: Exception, elapsed_s: float) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``; ``None``: give up."""
        if attempt >= self.max_attempts:
            return None
        budget = self.budget_s
        if (
            self.unreachable_budget_s is not None
            and isinstance(error, TransportError)
            and error.unreachable is not None
        ):
            budget = min(budget, self.unreachable_budget_s)
        delay = random.uniform(0, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))  # noqa: S311
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            delay = retry_after + random.uniform(0, min(1.0, retry_after / 10))  # noqa: S311
        if elapsed_s + delay > budget:
            return None
        return delay


@dataclass(frozen=True)
class PollSchedule:
    """How often ``wait`` polls: quickly at first, backing off to ``max_s``, and never
    faster than the account's read quota allows (``RateLimit-Remaining`` calls left before
    ``RateLimit-Reset`` seconds), so many waiters sharing a key spread out by themselves."""

    first_s: float = 0.25
    factor: float = 1.5
    max_s: float = 5.0

    def next_delay(self, polls: int, headers: Mapping[str, str]) -> float:
        delay = min(self.max_s, self.first_s * self.factor**polls)
        remaining = header_number(headers.get("ratelimit-remaining"))
        reset = header_number(headers.get("ratelimit-reset"))
        if remaining is not None and reset is not None:
            delay = max(delay, reset if remaining <= 0 else reset / remaining)
        return delay * random.uniform(0.9, 1.1)  # noqa: S311


def header_number(value: str | None) -> float | None:
    """A pacing header's number (``Retry-After``, ``RateLimit-*``); ``None`` if absent or
    not a number, so a header the client cannot read never stops a call."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
