"""Waiting for what happens elsewhere (a server, a child process, a worker, a receiver):
one poll with a deadline, for the whole suite.

The deadline only bounds how long a broken test hangs, never what a passing one may
take: it is generous, because a busy 2-core machine has taken tens of seconds to start
a child. A check that must fail fast (the child died) raises from ``read``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

#: How long to wait unless a caller knows better; far beyond what any wait here needs.
DEADLINE_S = 90.0
INTERVAL_S = 0.05


def _truthy(value: object) -> bool:
    return bool(value)


class _Poll(Generic[T]):
    """What both loops share: read, judge, and past the deadline say what never came."""

    def __init__(
        self,
        read: Callable[[], T],
        done: Callable[[T], object],
        what: str | Callable[[], str],
        timeout: float,
    ) -> None:
        self._read, self._done, self._what, self._timeout = read, done, what, timeout
        self._deadline = time.monotonic() + timeout

    def answered(self) -> bool:
        """Whether the answer read now is ``done`` (then it is ``found``); past the
        deadline, an AssertionError instead of False."""
        self.found = found = self._read()
        if self._done(found):
            return True
        if time.monotonic() > self._deadline:
            what = self._what if isinstance(self._what, str) else self._what()
            shown = repr(found)
            if len(shown) > 2000:
                shown = shown[:2000] + "..."
            raise AssertionError(f"{what}: still not so after {self._timeout:g} s (last: {shown})")
        return False


def wait_for(
    read: Callable[[], T],
    done: Callable[[T], object] = _truthy,
    *,
    what: str | Callable[[], str],
    timeout: float = DEADLINE_S,
    interval: float = INTERVAL_S,
) -> T:
    """``read()``'s first answer that is ``done`` (truthy, by default); past ``timeout``
    an AssertionError names ``what`` and the last answer."""
    poll = _Poll(read, done, what, timeout)
    while not poll.answered():
        time.sleep(interval)
    return poll.found


async def wait_for_async(
    read: Callable[[], T],
    done: Callable[[T], object] = _truthy,
    *,
    what: str | Callable[[], str],
    timeout: float = DEADLINE_S,
    interval: float = INTERVAL_S,
) -> T:
    """`wait_for` inside a test's event loop: what it waits for runs on that loop."""
    poll = _Poll(read, done, what, timeout)
    while not poll.answered():
        await asyncio.sleep(interval)
    return poll.found
