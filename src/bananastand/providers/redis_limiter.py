"""The upstream limiter kept in Redis: one budget for every worker of the cluster.

Calls in flight are a semaphore whose slots expire: a sorted set of holder ids scored by
their expiry. Taking a slot drops the expired holders, then adds ours if fewer than the
cap remain; a holder renews its expiry every third of the lease while its call runs, so
a live 4K call that takes minutes keeps its slot, and a process that dies without
releasing gives it back within one lease (`SLOT_LEASE_SECONDS`). Calls per minute are
spaced by a reservation: the next free start time is kept in one key and each start
reserves it and pushes it one interval on, so the cluster starts calls as evenly as one
process did. Every script reads Redis's own clock (``TIME``), so machines whose clocks
disagree still share one schedule (Redis 5 or later: a script that reads ``TIME`` may
write only since scripts replicate their effects).

When Redis cannot be reached, calls go through this process's share of the budget
(`LocalLimiter` with the live-worker split) rather than failing or waiting: a task that
waited for Redis would sit in ``queuing`` until its timeout failed it, while Google
answers a too-eager cluster with 429s that the provider's retries already absorb. A
warning says so once per outage; Redis is tried again after `RETRY_AFTER_SECONDS`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import coredis
from coredis.exceptions import RedisError

from bananastand.errors import ConfigurationError
from bananastand.ids import random_token
from bananastand.providers.limits import WorkerCount, one_process
from bananastand.providers.local_limiter import LocalLimiter

log = logging.getLogger(__name__)

#: How long a slot outlives its last renewal: the longest a dead holder keeps it.
SLOT_LEASE_SECONDS = 30.0
#: How long calls use the local share after Redis failed before Redis is tried again.
RETRY_AFTER_SECONDS = 5.0
#: A waiting process asks Redis again after this long, doubling up to the most; a slot
#: freed by this process is seen at once.
FIRST_POLL_SECONDS = 0.05
MOST_POLL_SECONDS = 0.5
#: A script is a few microseconds of Redis's time; longer means Redis is in trouble.
REDIS_TIMEOUT_SECONDS = 2.0

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"

#: KEYS: the holders; ARGV: holder, cap, lease (us). 0: taken; else microseconds until
#: the soonest held slot expires (the longest worth waiting before asking again).
_TAKE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) / 500))
  return 0
end
local soonest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(soonest[2]) - now)
"""
)

#: KEYS: the holders; ARGV: holder, lease (us). 1: the slot had expired and is taken again.
_RENEW = (
    _NOW
    + """
local lost = redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) / 500))
return lost
"""
)

#: KEYS: the next free start; ARGV: interval (us). {reserved start, now}, in us.
_RESERVE = (
    _NOW
    + """
local start = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'))
local following = start + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%d', following),
           'PX', math.ceil((following - now) / 1000) + 1000)
return {start, now}
"""
)


@dataclass(frozen=True, slots=True)
class Turn:
    """A reserved start, on Redis's clock."""

    start_us: int
    now_us: int

    @property
    def wait_s(self) -> float:
        return max(0, self.start_us - self.now_us) / 1_000_000


