"""Acceptance: the SDK's ``wait`` over server-sent events, against a real bananastand on
loopback."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from bananastand.client import AsyncClient, Client, GenerationFailedError, RetryPolicy, TimeoutError
from bananastand.client.events import EventDecoder, ServerSentEvent
from conftest import Server, ServerProcess, free_port, make_key

ORDER = ["waiting", "queuing", "generating", "success", "fail"]
EVENT_STREAM = "text/event-stream"


def in_lifecycle_order(states: list[str]) -> bool:
    positions = [ORDER.index(state) for state in states]
    return positions == sorted(set(positions))


class Requests:
    """What the client sent to recordInfo: (taskId, Accept) per request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> None:
        if request.url.path == "/api/v1/jobs/recordInfo":
            self.seen.append((request.url.params["taskId"], request.headers.get("accept", "")))

    async def hook(self, request: httpx.Request) -> None:
        self(request)

    def of(self, task_id: str) -> list[str]:
        return [accept for polled, accept in self.seen if polled == task_id]


def test_wait_reads_the_event_stream(server: Server) -> None:
    requests = Requests()
    http = httpx.Client(event_hooks={"request": [requests]})
    with Client(server.base_url, server.key(), http=http) as client:
        task_id = client.submit("a banana [sandbox:delay=300]")
        seen: list[str] = []
        task = client.wait(task_id, on_update=lambda update: seen.append(update.state))
        record = client.get(task_id)
    assert task.state == "success"
    assert task == record
    assert seen[-1] == "success"
    assert in_lifecycle_order(seen), seen
    # One request: the stream, which told the whole story.
    assert requests.of(task_id)[:-1] == [EVENT_STREAM]


def test_wait_raises_the_failure_read_from_the_stream(server: Server) -> None:
    requests = Requests()
    http = httpx.Client(event_hooks={"request": [requests]})
    with (
        Client(server.base_url, server.key(), http=http) as client,
        pytest.raises(GenerationFailedError) as failed,
    ):
        client.generate("[sandbox:fail=safety]")
    assert failed.value.fail_code == "403"
    assert requests.of(failed.value.task.taskId) == [EVENT_STREAM]


def test_async_waits_read_their_streams(server: Server) -> None:
    requests = Requests()
    key = server.key()

    async def main() -> list[tuple[str, list[str]]]:
        http = httpx.AsyncClient(event_hooks={"request": [requests.hook]})
        async with AsyncClient(server.base_url, key, http=http) as client:
            updates: dict[str, list[str]] = {}

            async def one(n: int) -> str:
                task_id = await client.submit(f"banana {n} [sandbox:delay={100 * n}]")
                updates[task_id] = []
                task = await client.wait(
                    task_id,
                    just_created=True,
                    on_update=lambda update: updates[task_id].append(update.state),
                )
                assert task.state == "success"
                return task_id

            ids = await asyncio.gather(*(one(n) for n in range(4)))
            return [(task_id, updates[task_id]) for task_id in ids]

    for task_id, states in asyncio.run(main()):
        assert states[-1] == "success"
        assert in_lifecycle_order(states), states
        assert requests.of(task_id) == [EVENT_STREAM]


def test_streams_cut_short_are_opened_again(start_server: Callable[..., Server]) -> None:
    server = start_server(events_max_stream_seconds=0.2)
    requests = Requests()
    http = httpx.Client(event_hooks={"request": [requests]})
    with Client(server.base_url, server.key(), http=http) as client:
        task_id = client.submit("long [sandbox:delay=1500]")
        seen: list[str] = []
        task = client.wait(task_id, on_update=lambda update: seen.append(update.state))
    assert task.state == "success"
    assert in_lifecycle_order(seen), seen  # a reopened stream's first event is not news
    asked = requests.of(task_id)
    assert len(asked) > 1
    assert set(asked) == {EVENT_STREAM}


