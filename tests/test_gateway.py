"""Acceptance: named upstreams and routes. A real server whose live keys are routed over two
fake Gemini servers (the real google-genai SDK speaking Google's wire format to each): failover
on upstream trouble, a caller's error that stays final, a circuit breaker that opens and
half-opens, and the upstream a task remembers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from bananastand.fake_gemini import FakeGemini, Reply
from bananastand.store.tables import tasks, upstream_breakers
from conftest import Server, cli, prompt_body, rows_of, running_server
from test_gateway_config import as_toml, config_file
from test_metrics import scrape, value
from waiting import wait_for

ADMIN_TOKEN = "admin-token-of-the-gateway-tests"


@pytest.fixture
def primary() -> Iterator[FakeGemini]:
    with FakeGemini(api_key="primary-key") as server:
        yield server


@pytest.fixture
def secondary() -> Iterator[FakeGemini]:
    with FakeGemini(api_key="secondary-key") as server:
        yield server


def gemini(fake: FakeGemini, **fields: Any) -> dict[str, Any]:
    """An [upstreams.NAME] table for a fake: one call, no retries, unless told."""
    return {
        "kind": "gemini",
        "api_keys": [fake.api_key],
        "base_url": fake.base_url,
        "max_attempts": 1,
        **fields,
    }


def routing(
    primary: FakeGemini, secondary: FakeGemini, primary_fields: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The settings of a server routing nano-banana-pro over primary, then secondary."""
    return {
        "billing": False,
        "upstreams": {
            "primary": gemini(primary, **(primary_fields or {})),
            "secondary": gemini(secondary),
        },
        "routes": {"nano-banana-pro": ["primary", "secondary"]},
    }


@pytest.fixture
def routed(
    start_server: Callable[..., Server], primary: FakeGemini, secondary: FakeGemini
) -> Callable[..., Server]:
    def start(primary_fields: dict[str, Any] | None = None, **overrides: Any) -> Server:
        return start_server(**routing(primary, secondary, primary_fields), **overrides)

    return start


def run(server: Server, key: str) -> dict[str, Any]:
    answer = server.create(key, prompt_body())
    assert answer["code"] == 200, answer
    return server.wait(key, answer["data"]["taskId"])


def live_task(server: Server, fake: FakeGemini, *replies: Reply) -> dict[str, Any]:
    """One live key's task, run while ``fake`` answers ``replies`` first."""
    fake.script(*replies)
    return run(server, server.key(test=False))


def column_of(server: Server, column: Any, key: Any, value: str) -> str | None:
    """One row's column of the server's database (None: no such row)."""
    with rows_of(server.data_dir) as connection:
        found: str | None = connection.execute(
            select(column).where(key == value)
        ).scalar_one_or_none()
    return found


def upstream_of(server: Server, task_id: str) -> str | None:
    return column_of(server, tasks.c.upstream, tasks.c.id, task_id)


def breaker_state(server: Server, name: str) -> str | None:
    return column_of(server, upstream_breakers.c.state, upstream_breakers.c.name, name)


def test_a_task_fails_over_from_a_google_answering_503_to_the_next_upstream(
    routed: Callable[..., Server], primary: FakeGemini, secondary: FakeGemini
) -> None:
    server = routed()
    record = live_task(server, primary, Reply(status=503, message="The model is overloaded."))
    assert record["state"] == "success", record
    assert len(primary.requests) == 1
    assert len(secondary.requests) == 1
    assert secondary.requests[0].api_key == "secondary-key"
    assert upstream_of(server, record["taskId"]) == "secondary"
    assert "upstream" not in record  # recordInfo's contract fields are the hosted API's


def test_a_400_is_final_and_goes_to_no_other_upstream(
    routed: Callable[..., Server], primary: FakeGemini, secondary: FakeGemini
) -> None:
    server = routed()
    record = live_task(
        server, primary, Reply(status=400, message="Request contains an invalid argument.")
    )
    assert record["failCode"] == "400", record
    assert "invalid argument" in record["failMsg"]
    assert len(primary.requests) == 1
    assert secondary.requests == []
    assert upstream_of(server, record["taskId"]) == "primary"


def test_a_key_google_refuses_fails_over_and_opens_the_breaker_at_once(
    routed: Callable[..., Server], primary: FakeGemini, secondary: FakeGemini
) -> None:
    """Google answers a wrong key 400 INVALID_ARGUMENT: not the caller's error, ours."""
    server = routed({"api_keys": ["not-primarys-key"]})
    record = run(server, server.key(test=False))
    assert record["state"] == "success", record
    assert len(primary.requests) == 1
    assert upstream_of(server, record["taskId"]) == "secondary"
    assert breaker_state(server, "primary") == "open"  # at the first failure, not the 5th