class RedisLimiter:
    """A concurrency cap plus an evenly spaced request rate shared through Redis."""

    def __init__(
        self,
        redis_url: str,
        scope: str,
        *,
        concurrency: int | None = None,
        per_minute: float | None = None,
        workers: WorkerCount = one_process,
        slot_lease_s: float = SLOT_LEASE_SECONDS,
    ) -> None:
        """``scope`` names the budget (the provider, later with its key's id): limiters of
        one scope share it. ``workers`` splits the fallback used while Redis is away."""
        self._fallback = LocalLimiter(
            concurrency=concurrency, per_minute=per_minute, workers=workers
        )
        try:
            self._redis: coredis.Redis[str] = coredis.Redis.from_url(
                redis_url,
                decode_responses=True,
                connect_timeout=REDIS_TIMEOUT_SECONDS,
                stream_timeout=REDIS_TIMEOUT_SECONDS,
            )
        except (ValueError, RedisError) as exc:
            raise ConfigurationError(f"BANANASTAND_REDIS_URL: {exc}") from None
        self._take = self._redis.register_script(_TAKE)
        self._renew = self._redis.register_script(_RENEW)
        self._reserve = self._redis.register_script(_RESERVE)
        self._holders_key = f"bananastand:upstream:{scope}:holders"
        self._next_start_key = f"bananastand:upstream:{scope}:next-start"
        self._concurrency = concurrency or 0
        self._interval_us = round(60_000_000 / per_minute) if per_minute else 0
        self._lease_us = round(slot_lease_s * 1_000_000)
        self._lease_s = slot_lease_s
        self._holder_prefix = f"{socket.gethostname()}:{os.getpid()}:"
        #: One waiter per process asks Redis; the others queue here in order.
        self._queue = asyncio.Lock()
        self._released = asyncio.Event()
        self._away_until = 0.0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if not self._concurrency:
            await self.pace()
            yield
            return
        holder = await self._acquire()
        if holder is None:
            async with self._fallback.slot():
                yield
            return
        renewing = asyncio.create_task(self._keep(holder))
        try:
            await self.pace()
            yield
        finally:
            # Not awaited: waiting here could swallow a cancellation meant for the call.
            renewing.cancel()
            await self._release(holder)

    async def pace(self) -> None:
        if not self._interval_us:
            return
        turn = await self.reserve() if self._reachable() else None
        if turn is None:
            await self._fallback.pace()
        elif turn.wait_s:
            await asyncio.sleep(turn.wait_s)

    async def reserve(self) -> Turn | None:
        """Reserve the cluster's next start (None: Redis is away); `pace` waits for it."""
        try:
            reply = await self._reserve(keys=[self._next_start_key], args=[self._interval_us])
        except RedisError as exc:
            self._went_away(exc)
            return None
        self._came_back()
        start_us, now_us = _integers(reply)
        return Turn(start_us, now_us)

    async def aclose(self) -> None:
        self._redis.connection_pool.disconnect()

    async def _acquire(self) -> str | None:
        """Our holder id once a slot is ours; None when Redis is away (use the fallback)."""
        holder = self._holder_prefix + random_token(12)
        poll_s = FIRST_POLL_SECONDS
        async with self._queue:
            while self._reachable():
                try:
                    reply = await self._take(
                        keys=[self._holders_key],
                        args=[holder, self._concurrency, self._lease_us],
                    )
                except RedisError as exc:
                    self._went_away(exc)
                    break
                self._came_back()
                (wait_us,) = _integers(reply)
                if not wait_us:
                    return holder
                self._released.clear()
                try:
                    async with asyncio.timeout(min(poll_s, wait_us / 1_000_000)):
                        await self._released.wait()
                except TimeoutError:
                    poll_s = min(poll_s * 2, MOST_POLL_SECONDS)
        return None

    async def _keep(self, holder: str) -> None:
        """Renew the slot until the call ends (this task is cancelled then)."""
        while True:
            await asyncio.sleep(self._lease_s / 3)
            try:
                lost = await self._renew(keys=[self._holders_key], args=[holder, self._lease_us])
            except RedisError as exc:
                self._went_away(exc)
                continue
            if lost:
                # Expired while held (Redis restarted, or this process stalled): the call
                # is running whatever Redis thought, so it counts against the cap again.
                log.warning("upstream slot had expired while its call ran; taken again")

    async def _release(self, holder: str) -> None:
        try:
            await self._redis.zrem(self._holders_key, [holder])
        except RedisError as exc:
            self._went_away(exc)  # the slot comes back when its lease ends
        self._released.set()  # this process's next waiter asks at once

    def _reachable(self) -> bool:
        return time.monotonic() >= self._away_until

    def _went_away(self, exc: RedisError) -> None:
        if self._away_until == 0.0:
            # Never the URL: it may hold Redis's password.
            log.warning(
                "Redis is unreachable; upstream calls use this process's share of the limits",
                extra={"error": type(exc).__name__},
            )
        self._away_until = time.monotonic() + RETRY_AFTER_SECONDS

    def _came_back(self) -> None:
        if self._away_until:
            log.info("Redis answers again; upstream limits are shared by the cluster")
            self._away_until = 0.0


def _integers(reply: object) -> list[int]:
    """A script's answer: our scripts answer an integer or a list of integers."""
    values = reply if isinstance(reply, list) else [reply]
    integers = [value for value in values if isinstance(value, int)]
    if len(integers) != len(values):
        raise RedisError(f"unexpected script answer {reply!r}")
    return integers
