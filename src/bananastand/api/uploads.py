"""The three upload endpoints of the hosted API: multipart stream, URL, and base64.

Their answers carry a ``success`` flag beside the envelope (clients check it), errors
included, hence the route class below. Each endpoint caps its own body: uploads are far
larger than the createTask bodies ``max_body_bytes`` is made for.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from bananastand.api.deps import CurrentKey, ServicesDep
from bananastand.api.envelope import envelope, error_envelope
from bananastand.api.jobs import parse_json, read_body
from bananastand.errors import ApiError, ValidationError
from bananastand.files import UploadedFile
from bananastand.storage.base import CHUNK_BYTES

#: Room for the multipart framing and the text fields around the file.
_FORM_OVERHEAD = 64 * 1024
_DATA_URL = re.compile(r"data:[^,;]*(?:;[^,;]*)*;base64,", re.IGNORECASE)


class _UploadRoute(APIRoute):
    """Answers errors, authentication included, with ``"success": false`` added."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return error_envelope(exc, success=False)

        return route


router = APIRouter(prefix="/api", tags=["files"], route_class=_UploadRoute)


def _uploaded(uploaded: UploadedFile) -> Response:
    return envelope(uploaded.to_data(), msg="File uploaded successfully", success=True)


async def _read_form(request: Request, limit: int) -> FormData:
    """The multipart form, refusing a body over ``limit`` bytes while it arrives (the file
    part is spooled to disk past 1 MB by Starlette, never held in memory whole)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ValidationError("file: send multipart/form-data with a 'file' part")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ValidationError(f"file: larger than {limit - _FORM_OVERHEAD} bytes")

    async def capped() -> AsyncGenerator[bytes, None]:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ValidationError(f"file: larger than {limit - _FORM_OVERHEAD} bytes")
            yield chunk

    try:
        return await MultiPartParser(request.headers, capped(), max_files=1, max_fields=8).parse()
    except MultiPartException as exc:
        raise ValidationError(f"file: {exc.message}") from None


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValidationError(f"{name}: must be text")
    return value


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK_BYTES):
        yield chunk


def _json_text(body: Any, name: str, *, required: bool = False) -> str:
    value = body.get(name, "") if isinstance(body, dict) else ""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ValidationError(f"{name}: must be a string")
    if required and not value:
        raise ValidationError(f"{name}: required")
    return value


@router.post("/file-stream-upload", summary="Upload an image (multipart)")
async def stream_upload(request: Request, services: ServicesDep, key: CurrentKey) -> Response:
    """Multipart ``file``, ``uploadPath``, optional ``fileName`` (default: the part's name)."""
    form = await _read_form(request, services.settings.max_upload_bytes + _FORM_OVERHEAD)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ValidationError("file: required, a multipart file part")
        uploaded = await services.files.upload_stream(
            key,
            _text(form, "uploadPath"),
            _text(form, "fileName") or upload.filename or "",
            _chunks(upload),
        )
    finally:
        await form.close()
    return _uploaded(uploaded)


@router.post("/file-url-upload", summary="Upload an image fetched from a URL")
async def url_upload(request: Request, services: ServicesDep, key: CurrentKey) -> Response:
    """JSON ``fileUrl``, ``uploadPath``, ``fileName``; fetched with the SSRF-safe client."""
    body = parse_json(await read_body(request, services.settings.max_body_bytes))
    uploaded = await services.files.upload_url(
        key,
        _json_text(body, "uploadPath"),
        _json_text(body, "fileName"),
        _json_text(body, "fileUrl", required=True),
    )
    return _uploaded(uploaded)


@router.post("/file-base64-upload", summary="Upload an image sent as base64")
async def base64_upload(request: Request, services: ServicesDep, key: CurrentKey) -> Response:
    """JSON ``base64Data`` (plain or a ``data:...;base64,`` URL), ``uploadPath``,
    ``fileName``. Arrives whole, so it has its own, smaller cap."""
    limit = services.settings.max_base64_upload_bytes
    body = parse_json(await read_body(request, limit * 4 // 3 + _FORM_OVERHEAD))
    encoded = _json_text(body, "base64Data", required=True)
    prefix = _DATA_URL.match(encoded)
    if prefix is not None:
        encoded = encoded[prefix.end() :]
    encoded = "".join(encoded.split())
    encoded += "=" * (-len(encoded) % 4)  # many encoders leave the padding out
    try:
        data = base64.b64decode(encoded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError("base64Data: not valid base64") from None
    uploaded = await services.files.upload_bytes(
        key, _json_text(body, "uploadPath"), _json_text(body, "fileName"), data, limit=limit
    )
    return _uploaded(uploaded)
