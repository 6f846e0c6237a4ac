"""Unit: the batch lane's choices that need no server: which upstream a batch-lane task is
for, what it costs, and the sandbox's batch delay."""

from __future__ import annotations

import asyncio

import pytest

from bananastand.batch_lane import batch_provider
from bananastand.billing import Billing
from bananastand.contract import Lane, Resolution
from bananastand.errors import FeatureDisabledError
from bananastand.providers.base import DetachedAttempt, GenerationRequest
from bananastand.providers.sandbox import SandboxProvider
from bananastand.records import ApiKey
from bananastand.settings import Settings
from bananastand.upstreams import RoutePlan, UpstreamConfig, UpstreamKind

PRO = "nano-banana-pro"
LIVE = ApiKey(
    "key", "acct", "", "bs_live_x", is_test=False, created_at=0, revoked_at=None, expires_at=None
)


def plan(*route: tuple[str, UpstreamKind]) -> RoutePlan:
    configs = {
        UpstreamKind.GEMINI: {"api_key": "k"},
        UpstreamKind.VERTEX: {"project": "p"},
        UpstreamKind.JOBS_API: {"base_url": "https://jobs.example", "api_key": "k"},
    }
    upstreams = {name: UpstreamConfig(kind=kind, **configs[kind]) for name, kind in route}
    return RoutePlan(upstreams, {PRO: tuple(name for name, _ in route)}, configured=True)


def test_the_batch_lane_takes_the_first_gemini_upstream_of_the_route() -> None:
    mixed = plan(
        ("kie", UpstreamKind.JOBS_API),
        ("vertex", UpstreamKind.VERTEX),
        ("g2", UpstreamKind.GEMINI),
        ("g3", UpstreamKind.GEMINI),
    )
    assert batch_provider(mixed, PRO, "kie") == "g2"
    assert batch_provider(mixed, PRO, "sandbox") == "sandbox"  # test keys stay on the sandbox


def test_without_a_gemini_upstream_the_batch_lane_is_refused() -> None:
    with pytest.raises(FeatureDisabledError, match="Vertex AI batch jobs"):
        batch_provider(plan(("vertex", UpstreamKind.VERTEX)), PRO, "vertex")
    with pytest.raises(FeatureDisabledError, match="no Gemini API upstream"):
        batch_provider(plan(("kie", UpstreamKind.JOBS_API)), PRO, "kie")


def test_the_batch_price_is_half_rounded_up_unless_set() -> None:
    settings = Settings(
        prices={PRO: {"1K": 5, "2K": 18, "4K": 24}},
        batch_prices={PRO: {"4K": 20}},
        models={PRO: Settings().models[PRO]},
    )
    billing = Billing(None, settings)  # type: ignore[arg-type]
    assert billing.price(LIVE, PRO, Resolution.R1K, Lane.BATCH) == 3
    assert billing.price(LIVE, PRO, Resolution.R2K, Lane.BATCH) == 9
    assert billing.price(LIVE, PRO, Resolution.R4K, Lane.BATCH) == 20
    assert billing.price(LIVE, PRO, Resolution.R1K) == 5
    test_key = ApiKey(
        "t", "acct", "", "bs_test_x", is_test=True, created_at=0, revoked_at=None, expires_at=None
    )
    assert billing.price(test_key, PRO, Resolution.R1K, Lane.BATCH) == 0


def test_the_sandbox_adds_its_batch_delay_to_batch_lane_tasks_only() -> None:
    sandbox = SandboxProvider(delay_ms=1, batch_delay_ms=30)

    async def delays() -> list[object]:
        found = []
        for lane in (Lane.NOW, Lane.BATCH):
            request = GenerationRequest(model=PRO, prompt="a banana", lane=lane)
            found.append((await sandbox.generate(request, DetachedAttempt())).usage["delay_ms"])
        return found

    assert asyncio.run(delays()) == [1, 31]
