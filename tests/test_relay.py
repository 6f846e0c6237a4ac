"""Integration: the relay provider against the loopback fake of the hosted jobs API, called
outside a worker (``DetachedAttempt``): what goes upstream, what comes back, and how each
of the upstream's answers ends the task."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from bananastand.errors import InputError, SafetyBlocked, TaskFailure, UpstreamError
from bananastand.fetch import FetchPolicy, SafeFetcher
from bananastand.providers.base import DetachedAttempt, GenerationRequest, InputImage
from bananastand.providers.local_limiter import LocalLimiter
from bananastand.providers.relay import CREATING, RelayOptions, RelayProvider
from bananastand.storage.links import LinkSigner
from bananastand.wakeups import Topic, Wakeups
from hosted_fake import PNG, HostedFake
from waiting import wait_for

pytestmark = pytest.mark.no_database

T = TypeVar("T")
LINKS = LinkSigner(b"relay-test-secret-0123456789", "http://ours.example")
FOREIGN = "https://example.com/ref.png"


class RecordingAttempt(DetachedAttempt):
    """A detached attempt that also keeps every write, with how many createTask calls the
    upstream had seen when it was made."""

    def __init__(self, hosted: HostedFake, handle: str | None = None) -> None:
        super().__init__("ours-1", handle)
        self.hosted = hosted
        self.writes: list[tuple[str, str | None, int]] = []

    async def remember(self, handle: str) -> None:
        self.writes.append(("remember", handle, self.hosted.create_calls))
        await super().remember(handle)

    async def started(self, handle: str | None = None) -> None:
        self.writes.append(("started", handle, self.hosted.create_calls))
        await super().started(handle)


def relay(hosted: HostedFake, *, wakeups: Wakeups | None = None, **options: Any) -> RelayProvider:
    settings = RelayOptions(
        **{
            "base_url": hosted.base_url,
            "api_key": hosted.key,
            "backoff_s": 0.01,
            "poll_interval_s": 0.05,
            **options,
        }
    )
    return RelayProvider(
        "kie",
        settings,
        limiter=LocalLimiter(),
        links=LINKS,
        fetcher=SafeFetcher(FetchPolicy(allow=("127.0.0.1",))),
        wakeups=wakeups,
    )


def run(hosted: HostedFake, body: Callable[[RelayProvider], Awaitable[T]], **options: Any) -> T:
    async def main() -> T:
        provider = relay(hosted, **options)
        try:
            return await body(provider)
        finally:
            await provider.aclose()

    return asyncio.run(main())


def request(*urls: str) -> GenerationRequest:
    return GenerationRequest(
        model="nano-banana-pro",
        prompt="a banana",
        images=[InputImage(PNG, "image/png") for _ in urls],
        image_urls=urls,
    )


def failure_of(hosted: HostedFake, attempt: DetachedAttempt, **options: Any) -> TaskFailure:
    async def body(provider: RelayProvider) -> TaskFailure:
        with pytest.raises(TaskFailure) as raised:
            await provider.generate(request(), attempt)
        return raised.value

    return run(hosted, body, **options)


def test_own_links_are_uploaded_foreign_ones_pass_and_the_result_comes_back(
    hosted: HostedFake,
) -> None:
    own = LINKS.url_for("uploads/acct/ref.png", 3600)
    attempt = RecordingAttempt(hosted)
    image = run(hosted, lambda provider: provider.generate(request(own, FOREIGN), attempt))
    assert (image.data, image.mime_type) == (PNG, "image/png")
    [task_id] = hosted.tasks
    sent = hosted.request_of(task_id)
    [(name, uploaded)] = hosted.uploads.items()
    assert uploaded == PNG
    assert sent["input"]["image_input"] == [f"{hosted.base_url}/files/{name}", FOREIGN]
    assert sent["model"] == "nano-banana-pro"
    assert "callBackUrl" not in sent
    assert hosted.idempotency_keys == [None]
    # What the task remembered came before the call; the upstream taskId with the start.
    (kind, remembered, calls_then), started = attempt.writes
    assert (kind, calls_then) == ("remember", 0)
    assert remembered is not None
    assert remembered.startswith(CREATING)
    assert json.loads(remembered.removeprefix(CREATING))["body"] == sent
    assert started == ("started", task_id, 1)
    assert image.usage["upstream_task"] == task_id


def test_the_upstream_model_and_our_callback_go_upstream_when_configured(
    hosted: HostedFake,
) -> None:
    attempt = DetachedAttempt()
    run(
        hosted,
        lambda provider: provider.generate(request(), attempt),
        model="nano-banana-pro-hosted",
        callback_url="https://ours.example/hooks/upstream/kie",
    )
    sent = hosted.request_of(str(attempt.handle))
    assert sent["model"] == "nano-banana-pro-hosted"
    assert sent["callBackUrl"] == "https://ours.example/hooks/upstream/kie"


@pytest.mark.parametrize(
    ("fail_code", "kind", "ours"),
    [
        ("400", InputError, "400"),
        ("403", SafetyBlocked, "403"),
        ("504", TaskFailure, "504"),
        ("501", UpstreamError, "500"),
        ("", UpstreamError, "500"),
    ],
)
def test_upstream_fail_codes_map_to_ours_named_by_the_upstream(
    hosted: HostedFake, fail_code: str, kind: type[TaskFailure], ours: str
) -> None:
    hosted.fail_with = (fail_code, "the model said no")
    failure = failure_of(hosted, DetachedAttempt())
    assert isinstance(failure, kind)
    assert failure.fail_code == ours
    assert failure.message == "kie: the model said no"


@pytest.mark.parametrize(
    ("code", "said"),
    [
        (401, "refused our API key"),
        (402, "has no credits left"),
        (455, "is in maintenance"),
        (505, "answered (505)"),
    ],
)
def test_refusals_fail_over_without_waiting(hosted: HostedFake, code: int, said: str) -> None:
    hosted.refuse_creates = [code]
    failure = failure_of(hosted, DetachedAttempt())
    assert isinstance(failure, UpstreamError)
    assert not failure.final  # the next upstream of the route takes the task
    assert failure.trip == (code == 401)  # a wrong key for them opens their breaker now
    assert said in failure.message
    assert failure.message.startswith("kie")
    assert failure.upstream_status == str(code)
    assert hosted.create_calls == 1


def test_a_validation_refusal_is_the_callers(hosted: HostedFake) -> None:
    hosted.refuse_creates = [422]
    failure = failure_of(hosted, DetachedAttempt())
    assert isinstance(failure, InputError)


def test_429_is_paced_and_retried(hosted: HostedFake) -> None:
    hosted.refuse_creates = [429, 429]
    attempt = DetachedAttempt()
    image = run(hosted, lambda provider: provider.generate(request(), attempt))
    assert image.data == PNG
    assert hosted.create_calls == 3
    assert len(hosted.tasks) == 1


def test_an_upstream_that_cannot_answer_for_its_task_a_while_is_polled_on(
    hosted: HostedFake,
) -> None:
    """More 503s than the client's own retries take (5 attempts): the relay polls on."""
    hosted.unavailable_polls = 12
    image = run(hosted, lambda provider: provider.generate(request(), DetachedAttempt()))
    assert image.data == PNG
    assert hosted.unavailable_polls == 0


