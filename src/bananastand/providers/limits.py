"""Caps on how hard one provider is driven: calls in flight and calls per minute.

Google answers a burst with 429s; queuing the burst here instead costs nothing and keeps
the retry budget for real hiccups. The worker takes a `UpstreamLimiter.slot` before it
marks a task ``generating``, so a task waiting for a slot stays ``queuing`` where clients
can see it; a provider that retries inside its slot calls `UpstreamLimiter.pace` before
each further attempt so retries count against the rate too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bananastand.errors import ConfigurationError


class UpstreamLimiter:
    """A concurrency cap plus an evenly spaced request rate (0 or None: no cap)."""

    def __init__(self, *, concurrency: int | None = None, per_minute: float | None = None) -> None:
        if concurrency is not None and concurrency < 1:
            raise ConfigurationError("upstream concurrency must be at least 1")
        if per_minute is not None and per_minute < 0:
            raise ConfigurationError("upstream requests per minute must not be negative")
        self._slots = asyncio.Semaphore(concurrency) if concurrency else None
        self._interval = 60.0 / per_minute if per_minute else 0.0
        self._next_start = 0.0
        self._pace_lock = asyncio.Lock()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for a free slot and the rate's next turn; the slot is held until exit."""
        if self._slots is None:
            await self.pace()
            yield
            return
        async with self._slots:
            await self.pace()
            yield

    async def pace(self) -> None:
        """Wait until the next request may start under the rate cap."""
        if not self._interval:
            return
        async with self._pace_lock:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + self._interval
        if start > now:
            await asyncio.sleep(start - now)
