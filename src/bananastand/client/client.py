"""``Client``, the synchronous I/O driver of the flows (``actions``, ``flows``), and what it
shares with ``AsyncClient`` (``async_client``).

Each public method is one line handing a flow to ``_run``; the only code that differs
between the two drivers is ``_run`` and ``_perform`` (``time.sleep`` vs ``asyncio.sleep``,
``send`` vs ``await send``, ``iter_bytes`` vs ``aiter_bytes``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any, Self, Unpack

import httpx

from bananastand.client.actions import (
    Action,
    Close,
    Flow,
    Open,
    Read,
    ReadChunk,
    Send,
    Sleep,
    T,
    opening,
)
from bananastand.client.defaults import DEFAULT_WAIT_TIMEOUT_S
from bananastand.client.errors import TransportError
from bananastand.client.flows import (
    DEFAULT_UPLOAD_PATH,
    Core,
    GenerateOptions,
    ImageSource,
    SubmitOptions,
)
from bananastand.client.models import Image, Result, Task, UploadedFile
from bananastand.client.pacing import PollSchedule, RetryHook, RetryPolicy
from bananastand.client.waiting import UpdateHook, wait

#: Per-request limits; waiting for a task is paced by ``wait``, not by one long request.
DEFAULT_HTTP_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


def lost(action: Action, exc: httpx.HTTPError) -> TransportError:
    """The transport error a flow sees for an HTTP failure of one of its actions."""
    request = action.request if isinstance(action, Send | Open) else response_of(action).request
    url = request.url
    return TransportError(
        f"{request.method} {url}: {type(exc).__name__}: {exc}",
        url=f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}",
        unreachable=_unreachable(exc),
    )


def _unreachable(exc: httpx.HTTPError) -> str | None:
    """Why no connection could be made, from the OS error under httpx's; ``None`` when
    one was made (or the failure was not about connecting)."""
    if isinstance(exc, httpx.ConnectTimeout):
        return "connection timed out"
    if not isinstance(exc, httpx.ConnectError):
        return None
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "name not resolved"
        cause = cause.__cause__ or cause.__context__
    return str(exc) or "cannot connect"


def response_of(action: Action) -> httpx.Response:
    """The response a read or close action is about."""
    assert isinstance(action, Read | ReadChunk | Close)
    return action.response


class ClientBase:
    """What both drivers are configured with: the flows' shared core."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        poll: PollSchedule | None = None,
        on_retry: RetryHook | None = None,
        max_streams: int | None = None,
    ) -> None:
        self._core = Core.configure(base_url, api_key, retry, poll, on_retry, max_streams)

    @property
    def base_url(self) -> str:
        return self._core.base_url


class Client(ClientBase):
    """Synchronous client. ``BANANASTAND_BASE_URL`` / ``BANANASTAND_API_KEY`` fill in
    what is not passed; ``http`` lets the caller bring its own ``httpx.Client``.

    ``max_streams``: waits that may hold an event stream at once, each holding one
    connection of ``http``'s pool (keep it below the pool's size); more waits poll.
    ``stream_http``: another ``httpx.Client`` for the streams alone, so that long-lived
    streams and quick requests keep to pools of their own (closed with this client).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        poll: PollSchedule | None = None,
        on_retry: RetryHook | None = None,
        http: httpx.Client | None = None,
        max_streams: int | None = None,
        stream_http: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            base_url, api_key, retry=retry, poll=poll, on_retry=on_retry, max_streams=max_streams
        )
        self._http = http or httpx.Client(timeout=DEFAULT_HTTP_TIMEOUT)
        self._stream_http = stream_http or self._http

    def _run(self, flow: Flow[T]) -> T:
        reply: Any = None
        error: Exception | None = None
        #: The responses the flow opened and has not closed, with their body iterators.
        streams: dict[httpx.Response, Iterator[bytes]] = {}
        try:
            while True:
                try:
                    action = flow.send(reply) if error is None else flow.throw(error)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
                reply, error = None, None
                if isinstance(action, Sleep):
                    time.sleep(action.seconds)
                    continue
                try:
                    reply = self._perform(action, streams)
                except httpx.HTTPError as exc:
                    error = lost(action, exc)
        finally:
            for response in list(streams):
                self._close(response, streams)

    def _perform(self, action: Action, streams: dict[httpx.Response, Iterator[bytes]]) -> Any:
        if isinstance(action, Send):
            return self._http.send(action.request)
        if isinstance(action, Open):
            http = self._stream_http
            response = http.send(opening(action, http.timeout), stream=True)
            streams[response] = response.iter_bytes()
            return response
        if isinstance(action, Read):
            streams.pop(action.response, None)
            action.response.read()
            return action.response
        if isinstance(action, ReadChunk):
            return next(streams[action.response], b"")
        self._close(response_of(action), streams)
        return None

    @staticmethod
    def _close(response: httpx.Response, streams: dict[httpx.Response, Iterator[bytes]]) -> None:
        chunks = streams.pop(response, None)
        with contextlib.suppress(httpx.HTTPError):
            if chunks is not None:
                getattr(chunks, "close", lambda: None)()
            response.close()

    def close(self) -> None:
        self._http.close()
        if self._stream_http is not self._http:
            self._stream_http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def credits(self) -> float:
        return self._run(self._core.credits())

    def get(self, task_id: str) -> Task:
        return self._run(self._core.get(task_id))

    def cancel(self, task_id: str) -> Task:
        return self._run(self._core.cancel(task_id))

    def upload(
        self,
        source: str | os.PathLike[str] | bytes,
        *,
        upload_path: str = DEFAULT_UPLOAD_PATH,
        file_name: str | None = None,
    ) -> UploadedFile:
        return self._run(self._core.upload(source, upload_path=upload_path, file_name=file_name))

    def submit(
        self, prompt: str, images: Sequence[ImageSource] = (), **options: Unpack[SubmitOptions]
    ) -> str:
        """Create a task (uploading local images first); returns its taskId. Options:
        ``aspect_ratio, resolution, output_format, model, callback_url, idempotency_key,
        lane`` (``"batch"``: bananastand's batch lane, at the batch price)."""
        return self._run(self._core.submit(prompt, images, **options))

    def create(
        self, body: dict[str, Any], idempotency_key: str | None = None, *, resend_lost: bool = True
    ) -> str:
        """createTask with a body as it is (the batch command replays exact bodies)."""
        return self._run(self._core.create(body, idempotency_key, resend_lost=resend_lost))

    def wait(
        self,
        task_id: str,
        *,
        timeout: float = DEFAULT_WAIT_TIMEOUT_S,
        on_update: UpdateHook | None = None,
        raise_on_fail: bool = True,
        just_created: bool = False,
    ) -> Task:
        return self._run(
            wait(
                self._core,
                task_id,
                timeout=timeout,
                on_update=on_update,
                raise_on_fail=raise_on_fail,
                just_created=just_created,
            )
        )

    def download(self, url: str) -> Image:
        return self._run(self._core.download(url))

    def result(self, task: Task) -> Result:
        """The images of a finished task, downloaded."""
        return self._run(self._core.finish(task))

    def generate(
        self, prompt: str, images: Sequence[ImageSource] = (), **options: Unpack[GenerateOptions]
    ) -> Result:
        """Upload, create, wait, download. Options: those of ``submit`` plus ``timeout``
        and ``on_update``; an ``Idempotency-Key`` is made per call unless given."""
        return self._run(self._core.generate(prompt, images, **options))
