"""The relay: tasks run by a hosted jobs API (the seed's, its rebrands, another bananastand).

An upstream of kind ``jobs-api`` speaks this server's own API, so the relay talks to it
with our own client (``bananastand.client``). One task's turn there:

1. Our own links in ``image_input`` are uploaded to the upstream's file-stream-upload
   (it cannot reach our private links); other URLs pass through. The caller's
   ``callBackUrl`` never goes upstream: ours does, when callbacks are set up.
2. ``creating:{key, body}`` is written to the task (``attempt.remember``) before
   createTask is sent: a worker that dies with the answer unknown leaves a trace, and the
   next one either sends the very same body again under the same Idempotency-Key (the
   upstream's table says ``idempotency_keys = true``) or fails the task, refunded,
   rather than risk a second upstream task paid twice.
3. The upstream's taskId is the handle, written as the task turns ``generating``
   (``attempt.started``): a restart follows that upstream task, never makes another.
4. recordInfo is polled with backoff; the upstream's signed callback to
   ``/hooks/upstream/{name}`` (``bananastand.upstream_hooks``) makes it poll at once.
5. The result is downloaded (SSRF-safe, by magic bytes) and handed to the worker, which
   stores it as ours: our links outlive the upstream's.

How the upstream's answers end the task (``relay_failures``): refusals that prove nothing
was made (401, 402, 429 past the retry budget, 455, 505) let the next upstream of the
route take it; a lost createTask answer does not; the upstream task's failCodes map to
ours with failMsg prefixed by the upstream's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from bananastand.client import AsyncClient
from bananastand.client.errors import (
    ApiError,
    AuthenticationError,
    NotFoundError,
    ServerError,
    TransportError,
)
from bananastand.client.flows import create_body, task_input
from bananastand.client.models import Task
from bananastand.client.pacing import PollSchedule
from bananastand.contract import OutputFormat, TaskState
from bananastand.errors import UpstreamError
from bananastand.fetch import FetchPolicy, SafeFetcher
from bananastand.fetch.errors import FetchError, FetchTimeoutError
from bananastand.providers.base import Attempt, GeneratedImage, GenerationRequest
from bananastand.providers.limits import UpstreamLimiter
from bananastand.providers.relay_failures import (
    FailoverRetry,
    lost_create,
    refusal,
    stranded,
    task_failure,
)
from bananastand.settings import Settings
from bananastand.storage.links import LinkSigner
from bananastand.upstreams import UpstreamConfig
from bananastand.wakeups import Topic, Wakeups

__all__ = ["RelayOptions", "RelayProvider"]

log = logging.getLogger(__name__)

#: What a task's handle starts with while its createTask answer is not in.
CREATING = "creating:"
#: Where our own links' bytes go in the upstream's file space.
UPLOAD_PATH = "bananastand-relay"
#: The hosted API makes PNG and JPEG; a WebP task asks for PNG (the worker converts).
_UPSTREAM_FORMATS = {OutputFormat.PNG: "png", OutputFormat.JPG: "jpg", OutputFormat.WEBP: "png"}


@dataclass(frozen=True, slots=True)
class RelayOptions:
    """One jobs-api upstream, as its config table and the settings resolve it."""

    base_url: str
    api_key: str
    #: Its file-stream-upload's base; empty: ``base_url``.
    upload_base_url: str = ""
    #: The model name sent upstream; empty: the caller's.
    model: str = ""
    #: One HTTP request to the upstream.
    timeout_s: float = 300.0
    max_attempts: int = 5
    retry_budget_s: float = 120.0
    backoff_s: float = 2.0
    #: Whether a createTask whose answer was lost may be sent again under its key.
    idempotency_keys: bool = False
    #: The slowest recordInfo poll; with callbacks, the only pace (they wake it sooner).
    poll_interval_s: float = 10.0
    #: Our inbound route the upstream calls back; empty: polling alone.
    callback_url: str = ""


class RelayProvider:
    """Runs tasks on one jobs-api upstream; ``name`` is the upstream's."""

    def __init__(
        self,
        name: str,
        options: RelayOptions,
        *,
        limiter: UpstreamLimiter,
        links: LinkSigner,
        fetcher: SafeFetcher,
        wakeups: Wakeups | None = None,
    ) -> None:
        """``fetcher`` downloads results; ``wakeups``: where an upstream's callback,
        received by any process, names the task to poll at once."""
        self.name = name
        self.limiter = limiter
        self._options = options
        self._links = links
        self._fetcher = fetcher
        self._retry = retry = FailoverRetry(
            max_attempts=options.max_attempts,
            budget_s=options.retry_budget_s,
            base_s=options.backoff_s,
        )

        def client(base_url: str) -> AsyncClient:
            http = httpx.AsyncClient(timeout=httpx.Timeout(options.timeout_s, connect=10.0))
            return AsyncClient(base_url, options.api_key, retry=retry, http=http)

        self._api = client(options.base_url)
        upload_base = options.upload_base_url or options.base_url
        self._uploads = self._api if upload_base == options.base_url else client(upload_base)
        slowest = options.poll_interval_s
        first = slowest if options.callback_url else min(1.0, slowest)
        self._poll = PollSchedule(first_s=first, factor=1.5, max_s=slowest)
        self._nudges = _Nudges(wakeups)

    @classmethod
    def from_config(
        cls,
        name: str,
        config: UpstreamConfig,
        *,
        settings: Settings,
        limiter: UpstreamLimiter,
        links: LinkSigner,
        wakeups: Wakeups | None = None,
    ) -> RelayProvider:
        """The relay of one ``[upstreams.NAME]`` table of kind ``jobs-api``. The upstream
        calls us back only where both sides are set up for it: an explicit public URL
        (ours as it reaches us) and the upstream's ``webhook_secret``."""
        callback_url = ""
        if settings.public_url and config.webhook_secret:
            callback_url = f"{settings.effective_public_url}/hooks/upstream/{name}"
        options = RelayOptions(
            base_url=config.base_url.rstrip("/"),
            api_key=config.api_key,
            upload_base_url=config.upload_base_url.rstrip("/"),
            model=config.model,
            timeout_s=config.timeout_seconds,
            max_attempts=config.max_attempts,
            retry_budget_s=config.retry_budget_seconds,
            backoff_s=config.backoff_seconds,
            idempotency_keys=config.idempotency_keys,
            poll_interval_s=config.poll_interval_seconds,
            callback_url=callback_url,
        )
        # Results are fetched as any outside URL is; the operator's upstream itself may be
        # private (another bananastand on the LAN), and so may its result links.
        upstream_hosts = {
            httpx.URL(url).host for url in (options.base_url, options.upload_base_url)
        }
        policy = FetchPolicy(
            allow=(*settings.allow_private_networks, *sorted(upstream_hosts - {""})),
            max_bytes=settings.max_input_image_bytes,
            timeout_s=settings.fetch_timeout_seconds,
        )
        return cls(
            name,
            options,
            limiter=limiter,
            links=links,
            fetcher=SafeFetcher(policy),
            wakeups=wakeups,
        )

    async def aclose(self) -> None:
        await self._api.aclose()
        if self._uploads is not self._api:
            await self._uploads.aclose()
        await self._fetcher.aclose()
        await self.limiter.aclose()

    async def generate(self, request: GenerationRequest, attempt: Attempt) -> GeneratedImage:
        began = time.monotonic()
        handle = attempt.handle
        if handle is None or handle.startswith(CREATING):
            handle = await self._create(request, attempt, handle)
        else:
            await attempt.started(handle)  # resumed: the same upstream task, followed on
        record = await self._follow(handle, attempt.task_id)
        if record.state is TaskState.FAIL:
            raise task_failure(self.name, record)
        data, mime_type = await self._download(record)
        usage: dict[str, int | float | str] = {
            "provider": self.name,
            "upstream_task": handle,
            "upstream_ms": round((time.monotonic() - began) * 1000),
            "upstream_credits": record.creditsConsumed,
        }
        return GeneratedImage(data=data, mime_type=mime_type, usage=usage)

    async def _create(
        self, request: GenerationRequest, attempt: Attempt, pending: str | None
    ) -> str:
        """The upstream taskId of a new upstream task, or of the one a lost answer made
        (``pending``: the ``creating:`` handle an earlier attempt left)."""
        if pending is not None:
            if not self._options.idempotency_keys:
                raise lost_create(
                    self.name, "a restart interrupted createTask before its answer came"
                )
            sent = orjson.loads(pending.removeprefix(CREATING))
            key, body = str(sent["key"]), sent["body"]
        else:
            key, body = attempt.task_id, await self._body(request)
            await attempt.remember(CREATING + orjson.dumps({"key": key, "body": body}).decode())
        resend = self._options.idempotency_keys
        try:
            task_id = await self._api.create(body, key if resend else None, resend_lost=resend)
        except (TransportError, ServerError) as exc:  # it may have made the task
            raise lost_create(self.name, str(exc)) from None
        except ApiError as exc:  # a refusal: nothing was made
            raise refusal(self.name, exc) from None
        await attempt.started(task_id)
        return task_id

    async def _body(self, request: GenerationRequest) -> dict[str, Any]:
        """createTask's body: the caller's inputs, our own links re-uploaded."""
        urls = []
        for index, url in enumerate(request.image_urls):
            if self._links.is_ours(url):
                image = request.images[index]
                try:
                    uploaded = await self._uploads.upload(image.data, upload_path=UPLOAD_PATH)
                except (TransportError, ApiError) as exc:
                    raise refusal(self.name, exc, doing="uploading image_input") from None
                urls.append(uploaded.downloadUrl)
            else:
                urls.append(url)
        fields = task_input(
            request.prompt,
            urls,
            aspect_ratio=request.aspect_ratio.value,
            resolution=request.resolution.value,
            output_format=_UPSTREAM_FORMATS[request.output_format],
        )
        return create_body(
            fields,
            model=self._options.model or request.model,
            callback_url=self._options.callback_url or None,
        )

    async def _follow(self, handle: str, task_id: str) -> Task:
        """Poll until the upstream task ends; a callback about it polls at once. Trouble
        reaching the upstream is waited out (the task's own timeout bounds it): the
        upstream task may still be running, so it is never abandoned for another."""
        with self._nudges.following(task_id) as nudged:
            polls = 0
            while True:
                try:
                    record = await self._api.get(handle)
                    if record.is_final:
                        return record
                except (AuthenticationError, NotFoundError) as exc:
                    raise stranded(self.name, handle, exc) from None
                except (TransportError, ApiError) as exc:
                    log.warning(
                        "could not poll the upstream task; trying again",
                        extra={"upstream": self.name, "upstream_task": handle, "reason": str(exc)},
                    )
                delay = self._poll.next_delay(polls, {})
                polls += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(nudged.wait(), delay)
                nudged.clear()

    async def _download(self, record: Task) -> tuple[bytes, str]:
        """The upstream has made (and billed) the image: a download that failed for want
        of an answer is tried again before the task is given up."""
        urls = record.result_urls
        if not urls:
            raise UpstreamError(f"{self.name}: task {record.taskId} succeeded without a result")
        began = time.monotonic()
        tries = 0
        while True:
            tries += 1
            try:
                fetched = await self._fetcher.fetch_image(urls[0])
                return fetched.data, fetched.mime_type
            except FetchError as exc:
                transient = type(exc) in (FetchError, FetchTimeoutError)
                delay = self._retry.delay(tries, exc, time.monotonic() - began)
                if not transient or delay is None:
                    raise UpstreamError(
                        f"{self.name}: its result could not be downloaded: {exc.message}"
                    ) from None
            await asyncio.sleep(delay)


class _Nudges:
    """The tasks this relay follows, each with the event a callback about it sets.

    An upstream's callback may reach any process; the one that verified it publishes
    the task on ``Topic.TASKS``, which every process hears (``None``: some tasks, not
    named: every follower polls once more)."""

    def __init__(self, wakeups: Wakeups | None) -> None:
        self._events: dict[str, asyncio.Event] = {}
        if wakeups is not None:
            wakeups.subscribe(Topic.TASKS, self._nudge)

    def _nudge(self, task_ids: frozenset[str] | None) -> None:
        for task_id in self._events if task_ids is None else task_ids:
            event = self._events.get(task_id)
            if event is not None:
                event.set()

    @contextlib.contextmanager
    def following(self, task_id: str) -> Iterator[asyncio.Event]:
        event = self._events[task_id] = asyncio.Event()
        try:
            yield event
        finally:
            self._events.pop(task_id, None)