def test_a_safety_block_is_final_too(
    routed: Callable[..., Server], primary: FakeGemini, secondary: FakeGemini
) -> None:
    server = routed()
    record = live_task(server, primary, Reply(block_reason="PROHIBITED_CONTENT"))
    assert record["failCode"] == "403", record
    assert secondary.requests == []


def test_when_every_upstream_fails_the_task_names_each(
    routed: Callable[..., Server], primary: FakeGemini, secondary: FakeGemini
) -> None:
    server = routed()
    primary.script(Reply(status=503, message="overloaded here"))
    secondary.script(Reply(status=500, message="broken there"))
    record = run(server, server.key(test=False))
    assert record["failCode"] == "500", record
    assert record["failMsg"].startswith("every upstream failed (primary: "), record["failMsg"]
    assert "overloaded here" in record["failMsg"]
    assert "secondary: " in record["failMsg"]
    assert "broken there" in record["failMsg"]


def test_test_keys_stay_on_the_sandbox(
    routed: Callable[..., Server], primary: FakeGemini, secondary: FakeGemini
) -> None:
    server = routed()
    record = run(server, server.key(test=True))
    assert record["state"] == "success", record
    assert primary.requests == []
    assert secondary.requests == []
    assert upstream_of(server, record["taskId"]) == "sandbox"


def test_a_model_without_a_route_answers_505(routed: Callable[..., Server]) -> None:
    server = routed()
    body = {"model": "nano-banana-2", "input": {"prompt": "a banana"}}
    live = server.key(test=False)
    answer = server.create(live, body)
    assert answer["code"] == 505, answer
    assert server.create(server.key(test=True), body)["code"] == 200  # the sandbox has all
    offered = server.client.get("/api/v1/models", headers={"Authorization": f"Bearer {live}"})
    assert [offer["model"] for offer in offered.json()["data"]["models"]] == ["nano-banana-pro"]


def test_a_task_resumed_with_an_upstream_handle_goes_back_to_that_upstream(
    routed: Callable[..., Server], primary: FakeGemini, secondary: FakeGemini, tmp_path: Path
) -> None:
    """A later upstream may still be working on it: an earlier one must not start it anew."""
    shared = tmp_path / "shared"
    idle = routed(run_worker=False, data_dir=shared)
    key = idle.key(test=False)
    answer = idle.create(key, prompt_body())
    assert answer["code"] == 200, answer
    task_id = answer["data"]["taskId"]
    with rows_of(shared) as connection:  # as a worker that stopped mid-task left it
        connection.execute(
            update(tasks)
            .where(tasks.c.id == task_id)
            .values(upstream="secondary", upstream_handle="their-task-1")
        )
    worker = routed(data_dir=shared)
    record = worker.wait(key, task_id)
    assert record["state"] == "success", record
    assert primary.requests == []
    assert len(secondary.requests) == 1


def test_a_breaker_opens_after_its_failures_and_half_opens_after_its_cool_down(
    routed: Callable[..., Server], primary: FakeGemini, secondary: FakeGemini
) -> None:
    cooldown_s = 1.0
    server = routed({"breaker_failures": 2, "breaker_cooldown_seconds": cooldown_s})
    key = server.key(test=False)
    primary.script(Reply(status=503), Reply(status=503))
    for _ in range(2):
        assert run(server, key)["state"] == "success"
    assert len(primary.requests) == 2
    assert breaker_state(server, "primary") == "open"

    # While it is open, tasks go straight to secondary; once the cool-down has passed,
    # one is the trial, and primary's success closes the breaker.
    def primary_called_again() -> bool:
        record = run(server, key)
        assert record["state"] == "success", record
        return len(primary.requests) == 3

    wait_for(primary_called_again, what="a trial task on primary")
    opened_by, trial = primary.requests[1], primary.requests[2]
    # The breaker opened after the second call was answered: no call came sooner.
    assert trial.received_at - opened_by.received_at >= cooldown_s - 0.05
    assert breaker_state(server, "primary") == "closed"


def test_the_cluster_shares_a_breaker_through_the_database(
    routed: Callable[..., Server], primary: FakeGemini, secondary: FakeGemini, tmp_path: Path
) -> None:
    shared, opened = tmp_path / "shared", {"breaker_failures": 1, "breaker_cooldown_seconds": 3600}
    with running_server(shared, **routing(primary, secondary, opened)) as first:  # then stops
        assert live_task(first, primary, Reply(status=503))["state"] == "success"
        assert breaker_state(first, "primary") == "open"
    # Another process (a server of its own, on the same database) has seen no failure.
    other = routed(opened, data_dir=shared)
    record = run(other, other.key(test=False))
    assert record["state"] == "success", record
    assert upstream_of(other, record["taskId"]) == "secondary"
    assert len(primary.requests) == 1  # skipped: its breaker is the cluster's


