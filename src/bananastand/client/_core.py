"""Everything the sync and async clients share: the calls themselves, written once.

Each operation (``get``, ``wait``, ``generate``, ...) is a *flow*: a generator that yields
the I/O it needs - ``Send(request)`` or ``Sleep(seconds)`` - and is sent back the
``httpx.Response`` (or has a ``TransportError`` thrown in). Request building, envelope
parsing, error mapping, the retry policy and poll pacing all live in the flows, so
``Client`` and ``AsyncClient`` (``client.py``) are only two small driver loops that
perform those two actions - the "sans-I/O" pattern of
h11/httpcore, not two copies of the logic.
"""

from __future__ import annotations

import enum
import hashlib
import os
import random
import time
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeAlias, TypedDict, TypeVar, Unpack

import httpx
import pydantic

from bananastand import __version__
from bananastand.client.errors import (
    ApiError,
    GenerationFailedError,
    MaintenanceError,
    RateLimitError,
    ServerError,
    TimeoutError,
    TransportError,
    error_for_code,
)
from bananastand.client.models import Image, Result, Task, UploadedFile
from bananastand.contract import TaskState

T = TypeVar("T")

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_MODEL = "nano-banana-pro"
#: A 4K render can take minutes upstream, and a task may queue behind others first.
DEFAULT_WAIT_TIMEOUT_S = 15 * 60
DEFAULT_UPLOAD_PATH = "bananastand-client"
USER_AGENT = f"bananastand-client/{__version__}"


@dataclass(frozen=True)
class Send:
    request: httpx.Request


@dataclass(frozen=True)
class Sleep:
    seconds: float


Action: TypeAlias = Send | Sleep
#: A flow yields actions, is sent responses (or ``None`` after a sleep), returns ``T``.
Flow: TypeAlias = Generator[Action, Any, T]
ImageSource: TypeAlias = str | os.PathLike[str] | bytes


@dataclass(frozen=True)
class Reply:
    data: Any
    headers: httpx.Headers


class Replay(enum.Enum):
    """Which failures a request may be sent again after."""

    #: Idempotent requests (reads, uploads to a content-named path, createTask under an
    #: Idempotency-Key): every transient failure, lost answers included.
    ANY_TRANSIENT = "any"
    #: Requests that must not run twice: only answers proving nothing happened (429, 455).
    REFUSALS = "refusals"

    def allows(self, error: Exception) -> bool:
        if isinstance(error, RateLimitError | MaintenanceError):
            return True
        return self is Replay.ANY_TRANSIENT and isinstance(error, ServerError | TransportError)


