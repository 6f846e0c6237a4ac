"""The envelope every API answer comes in, and the handlers that turn errors into one.

The HTTP status is 200 for every envelope (real clients call ``raise_for_status()``);
``code`` carries the outcome. That rule is the API's alone (`speaks_envelope`): file links,
the docs and whatever else lives outside it answer plain HTTP statuses with a short
``text/plain`` body, as browsers, caches and download tools expect. (Unexpected exceptions
become a 500 in ``api/middleware.py``, which names the request id and logs the details
under it.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bananastand.codes import Code
from bananastand.errors import ApiError

_JSON = "application/json"
#: Where the envelope rule holds. (``/healthz``, ``/readyz`` and ``/metrics`` answer plain
#: HTTP: load balancers and Prometheus read statuses, not envelopes.)
_ENVELOPE_PATHS = ("/api", "/admin")


_ENVELOPE_PREFIXES = tuple(base + "/" for base in _ENVELOPE_PATHS)


def speaks_envelope(path: str) -> bool:
    """Whether answers to ``path`` are envelopes (HTTP 200) rather than plain HTTP.

    Asked for every request (the metrics' envelope code): one ``startswith`` of a tuple."""
    return path.startswith(_ENVELOPE_PREFIXES) or path in _ENVELOPE_PATHS


def plain(status: int, text: str, headers: Mapping[str, str] | None = None) -> Response:
    """A plain HTTP answer outside the API: the status, and ``text`` for people to read."""
    return PlainTextResponse(text + "\n", status_code=status, headers=headers)


def envelope(
    data: Any = None,
    *,
    code: int = Code.OK,
    msg: str = "success",
    headers: Mapping[str, str] | None = None,
    success: bool | None = None,
) -> Response:
    """``success`` is sent (first) only where the contract has it: the upload answers."""
    answer: dict[str, Any] = {} if success is None else {"success": success}
    answer.update(code=code, msg=msg, message=msg, data=data)
    body = orjson.dumps(answer)
    return Response(content=body, media_type=_JSON, headers=headers)


def error_envelope(exc: ApiError, *, success: bool | None = None) -> Response:
    """The answer to an API error: its code and message, and ``Retry-After`` (whole
    seconds, at least 1) when the error says when to come back."""
    headers = None
    if exc.retry_after is not None:
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    return envelope(code=exc.code, msg=exc.msg, headers=headers, success=success)


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_envelope(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if not speaks_envelope(request.url.path):
        return plain(exc.status_code, str(exc.detail), exc.headers)
    if exc.status_code == 405:
        msg = f"method {request.method} is not allowed for {request.url.path}"
        return envelope(code=Code.NOT_FOUND, msg=msg, headers=exc.headers)
    if exc.status_code == 404:
        return envelope(code=Code.NOT_FOUND, msg=f"not found: {request.url.path}")
    return envelope(code=exc.status_code, msg=str(exc.detail))


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    # FastAPI prefixes the place ("query", "body"); clients want the field's own name.
    location = [str(part) for part in first.get("loc", ()) if part not in ("query", "body")]
    field = ".".join(location) or "request"
    return envelope(code=Code.VALIDATION, msg=f"{field}: {first.get('msg', 'invalid')}")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
