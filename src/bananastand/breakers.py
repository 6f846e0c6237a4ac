"""Circuit breakers of the upstreams, shared by the cluster through the store.

An upstream that failed ``breaker_failures`` tasks in a row (or answered that our key for
it is wrong) is skipped by every worker for ``breaker_cooldown_seconds``: its tasks go
straight to the next upstream of their route instead of waiting out its timeouts. Then one
task, in one process, is let through as a trial (half-open): its success closes the
breaker, its failure opens it again.

Each process keeps the cluster's breakers in memory and rereads them at most every
``upstream_breaker_refresh_seconds``; it writes only when a task fails, or when a success
ends failures it knows of. A closed breaker costs a task no statement.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from bananastand.records import Breaker, BreakerState
from bananastand.store.ports import BreakerStore
from bananastand.upstreams import RoutePlan, UpstreamConfig

log = logging.getLogger(__name__)

#: Where an upstream's table is found (None: no breaker, as for the sandbox).
Policies = Callable[[str], UpstreamConfig | None]


class Breakers:
    def __init__(self, store: BreakerStore, policies: Policies, *, refresh_s: float) -> None:
        self._store = store
        self._policies = policies
        self._refresh_s = refresh_s
        self._known: dict[str, Breaker] = {}
        self._read_at = float("-inf")
        self._reading = asyncio.Lock()

    async def allows(self, name: str) -> bool:
        """Whether a task may go to ``name`` now; an open breaker past its cool-down lets
        this one through as its trial."""
        policy = self._policies(name)
        if policy is None:
            return True
        breaker = await self._current(name)
        if breaker.state is BreakerState.CLOSED:
            return True
        cooldown_ms = round(policy.breaker_cooldown_seconds * 1000)
        since = breaker.opened_at if breaker.state is BreakerState.OPEN else breaker.updated_at
        if (since or 0) + cooldown_ms > self._store.now_ms():
            return False
        if not await self._store.breaker_trial(name, cooldown_ms):
            # Another process took the trial, or closed the breaker meanwhile: look again.
            self._read_at = float("-inf")
            return (await self._current(name)).state is BreakerState.CLOSED
        log.info("circuit breaker half-open: one trial task", extra={"upstream": name})
        self._known[name] = Breaker(
            name, BreakerState.HALF_OPEN, breaker.failures, breaker.opened_at, self._store.now_ms()
        )
        return True

    async def succeeded(self, name: str) -> None:
        known = self._known.get(name)
        if known is None or (known.state is BreakerState.CLOSED and not known.failures):
            return
        await self._store.breaker_closed(name)
        self._known[name] = Breaker.closed(name)
        if known.state is not BreakerState.CLOSED:
            log.warning("circuit breaker closed", extra={"upstream": name})

    async def failed(self, name: str, *, trip: bool) -> None:
        policy = self._policies(name)
        if policy is None:
            return
        before = self._known.get(name)
        now = await self._store.breaker_failed(name, threshold=policy.breaker_failures, trip=trip)
        self._known[name] = now
        if now.state is BreakerState.OPEN and (before is None or before.state is not now.state):
            log.warning(
                "circuit breaker opened",
                extra={"upstream": name, "failures": now.failures, "trip": trip},
            )

    async def _current(self, name: str) -> Breaker:
        if time.monotonic() - self._read_at >= self._refresh_s:
            async with self._reading:
                if time.monotonic() - self._read_at >= self._refresh_s:
                    rows = await self._store.breakers()
                    self._known = {row.name: row for row in rows}
                    self._read_at = time.monotonic()
        return self._known.get(name) or Breaker.closed(name)


def upstream_views(plan: RoutePlan, breakers: Iterable[Breaker]) -> list[dict[str, Any]]:
    """Each routed upstream as the operator sees it (``GET /admin/upstreams``,
    ``bananastand upstreams``): what it is, the models routed to it (its place in each
    route, from 1), its limits, and its breaker. Never a secret: keys are counted."""
    known = {breaker.name: breaker for breaker in breakers}
    views = []
    for name in plan.routed:
        config = plan.upstreams[name]
        views.append(
            {
                "name": name,
                "kind": config.kind.value,
                "baseUrl": config.base_url or None,
                "keys": len(config.keys),
                "models": {
                    model: route.index(name) + 1
                    for model, route in plan.routes.items()
                    if name in route
                },
                "concurrency": config.concurrency,
                "requestsPerMinute": config.requests_per_minute,
                "timeoutSeconds": config.timeout_seconds,
                "maxAttempts": config.max_attempts,
                "breakerFailures": config.breaker_failures,
                "breakerCooldownSeconds": config.breaker_cooldown_seconds,
                "breaker": (known.get(name) or Breaker.closed(name)).to_admin(),
            }
        )
    return views
