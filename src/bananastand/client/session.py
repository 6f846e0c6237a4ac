"""The client's configuration and the one way its requests go out: built with the key,
sent, the answer read, and sent again where the retry policy allows."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Self

import httpx

from bananastand import __version__
from bananastand.client.actions import Flow, Send, Sleep, T
from bananastand.client.answers import Reply, read_envelope
from bananastand.client.defaults import DEFAULT_BASE_URL
from bananastand.client.errors import ApiError, TransportError
from bananastand.client.pacing import PollSchedule, Replay, RetryHook, RetryPolicy

USER_AGENT = f"bananastand-client/{__version__}"
RECORD_INFO = "/api/v1/jobs/recordInfo"
#: Waits that may hold an event stream at once; the others poll. Each stream holds one
#: connection of the HTTP pool for as long as it lasts (httpx's default pool: 100).
DEFAULT_MAX_STREAMS = 32


@dataclass
class Session:
    """What every flow of one client shares: where it goes, its key, its pacing, and the
    count of the event streams its waits hold."""

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
    ) -> Self:
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
    def stream_slot(self) -> Iterator[bool]:
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

    def record_info(self, task_id: str) -> Flow[Reply]:
        """recordInfo as JSON: what ``get`` returns and what each poll of a wait reads."""
        request = self.request("GET", RECORD_INFO, params={"taskId": task_id})
        return (yield from self.call(request, Replay.ANY_TRANSIENT))