@pytest.mark.parametrize("idempotency_keys", [False, True])
def test_a_create_answered_500_may_have_made_the_task(
    hosted: HostedFake, idempotency_keys: bool
) -> None:
    hosted.refuse_creates = [500]
    attempt = DetachedAttempt()

    async def body(provider: RelayProvider) -> TaskFailure | None:
        try:
            await provider.generate(request(), attempt)
        except TaskFailure as failure:
            return failure
        return None

    failure = run(hosted, body, idempotency_keys=idempotency_keys)
    if idempotency_keys:
        assert failure is None
        assert hosted.create_calls == 2
    else:
        assert isinstance(failure, UpstreamError)
        assert failure.final
        assert hosted.create_calls == 1


def test_a_result_download_that_fails_is_tried_again(hosted: HostedFake) -> None:
    hosted.unavailable_results = 2
    image = run(hosted, lambda provider: provider.generate(request(), DetachedAttempt()))
    assert image.data == PNG
    assert hosted.unavailable_results == 0
    assert hosted.create_calls == 1


def test_a_lost_create_answer_fails_the_task_without_idempotency_keys(hosted: HostedFake) -> None:
    hosted.drop_creates = 1
    failure = failure_of(hosted, DetachedAttempt())
    assert isinstance(failure, UpstreamError)
    assert "not sent again" in failure.message
    assert failure.final  # no other upstream either: this one may be making the image
    assert hosted.create_calls == 1


