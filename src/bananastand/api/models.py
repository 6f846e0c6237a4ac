"""``GET /api/v1/models``: the models the caller's key may use, for clients that build
their form from the server (the web page) rather than from a copy of its settings."""

from __future__ import annotations

from fastapi import APIRouter, Response

from bananastand.api.deps import CurrentKey, ServicesDep
from bananastand.api.envelope import envelope
from bananastand.catalog import ModelCatalog
from bananastand.contract import Envelope

router = APIRouter(prefix="/api/v1", tags=["models"])


class ModelsAnswer(Envelope):
    data: ModelCatalog | None = None


@router.get(
    "/models",
    summary="The models this key may use, with their limits, sizes and prices",
    operation_id="listModels",
    response_model=ModelsAnswer,
)
async def list_models(services: ServicesDep, key: CurrentKey) -> Response:
    """In the order the server's settings list them; a model switched off (for everyone
    or for this account) is left out, and so is every model for a live key while the
    server has no provider for live keys. `prices` are what a task costs this key, per
    resolution: 0 for test keys, which are never charged. `sandbox` lists the sandbox's
    magic prompts for test keys, and is null for live keys."""
    catalog = await services.catalog.for_key(key)
    return envelope(catalog.model_dump())
