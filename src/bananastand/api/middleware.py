"""The one middleware around every request: its id, its quota headers, and the last-resort
500 (an envelope in the API, plain HTTP elsewhere).

One class rather than one per concern: each ASGI layer wraps ``send`` once more and costs
every request a few microseconds, on routes whose whole budget is about a hundred.
"""

from __future__ import annotations

import logging
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bananastand import logs
from bananastand.api.deps import QUOTA_STATE
from bananastand.api.envelope import envelope, plain, speaks_envelope
from bananastand.contract import CODE_SERVER_ERROR
from bananastand.ids import new_request_id
from bananastand.ratelimit import Quota

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class RequestContextMiddleware:
    """Gives each request an id (``X-Request-ID``, ours or the caller's if sane) and puts it
    on every log line; adds the IETF ``RateLimit-*`` headers of the caller's quota (which
    the rate-limiting dependency leaves in the scope) to whatever answer follows, errors
    included; turns any unexpected exception into a 500 (an envelope in the API)."""

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

        async def send_with_context(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
                quota: Quota | None = scope.get("state", {}).get(QUOTA_STATE)
                if quota is not None:
                    headers.extend(
                        (name.lower().encode(), value.encode())
                        for name, value in quota.headers().items()
                    )
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_context)
        except Exception:
            log.exception("unhandled error", extra={"path": scope.get("path")})
            if started:
                raise
            msg = f"internal server error (request id {request_id})"
            if speaks_envelope(scope["path"]):
                response = envelope(code=CODE_SERVER_ERROR, msg=msg)
            else:
                response = plain(500, msg)
            await response(scope, receive, send_with_context)
        finally:
            logs.request_id.reset(token)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
