"""Inbound callbacks from the upstreams we relay tasks to: plain HTTP, not the envelope.

The sender reads the status: 200 once the callback is verified (whether or not a task of
ours still follows it: there is nothing to retry), 401 for a signature that does not
check out, 404 for an upstream that takes no callbacks here.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

from bananastand.api.deps import services_of
from bananastand.api.envelope import plain
from bananastand.api.jobs import read_body
from bananastand.errors import ValidationError
from bananastand.providers.relay_hooks import HookOutcome

router = APIRouter(tags=["upstreams"])

_STATUS = {
    HookOutcome.NUDGED: 200,
    HookOutcome.NO_TASK: 200,
    HookOutcome.UNKNOWN_UPSTREAM: 404,
    HookOutcome.REFUSED: 401,
}


@router.post(
    "/hooks/upstream/{upstream}",
    summary="A jobs-api upstream's callback: the task it names is polled at once",
    response_class=PlainTextResponse,
    responses={401: {"description": "the signature does not verify"}},
)
async def upstream_callback(upstream: str, request: Request) -> Response:
    services = services_of(request)
    try:
        body = await read_body(request, services.settings.max_body_bytes)
    except ValidationError as exc:
        return plain(413, exc.msg)
    outcome = await services.upstream_hooks.receive(upstream, body, request.headers)
    return plain(_STATUS[outcome], outcome.value)
