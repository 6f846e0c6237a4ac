"""Acceptance: recordInfo as a server-sent event stream (``Accept: text/event-stream``), over
real HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from bananastand.accounts import Accounts
from conftest import Server, ServerProcess, make_key, with_accounts
from processes import create
from waiting import wait_for

ORDER = ["waiting", "queuing", "generating", "success", "fail"]
STREAM = {"Accept": "text/event-stream"}


def items(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """``("event", {field: value})`` and ``("comment", text)`` in the order they came."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line == "":
            if fields:
                yield "event", fields
            fields = {}
        else:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
    assert not fields, f"the stream ended inside an event: {fields}"


def records(seen: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """The records of the events, checking each event's name and id on the way."""
    found = []
    for kind, fields in seen:
        if kind != "event":
            continue
        assert fields["event"] == "task"
        record: dict[str, Any] = json.loads(fields["data"])
        assert fields["id"] == str(record["updateTime"])
        found.append(record)
    return found


@contextmanager
def stream(base_url: str, key: str | None, task_id: str | None) -> Iterator[httpx.Response]:
    headers = {**STREAM, **({"Authorization": f"Bearer {key}"} if key else {})}
    params = {"taskId": task_id} if task_id is not None else {}
    with httpx.stream(
        "GET",
        f"{base_url}/api/v1/jobs/recordInfo",
        params=params,
        headers=headers,
        timeout=30,
    ) as response:
        yield response


def in_lifecycle_order(states: list[str]) -> bool:
    positions = [ORDER.index(state) for state in states]
    return positions == sorted(set(positions))


def test_a_stream_follows_a_task_to_success(server: Server) -> None:
    key = server.key()
    task_id = create(server, key, "a banana [sandbox:delay=300]")
    with stream(server.base_url, key, task_id) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        seen = list(items(response))  # the server ends the stream after the final event
    found = records(seen)
    states = [record["state"] for record in found]
    assert states[-1] == "success"
    assert in_lifecycle_order(states), states
    assert found[-1] == server.record(key, task_id)["data"]
    assert json.loads(found[-1]["resultJson"])["resultUrls"]
    assert [record["updateTime"] for record in found] == sorted(
        record["updateTime"] for record in found
    )


def test_a_stream_ends_with_the_failure(server: Server) -> None:
    key = server.key()
    task_id = create(server, key, "[sandbox:fail=safety]")
    with stream(server.base_url, key, task_id) as response:
        found = records(list(items(response)))
    assert found[-1]["state"] == "fail"
    assert found[-1]["failCode"] == "403"
    assert found[-1]["failMsg"]
    assert in_lifecycle_order([record["state"] for record in found])
    assert found[-1] == server.record(key, task_id)["data"]


def test_the_first_event_is_the_task_as_it_is_and_a_cancel_is_the_next(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(run_worker=False)
    key = server.key()
    task_id = create(server, key, "never runs")
    with stream(server.base_url, key, task_id) as response:
        events = items(response)
        kind, first = next(events)
        assert kind == "event"
        assert json.loads(first["data"]) == server.record(key, task_id)["data"]
        canceled = server.client.post(
            "/api/v1/jobs/cancel",
            json={"taskId": task_id},
            headers={"Authorization": f"Bearer {key}"},
        ).json()
        assert canceled["code"] == 200
        rest = records(list(events))
    assert [record["state"] for record in rest] == ["fail"]
    assert rest[0]["failMsg"] == "canceled"
    assert rest[0] == canceled["data"]


def test_errors_are_envelopes_even_when_a_stream_is_asked_for(server: Server) -> None:
    key = server.key()
    other = server.key()
    theirs = create(server, other, "someone else's")
    cases = [
        (None, "task_x", 401),
        ("bs_test_not-a-key", "task_x", 401),
        (key, None, 422),
        (key, "", 422),
        (key, "task_does-not-exist", 404),
        (key, theirs, 404),
    ]
    for given_key, task_id, code in cases:
        with stream(server.base_url, given_key, task_id) as response:
            response.read()
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        answer = response.json()
        assert answer["code"] == code, (given_key, task_id, answer)
        assert answer["data"] is None


def test_an_accept_header_without_event_stream_gets_json(server: Server) -> None:
    key = server.key()
    task_id = create(server, key, "a banana")
    for accept in ("application/json", "*/*", "text/html"):
        answer = server.client.get(
            "/api/v1/jobs/recordInfo",
            params={"taskId": task_id},
            headers={"Authorization": f"Bearer {key}", "Accept": accept},
        )
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["data"]["taskId"] == task_id


def test_a_quiet_stream_keeps_alive_and_ends_after_its_longest_time(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(
        run_worker=False, events_heartbeat_seconds=0.05, events_max_stream_seconds=0.5
    )
    key = server.key()
    task_id = create(server, key, "never runs")
    with stream(server.base_url, key, task_id) as response:
        seen = list(items(response))  # ends although the task has not
    assert [record["state"] for record in records(seen)] == ["waiting"]
    assert seen[0][0] == "event"
    comments = [text for kind, text in seen if kind == "comment"]
    assert comments
    assert set(comments) == {"keep-alive"}


def test_a_finished_task_is_one_event(server: Server) -> None:
    key = server.key()
    task_id = create(server, key, "a banana")
    done = server.wait(key, task_id)
    with stream(server.base_url, key, task_id) as response:
        assert records(list(items(response))) == [done]


def test_the_stream_is_in_the_api_docs(server: Server) -> None:
    spec = server.client.get("/openapi.json").json()
    operation = spec["paths"]["/api/v1/jobs/recordInfo"]["get"]
    content = operation["responses"]["200"]["content"]
    assert set(content) == {"application/json", "text/event-stream"}
    assert "event: task" in operation["description"]
    assert "Accept" in [parameter["name"] for parameter in operation["parameters"]]


# -- with real processes -----------------------------------------------------------------


def test_a_worker_in_another_process_reaches_the_stream(
    spawn: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """``serve --no-worker`` hears nothing from the worker: only its database poll tells
    the stream that the task moved on."""
    api = spawn("serve", "--no-worker", env={"BANANASTAND_EVENTS_POLL_MS": "100"})
    key = make_key(tmp_path / "data")
    task_id = create(api, key, "elsewhere [sandbox:delay=200]")
    with stream(api.base_url, key, task_id) as response:
        events = items(response)
        first = records([next(events)])
        assert [record["state"] for record in first] == ["waiting"]
        worker = spawn("worker")
        rest = records(list(events))
    assert worker.terminate() == 0
    states = [record["state"] for record in first + rest]
    assert states[-1] == "success"
    assert in_lifecycle_order(states), states


def test_sigterm_ends_open_streams_and_serve_exits_cleanly(
    spawn: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """uvicorn waits for open connections before the app stops; ``serve`` ends its streams
    first, so a drain with a long grace period is not held up by a stream."""
    api = spawn(
        "serve",
        "--no-worker",
        env={"BANANASTAND_SHUTDOWN_GRACE_SECONDS": "600", "BANANASTAND_EVENTS_POLL_MS": "100"},
    )
    key = make_key(tmp_path / "data")
    task_id = create(api, key, "never runs here")
    opened = threading.Event()
    outcome: dict[str, Any] = {}

    def follow() -> None:
        try:
            with stream(api.base_url, key, task_id) as response:
                seen = []
                for item in items(response):
                    seen.append(item)
                    opened.set()
                outcome["seen"] = seen
        except Exception as exc:  # reported below
            outcome["error"] = exc
        finally:
            opened.set()

    reader = threading.Thread(target=follow)
    reader.start()
    assert opened.wait(30)
    assert api.terminate(timeout=120) == 0
    reader.join(60)
    assert not reader.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert [record["state"] for record in records(outcome["seen"])] == ["waiting"]
    assert "timeout graceful shutdown exceeded" not in api.log()


@pytest.mark.parametrize("count", [1, 3])
def test_several_streams_of_one_task(server: Server, count: int) -> None:
    key = server.key()
    task_id = create(server, key, "watched [sandbox:delay=200]")
    results: list[list[dict[str, Any]]] = []

    def follow() -> None:
        with stream(server.base_url, key, task_id) as response:
            results.append(records(list(items(response))))

    readers = [threading.Thread(target=follow) for _ in range(count)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(60)
    assert len(results) == count
    final = server.record(key, task_id)["data"]
    assert all(found[-1] == final for found in results)


def test_a_client_that_goes_away_stops_being_followed(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(run_worker=False)
    key = server.key()
    task_id = create(server, key, "watched, then not")
    watch = server.app.state.services.tasks.watch
    with stream(server.base_url, key, task_id) as response:
        # Held in a name: a generator dropped mid-iteration is closed at once, and closing
        # it closes the response, which would end the stream before the check below.
        events = items(response)
        kind, _first = next(events)
        assert kind == "event"
        assert watch.following == 1
    # The connection is closed: the server notices, and the stream's registration goes.
    wait_for(
        lambda: watch.following == 0, what="the closed stream's registration gone", interval=0.02
    )


def _revoke(server: Server, secret: str) -> None:
    """Revoke a key through the real domain code, over the server's database."""

    async def revoke(accounts: Accounts) -> None:
        key = await accounts.authenticate(f"Bearer {secret}")
        await accounts.revoke_key(key.id)

    with_accounts(server, revoke)


def test_a_stream_ends_when_its_key_is_revoked(start_server: Callable[..., Server]) -> None:
    server = start_server(
        run_worker=False,
        key_cache_seconds=0,
        events_heartbeat_seconds=0.05,
        events_max_stream_seconds=600,
    )
    key = server.key()
    task_id = create(server, key, "never runs")
    seen: list[tuple[str, Any]] = []
    keep_alives_after = 0
    with stream(server.base_url, key, task_id) as response:
        for kind, value in items(response):
            seen.append((kind, value))
            if len(seen) == 1:
                _revoke(server, key)
            elif kind == "comment":
                keep_alives_after += 1
                # Without the check the stream would run its 600 s; stop the test instead.
                assert keep_alives_after < 200, "the stream outlived its revoked key"
    assert [record["state"] for record in records(seen)] == ["waiting"]
