"""Integration: a Gemini upstream with a pool of API keys, through the real google-genai SDK
against the fake Gemini REST server (which answers each key on its own, and 429 with Google's
``RetryInfo`` detail): a key out of quota rests while the next key takes the call."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from bananastand.errors import UpstreamError
from bananastand.fake_gemini import FakeGemini, Reply
from bananastand.providers.base import DetachedAttempt, GenerationRequest
from bananastand.providers.google import GoogleProvider, KeyRest, UpstreamRetryPolicy
from bananastand.providers.key_pool import retry_delay
from bananastand.providers.local_limiter import LocalLimiter
from bananastand.providers.registry import ProviderRegistry
from bananastand.settings import Settings
from waiting import DEADLINE_S

pytestmark = pytest.mark.no_database

REQUEST = GenerationRequest(model="nano-banana-pro", prompt="a banana")
EXHAUSTED = "Resource has been exhausted (e.g. check quota)."


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini(api_key="key-a", api_keys=("key-b",)) as server:
        yield server


def pool(fake: FakeGemini, *, cooldown_s: float = 60.0, **retry: Any) -> GoogleProvider:
    return GoogleProvider.gemini(
        ["key-a", "key-b"],
        Settings().models,
        base_url=fake.base_url,
        retry=UpstreamRetryPolicy(**{"timeout_s": 30.0, "backoff_s": 0.01, **retry}),
        limiter=LocalLimiter(),
        key_limiters=[LocalLimiter(), LocalLimiter()],
        key_rest=KeyRest(cooldown_s=cooldown_s),
    )


def keys_seen(fake: FakeGemini) -> list[str]:
    return [request.api_key for request in fake.requests]


def test_the_pool_moves_on_after_a_429_and_comes_back_after_the_retry_delay(
    fake: FakeGemini,
) -> None:
    fake.script_key("key-a", Reply(status=429, message=EXHAUSTED, retry_delay="1s"))
    provider = pool(fake, max_attempts=2)

    async def scenario() -> None:
        try:
            first = await provider.generate(REQUEST, DetachedAttempt())
            assert first.usage["attempts"] == 2
            assert keys_seen(fake) == ["key-a", "key-b"]  # at once, with no backoff

            async def until_key_a_is_back() -> None:
                while keys_seen(fake).count("key-a") < 2:
                    await provider.generate(REQUEST, DetachedAttempt())

            await asyncio.wait_for(until_key_a_is_back(), DEADLINE_S)
        finally:
            await provider.aclose()

    asyncio.run(scenario())
    seen = keys_seen(fake)
    back = seen.index("key-a", 1)
    assert set(seen[1:back]) == {"key-b"}  # while key-a rested, key-b took every call
    rested = fake.requests[back].received_at - fake.requests[0].received_at
    assert rested >= 1.0 - 0.05, rested


def test_a_429_without_retry_info_rests_the_key_for_the_cool_down(fake: FakeGemini) -> None:
    fake.script_key("key-a", Reply(status=429, message=EXHAUSTED))
    provider = pool(fake, cooldown_s=3600.0)

    async def scenario() -> None:
        try:
            for _ in range(4):
                await provider.generate(REQUEST, DetachedAttempt())
        finally:
            await provider.aclose()

    asyncio.run(scenario())
    assert keys_seen(fake) == ["key-a", "key-b", "key-b", "key-b", "key-b"]


def test_every_key_out_of_quota_past_the_budget_fails_over(fake: FakeGemini) -> None:
    for key in ("key-a", "key-b"):
        fake.script_key(key, Reply(status=429, message=EXHAUSTED, retry_delay="3600s"))
    provider = pool(fake, budget_s=5.0)

    async def scenario() -> BaseException | None:
        try:
            await provider.generate(REQUEST, DetachedAttempt())
        except UpstreamError as failure:
            return failure
        finally:
            await provider.aclose()
        return None

    failure = asyncio.run(scenario())
    assert isinstance(failure, UpstreamError)
    assert not failure.final  # the route's next upstream takes the task
    assert failure.upstream_status == "429"
    assert "every API key of gemini is rate limited" in failure.message
    assert keys_seen(fake) == ["key-a", "key-b"]


def test_a_key_alone_answered_429_waits_out_googles_retry_delay() -> None:
    with FakeGemini() as alone:
        alone.script(Reply(status=429, message=EXHAUSTED, retry_delay="0.5s"))
        provider = GoogleProvider.gemini(
            alone.api_key,
            Settings().models,
            base_url=alone.base_url,
            retry=UpstreamRetryPolicy(timeout_s=30.0, backoff_s=0.0),
            limiter=LocalLimiter(),
        )

        async def scenario() -> None:
            try:
                await provider.generate(REQUEST, DetachedAttempt())
            finally:
                await provider.aclose()

        asyncio.run(scenario())
    first, second = alone.requests
    assert second.received_at - first.received_at >= 0.5 - 0.05  # not the 0 s backoff


def test_retry_info_is_read_as_google_sends_it() -> None:
    detail = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.5s"}
    other = {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []}
    assert retry_delay({"error": {"code": 429, "details": [other, detail]}}) == 2.5
    assert retry_delay({"error": {"code": 429, "details": [other]}}) is None
    assert retry_delay({"error": {"code": 429}}) is None
    assert retry_delay(None) is None


def test_the_rate_is_per_key_and_the_pool_has_the_sum() -> None:
    settings = Settings(
        upstreams={
            "google": {"kind": "gemini", "api_keys": ["a", "b", "c"], "requests_per_minute": 60}
        },
        routes={"nano-banana-pro": ["google"]},
    )

    async def limiters() -> tuple[object, list[object]]:
        registry = ProviderRegistry.from_settings(settings)
        provider = registry.get("google")
        assert isinstance(provider, GoogleProvider)
        found = provider.limiter, [key.limiter for key in provider._keys.keys]
        await registry.aclose()
        return found

    pool, keys = asyncio.run(limiters())
    assert isinstance(pool, LocalLimiter)
    assert pool.interval() == 60 / 180  # three keys at 60 a minute each
    assert pool.concurrency_share() == 8  # BANANASTAND_UPSTREAM_CONCURRENCY, for them all
    for key in keys:
        assert isinstance(key, LocalLimiter)
        assert key.interval() == 1.0
