"""Unit: the in-process upstream limiter keeps its share of the budget when several worker
processes split it (no Redis), and follows the count of live workers as it changes; the
providers' construction picks the limiter from the settings."""

from __future__ import annotations

import asyncio

import pytest

from bananastand.errors import ConfigurationError
from bananastand.providers.local_limiter import LocalLimiter
from bananastand.providers.redis_limiter import RedisLimiter
from bananastand.providers.registry import ProviderRegistry
from bananastand.settings import Settings


def test_the_budget_is_split_among_the_workers_sharing_it() -> None:
    alone = LocalLimiter(concurrency=8, per_minute=60)
    assert (alone.concurrency_share(), alone.interval()) == (8, 1.0)
    three = LocalLimiter(concurrency=8, per_minute=60, workers=lambda: 3)
    assert (three.concurrency_share(), three.interval()) == (2, 3.0)
    crowded = LocalLimiter(concurrency=2, per_minute=60, workers=lambda: 5)
    assert crowded.concurrency_share() == 1  # never none: every worker can still call
    uncapped = LocalLimiter(workers=lambda: 4)
    assert (uncapped.concurrency_share(), uncapped.interval()) == (0, 0.0)
    nobody = LocalLimiter(concurrency=4, per_minute=60, workers=lambda: 0)
    assert nobody.concurrency_share() == 4  # a count not yet known: this process alone


def test_slots_follow_the_share_as_workers_come_and_go() -> None:
    workers = 2

    async def scenario() -> None:
        nonlocal workers
        limiter = LocalLimiter(concurrency=4, workers=lambda: workers)
        entered: list[int] = []
        leave = asyncio.Event()

        async def call(number: int) -> None:
            async with limiter.slot():
                entered.append(number)
                await leave.wait()

        calls = [asyncio.create_task(call(number)) for number in range(4)]
        await settle()
        assert entered == [0, 1]  # 4 // 2 workers
        workers = 1  # the other worker left: this process may use all four
        leave.set()
        leave = asyncio.Event()
        await settle()
        assert sorted(entered) == [0, 1, 2, 3]
        leave.set()
        await asyncio.gather(*calls)

    asyncio.run(scenario())


async def settle() -> None:
    """Let every ready task run until all wait again (no clock involved)."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_caps_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        LocalLimiter(concurrency=0)
    with pytest.raises(ConfigurationError):
        LocalLimiter(per_minute=-1)


def test_the_registry_shares_the_budget_in_redis_when_there_is_one() -> None:
    async def limiters() -> tuple[object, object]:
        alone = ProviderRegistry.from_settings(
            Settings(GEMINI_API_KEY="k", upstream_concurrency=6), live_workers=lambda: 3
        )
        shared = ProviderRegistry.from_settings(
            Settings(GEMINI_API_KEY="k", redis_url="redis://127.0.0.1:1")  # never reached
        )
        found = alone.get("gemini").limiter, shared.get("gemini").limiter
        await alone.aclose()
        await shared.aclose()
        return found

    local, redis = asyncio.run(limiters())
    assert isinstance(local, LocalLimiter)
    assert local.concurrency_share() == 2  # the live-worker count reaches the limiter
    assert isinstance(redis, RedisLimiter)
