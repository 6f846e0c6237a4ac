"""``AsyncClient``, the asynchronous I/O driver of the flows: ``Client``'s twin (see
``client``), every method a coroutine."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Self, Unpack

import httpx

from bananastand.client.actions import Action, Flow, Open, Read, ReadChunk, Send, Sleep, T, opening
from bananastand.client.client import DEFAULT_HTTP_TIMEOUT, ClientBase, lost, response_of
from bananastand.client.defaults import DEFAULT_WAIT_TIMEOUT_S
from bananastand.client.flows import (
    DEFAULT_UPLOAD_PATH,
    GenerateOptions,
    ImageSource,
    SubmitOptions,
)
from bananastand.client.models import Image, Result, Task, UploadedFile
from bananastand.client.pacing import PollSchedule, RetryHook, RetryPolicy
from bananastand.client.waiting import UpdateHook, wait


class AsyncClient(ClientBase):
    """The same API as ``Client``, every method a coroutine.

    ``max_requests``: requests (other than streams) sent on ``http`` at once; the rest
    wait their turn here. Give it the size of ``http``'s pool when many coroutines share
    the client: httpcore rescans every request queued in its pool each time one starts or
    ends, which with 64 jobs on 8 connections took about a third of a batch's CPU.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        poll: PollSchedule | None = None,
        on_retry: RetryHook | None = None,
        http: httpx.AsyncClient | None = None,
        max_streams: int | None = None,
        stream_http: httpx.AsyncClient | None = None,
        max_requests: int | None = None,
    ) -> None:
        super().__init__(
            base_url, api_key, retry=retry, poll=poll, on_retry=on_retry, max_streams=max_streams
        )
        self._http = http or httpx.AsyncClient(timeout=DEFAULT_HTTP_TIMEOUT)
        self._stream_http = stream_http or self._http
        self._turns = asyncio.Semaphore(max_requests) if max_requests else None

    async def _run(self, flow: Flow[T]) -> T:
        reply: Any = None
        error: Exception | None = None
        streams: dict[httpx.Response, AsyncIterator[bytes]] = {}
        try:
            while True:
                try:
                    action = flow.send(reply) if error is None else flow.throw(error)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
                reply, error = None, None
                if isinstance(action, Sleep):
                    await asyncio.sleep(action.seconds)
                    continue
                try:
                    reply = await self._perform(action, streams)
                except httpx.HTTPError as exc:
                    error = lost(action, exc)
        finally:
            for response in list(streams):
                await self._close(response, streams)

    async def _perform(
        self, action: Action, streams: dict[httpx.Response, AsyncIterator[bytes]]
    ) -> Any:
        if isinstance(action, Send):
            if self._turns is None:
                return await self._http.send(action.request)
            async with self._turns:
                return await self._http.send(action.request)
        if isinstance(action, Open):
            http = self._stream_http
            response = await http.send(opening(action, http.timeout), stream=True)
            streams[response] = response.aiter_bytes()
            return response
        if isinstance(action, Read):
            streams.pop(action.response, None)
            await action.response.aread()
            return action.response
        if isinstance(action, ReadChunk):
            return await anext(streams[action.response], b"")
        await self._close(response_of(action), streams)
        return None

    @staticmethod
    async def _close(
        response: httpx.Response, streams: dict[httpx.Response, AsyncIterator[bytes]]
    ) -> None:
        chunks = streams.pop(response, None)
        with contextlib.suppress(httpx.HTTPError):
            if chunks is not None:
                closing = getattr(chunks, "aclose", None)
                if closing is not None:
                    await closing()
            await response.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._stream_http is not self._http:
            await self._stream_http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def credits(self) -> float:
        return await self._run(self._core.credits())

    async def get(self, task_id: str) -> Task:
        return await self._run(self._core.get(task_id))

    async def cancel(self, task_id: str) -> Task:
        return await self._run(self._core.cancel(task_id))

    async def upload(
        self,
        source: str | os.PathLike[str] | bytes,
        *,
        upload_path: str = DEFAULT_UPLOAD_PATH,
        file_name: str | None = None,
    ) -> UploadedFile:
        return await self._run(
            self._core.upload(source, upload_path=upload_path, file_name=file_name)
        )

    async def submit(
        self, prompt: str, images: Sequence[ImageSource] = (), **options: Unpack[SubmitOptions]
    ) -> str:
        return await self._run(self._core.submit(prompt, images, **options))

    async def create(
        self, body: dict[str, Any], idempotency_key: str | None = None, *, resend_lost: bool = True
    ) -> str:
        return await self._run(self._core.create(body, idempotency_key, resend_lost=resend_lost))

    async def wait(
        self,
        task_id: str,
        *,
        timeout: float = DEFAULT_WAIT_TIMEOUT_S,  # noqa: ASYNC109 (the wait's overall deadline)
        on_update: UpdateHook | None = None,
        raise_on_fail: bool = True,
        just_created: bool = False,
    ) -> Task:
        return await self._run(
            wait(
                self._core,
                task_id,
                timeout=timeout,
                on_update=on_update,
                raise_on_fail=raise_on_fail,
                just_created=just_created,
            )
        )

    async def download(self, url: str) -> Image:
        return await self._run(self._core.download(url))

    async def result(self, task: Task) -> Result:
        return await self._run(self._core.finish(task))

    async def generate(
        self, prompt: str, images: Sequence[ImageSource] = (), **options: Unpack[GenerateOptions]
    ) -> Result:
        return await self._run(self._core.generate(prompt, images, **options))
