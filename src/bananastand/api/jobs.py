"""The jobs API of the seed: createTask, recordInfo, and our cancel and list."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from functools import partial
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from bananastand.api.deps import (
    CurrentKey,
    Services,
    ServicesDep,
    get_creating_key,
    get_current_key,
    services_of,
)
from bananastand.api.envelope import envelope
from bananastand.api.routing import BareRoute
from bananastand.contract import (
    CREATE_TASK_EXAMPLE,
    MAX_MODEL_CHARS,
    CreateTaskAnswer,
    CreateTaskRequest,
    RecordInfoAnswer,
    TaskIdData,
    TaskPageAnswer,
    TaskState,
)
from bananastand.errors import ValidationError
from bananastand.records import ApiKey, Task

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
#: The two routes every client calls in a loop; the app serves them first, unwrapped.
polled = APIRouter(prefix="/api/v1/jobs", tags=["jobs"], route_class=BareRoute)


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ValidationError(f"body: larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ValidationError(f"body: larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    """JSON whatever the Content-Type says: a JSON body sent as text/plain is common.

    Strict: no lone surrogates (``"\\ud800"``: I-JSON, RFC 7493, forbids them and no
    database text column takes them), no NaN, at most 1024 levels deep. The refusal says
    why and where.
    """
    if not raw.strip():
        raise ValidationError("body: must be a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationError(
            f"body: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None


@polled.post(
    "/createTask",
    summary="Generate content using nano-banana-pro",
    operation_id="createTask",
    response_model=CreateTaskAnswer,
    openapi_extra={
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "maxLength": 255},
                "description": "Repeat a request safely: the same key and body within "
                "the key's lifetime (BANANASTAND_IDEMPOTENCY_TTL_SECONDS, a day unless set) "
                "give the same taskId, never a second task.",
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": CreateTaskRequest.model_json_schema(by_alias=True),
                    "example": CREATE_TASK_EXAMPLE,
                }
            },
        },
    },
)
async def create_task(request: Request) -> Response:
    """Accept a task. The row is durable before this answers, so polling at once finds it.

    With an ``Idempotency-Key`` header, repeating the same request within the key's
    lifetime (``idempotency_ttl_seconds``) returns the same taskId and never creates a
    second task.
    """
    key = await get_creating_key(request)
    services = services_of(request)
    raw = await read_body(request, services.settings.max_body_bytes)
    task_id = await services.tasks.create(
        key, parse_json(raw), raw, idempotency_key=request.headers.get("idempotency-key")
    )
    return envelope({"taskId": task_id})


EVENT_STREAM = "text/event-stream"

_RECORD_INFO_DESCRIPTION = """\
The task's record.

**Event stream.** With `Accept: text/event-stream` the answer is instead a stream of
server-sent events (the hosted API ignores `Accept` and answers JSON: a client asking
for a stream that gets JSON has its first poll). Each event is

    event: task
    id: <updateTime>
    data: <the record, the same JSON object as `data` of the JSON answer>

followed by a blank line: the first at once with the task as it is, then one each time
it changes. The stream ends after the event of a final state (`success`, `fail`); it
also ends after `BANANASTAND_EVENTS_MAX_STREAM_SECONDS` (reconnect and the first event
is the task as it is then), when the server stops and once the key is revoked or
expires. A comment line `: keep-alive`
comes after `BANANASTAND_EVENTS_HEARTBEAT_SECONDS` without news. A missing key, a
missing taskId or an unknown task answer the usual JSON envelope (401, 422, 404).
"""


@polled.get(
    "/recordInfo",
    summary="Get Task Details",
    description=_RECORD_INFO_DESCRIPTION,
    operation_id="recordInfo",
    response_model=RecordInfoAnswer,
    responses={
        200: {
            "content": {
                EVENT_STREAM: {
                    "schema": {"type": "string"},
                    "example": 'event: task\nid: 1765178625768\ndata: {"taskId":"task_...",'
                    '"state":"generating",...}\n\n',
                }
            }
        }
    },
    openapi_extra={
        "parameters": [
            {"name": "taskId", "in": "query", "required": True, "schema": {"type": "string"}},
            {
                "name": "Accept",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": f"`{EVENT_STREAM}`: answer with an event stream (see above).",
            },
        ]
    },
)
async def record_info(request: Request) -> Response:
    key = await get_current_key(request)
    task_id = request.query_params.get("taskId")
    if not task_id:
        raise ValidationError("taskId: required")
    services = services_of(request)
    task = await services.tasks.get(key, task_id)
    accept = request.headers.get("accept")
    if accept is not None and EVENT_STREAM in accept:
        return task_events(services, key, task, request.headers.get("authorization"))
    return envelope(services.records.record(task))


def task_events(services: Services, key: ApiKey, task: Task, authorization: str | None) -> Response:
    """recordInfo as server-sent events; errors were answered as envelopes before this."""
    key_check = partial(services.accounts.authenticate, authorization)

    async def events() -> AsyncIterator[bytes]:
        async with aclosing(services.tasks.follow(key, task, key_check=key_check)) as changes:
            async for changed in changes:
                yield _KEEP_ALIVE if changed is None else _event(services.records.record(changed))

    return StreamingResponse(
        events(),
        media_type=EVENT_STREAM,
        # No caching, and no buffering by proxies that honour it (nginx).
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


_KEEP_ALIVE = b": keep-alive\n\n"


def _event(record: dict[str, Any]) -> bytes:
    # orjson writes no newlines, so the record is one ``data:`` line.
    return b"event: task\nid: %d\ndata: %s\n\n" % (record["updateTime"], orjson.dumps(record))


@router.post(
    "/cancel",
    summary="Cancel a task that is not generating yet",
    operation_id="cancelTask",
    response_model=RecordInfoAnswer,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": TaskIdData.model_json_schema()}},
        }
    },
)
async def cancel_task(request: Request, services: ServicesDep, key: CurrentKey) -> Response:
    """Ends a waiting or queuing task as ``fail`` with failMsg ``canceled``; later: 422."""
    body = parse_json(await read_body(request, services.settings.max_body_bytes))
    task_id = body.get("taskId") if isinstance(body, dict) else None
    if not isinstance(task_id, str) or not task_id:
        raise ValidationError("taskId: required")
    task = await services.tasks.cancel(key, task_id)
    return envelope(services.records.record(task))


@router.get(
    "/list",
    summary="List the account's tasks, newest first",
    operation_id="listTasks",
    response_model=TaskPageAnswer,
)
async def list_tasks(
    services: ServicesDep,
    key: CurrentKey,
    state: TaskState | None = None,
    model: Annotated[str | None, Query(min_length=1, max_length=MAX_MODEL_CHARS)] = None,
    limit: int = 20,
    cursor: str | None = None,
) -> Response:
    """Each item is the task's record with `thumbnailUrl`: a link to a small WebP preview
    of its first result, made on its first request, or null until the task has
    succeeded. `model` keeps the tasks of that model (exact name): one the server does
    not know, or no longer serves, is no error; it lists what tasks of it there are."""
    page = await services.tasks.list(key, state=state, limit=limit, cursor=cursor, model=model)
    return envelope(
        {
            "items": [services.records.list_item(task) for task in page.tasks],
            "nextCursor": page.next_cursor,
        }
    )
