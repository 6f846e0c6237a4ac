"""Acceptance: rate limits per key and the waiting-task cap, over HTTP; the moving window itself
against a controllable clock (no sleeping)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import limits.storage.memory
import pytest

from accounts_helpers import ADMIN_TOKEN, admin_ok, call, new_account
from bananastand.ratelimit import RateLimiter
from conftest import Server, prompt_body

HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


@dataclass
class FakeClock:
    now: float = 1_000_000.0

    def time(self) -> float:
        return self.now


def test_the_moving_window_follows_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    # The clock the library's memory storage reads, and ours: the same fake.
    monkeypatch.setattr(limits.storage.memory, "time", clock)

    async def scenario() -> None:
        limiter = RateLimiter(clock=clock.time)
        first = await limiter.hit("2/second", "create", "key_a")
        assert first is not None
        assert first.allowed
        assert first.remaining == 1
        clock.now += 0.5
        second = await limiter.hit("2/second", "create", "key_a")
        assert second is not None
        assert second.allowed
        assert second.remaining == 0
        refused = await limiter.hit("2/second", "create", "key_a")
        assert refused is not None
        assert not refused.allowed
        assert refused.reset_seconds == pytest.approx(0.5)  # the first call leaves then
        other = await limiter.hit("2/second", "create", "key_b")
        assert other is not None
        assert other.allowed
        clock.now += 0.4
        assert not (await limiter.hit("2/second", "create", "key_a")).allowed  # type: ignore[union-attr]
        clock.now += 0.2  # 1.1 s after the first call: one place is free again
        again = await limiter.hit("2/second", "create", "key_a")
        assert again is not None
        assert again.allowed
        assert again.remaining == 0
        assert await limiter.hit("unlimited", "create", "key_a") is None

    asyncio.run(scenario())


def test_every_limited_answer_carries_ratelimit_headers(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(create_rate="5/minute", read_rate="100/minute")
    key = server.key()
    created = call(server, "POST", "/api/v1/jobs/createTask", key, json=prompt_body())
    assert created.json()["code"] == 200
    assert created.headers["RateLimit-Limit"] == "5"
    assert created.headers["RateLimit-Remaining"] == "4"
    assert 0 < int(created.headers["RateLimit-Reset"]) <= 60
    answers = [
        call(server, "GET", "/api/v1/jobs/recordInfo", key, params={"taskId": "task_nope"}),
        call(server, "GET", "/api/v1/jobs/recordInfo", key),  # 422
        call(server, "GET", "/api/v1/jobs/list", key),
        call(server, "GET", "/api/v1/chat/credit", key),
        call(server, "POST", "/api/v1/jobs/cancel", key, json={"taskId": "task_nope"}),
    ]
    assert [answer.json()["code"] for answer in answers] == [404, 422, 200, 200, 404]
    for answer in answers:
        assert all(name in answer.headers for name in HEADERS), answer.headers
        assert answer.headers["RateLimit-Limit"] == "100"
    remaining = [int(answer.headers["RateLimit-Remaining"]) for answer in answers]
    assert remaining == [99, 98, 97, 96, 95]


def test_over_the_limit_is_429_with_retry_after(start_server: Callable[..., Server]) -> None:
    server = start_server(create_rate="3/minute", read_rate="50/minute")
    key, other = server.key(), server.key()
    codes = [server.create(key, prompt_body())["code"] for _ in range(3)]
    assert codes == [200, 200, 200]
    refused = call(server, "POST", "/api/v1/jobs/createTask", key, json=prompt_body())
    assert refused.json()["code"] == 429
    assert "rate limit" in refused.json()["msg"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Remaining"] == "0"
    # Reads have their own window; other keys their own budget.
    assert call(server, "GET", "/api/v1/jobs/list", key).json()["code"] == 200
    assert server.create(other, prompt_body())["code"] == 200


def test_limits_can_be_set_per_account(start_server: Callable[..., Server]) -> None:
    server = start_server(create_rate="1/minute", admin_token=ADMIN_TOKEN, key_cache_seconds=0)
    account_id, key = new_account(server, test=True)
    assert server.create(key, prompt_body())["code"] == 200
    assert server.create(key, prompt_body())["code"] == 429
    admin_ok(server, "POST", f"/admin/accounts/{account_id}/limits", {"createRate": "unlimited"})
    free = call(server, "POST", "/api/v1/jobs/createTask", key, json=prompt_body())
    assert free.json()["code"] == 200
    assert "RateLimit-Limit" not in free.headers  # unlimited: no policy to announce
    refused = admin(server, account_id, {"createRate": "lots"})
    assert refused["code"] == 422


def admin(server: Server, account_id: str, body: dict[str, str]) -> dict[str, object]:
    response = server.client.post(
        f"/admin/accounts/{account_id}/limits",
        json=body,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    answer: dict[str, object] = response.json()
    return answer


def test_waiting_tasks_are_capped_per_account(start_server: Callable[..., Server]) -> None:
    server = start_server(
        run_worker=False, max_waiting_tasks=2, admin_token=ADMIN_TOKEN, key_cache_seconds=0
    )
    account_id, key = new_account(server, test=True)
    first = server.create(key, prompt_body())["data"]["taskId"]
    assert server.create(key, prompt_body())["code"] == 200
    refused = server.create(key, prompt_body())
    assert refused["code"] == 429
    assert "too many waiting tasks" in refused["msg"]
    _, neighbour = new_account(server, test=True)
    assert server.create(neighbour, prompt_body())["code"] == 200  # per account
    call(server, "POST", "/api/v1/jobs/cancel", key, json={"taskId": first})
    assert server.create(key, prompt_body())["code"] == 200
    admin_ok(server, "POST", f"/admin/accounts/{account_id}/limits", {"maxWaiting": 3})
    assert server.create(key, prompt_body())["code"] == 200
    assert server.create(key, prompt_body())["code"] == 429


def test_two_servers_share_limits_in_redis(
    start_server: Callable[..., Server], redis_url: str
) -> None:
    first = start_server(create_rate="2/minute", redis_url=redis_url)
    second = start_server(create_rate="2/minute", redis_url=redis_url, data_dir=first.data_dir)
    key = first.key()
    assert first.create(key, prompt_body())["code"] == 200
    assert second.create(key, prompt_body())["code"] == 200
    assert first.create(key, prompt_body())["code"] == 429
