"""Serving stored files through signed links, and handing out fresh links.

Links work without an API key, whatever ``Authorization`` header comes along. They are
downloads, not API calls: they answer real HTTP statuses with a short ``text/plain`` body,
never the envelope, so that browsers, ``curl -f`` and ``raise_for_status()`` see a failed
download as one. A link that is not ours (forged, tampered with) is 403 whether or not its
file exists; an authentic link past its expiry 410; an authentic, live link to a file that
is gone 404. Files are streamed from storage with ``Content-Length``, ``ETag``,
``Last-Modified`` and single byte ranges.
"""

from __future__ import annotations

from email.utils import formatdate
from typing import Final

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from bananastand.api.deps import CurrentKey, ServicesDep
from bananastand.api.envelope import envelope, plain
from bananastand.api.jobs import parse_json, read_body
from bananastand.errors import ValidationError
from bananastand.files import LinkRefusal

router = APIRouter(tags=["files"])

_DOWNLOAD_URL_BODY_BYTES = 16 * 1024
_REFUSALS: Final = {
    LinkRefusal.FORGED: (403, "forbidden: this link was not signed by this server"),
    LinkRefusal.EXPIRED: (410, "gone: this link has expired (download-url makes a fresh one)"),
    LinkRefusal.MISSING: (404, "not found: the file no longer exists"),
}


@router.post("/api/v1/common/download-url", summary="A fresh 20-minute link to a file")
async def download_url(request: Request, services: ServicesDep, key: CurrentKey) -> Response:
    """``{"url": <a result or upload link of this account, expired or not>}`` -> a new link."""
    body = parse_json(await read_body(request, _DOWNLOAD_URL_BODY_BYTES))
    url = body.get("url") if isinstance(body, dict) else None
    if not isinstance(url, str) or not url:
        raise ValidationError("url: required, a file link of this server")
    return envelope(await services.files.fresh_link(key, url))


@router.api_route(
    "/files/{expires}/{signature}/{key:path}", methods=["GET", "HEAD"], include_in_schema=False
)
async def download(
    request: Request, expires: str, signature: str, key: str, services: ServicesDep
) -> Response:
    opened = await services.files.open_link(expires, signature, key)
    if isinstance(opened, LinkRefusal):
        return plain(*_REFUSALS[opened])
    info, left = opened.info, opened.seconds_left
    if services.settings.s3_presigned_redirect:
        presigned = await services.files.storage.presigned_url(key, left)
        if presigned is not None:
            return RedirectResponse(presigned, status_code=307)
    headers = {
        "ETag": info.etag,
        "Last-Modified": formatdate(info.modified_ms / 1000, usegmt=True),
        "Cache-Control": f"private, max-age={left}",
        "Accept-Ranges": "bytes",
    }
    if request.headers.get("if-none-match") in (info.etag, "*"):
        return Response(status_code=304, headers=headers)
    wanted = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if wanted is not None and if_range is not None and if_range != info.etag:
        wanted = None  # the client's partial copy is stale: send it all
    try:
        span = byte_range(wanted, info.size)
    except _Unsatisfiable:
        return Response(
            status_code=416, headers={**headers, "Content-Range": f"bytes */{info.size}"}
        )
    status = 200
    start, end = 0, info.size - 1
    if span is not None:
        status = 206
        start, end = span
        headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    headers["Content-Length"] = str(end - start + 1)
    if request.method == "HEAD" or info.size == 0:
        return Response(status_code=status, headers=headers, media_type=info.content_type)
    return StreamingResponse(
        services.files.storage.open(key, start, end),
        status_code=status,
        headers=headers,
        media_type=info.content_type,
    )


class _Unsatisfiable(Exception):
    pass


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range a ``Range`` header asks for, as (first, last) inclusive.

    None means "send the whole file": no header, a syntax we ignore (RFC 9110 allows
    that), or several ranges (rare for images; the whole file is a valid answer).
    Raises `_Unsatisfiable` when the range lies outside the file (416).
    """
    if not header or not header.startswith("bytes="):
        return None
    spec = header.removeprefix("bytes=").strip()
    if "," in spec or "-" not in spec:
        return None
    first, _, last = spec.partition("-")
    first, last = first.strip(), last.strip()
    if not first:  # the last N bytes
        if not last.isdigit():
            return None
        count = int(last)
        if count == 0 or size == 0:
            raise _Unsatisfiable
        return max(0, size - count), size - 1
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise _Unsatisfiable
    return start, min(end, size - 1)