@dataclass(frozen=True)
class RetryPolicy:
    """Jittered exponential backoff within a number of attempts and a time budget.

    A ``Retry-After`` the server sent is a floor: the client never comes back earlier.
    """

    max_attempts: int = 6
    budget_s: float = 120.0
    base_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, attempt: int, error: Exception, elapsed_s: float) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``; ``None``: give up."""
        if attempt >= self.max_attempts:
            return None
        delay = random.uniform(0, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))  # noqa: S311
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            delay = retry_after + random.uniform(0, min(1.0, retry_after / 10))  # noqa: S311
        if elapsed_s + delay > self.budget_s:
            return None
        return delay


@dataclass(frozen=True)
class PollSchedule:
    """How often ``wait`` polls: quickly at first, backing off to ``max_s``, and never
    faster than the account's read quota allows (``RateLimit-Remaining`` calls left before
    ``RateLimit-Reset`` seconds), so many waiters sharing a key spread out by themselves."""

    first_s: float = 0.25
    factor: float = 1.5
    max_s: float = 5.0

    def next_delay(self, polls: int, headers: Mapping[str, str]) -> float:
        delay = min(self.max_s, self.first_s * self.factor**polls)
        remaining = _number(headers.get("ratelimit-remaining"))
        reset = _number(headers.get("ratelimit-reset"))
        if remaining is not None and reset is not None:
            delay = max(delay, reset if remaining <= 0 else reset / remaining)
        return delay * random.uniform(0.9, 1.1)  # noqa: S311


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def parse_envelope(response: httpx.Response) -> Any:
    """``data`` of an envelope answer, or the typed error of its ``code``.

    The contract answers HTTP 200 with ``code`` carrying the outcome; a proxy in between
    may still answer 502 or 429 without an envelope, which maps by HTTP status.
    """
    retry_after = _number(response.headers.get("retry-after"))
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("code"), int):
        status = response.status_code
        if status == 200:
            raise TransportError(f"{response.request.url}: the answer is not an envelope")
        code = status if status in (401, 402, 404, 422, 429) else 500
        raise error_for_code(code, f"HTTP {status}", retry_after=retry_after)
    code = body["code"]
    if code != 200:
        message = body.get("msg") or body.get("message") or ""
        raise error_for_code(code, str(message), retry_after=retry_after)
    return body.get("data")


def read_envelope(response: httpx.Response) -> Reply:
    return Reply(parse_envelope(response), response.headers)


def read_image(url: str, response: httpx.Response) -> Image:
    """A file answer; an envelope here is an error (an expired link answers the 404 one)."""
    content_type = response.headers.get("content-type", "").split(";")[0].strip()
    if response.status_code == 200 and content_type != "application/json":
        return Image(
            url=url, data=response.content, mime_type=content_type or sniff_mime(response.content)
        )
    parse_envelope(response)
    raise TransportError(f"{response.request.url}: not an image")


def sniff_mime(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


_EXTENSION = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}


def is_url(source: ImageSource) -> bool:
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


def task_input(
    prompt: str,
    image_urls: Sequence[str],
    *,
    aspect_ratio: str | None,
    resolution: str | None,
    output_format: str | None,
) -> dict[str, Any]:
    """createTask's ``input``; fields left ``None`` are left out (the server's defaults)."""
    fields: dict[str, Any] = {"prompt": prompt}
    if image_urls:
        fields["image_input"] = list(image_urls)
    for name, value in (
        ("aspect_ratio", aspect_ratio),
        ("resolution", resolution),
        ("output_format", output_format),
    ):
        if value is not None:
            fields[name] = str(value)
    return fields


def create_body(
    input_fields: Mapping[str, Any], *, model: str | None, callback_url: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model or DEFAULT_MODEL, "input": dict(input_fields)}
    if callback_url:
        body["callBackUrl"] = callback_url
    return body


UpdateHook: TypeAlias = Callable[[Task], None]


class SubmitOptions(TypedDict, total=False):
    """createTask's options; those left out are the server's defaults."""

    aspect_ratio: str | None
    resolution: str | None
    output_format: str | None
    model: str | None
    callback_url: str | None
    idempotency_key: str | None


class GenerateOptions(SubmitOptions, total=False):
    timeout: float
    on_update: UpdateHook | None


#: Called before each retry with the request, the error and the delay chosen.
RetryHook: TypeAlias = Callable[[httpx.Request, Exception, float], None]


@dataclass
class Core:
    """The client's configuration and its operations as flows."""

    base_url: str
    api_key: str | None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll: PollSchedule = field(default_factory=PollSchedule)
    on_retry: RetryHook | None = None

    @classmethod
    def configure(
        cls,
        base_url: str | None,
        api_key: str | None,
        retry: RetryPolicy | None,
        poll: PollSchedule | None,
        on_retry: RetryHook | None,
    ) -> Core:
        """Arguments win over ``BANANASTAND_BASE_URL`` / ``BANANASTAND_API_KEY``."""
        return cls(
            base_url=(
                base_url or os.environ.get("BANANASTAND_BASE_URL") or DEFAULT_BASE_URL
            ).rstrip("/"),
            api_key=api_key or os.environ.get("BANANASTAND_API_KEY") or None,
            retry=retry or RetryPolicy(),
            poll=poll or PollSchedule(),
            on_retry=on_retry,
        )

    # -- requests ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Request:
        all_headers = {"User-Agent": USER_AGENT, **(headers or {})}
        if self.api_key:
            all_headers["Authorization"] = f"Bearer {self.api_key}"
        return httpx.Request(method, self.base_url + path, headers=all_headers, **kwargs)

    def call(self, request: httpx.Request, replay: Replay) -> Flow[Reply]:
        """Send ``request`` and read its envelope, retrying what ``replay`` allows."""
        return (yield from self.exchange(request, replay, read_envelope))

    def exchange(
        self, request: httpx.Request, replay: Replay, read: Callable[[httpx.Response], T]
    ) -> Flow[T]:
        """Send ``request`` until ``read`` accepts the answer or ``replay`` forbids a retry."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = yield Send(request)
                return read(response)
            except (ApiError, TransportError) as error:
                if not replay.allows(error):
                    raise
                delay = self.retry.delay(attempt, error, time.monotonic() - started)
                if delay is None:
                    raise
                if self.on_retry is not None:
                    self.on_retry(request, error, delay)
                yield Sleep(delay)

    # -- operations -------------------------------------------------------------------------

    def credits(self) -> Flow[float]:
        reply = yield from self.call(
            self.request("GET", "/api/v1/chat/credit"), Replay.ANY_TRANSIENT
        )
        return float(reply.data)

    def get(self, task_id: str) -> Flow[Task]:
        reply = yield from self._get(task_id)
        return _task(reply.data)

    def _get(self, task_id: str) -> Flow[Reply]:
        request = self.request("GET", "/api/v1/jobs/recordInfo", params={"taskId": task_id})
        return (yield from self.call(request, Replay.ANY_TRANSIENT))

    def cancel(self, task_id: str) -> Flow[Task]:
        request = self.request("POST", "/api/v1/jobs/cancel", json={"taskId": task_id})
        reply = yield from self.call(request, Replay.REFUSALS)
        return _task(reply.data)

    def upload(
        self,
        source: str | os.PathLike[str] | bytes,
        *,
        upload_path: str = DEFAULT_UPLOAD_PATH,
        file_name: str | None = None,
    ) -> Flow[UploadedFile]:
        """Upload a local file or bytes. The default name is the content's hash, so sending
        it again overwrites the same file: uploads are safe to retry."""
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        mime = sniff_mime(data)
        name = file_name or hashlib.sha256(data).hexdigest()[:32] + _EXTENSION.get(mime, "")
        request = self.request(
            "POST",
            "/api/file-stream-upload",
            files={"file": (name, data, mime)},
            data={"uploadPath": upload_path, "fileName": name},
        )
        reply = yield from self.call(request, Replay.ANY_TRANSIENT)
        return UploadedFile.model_validate(reply.data)

    def image_urls(self, images: Sequence[ImageSource]) -> Flow[list[str]]:
        """URLs as they are; local paths and bytes uploaded first."""
        urls = []
        for source in images:
            if is_url(source):
                urls.append(str(source))
            else:
                uploaded = yield from self.upload(source)
                urls.append(uploaded.downloadUrl)
        return urls

    def create(
        self, body: Mapping[str, Any], idempotency_key: str | None, *, resend_lost: bool = True
    ) -> Flow[str]:
        """createTask. Sent again after a lost answer (network error, 500) only under an
        ``Idempotency-Key`` (the server then answers with the same task) and ``resend_lost``;
        otherwise only after a refusal (429, 455), which proves nothing was made."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        replay = Replay.ANY_TRANSIENT if idempotency_key and resend_lost else Replay.REFUSALS
        request = self.request("POST", "/api/v1/jobs/createTask", json=body, headers=headers)
        reply = yield from self.call(request, replay)
        if not isinstance(reply.data, dict) or not isinstance(reply.data.get("taskId"), str):
            raise TransportError("createTask answered without a taskId")
        return str(reply.data["taskId"])

    def submit(
        self,
        prompt: str,
        images: Sequence[ImageSource] = (),
        *,
        aspect_ratio: str | None = None,
        resolution: str | None = None,
        output_format: str | None = None,
        model: str | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Flow[str]:
        urls = yield from self.image_urls(images)
        fields = task_input(
            prompt,
            urls,
            aspect_ratio=aspect_ratio,
            resolution=resolution,
            output_format=output_format,
        )
        body = create_body(fields, model=model, callback_url=callback_url)
        return (yield from self.create(body, idempotency_key))

    def wait(
        self,
        task_id: str,
        *,
        timeout: float = DEFAULT_WAIT_TIMEOUT_S,
        on_update: UpdateHook | None = None,
        raise_on_fail: bool = True,
        just_created: bool = False,
    ) -> Flow[Task]:
        """Poll until the task ends (the only waiter for now: an SSE waiter would be a flow
        of the same shape reading a stream instead). ``TimeoutError`` after ``timeout``.

        ``just_created``: the task was accepted a moment ago, so a poll now would only find
        it waiting; the first poll comes after the schedule's first delay instead.
        """
        deadline = time.monotonic() + timeout
        polls = 0
        if just_created:
            yield Sleep(self.poll.next_delay(0, {}))
            polls = 1
        while True:
            reply = yield from self._get(task_id)
            task = _task(reply.data)
            if on_update is not None:
                on_update(task)
            if task.is_final:
                if raise_on_fail and task.state is TaskState.FAIL:
                    raise GenerationFailedError(task)
                return task
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"task {task_id} still {task.state} after {timeout}s", task)
            yield Sleep(min(left, self.poll.next_delay(polls, reply.headers)))
            polls += 1

    def download(self, url: str) -> Flow[Image]:
        """A result link: a plain GET, without the API key (the link is the credential)."""
        request = httpx.Request("GET", url, headers={"User-Agent": USER_AGENT})
        return (yield from self.exchange(request, Replay.ANY_TRANSIENT, partial(read_image, url)))

    def finish(self, task: Task) -> Flow[Result]:
        images = []
        for url in task.result_urls:
            images.append((yield from self.download(url)))
        return Result(task=task, images=images)

    def generate(
        self,
        prompt: str,
        images: Sequence[ImageSource] = (),
        *,
        timeout: float = DEFAULT_WAIT_TIMEOUT_S,
        on_update: UpdateHook | None = None,
        **options: Unpack[SubmitOptions],
    ) -> Flow[Result]:
        options["idempotency_key"] = options.get("idempotency_key") or str(uuid.uuid4())
        task_id = yield from self.submit(prompt, images, **options)
        task = yield from self.wait(
            task_id, timeout=timeout, on_update=on_update, just_created=True
        )
        return (yield from self.finish(task))


def _task(data: Any) -> Task:
    try:
        return Task.model_validate(data)
    except pydantic.ValidationError as exc:
        raise TransportError(f"not a task record: {exc}") from None
