"""One task's way along its route: each upstream in turn until one makes the image.

An upstream that fails the task for a reason that is not the caller's (a 5xx, a timeout,
429 past its retry budget, an open breaker) hands it to the next one; a caller's error
(``TaskFailure.final``: bad input, a safety block) ends it at once, and no other upstream
sees it or bills for it. Upstreams are tried one after the other, never two at once: the
next starts only once the previous call was given up on (a call abandoned on a timeout
may still be billed upstream: ``bananastand_upstream_abandoned_calls_total`` counts them).

A task that comes back to a worker (a restart) with an upstream handle is resumed on that
upstream (``task.upstream``), never on an earlier one, which could not know that a later
one may still be working on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from bananastand.attempts import TaskAttempt
from bananastand.breakers import Breakers
from bananastand.errors import TaskFailure, UpstreamError
from bananastand.metrics import Metrics
from bananastand.providers.base import GeneratedImage, GenerationRequest, Provider
from bananastand.records import Claim
from bananastand.store.ports import TaskStore

log = logging.getLogger(__name__)


class RouteRunner:
    """What the worker calls for every task; one per worker."""

    def __init__(self, store: TaskStore, breakers: Breakers, metrics: Metrics) -> None:
        self._store = store
        self._breakers = breakers
        self._metrics = metrics

    async def run(
        self,
        claim: Claim,
        route: Sequence[Provider],
        request: GenerationRequest,
        *,
        on_started: Callable[[], None],
    ) -> tuple[GeneratedImage, TaskAttempt]:
        """The image and the attempt that made it; raises the last upstream's
        ``TaskFailure`` when none could (a final one at once)."""
        failures: list[tuple[str, TaskFailure]] = []
        tried = _resumed(route, claim)
        for place, provider in enumerate(tried, start=1):
            handing_on = place < len(tried)  # to the next upstream, if this one fails
            if not await self._breakers.allows(provider.name):
                failure: TaskFailure = UpstreamError(
                    "its circuit breaker is open (it failed too often lately)",
                    upstream_status="breaker_open",
                )
                failures.append((provider.name, failure))
                if handing_on:
                    self._metrics.upstream_failovers.labels(provider.name, "breaker_open").inc()
                continue
            attempt = TaskAttempt(self._store, claim, provider.name, on_started=on_started)
            try:
                # Waiting for an upstream slot is still ``queuing``; the provider says
                # when the task starts ``generating`` (``attempt.started``).
                async with provider.limiter.slot():
                    image = await self._call(provider, request, attempt)
            except TaskFailure as failure:
                if failure.final:
                    # The caller's error: the upstream answered, and well. A final one
                    # that trips (our key refused while following a relayed task) says
                    # the upstream is unusable for everyone else.
                    if failure.trip:
                        await self._breakers.failed(provider.name, trip=True)
                    else:
                        await self._breakers.succeeded(provider.name)
                    raise
                await self._breakers.failed(provider.name, trip=failure.trip)
                failures.append((provider.name, failure))
                if handing_on:
                    reason = failure.upstream_status or failure.fail_code
                    self._metrics.upstream_failovers.labels(provider.name, reason).inc()
                    log.warning(
                        "upstream failed the task; trying the next one",
                        extra={"upstream": provider.name, "reason": failure.message},
                    )
                continue
            await self._breakers.succeeded(provider.name)
            return image, attempt
        raise _summary(failures, claim)

    async def _call(
        self, provider: Provider, request: GenerationRequest, attempt: TaskAttempt
    ) -> GeneratedImage:
        """The provider's call, timed and counted by how the upstream answered."""
        began = time.monotonic()
        status = "200"
        abandoned = 0
        try:
            image = await provider.generate(request, attempt)
            abandoned = int(image.usage.get("abandoned_calls", 0))
            return image
        except TaskFailure as failure:
            status = failure.upstream_status or failure.fail_code
            abandoned = failure.abandoned_calls
            raise
        except BaseException:  # canceled (lease lost, timeout, shutdown) or crashed
            status = "none"
            # A call under way when the task was given up on may still be billed.
            abandoned = 1 if attempt.started_at is not None else 0
            raise
        finally:
            self._metrics.upstream_call(provider.name, time.monotonic() - began, status)
            if abandoned:
                self._metrics.upstream_abandoned_calls.labels(provider.name).inc(abandoned)


def _resumed(route: Sequence[Provider], claim: Claim) -> Sequence[Provider]:
    """The route from the upstream that already knows the task by a handle, if any."""
    task = claim.task
    if task.upstream_handle is None:
        return route
    names = [provider.name for provider in route]
    if task.upstream in names:
        return route[names.index(task.upstream) :]
    log.warning(
        "the upstream that took this task is no longer on its route; starting over",
        extra={"upstream": task.upstream},
    )
    return route


def _summary(failures: list[tuple[str, TaskFailure]], claim: Claim) -> TaskFailure:
    """The task's failure: the last upstream's, naming each upstream's reason when the
    route had several."""
    if not failures:
        return UpstreamError(f"no upstream is routed for {claim.task.model} on this worker")
    last = failures[-1][1]
    if len(failures) == 1 and last.upstream_status != "breaker_open":
        return last
    said = "; ".join(f"{upstream}: {failure.message}" for upstream, failure in failures)
    return type(last)(
        f"every upstream failed ({said})",
        upstream_status=last.upstream_status,
        abandoned_calls=last.abandoned_calls,
    )
