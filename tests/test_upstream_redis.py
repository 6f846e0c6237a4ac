"""Integration: the upstream limiter shared in Redis (a real redis-server), between limiter
instances that each have their own connections, as the worker processes of a cluster do;
one holder is a real process that is killed without releasing its slot."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import sys

import coredis
import pytest
from coredis.exceptions import RedisError
from coredis.tokens import PureToken

from bananastand.providers.redis_limiter import RedisLimiter
from conftest import free_port

pytestmark = pytest.mark.no_database

SCOPE = "gemini"
HOLDERS = f"bananastand:upstream:{SCOPE}:holders"

#: A holder in a process of its own: takes the only slot (1 s lease) and keeps it.
HOLD_FOREVER = """
import asyncio, sys
from bananastand.providers.redis_limiter import RedisLimiter

async def main():
    limiter = RedisLimiter(sys.argv[1], "gemini", concurrency=1, slot_lease_s=1.0)
    async with limiter.slot():
        print("held", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


def test_instances_together_never_exceed_the_concurrency(redis_url: str) -> None:
    async def scenario() -> None:
        limiters = [RedisLimiter(redis_url, SCOPE, concurrency=2) for _ in range(3)]
        in_flight = peak = done = 0

        async def call(limiter: RedisLimiter) -> None:
            nonlocal in_flight, peak, done
            async with limiter.slot():
                in_flight += 1
                peak = max(peak, in_flight)
                await asyncio.sleep(0.02)
                in_flight -= 1
            done += 1

        async with asyncio.timeout(120):
            await asyncio.gather(*(call(limiter) for limiter in limiters for _ in range(6)))
        assert done == 18
        assert peak <= 2
        redis = coredis.Redis.from_url(redis_url, decode_responses=True)
        assert await redis.zcard(HOLDERS) == 0  # every slot was given back
        for limiter in limiters:
            await limiter.aclose()

    asyncio.run(scenario())


def test_a_holder_that_dies_gives_its_slot_back_after_the_lease(redis_url: str) -> None:
    async def scenario() -> None:
        redis = coredis.Redis.from_url(redis_url, decode_responses=True)
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOLD_FOREVER, redis_url, stdout=asyncio.subprocess.PIPE
        )
        try:
            assert holder.stdout is not None
            async with asyncio.timeout(60):
                assert await holder.stdout.readline() == b"held\n"
            (dead,) = await redis.zrange(HOLDERS, 0, -1)
            first_expiry = await redis.zscore(HOLDERS, dead)
            assert first_expiry is not None
            # A live holder renews its slot beyond the lease it took it with.
            async with asyncio.timeout(60):
                while (await redis.zscore(HOLDERS, dead) or 0) <= first_expiry:
                    await asyncio.sleep(0.1)
        finally:
            holder.send_signal(signal.SIGKILL)
            await holder.wait()
        waiting = RedisLimiter(redis_url, SCOPE, concurrency=1, slot_lease_s=1.0)
        async with asyncio.timeout(60), waiting.slot():
            (current,) = await redis.zrange(HOLDERS, 0, -1)
            assert current != dead
        await waiting.aclose()

    asyncio.run(scenario())


def test_starts_are_spaced_across_instances(redis_url: str) -> None:
    async def scenario() -> None:
        limiters = [RedisLimiter(redis_url, SCOPE, per_minute=600) for _ in range(3)]
        turns = await asyncio.gather(
            *(limiter.reserve() for limiter in limiters for _ in range(10))
        )
        starts = sorted(turn.start_us for turn in turns if turn is not None)
        assert len(starts) == 30
        interval_us = 100_000  # 600 a minute
        gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
        assert min(gaps) >= interval_us  # never two starts closer than one interval
        for limiter in limiters:
            await limiter.aclose()

    asyncio.run(scenario())


def unreachable_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if "Redis is unreachable" in record.message]


def test_redis_going_away_mid_call_fails_no_call(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        limiter = RedisLimiter(redis_url, SCOPE, concurrency=1, per_minute=6000)
        async with asyncio.timeout(60):
            async with limiter.slot():
                # Redis stops while the call holds its slot; the release cannot reach it.
                with contextlib.suppress(RedisError):
                    await coredis.Redis.from_url(redis_url).shutdown(PureToken.NOSAVE)
            for _ in range(3):
                async with limiter.slot():
                    await limiter.pace()
        await limiter.aclose()

    with caplog.at_level(logging.WARNING, logger="bananastand.providers.redis_limiter"):
        asyncio.run(scenario())
    assert len(unreachable_warnings(caplog)) == 1  # once per outage, not once per call


def test_without_redis_calls_go_through_the_local_share(caplog: pytest.LogCaptureFixture) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}"  # nothing listens there

    async def scenario() -> None:
        limiter = RedisLimiter(nowhere, SCOPE, concurrency=1, per_minute=6000)
        for _ in range(3):
            async with asyncio.timeout(60), limiter.slot():
                await limiter.pace()
        await limiter.aclose()

    with caplog.at_level(logging.WARNING, logger="bananastand.providers.redis_limiter"):
        asyncio.run(scenario())
    assert len(unreachable_warnings(caplog)) == 1  # once per outage, not once per call
    assert nowhere not in caplog.text
