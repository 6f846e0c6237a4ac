"""Puts the IETF ``RateLimit-*`` headers on every answer to a rate-limited call.

The limiting itself is a dependency (``api/deps.py``) that leaves the key's quota in the
request scope; this middleware adds it to whatever answer follows, errors included.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bananastand.api.deps import QUOTA_STATE
from bananastand.ratelimit import Quota


class RateLimitHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_quota(message: Message) -> None:
            if message["type"] == "http.response.start":
                quota: Quota | None = scope.get("state", {}).get(QUOTA_STATE)
                if quota is not None:
                    message["headers"] = [
                        *message.get("headers", []),
                        *(
                            (name.lower().encode(), value.encode())
                            for name, value in quota.headers().items()
                        ),
                    ]
            await send(message)

        await self.app(scope, receive, send_with_quota)
