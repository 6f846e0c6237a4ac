"""Serving stored files: result links work without an API key, whatever header comes."""

from __future__ import annotations

from fastapi import APIRouter, Response

from bananastand.api.deps import ServicesDep
from bananastand.errors import NotFoundError

router = APIRouter(tags=["files"])


@router.api_route("/files/{key:path}", methods=["GET", "HEAD"], include_in_schema=False)
async def download(key: str, services: ServicesDep) -> Response:
    """Links are unguessable; a missing file and a malformed key answer alike."""
    try:
        stored = await services.storage.get(key)
    except ValueError:
        stored = None
    if stored is None:
        raise NotFoundError("file not found")
    return Response(
        content=stored.data,
        media_type=stored.content_type,
        headers={"Cache-Control": "private, max-age=86400, immutable"},
    )
