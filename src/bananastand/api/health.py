"""Liveness, readiness and metrics: what load balancers, orchestrators and Prometheus ask.

All three answer plain HTTP statuses, never the envelope: a load balancer reads the status
alone, and an HTTP 200 envelope saying "down" would keep a broken process in rotation.

- ``/healthz``: the process is alive and serving (200, no other work: the test suite and
  orchestrators poll it often). A failing liveness probe restarts the process, so it
  must not fail for what a restart cannot mend, such as a database that is down.
- ``/readyz``: the database, Redis (when configured) and storage answer; 503 naming
  those that do not. A failing readiness probe only takes the process out of rotation.
- ``/metrics``: the Prometheus text format, behind ``BANANASTAND_METRICS_TOKEN`` if set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

from bananastand.api.deps import services_of
from bananastand.api.envelope import plain
from bananastand.metrics.exposition import CONTENT_TYPE, token_accepted

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

#: A readiness check slower than this counts as down: a probe must answer quickly.
READY_TIMEOUT_S = 5.0


@router.get(
    "/healthz",
    summary="Liveness: the process serves requests",
    response_class=PlainTextResponse,
    responses={200: {"description": "`ok`"}},
)
async def healthz() -> Response:
    return plain(200, "ok")


@router.get(
    "/readyz",
    summary="Readiness: the database, Redis (when configured) and storage answer",
    response_class=PlainTextResponse,
    responses={
        200: {"description": "`ready`"},
        503: {"description": "names what does not answer: `not ready: database down`"},
    },
)
async def readyz(request: Request) -> Response:
    services = services_of(request)
    checks: dict[str, Awaitable[object]] = {
        "database": services.store.ping(),
        "storage": services.storage.ping(),
    }
    if services.settings.redis_url:
        checks["redis"] = _redis(services.limiter.ping())
    outcomes = await asyncio.gather(*(_check(name, check) for name, check in checks.items()))
    down = [name for name, ok in zip(checks, outcomes, strict=True) if not ok]
    if down:
        return plain(503, "not ready: " + ", ".join(down) + " down")
    return plain(200, "ready")


async def _redis(ping: Awaitable[bool | None]) -> None:
    if not await ping:
        raise ConnectionError("redis did not answer")


async def _check(name: str, check: Awaitable[object]) -> bool:
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await check
    except Exception as exc:
        # The reason stays in the log: the probe's answer goes to whoever asks.
        log.warning("readiness check failed", extra={"check": name, "error": str(exc)})
        return False
    return True


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format)",
    response_class=PlainTextResponse,
    responses={401: {"description": "BANANASTAND_METRICS_TOKEN is set and was not sent"}},
)
async def metrics(request: Request) -> Response:
    services = services_of(request)
    token = services.settings.metrics_token.get_secret_value()
    if not token_accepted(token, request.headers.get("authorization")):
        return plain(401, "metrics token required: send Authorization: Bearer <metrics token>")
    return Response(await services.scrape.render(), media_type=CONTENT_TYPE)
