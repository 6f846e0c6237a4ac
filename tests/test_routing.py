"""Unit: ``BareRoute``: the unwrapped route of the polled endpoints refuses handlers it cannot
call."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI, Request, Response

from bananastand.api.routing import BareRoute


async def takes_more(request: Request, extra: Any) -> Response:
    raise AssertionError("never called")


def not_async(request: Request) -> Response:
    raise AssertionError("never called")


@pytest.mark.parametrize("handler", [takes_more, not_async])
def test_a_bare_route_refuses_a_handler_that_is_not_async_request_only(handler: Any) -> None:
    with pytest.raises(TypeError, match="takes only the Request"):
        BareRoute("/x", handler, methods=["GET"])


def test_a_bare_route_keeps_its_openapi_entry() -> None:
    async def answer(request: Request) -> Response:
        return Response(b"{}", media_type="application/json")

    app = FastAPI(routes=[BareRoute("/x", answer, methods=["GET"], operation_id="answerX")])
    assert app.openapi()["paths"]["/x"]["get"]["operationId"] == "answerX"