def test_a_wait_survives_a_server_restart(
    spawn: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """The stream ends as the server stops; the client reconnects (its retry policy rides
    out the refused connections) to the restarted server and gets the final task."""
    port = str(free_port())
    env = {"BANANASTAND_PORT": port}
    first = spawn("serve", env=env)
    key = make_key(tmp_path / "data")
    streaming = threading.Event()
    seen: list[str] = []

    def update(task: object) -> None:
        seen.append(getattr(task, "state", ""))
        streaming.set()

    outcome: dict[str, object] = {}
    patient = RetryPolicy(max_attempts=100, base_s=0.05, cap_s=0.5, budget_s=120)
    requests = Requests()
    http = httpx.Client(event_hooks={"request": [requests]})
    with Client(first.base_url, key, retry=patient, http=http) as client:
        task_id = client.submit("through a restart [sandbox:delay=1500]")

        def wait() -> None:
            try:
                outcome["task"] = client.wait(task_id, on_update=update)
            except Exception as exc:  # reported below
                outcome["error"] = exc

        waiter = threading.Thread(target=wait)
        waiter.start()
        assert streaming.wait(30)
        assert first.terminate() == 0
        spawn("serve", env=env)
        waiter.join(120)
    assert not waiter.is_alive()
    assert "error" not in outcome, outcome.get("error")
    task = outcome["task"]
    assert getattr(task, "state", None) == "success"
    assert seen[-1] == "success"
    asked = requests.of(task_id)
    assert len(asked) > 1  # a stream to each server, and tries in between
    assert set(asked) == {EVENT_STREAM}


def test_a_stream_wait_still_times_out(start_server: Callable[..., Server]) -> None:
    server = start_server(run_worker=False)
    requests = Requests()
    http = httpx.Client(event_hooks={"request": [requests]})
    with Client(server.base_url, server.key(), http=http) as client:
        task_id = client.submit("never runs")
        with pytest.raises(TimeoutError) as waited:
            client.wait(task_id, timeout=0.5)
    assert waited.value.task is not None
    assert waited.value.task.state == "waiting"
    assert set(requests.of(task_id)) == {EVENT_STREAM}


def test_a_wait_on_a_lively_stream_ends_at_its_timeout(
    start_server: Callable[..., Server],
) -> None:
    """Keep-alives keep the stream's reads short of their timeout; the wait still ends by
    its own deadline (reopening the stream with a read timeout that fits)."""
    server = start_server(run_worker=False, events_heartbeat_seconds=0.1)
    requests = Requests()
    http = httpx.Client(event_hooks={"request": [requests]})
    with Client(server.base_url, server.key(), http=http) as client:
        task_id = client.submit("never runs")
        with pytest.raises(TimeoutError) as waited:
            client.wait(task_id, timeout=2.5)
    assert waited.value.task is not None
    assert waited.value.task.state == "waiting"
    asked = requests.of(task_id)
    assert len(asked) > 1
    assert set(asked) == {EVENT_STREAM}


def test_an_async_stream_wait_still_times_out(start_server: Callable[..., Server]) -> None:
    server = start_server(run_worker=False)
    key = server.key()

    async def main() -> None:
        async with AsyncClient(server.base_url, key) as client:
            task_id = await client.submit("never runs")
            with pytest.raises(TimeoutError) as waited:
                await client.wait(task_id, timeout=0.5)
            assert waited.value.task is not None
            assert waited.value.task.state == "waiting"

    asyncio.run(main())


def test_waits_beyond_max_streams_poll(server: Server) -> None:
    requests = Requests()
    http = httpx.Client(event_hooks={"request": [requests]})
    with Client(server.base_url, server.key(), http=http, max_streams=0) as client:
        task = client.wait(client.submit("polled [sandbox:delay=200]"))
    asked = requests.of(task.taskId)
    assert task.state == "success"
    assert asked
    assert EVENT_STREAM not in asked


# -- the decoder, bytes in, events out ----------------------------------------------------


def decode(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = EventDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def test_decoder_reads_events_split_anywhere() -> None:
    stream = b'event: task\nid: 7\ndata: {"a":1}\n\n: keep-alive\n\nevent: task\ndata: x\n\n'
    whole = decode(stream)
    assert whole == [
        ServerSentEvent(event="task", data='{"a":1}', id="7"),
        ServerSentEvent(event="task", data="x", id="7"),  # the last id carries on
    ]
    for size in (1, 2, 3, 5, 7):
        pieces = [stream[i : i + size] for i in range(0, len(stream), size)]
        assert decode(*pieces) == whole


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_decoder_takes_every_line_ending(newline: bytes) -> None:
    lines = [b"data:one", b"data:  two", b"event:task", b"", b""]
    stream = newline.join(lines)
    expected = [ServerSentEvent(event="task", data="one\n two", id=None)]
    assert decode(stream) == expected
    assert decode(*[stream[i : i + 1] for i in range(len(stream))]) == expected


def test_decoder_ignores_comments_unknown_fields_and_empty_events() -> None:
    assert decode(b": hello\n\nretry: 10\nfoo: bar\n\nevent: x\n\n") == []
    # A field without a colon has the empty value: an event with empty data.
    assert decode(b"data\n\n") == [ServerSentEvent(event="message", data="", id=None)]
    assert decode(b"data: unfinished") == []


def test_streams_can_have_a_pool_of_their_own(server: Server) -> None:
    key = server.key()
    quick, streams = Requests(), Requests()

    async def main() -> str:
        http = httpx.AsyncClient(event_hooks={"request": [quick.hook]})
        stream_http = httpx.AsyncClient(
            event_hooks={"request": [streams.hook]},
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=0),
        )
        async with AsyncClient(server.base_url, key, http=http, stream_http=stream_http) as client:
            result = await client.generate("pooled apart [sandbox:delay=100]")
        assert stream_http.is_closed
        return result.task.taskId

    task_id = asyncio.run(main())
    assert streams.of(task_id) == [EVENT_STREAM]
    assert quick.of(task_id) == []