def test_a_lost_create_answer_is_sent_again_under_its_key_with_idempotency_keys(
    hosted: HostedFake,
) -> None:
    hosted.honour_idempotency_keys = True
    hosted.drop_creates = 1
    attempt = DetachedAttempt("ours-7")
    image = run(
        hosted, lambda provider: provider.generate(request(), attempt), idempotency_keys=True
    )
    assert image.data == PNG
    assert hosted.create_calls == 2
    assert hosted.idempotency_keys == ["ours-7", "ours-7"]
    assert list(hosted.tasks) == [attempt.handle]


def test_a_resumed_attempt_follows_the_upstream_task_it_had(hosted: HostedFake) -> None:
    upstream_task = hosted.create({"model": "nano-banana-pro", "input": {"prompt": "p"}})
    attempt = RecordingAttempt(hosted, handle=upstream_task)
    image = run(hosted, lambda provider: provider.generate(request(), attempt))
    assert image.data == PNG
    assert hosted.create_calls == 1  # ours above; the relay made none
    assert attempt.writes == [("started", upstream_task, 1)]


def test_an_interrupted_create_is_sent_again_only_under_idempotency_keys(
    hosted: HostedFake,
) -> None:
    hosted.honour_idempotency_keys = True
    body = {"model": "nano-banana-pro", "input": {"prompt": "p"}}
    made = hosted.create(body, "ours-9")  # what the lost answer had made
    pending = CREATING + json.dumps({"key": "ours-9", "body": body})

    failure = failure_of(hosted, DetachedAttempt("ours-9", pending))
    assert isinstance(failure, UpstreamError)
    assert "restart interrupted" in failure.message
    assert hosted.create_calls == 1

    attempt = DetachedAttempt("ours-9", pending)
    run(hosted, lambda provider: provider.generate(request(), attempt), idempotency_keys=True)
    assert attempt.handle == made
    assert hosted.idempotency_keys == ["ours-9", "ours-9"]
    assert list(hosted.tasks) == [made]


def test_a_wake_up_naming_the_task_polls_at_once(hosted: HostedFake) -> None:
    """With callbacks on, polling is a slow fallback (an hour here): only the wake-up that
    the inbound callback route publishes can end this task in time."""
    hosted.hang = True

    async def main() -> bytes:
        wakeups = Wakeups()
        provider = relay(
            hosted,
            wakeups=wakeups,
            poll_interval_s=3600,
            callback_url="https://ours.example/hooks/upstream/kie",
        )
        attempt = DetachedAttempt("ours-3")
        try:
            running = asyncio.create_task(provider.generate(request(), attempt))
            await asyncio.to_thread(
                wait_for, lambda: sum(hosted.polls.values()) == 1, what="the first poll"
            )
            hosted.finish(str(attempt.handle), call_back=False)
            wakeups.publish(Topic.TASKS, ["another-task"])
            await asyncio.sleep(0)
            assert not running.done()
            wakeups.publish(Topic.TASKS, ["ours-3"])
            image = await asyncio.wait_for(running, 60)
            return image.data
        finally:
            await provider.aclose()

    assert asyncio.run(main()) == PNG
