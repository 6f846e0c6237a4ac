"""Everything the sync and async clients share: the calls themselves, written once.

Each operation (``get``, ``wait``, ``generate``, ...) is a *flow*: a generator that yields
the I/O it needs - ``Send(request)`` or ``Sleep(seconds)``, and for event streams
``Open(request)``, ``Read(response)``, ``ReadChunk(response)``, ``Close(response)`` - and
is sent back the ``httpx.Response`` or bytes (or has a ``TransportError`` thrown in).
Request building, envelope parsing, server-sent event parsing, error mapping, the retry
policy and poll pacing all live in the flows, so ``Client`` and ``AsyncClient``
(``client.py``) are only two small driver loops that perform those actions - the
"sans-I/O" pattern of h11/httpcore, not two copies of the logic.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
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
from bananastand.image_types import EXTENSIONS, sniff_image_type

T = TypeVar("T")

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_MODEL = "nano-banana-pro"
#: A 4K render can take minutes upstream, and a task may queue behind others first.
DEFAULT_WAIT_TIMEOUT_S = 15 * 60
DEFAULT_UPLOAD_PATH = "bananastand-client"
USER_AGENT = f"bananastand-client/{__version__}"
EVENT_STREAM = "text/event-stream"
RECORD_INFO = "/api/v1/jobs/recordInfo"
#: Waits that may hold an event stream at once; the others poll. Each stream holds one
#: connection of the HTTP pool for as long as it lasts (httpx's default pool: 100).
DEFAULT_MAX_STREAMS = 32
#: Longest silence on an open stream before it counts as lost: bananastand sends a
#: keep-alive every 15 s.
STREAM_READ_TIMEOUT_S = 60.0
#: A stream whose read timeout outlasts the wait's deadline by more than this is opened
#: again with a shorter one, so a wait ends at its ``timeout``, not up to a read timeout
#: later (a blocking read cannot be cut short from outside).
DEADLINE_SLACK_S = 1.0
#: HTTP statuses that keep their meaning when no envelope came; any other is a server error.
_HTTP_STATUSES = frozenset({401, 402, 403, 404, 410, 422, 429})
#: How much of a plain-text error answer goes into the error's message.
_REASON_CHARS = 200


@dataclass(frozen=True)
class Send:
    request: httpx.Request


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Open:
    """Send ``request`` and return the response as soon as its headers are in, its body
    unread; ``read_timeout`` replaces the HTTP client's read timeout for this response."""

    request: httpx.Request
    read_timeout: float


@dataclass(frozen=True)
class Read:
    """Read the rest of an opened response's body (and free its connection)."""

    response: httpx.Response


@dataclass(frozen=True)
class ReadChunk:
    """The next piece of an opened response's body, as it arrives; ``b""`` at its end."""

    response: httpx.Response


@dataclass(frozen=True)
class Close:
    """Close an opened response, read or not. (Drivers also close any response a flow
    leaves open, whatever way it ends.)"""

    response: httpx.Response


Action: TypeAlias = Send | Sleep | Open | Read | ReadChunk | Close
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
    ``unreachable_budget_s`` (default: ``budget_s``) bounds the retrying of connections
    that could not be made at all (refused, name not resolved): a server that is being
    restarted comes back within seconds, one that is not running never does, and a
    person at a prompt (the CLI uses 1 s) would rather hear so at once.
    """

    max_attempts: int = 6
    budget_s: float = 120.0
    base_s: float = 0.5
    cap_s: float = 30.0
    unreachable_budget_s: float | None = None

    def delay(self, attempt: int, error: Exception, elapsed_s: float) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``; ``None``: give up."""
        if attempt >= self.max_attempts:
            return None
        budget = self.budget_s
        if (
            self.unreachable_budget_s is not None
            and isinstance(error, TransportError)
            and error.unreachable is not None
        ):
            budget = min(budget, self.unreachable_budget_s)
        delay = random.uniform(0, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))  # noqa: S311
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            delay = retry_after + random.uniform(0, min(1.0, retry_after / 10))  # noqa: S311
        if elapsed_s + delay > budget:
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


def opening(action: Open, timeout: httpx.Timeout) -> httpx.Request:
    """``action``'s request with the client's ``timeout`` but the action's read timeout."""
    request = action.request
    request.extensions = {
        **request.extensions,
        "timeout": {**timeout.as_dict(), "read": action.read_timeout},
    }
    return request


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None


