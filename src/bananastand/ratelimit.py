"""Per-key rate limits: a moving window per key and kind of call (``limits`` library).

Counts live in this process's memory, or in Redis when ``BANANASTAND_REDIS_URL`` is set
(then every server process shares them). Each hit reports the quota left, which becomes
the IETF ``RateLimit-*`` headers of the answer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import limits
from limits.aio.storage import Storage as AsyncStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import ConfigurationError as LimitsConfigurationError
from limits.storage import MemoryStorage as SyncMemoryStorage
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter as SyncMovingWindowRateLimiter

from bananastand.errors import ConfigurationError, RateLimitedError

UNLIMITED = "unlimited"


@lru_cache(maxsize=256)
def parse_rate(text: str) -> limits.RateLimitItem | None:
    """``20/second``, ``600/minute``, ``5 per 10 seconds``...; ``unlimited``: None."""
    cleaned = text.strip().lower()
    if cleaned == UNLIMITED:
        return None
    try:
        return limits.parse(cleaned)
    except ValueError:
        raise ValueError(
            f"rate {text!r}: expected e.g. '20/second', '600/minute' or '{UNLIMITED}'"
        ) from None


@dataclass(frozen=True, slots=True)
class Quota:
    allowed: bool
    limit: int
    remaining: int
    #: Seconds until the oldest call in the window leaves it (a slot frees up).
    reset_seconds: float

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(max(0, math.ceil(self.reset_seconds))),
        }


class RateLimiter:
    def __init__(self, redis_url: str = "", *, clock: Callable[[], float] = time.time) -> None:
        """``clock`` must be the clock the storage keeps its windows in (tests replace both)."""
        self._shared: MovingWindowRateLimiter | None = None
        self._local: SyncMovingWindowRateLimiter | None = None
        if redis_url:
            try:
                storage = storage_from_string(f"async+{redis_url}")
            except LimitsConfigurationError as exc:
                raise ConfigurationError(f"BANANASTAND_REDIS_URL: {exc}") from None
            assert isinstance(storage, AsyncStorage)
            self._shared = MovingWindowRateLimiter(storage)
        else:
            # The library's synchronous memory storage: a hit is a few microseconds of
            # in-process work, while its asyncio twin hands expiry to a thread on almost
            # every hit (measured: ~50 us a request).
            self._local = SyncMovingWindowRateLimiter(SyncMemoryStorage())
        self._clock = clock

    async def hit(self, rate: str, kind: str, key_id: str) -> Quota | None:
        """Count one call; None when the rate is unlimited.

        A refused call (``quota.allowed`` false) does not use up a place in the window.
        """
        item = parse_rate(rate)
        if item is None:
            return None
        if self._local is not None:
            allowed = self._local.hit(item, kind, key_id)
            stats = self._local.get_window_stats(item, kind, key_id)
        else:
            assert self._shared is not None
            allowed = await self._shared.hit(item, kind, key_id)
            stats = await self._shared.get_window_stats(item, kind, key_id)
        return Quota(
            allowed=allowed,
            limit=item.amount,
            remaining=max(0, stats.remaining),
            reset_seconds=max(0.0, stats.reset_time - self._clock()),
        )

    async def ping(self) -> bool | None:
        """Whether Redis answers; None without Redis (the counts are in memory)."""
        if self._shared is None:
            return None
        return bool(await self._shared.storage.check())

    def refusal(self, quota: Quota) -> RateLimitedError:
        return RateLimitedError(
            f"rate limit exceeded: {quota.limit} calls per window for this key; "
            "wait for Retry-After seconds",
            retry_after=max(1.0, quota.reset_seconds),
        )
