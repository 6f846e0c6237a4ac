"""``BareRoute``: FastAPI routes for the handlers clients call over and over.

For every request, FastAPI's route handler resolves the endpoint's dependencies, reads and
validates a body and serialises the return value through the response model. A handler
that takes the ``Request`` alone and returns a ``Response`` needs none of it, yet that
machinery still cost ~12 us a request (measured in-process: 25 us -> 13 us for a one-line
endpoint), a tenth of what a whole recordInfo costs. A ``BareRoute`` calls the handler
directly and keeps everything else of an ``APIRoute``: its OpenAPI entry (from
``response_model`` and ``openapi_extra``), the app's exception handlers, middleware.

Served from the app's own router rather than through ``include_router``: FastAPI matches a
request against an included router twice (once to pick the router, once inside it), which
measured another ~8-11 us a request.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class BareRoute(APIRoute):
    """An ``APIRoute`` whose endpoint is ``async def handler(request: Request) -> Response``."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        parameters = inspect.signature(endpoint).parameters
        if len(parameters) != 1 or not inspect.iscoroutinefunction(endpoint):
            raise TypeError(
                f"{endpoint.__name__}: a BareRoute handler is async and takes only the Request"
            )
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return handler