class EventDecoder:
    """Server-sent events from the bytes of a stream, as they arrive (the WHATWG rules a
    client needs: fields, multi-line data, comments, the three line endings).

    Not httpx-sse: it reads the response itself (``iter_sse``/``aiter_sse``), one version
    for sync and one for async, while the flows here must stay free of I/O; and its
    line decoder is private API. The format is small enough to parse here.
    """

    #: Largest event (or line) accepted: a record is a few KB, its ``param`` at most 256 KB.
    MAX_BYTES = 8 * 1024 * 1024

    def __init__(self) -> None:
        self._pending = b""
        self._after_cr = False
        self._event = ""
        self._data: list[str] = []
        self._size = 0
        self._last_id: str | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """The events that ``chunk`` completes."""
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split between two chunks
        lines = (self._pending + chunk).splitlines(keepends=True)
        self._pending = b""
        if lines and not lines[-1].endswith((b"\n", b"\r")):
            self._pending = lines.pop()  # unterminated: waits for the rest
        self._after_cr = bool(lines) and lines[-1].endswith(b"\r")
        if len(self._pending) > self.MAX_BYTES:
            raise TransportError("event stream: a line longer than the client accepts")
        events = []
        for raw in lines:
            event = self._line(raw.rstrip(b"\r\n").decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: keep-alive
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._size += len(value)
            if self._size > self.MAX_BYTES:
                raise TransportError("event stream: an event larger than the client accepts")
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        return None  # "retry" and unknown fields: nothing this client uses

    def _dispatch(self) -> ServerSentEvent | None:
        data, event = self._data, self._event
        self._data, self._event, self._size = [], "", 0
        if not data:
            return None
        return ServerSentEvent(event=event or "message", data="\n".join(data), id=self._last_id)


def is_event_stream(response: httpx.Response) -> bool:
    content_type = str(response.headers.get("content-type", ""))
    return content_type.split(";")[0].strip().lower() == EVENT_STREAM


def parse_envelope(response: httpx.Response) -> Any:
    """``data`` of an envelope answer, or the typed error of its ``code``.

    The contract answers HTTP 200 with ``code`` carrying the outcome; a proxy in between
    may still answer 502 or 429 without an envelope, and file links answer plain HTTP
    (403, 404, 410): those map by HTTP status, with the server's ``text/plain`` reason.
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
        code = status if status in _HTTP_STATUSES else 500
        msg = f"HTTP {status}"
        if response.headers.get("content-type", "").startswith("text/plain"):
            msg += f": {response.text.strip()[:_REASON_CHARS]}"
        raise error_for_code(code, msg, retry_after=retry_after)
    code = body["code"]
    if code != 200:
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
            url=url, data=response.content, mime_type=content_type or sniff_mime(response.content)
        )
    parse_envelope(response)
    raise TransportError(f"{response.request.url}: not an image")


def sniff_mime(data: bytes) -> str:
    """The image type of ``data`` by its first bytes, as the server decides it; bytes of
    another kind are sent and kept as they are, for the server to judge."""
    return sniff_image_type(data) or "application/octet-stream"


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
    #: Waits holding an event stream at once (each holds a pooled connection); more poll.
    max_streams: int = DEFAULT_MAX_STREAMS
    #: How the server answered the last request for a stream: True with a stream, False
    #: with JSON (it offers none), None before the first.
    streams_offered: bool | None = field(default=None, init=False)
    _streams: int = field(default=0, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def configure(
        cls,
        base_url: str | None,
        api_key: str | None,
        retry: RetryPolicy | None,
        poll: PollSchedule | None,
        on_retry: RetryHook | None,
        max_streams: int | None = None,
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
            max_streams=DEFAULT_MAX_STREAMS if max_streams is None else max_streams,
        )

    @contextmanager
    def _stream_slot(self) -> Iterator[bool]:
        """Whether this wait may hold a stream (fewer than ``max_streams`` do), for the
        time of the ``with`` block. Locked: a sync ``Client`` may wait in many threads."""
        with self._lock:
            free = self._streams < self.max_streams
            if free:
                self._streams += 1
        try:
            yield free
        finally:
            if free:
                with self._lock:
                    self._streams -= 1

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
        request = self.request("GET", RECORD_INFO, params={"taskId": task_id})
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
        name = file_name or hashlib.sha256(data).hexdigest()[:32] + EXTENSIONS.get(mime, "")
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
        """Wait until the task ends; ``TimeoutError`` after ``timeout`` seconds.

        The first recordInfo asks for an event stream (``Accept: text/event-stream``).
        Where the server sends one, the wait reads the task's events until a final one
        (``on_update`` for each change), opening the stream again if it drops or ends
        early. A server that answers JSON (the hosted API ignores ``Accept``) has answered
        the first poll, and the wait polls on: quickly at first, backing off, never faster
        than its ``RateLimit-*`` headers allow (``on_update`` for each poll).

        Every wait asks for a stream: to a server without them the question costs nothing,
        its JSON answer being the first poll, and a server that starts offering them (an
        upgrade, another instance behind the same name) is used at once. What the Core
        remembers, ``streams_offered``, only decides ``just_created``: a stream is opened
        at once (its first event comes the moment anything changes), but where the last
        answer was JSON the first poll waits for the schedule's first delay, since right
        after createTask a poll could only find the task waiting.

        At most ``max_streams`` waits hold a stream at once (each holds a pooled
        connection); the others poll, so waits cannot starve the pool.
        """
        deadline = time.monotonic() + timeout
        polls = 0
        reply: Reply | None = None
        with self._stream_slot() as may_stream:
            if just_created and not (may_stream and self.streams_offered is not False):
                yield Sleep(self.poll.next_delay(0, {}))
                polls = 1
            if may_stream:
                followed = yield from self._follow(task_id, deadline, timeout, on_update)
                if isinstance(followed, Task):
                    return _ended(followed, raise_on_fail)
                reply = followed
        while True:
            if reply is None:
                reply = yield from self._get(task_id)
            task = _task(reply.data)
            if on_update is not None:
                on_update(task)
            if task.is_final:
                return _ended(task, raise_on_fail)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"task {task_id} still {task.state} after {timeout}s", task)
            yield Sleep(min(left, self.poll.next_delay(polls, reply.headers)))
            polls += 1
            reply = None

    def _follow(
        self, task_id: str, deadline: float, timeout: float, on_update: UpdateHook | None
    ) -> Flow[Task | Reply]:
        """Read the task's event stream to its final event, and return that task; or,
        when the server answers JSON instead (it offers no streams), return that answer:
        the first poll.

        A stream that brought events and then ended or dropped is opened again: at once
        if it lasted, else at the poll schedule's pace (a server or proxy that cuts streams
        short is then polled, not hammered). Failing to get a stream at all (network
        errors, 429, 455, 500) is retried under the retry policy, whose count starts over
        whenever a stream delivers an event. The first event of each stream is the task as
        it is; ``on_update`` hears only of changes.
        """
        last: Task | None = None
        failures = 0
        failing_since = 0.0
        short_streams = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                state = f"still {last.state}" if last is not None else "not seen"
                raise TimeoutError(f"task {task_id} {state} after {timeout}s", last)
            read_timeout = min(STREAM_READ_TIMEOUT_S, left)
            request = self.request(
                "GET", RECORD_INFO, params={"taskId": task_id}, headers={"Accept": EVENT_STREAM}
            )
            response: httpx.Response | None = None
            headers: Mapping[str, str] = {}
            opened_at = time.monotonic()
            events = 0
            reopen_now = False
            try:
                response = yield Open(request, read_timeout)
                headers = response.headers
                if not is_event_stream(response):
                    reply = read_envelope((yield Read(response)))
                    self.streams_offered = False
                    return reply
                self.streams_offered = True
                decoder = EventDecoder()
                while True:
                    chunk = yield ReadChunk(response)
                    if not chunk:
                        break  # the server ended it early (its longest stream, a restart)
                    for event in decoder.feed(chunk):
                        if event.event != "task":
                            continue
                        task = _event_task(event)
                        events += 1
                        failures = 0  # a stream that works: later failures count anew
                        if on_update is not None and (
                            last is None
                            or (task.state, task.updateTime) != (last.state, last.updateTime)
                        ):
                            on_update(task)
                        last = task
                        if task.is_final:
                            yield from _drain(response)
                            return task
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    if read_timeout - left > DEADLINE_SLACK_S:
                        reopen_now = True  # with a read timeout that ends by the deadline
                        break
                yield Close(response)
                response = None
                if not events:
                    raise TransportError(f"{request.url}: the event stream ended without events")
            except (ApiError, TransportError) as error:
                if response is not None:
                    yield Close(response)
                if not events:
                    if not Replay.ANY_TRANSIENT.allows(error):
                        raise
                    failures += 1
                    if failures == 1:
                        failing_since = time.monotonic()
                    delay = self.retry.delay(failures, error, time.monotonic() - failing_since)
                    if delay is None:
                        raise
                    if self.on_retry is not None:
                        self.on_retry(request, error, delay)
                    yield Sleep(max(0.0, min(delay, deadline - time.monotonic())))
                    continue
            # A stream that brought events has ended or dropped: open the next one.
            if reopen_now or time.monotonic() - opened_at >= self.poll.max_s:
                short_streams = 0
                continue
            pause = self.poll.next_delay(short_streams, headers)
            short_streams += 1
            yield Sleep(max(0.0, min(pause, deadline - time.monotonic())))

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


def _drain(response: httpx.Response) -> Flow[None]:
    """Read a stream to its end, then close it. bananastand ends a stream right after its
    final event; reading that end hands the connection back to the pool for the next
    request, where closing the stream first would have thrown the connection away."""
    try:
        while (yield ReadChunk(response)):
            pass
    except TransportError:
        pass  # the task is final: nothing more was needed from this stream
    yield Close(response)


def _ended(task: Task, raise_on_fail: bool) -> Task:
    if raise_on_fail and task.state is TaskState.FAIL:
        raise GenerationFailedError(task)
    return task


def _event_task(event: ServerSentEvent) -> Task:
    try:
        data = json.loads(event.data)
    except ValueError:
        raise TransportError(f"an event that is not JSON: {event.data[:100]!r}") from None
    return _task(data)


def _task(data: Any) -> Task:
    try:
        return Task.model_validate(data)
    except pydantic.ValidationError as exc:
        raise TransportError(f"not a task record: {exc}") from None
