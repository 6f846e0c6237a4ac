"""Waiting for a task to end: following its event stream where the server offers one,
polling recordInfo where it does not, within the wait's deadline."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TypeAlias

import httpx

from bananastand.client.actions import Close, Flow, Open, Read, ReadChunk, Sleep
from bananastand.client.answers import Reply, event_task, read_envelope, task_record
from bananastand.client.defaults import DEFAULT_WAIT_TIMEOUT_S
from bananastand.client.errors import ApiError, GenerationFailedError, TimeoutError, TransportError
from bananastand.client.events import EVENT_STREAM, EventDecoder, is_event_stream
from bananastand.client.models import Task
from bananastand.client.pacing import Replay
from bananastand.client.session import RECORD_INFO, Session
from bananastand.contract import TaskState

#: Longest silence on an open stream before it counts as lost: bananastand sends a
#: keep-alive every 15 s.
STREAM_READ_TIMEOUT_S = 60.0
#: A stream whose read timeout outlasts the wait's deadline by more than this is opened
#: again with a shorter one, so a wait ends at its ``timeout``, not up to a read timeout
#: later (a blocking read cannot be cut short from outside).
DEADLINE_SLACK_S = 1.0

UpdateHook: TypeAlias = Callable[[Task], None]


def wait(
    session: Session,
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
    upgrade, another instance behind the same name) is used at once. What the session
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
    with session.stream_slot() as may_stream:
        if just_created and not (may_stream and session.streams_offered is not False):
            yield Sleep(session.poll.next_delay(0, {}))
            polls = 1
        if may_stream:
            followed = yield from _follow(session, task_id, deadline, timeout, on_update)
            if isinstance(followed, Task):
                return _ended(followed, raise_on_fail)
            reply = followed
    while True:
        if reply is None:
            reply = yield from session.record_info(task_id)
        task = task_record(reply.data)
        if on_update is not None:
            on_update(task)
        if task.is_final:
            return _ended(task, raise_on_fail)
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"task {task_id} still {task.state} after {timeout}s", task)
        yield Sleep(min(left, session.poll.next_delay(polls, reply.headers)))
        polls += 1
        reply = None


def _follow(
    session: Session,
    task_id: str,
    deadline: float,
    timeout: float,
    on_update: UpdateHook | None,
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
        request = session.request(
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
                session.streams_offered = False
                return reply
            session.streams_offered = True
            decoder = EventDecoder()
            while True:
                chunk = yield ReadChunk(response)
                if not chunk:
                    break  # the server ended it early (its longest stream, a restart)
                for event in decoder.feed(chunk):
                    if event.event != "task":
                        continue
                    task = event_task(event)
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
                delay = session.retry.delay(failures, error, time.monotonic() - failing_since)
                if delay is None:
                    raise
                if session.on_retry is not None:
                    session.on_retry(request, error, delay)
                yield Sleep(max(0.0, min(delay, deadline - time.monotonic())))
                continue
        # A stream that brought events has ended or dropped: open the next one.
        if reopen_now or time.monotonic() - opened_at >= session.poll.max_s:
            short_streams = 0
            continue
        pause = session.poll.next_delay(short_streams, headers)
        short_streams += 1
        yield Sleep(max(0.0, min(pause, deadline - time.monotonic())))


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