def test_a_failed_trial_opens_the_breaker_again(
    routed: Callable[..., Server], primary: FakeGemini, secondary: FakeGemini
) -> None:
    server = routed({"breaker_failures": 1, "breaker_cooldown_seconds": 0.2})
    key = server.key(test=False)
    primary.script(Reply(status=503), Reply(status=503))
    assert run(server, key)["state"] == "success"
    assert breaker_state(server, "primary") == "open"

    def trial_failed() -> bool:
        assert run(server, key)["state"] == "success"
        return len(primary.requests) == 2

    wait_for(trial_failed, what="a failing trial on primary")
    assert breaker_state(server, "primary") == "open"
    assert len(secondary.requests) >= 2


def test_the_operator_sees_the_upstreams_their_breakers_and_who_served_a_task(
    routed: Callable[..., Server], primary: FakeGemini, secondary: FakeGemini, tmp_path: Path
) -> None:
    server = routed(
        {"breaker_failures": 1, "breaker_cooldown_seconds": 3600}, admin_token=ADMIN_TOKEN
    )
    key = server.key(test=False)
    primary.script(Reply(status=503))
    record = run(server, key)
    assert record["state"] == "success", record

    listed = server.client.get(
        "/api/v1/jobs/list", headers={"Authorization": f"Bearer {key}"}
    ).json()["data"]["items"]
    assert [(item["taskId"], item["upstream"]) for item in listed] == [
        (record["taskId"], "secondary")
    ]

    answer = server.client.get(
        "/admin/upstreams", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ).json()
    assert answer["code"] == 200, answer
    shown = {view["name"]: view for view in answer["data"]["upstreams"]}
    assert shown["primary"]["breaker"]["state"] == "open"
    assert shown["primary"]["breaker"]["failures"] == 1
    assert shown["primary"]["models"] == {"nano-banana-pro": 1}
    assert shown["secondary"]["breaker"] == {
        "state": "closed",
        "failures": 0,
        "openedAt": None,
        "updatedAt": None,
    }
    assert shown["secondary"]["models"] == {"nano-banana-pro": 2}
    assert shown["secondary"]["keys"] == 1
    assert "secondary-key" not in str(answer)  # keys are counted, never shown
    assert answer["data"]["routes"] == {"nano-banana-pro": ["primary", "secondary"]}

    samples = scrape(server.base_url)
    failovers = "bananastand_upstream_failovers_total"
    assert value(samples, failovers, provider="primary", reason="503") == 1
    breaker = "bananastand_upstream_breaker_state"
    assert value(samples, breaker, provider="primary", state="open") == 1
    assert value(samples, breaker, provider="secondary", state="closed") == 1

    # The command reads the same config (here a file) and the same database.
    upstreams = {
        "primary": {**gemini(primary), "api_keys": ["env:PRIMARY_KEY"]},
        "secondary": {**gemini(secondary), "api_keys": ["env:SECONDARY_KEY"]},
    }
    text = as_toml(upstreams, {"nano-banana-pro": ["primary", "secondary"]})
    done = cli(
        server.data_dir,
        "upstreams",
        BANANASTAND_CONFIG=config_file(tmp_path, text),
        PRIMARY_KEY=primary.api_key,
        SECONDARY_KEY=secondary.api_key,
    )
    assert done.returncode == 0, done.stderr
    lines = [line.split("\t") for line in done.stdout.splitlines()]
    assert [(line[0], line[1], line[2], line[3], line[5]) for line in lines] == [
        ("primary", "gemini", "open", "1", "nano-banana-pro#1"),
        ("secondary", "gemini", "closed", "0", "nano-banana-pro#2"),
    ]
    assert lines[0][4] != "-"  # when it opened
    assert lines[1][4] == "-"


def test_a_call_abandoned_on_its_timeout_is_counted_and_the_next_upstream_takes_the_task(
    routed: Callable[..., Server], primary: FakeGemini, secondary: FakeGemini
) -> None:
    server = routed({"timeout_seconds": 1})
    primary.script(Reply(delay_s=30))  # answers long after we gave up on it
    record = run(server, server.key(test=False))
    assert record["state"] == "success", record
    assert upstream_of(server, record["taskId"]) == "secondary"
    samples = scrape(server.base_url)
    assert value(samples, "bananastand_upstream_abandoned_calls_total", provider="primary") == 1
    failovers = "bananastand_upstream_failovers_total"
    assert value(samples, failovers, provider="primary", reason="timeout") == 1
