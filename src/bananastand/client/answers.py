"""What the server answered, as values or as the typed error it stands for: envelopes,
task records (polled or streamed) and downloaded images."""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httpx
import pydantic

from bananastand.client.errors import TransportError, error_for_code
from bananastand.client.events import ServerSentEvent
from bananastand.client.models import Image, Task
from bananastand.client.pacing import header_number
from bananastand.codes import Code
from bananastand.image_types import sniff_image_type

#: HTTP statuses that keep their meaning when no envelope came; any other is a server error.
_HTTP_STATUSES = frozenset(
    {
        Code.UNAUTHORIZED,
        Code.INSUFFICIENT_CREDITS,
        HTTPStatus.FORBIDDEN,
        Code.NOT_FOUND,
        HTTPStatus.GONE,
        Code.VALIDATION,
        Code.RATE_LIMITED,
    }
)
#: How much of a plain-text error answer goes into the error's message.
_REASON_CHARS = 200


@dataclass(frozen=True)
class Reply:
    data: Any
    headers: httpx.Headers


def parse_envelope(response: httpx.Response) -> Any:
    """``data`` of an envelope answer, or the typed error of its ``code``.

    The contract answers HTTP 200 with ``code`` carrying the outcome; a proxy in between
    may still answer 502 or 429 without an envelope, and file links answer plain HTTP
    (403, 404, 410): those map by HTTP status, with the server's ``text/plain`` reason.
    """
    retry_after = header_number(response.headers.get("retry-after"))
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("code"), int):
        status = response.status_code
        if status == 200:
            raise TransportError(f"{response.request.url}: the answer is not an envelope")
        code = status if status in _HTTP_STATUSES else Code.SERVER_ERROR
        msg = f"HTTP {status}"
        if response.headers.get("content-type", "").startswith("text/plain"):
            msg += f": {response.text.strip()[:_REASON_CHARS]}"
        raise error_for_code(code, msg, retry_after=retry_after)
    code = body["code"]
    if code != Code.OK:
        message = body.get("msg") or body.get("message") or ""
        raise error_for_code(code, str(message), retry_after=retry_after)
    return body.get("data")


def read_envelope(response: httpx.Response) -> Reply:
    return Reply(parse_envelope(response), response.headers)


def read_image(url: str, response: httpx.Response) -> Image:
    """A file answer; anything else is an error: an HTTP status (a bad link is 403, an
    expired one 410, a deleted file 404) or an envelope (older servers answered those
    with the 404 one)."""
    content_type = response.headers.get("content-type", "").split(";")[0].strip()
    if response.status_code == 200 and content_type != "application/json":
        return Image(
            url=url, data=response.content, mime_type=content_type or media_type(response.content)
        )
    parse_envelope(response)
    raise TransportError(f"{response.request.url}: not an image")


def media_type(data: bytes) -> str:
    """The image type of ``data`` by its first bytes, as the server decides it; bytes of
    another kind are sent and kept as they are, for the server to judge."""
    return sniff_image_type(data) or "application/octet-stream"


def task_record(data: Any) -> Task:
    try:
        return Task.model_validate(data)
    except pydantic.ValidationError as exc:
        raise TransportError(f"not a task record: {exc}") from None


def event_task(event: ServerSentEvent) -> Task:
    try:
        data = json.loads(event.data)
    except ValueError:
        raise TransportError(f"an event that is not JSON: {event.data[:100]!r}") from None
    return task_record(data)
