"""The envelope every JSON answer comes in, and the one place errors become envelopes.

The HTTP status is 200 for every envelope (real clients call ``raise_for_status()``);
``code`` carries the outcome. A 500 never leaks internals: it names the request id, and
the details go to the log under that id.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bananastand import logs
from bananastand.contract import CODE_NOT_FOUND, CODE_OK, CODE_SERVER_ERROR, CODE_VALIDATION
from bananastand.errors import ApiError
from bananastand.ids import new_request_id

log = logging.getLogger(__name__)

_JSON = "application/json"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def envelope(
    data: Any = None,
    *,
    code: int = CODE_OK,
    msg: str = "success",
    headers: Mapping[str, str] | None = None,
    success: bool | None = None,
) -> Response:
    """``success`` is sent (first) only where the contract has it: the upload answers."""
    answer: dict[str, Any] = {} if success is None else {"success": success}
    answer.update(code=code, msg=msg, message=msg, data=data)
    body = orjson.dumps(answer)
    return Response(content=body, media_type=_JSON, headers=headers)


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers = None
    if exc.retry_after is not None:
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    return envelope(code=exc.code, msg=exc.msg, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        msg = f"method {request.method} is not allowed for {request.url.path}"
        return envelope(code=CODE_NOT_FOUND, msg=msg, headers=exc.headers)
    if exc.status_code == 404:
        return envelope(code=CODE_NOT_FOUND, msg=f"not found: {request.url.path}")
    return envelope(code=exc.status_code, msg=str(exc.detail))


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    # FastAPI prefixes the place ("query", "body"); clients want the field's own name.
    location = [str(part) for part in first.get("loc", ()) if part not in ("query", "body")]
    field = ".".join(location) or "request"
    return envelope(code=CODE_VALIDATION, msg=f"{field}: {first.get('msg', 'invalid')}")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


class RequestContextMiddleware:
    """Gives each request an id (``X-Request-ID``, ours or the caller's if sane), puts it
    on every log line, and turns any unexpected exception into a 500 envelope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if given and _REQUEST_ID.fullmatch(given) else new_request_id()
        token = logs.request_id.set(request_id)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error", extra={"path": scope.get("path")})
            if started:
                raise
            msg = f"internal server error (request id {request_id})"
            response = envelope(code=CODE_SERVER_ERROR, msg=msg)
            await response(scope, receive, send_with_id)
        finally:
            logs.request_id.reset(token)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
