"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from fastapi import APIRouter, Response

from bananastand.api.deps import ServicesDep
from bananastand.api.envelope import envelope
from bananastand.contract import CODE_SERVER_ERROR

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Health check: the database answers")
async def healthz(services: ServicesDep) -> Response:
    try:
        await services.store.ping()
    except Exception as exc:
        return envelope({"database": "down"}, code=CODE_SERVER_ERROR, msg=f"unhealthy: {exc}")
    return envelope({"database": "ok"}, msg="ok")
