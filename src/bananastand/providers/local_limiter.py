"""The upstream limiter counted in this process's memory: its share of the cluster's budget.

Without a shared counter the only way to hold several worker processes to one budget is
to give each a part of it: with ``n`` workers sharing, each keeps ``concurrency / n``
calls in flight (at least one, so no worker starves) and starts ``per_minute / n`` calls a
minute. ``n`` is asked for at every slot and every start, so a worker that joins or
leaves the cluster changes everyone's share without a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bananastand.errors import ConfigurationError
from bananastand.providers.limits import WorkerCount, one_process


class LocalLimiter:
    """A concurrency cap plus an evenly spaced request rate (0 or None: no cap)."""

    def __init__(
        self,
        *,
        concurrency: int | None = None,
        per_minute: float | None = None,
        workers: WorkerCount = one_process,
    ) -> None:
        """``workers`` gives how many processes share the budget; it is called often,
        so it must be cheap (a cached count, never a query)."""
        if concurrency is not None and concurrency < 1:
            raise ConfigurationError("upstream concurrency must be at least 1")
        if per_minute is not None and per_minute < 0:
            raise ConfigurationError("upstream requests per minute must not be negative")
        self._concurrency = concurrency or 0
        self._per_minute = per_minute or 0.0
        self._workers = workers
        self._in_flight = 0
        self._freed = asyncio.Condition()
        self._next_start = 0.0
        self._pace_lock = asyncio.Lock()

    def concurrency_share(self) -> int:
        """Calls this process may have in flight now (0: no cap)."""
        if not self._concurrency:
            return 0
        return max(1, self._concurrency // self._sharing())

    def interval(self) -> float:
        """Seconds between two starts of this process now (0: no cap)."""
        if not self._per_minute:
            return 0.0
        return 60.0 * self._sharing() / self._per_minute

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if not self._concurrency:
            await self.pace()
            yield
            return
        async with self._freed:
            await self._freed.wait_for(lambda: self._in_flight < self.concurrency_share())
            self._in_flight += 1
            if self._in_flight < self.concurrency_share():
                # The share may have grown since the last release: pass the turn on.
                self._freed.notify()
        try:
            await self.pace()
            yield
        finally:
            async with self._freed:
                self._in_flight -= 1
                self._freed.notify()

    async def pace(self) -> None:
        interval = self.interval()
        if not interval:
            return
        async with self._pace_lock:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + interval
        if start > now:
            await asyncio.sleep(start - now)

    async def aclose(self) -> None:
        """Nothing is held outside this process."""

    def _sharing(self) -> int:
        return max(1, self._workers())
