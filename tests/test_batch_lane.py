"""Acceptance: the batch lane on a real server whose live keys run on the Gemini API, pointed
at the fake Gemini server's Batch and Files APIs (the real google-genai SDK in between):
tasks grouped into jobs, each ending on its own with its callback and its ledger rows.

Jobs move only when a test moves them (``fake.batches``); a job forms when three tasks
wait (``batch_max_requests``), so no test waits for a clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from accounts_helpers import ADMIN_TOKEN, admin_ok, balance, new_account
from bananastand.client import Client
from bananastand.fake_gemini import FakeGemini, Reply
from bananastand.fake_gemini_batch import FakeBatch
from bananastand.store.tables import batch_jobs, tasks
from conftest import Server, prompt_body, rows_of, running_server
from receiver import Receiver
from waiting import wait_for

PRICE = 18
BATCH_PRICE = 9  # half, rounded up
BATCH = {"batch_poll_seconds": 0.1, "batch_max_requests": 3, "batch_max_wait_seconds": 3600}


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini() as server:
        yield server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


def settings_for(fake: FakeGemini, **overrides: Any) -> dict[str, Any]:
    return {
        "live_provider": "gemini",
        "GOOGLE_API_KEY": fake.api_key,
        "GOOGLE_GEMINI_BASE_URL": fake.base_url,
        "admin_token": ADMIN_TOKEN,
        "allow_private_networks": ["127.0.0.1"],
        **BATCH,
        **overrides,
    }


def batch_body(prompt: str = "a banana", callback_url: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {**prompt_body(prompt), "lane": "batch"}
    if callback_url:
        body["callBackUrl"] = callback_url
    return body


def create_batch(server: Server, key: str, count: int, **body: Any) -> list[str]:
    ids = []
    for index in range(count):
        answer = server.create(key, batch_body(f"picture {index}", **body))
        assert answer["code"] == 200, answer
        ids.append(answer["data"]["taskId"])
    return ids


def the_job(fake: FakeGemini, count: int = 1) -> FakeBatch:
    jobs = fake.batches.wait_for_jobs(count)
    assert len(jobs) == count
    return jobs[-1]


def states(server: Server, key: str, task_ids: list[str]) -> list[str]:
    return [server.record(key, task_id)["data"]["state"] for task_id in task_ids]


def wait_queuing(server: Server, key: str, task_ids: list[str]) -> None:
    """Until every task shows ``queuing``: inside its job."""
    wait_for(
        lambda: states(server, key, task_ids),
        lambda found: found == ["queuing"] * len(task_ids),
        what="the tasks inside their job",
    )


def ledger(server: Server, account_id: str) -> list[tuple[str, int, str | None]]:
    rows = admin_ok(server, "GET", f"/admin/accounts/{account_id}")["ledger"]
    return [(row["reason"], row["amount"], row["taskId"]) for row in rows]


def audit_ok(server: Server) -> bool:
    return bool(admin_ok(server, "GET", "/admin/credits/audit")["ok"])


def test_three_tasks_in_one_job_each_called_back_and_charged_the_batch_price(
    start_server: Callable[..., Server], fake: FakeGemini, receiver: Receiver
) -> None:
    server = start_server(**settings_for(fake))
    account_id, key = new_account(server, 100)
    with Client(server.base_url, key) as client:
        task_ids = [
            client.submit(f"picture {index}", lane="batch", callback_url=receiver.url)
            for index in range(3)
        ]
    assert balance(server, key) == 100 - 3 * BATCH_PRICE

    job = the_job(fake)
    assert sorted(key for key, _, _ in job.requests) == sorted(task_ids)
    assert job.display_name.startswith("bananastand-")
    assert job.input_file is None  # small: inline
    wait_queuing(server, key, task_ids)
    assert fake.requests == []  # no worker called generateContent for them

    fake.batches.set_state(job.name, "RUNNING")
    fake.batches.complete(job.name)
    records = [server.wait(key, task_id) for task_id in task_ids]
    assert [record["state"] for record in records] == ["success"] * 3
    assert [record["creditsConsumed"] for record in records] == [BATCH_PRICE] * 3
    for record in records:
        assert json.loads(record["resultJson"])["resultUrls"][0].endswith(".png")

    called = receiver.wait_for(3)
    bodies = [json.loads(request.body) for request in called]
    assert sorted(body["data"]["taskId"] for body in bodies) == sorted(task_ids)
    assert {body["code"] for body in bodies} == {200}
    charges = [row for row in ledger(server, account_id) if row[0] == "charge"]
    assert sorted(charges) == sorted(("charge", -BATCH_PRICE, task_id) for task_id in task_ids)
    assert audit_ok(server)
    assert fake.batches.create_calls == 1
    with rows_of(server.data_dir) as db:
        (row,) = db.execute(select(batch_jobs)).mappings()
        assert (row["state"], row["upstream_name"], row["tasks"]) == ("done", job.name, 3)
        lanes = db.execute(select(tasks.c.lane, tasks.c.upstream)).all()
        assert set(lanes) == {("batch", "gemini")}


def test_a_job_that_fails_refunds_each_task_once(
    start_server: Callable[..., Server], fake: FakeGemini, receiver: Receiver
) -> None:
    server = start_server(**settings_for(fake, batch_requeue_failed=False))
    account_id, key = new_account(server, 30)
    task_ids = create_batch(server, key, 3, callback_url=receiver.url)
    assert balance(server, key) == 30 - 3 * BATCH_PRICE

    fake.batches.fail(the_job(fake).name, "the batch could not be processed")
    records = [server.wait(key, task_id) for task_id in task_ids]
    assert [record["failCode"] for record in records] == ["500"] * 3
    assert all("JOB_STATE_FAILED" in record["failMsg"] for record in records)
    assert [record["creditsConsumed"] for record in records] == [0] * 3
    assert balance(server, key) == 30
    refunds = [row for row in ledger(server, account_id) if row[0] == "refund"]
    assert sorted(refunds) == sorted(("refund", BATCH_PRICE, task_id) for task_id in task_ids)
    assert {json.loads(r.body)["code"] for r in receiver.wait_for(3)} == {501}
    assert audit_ok(server)
    assert fake.requests == []  # not run again on the now lane


def test_an_expired_job_puts_its_tasks_on_the_now_lane_once(
    start_server: Callable[..., Server], fake: FakeGemini
) -> None:
    server = start_server(**settings_for(fake))
    _account_id, key = new_account(server, 30)
    task_ids = create_batch(server, key, 3)

    fake.batches.expire(the_job(fake).name)
    records = [server.wait(key, task_id) for task_id in task_ids]
    assert [record["state"] for record in records] == ["success"] * 3
    assert [record["creditsConsumed"] for record in records] == [BATCH_PRICE] * 3
    assert len(fake.requests) == 3  # each ran once, by generateContent
    assert fake.batches.create_calls == 1  # and none went into a second job
    with rows_of(server.data_dir) as db:
        assert set(db.execute(select(tasks.c.lane, tasks.c.batch_job)).all()) == {("now", None)}
    assert audit_ok(server)


def test_one_request_failing_inside_a_job_fails_only_its_task(
    start_server: Callable[..., Server], fake: FakeGemini
) -> None:
    # A named upstream of the config's [upstreams], routed for the model.
    google = {"kind": "gemini", "api_keys": [fake.api_key], "base_url": fake.base_url}
    server = start_server(
        **settings_for(fake, upstreams={"google": google}, routes={"nano-banana-pro": ["google"]})
    )
    _account_id, key = new_account(server, 30)
    create_batch(server, key, 3)
    job = the_job(fake)

    fake.script(Reply(), Reply(status=400, message="this prompt is not allowed"), Reply())
    fake.batches.complete(job.name)
    failing = job.requests[1][0]
    records = {key_: server.wait(key, key_) for key_, _, _ in job.requests}
    assert records[failing]["state"] == "fail"
    assert records[failing]["failCode"] == "400"
    assert "this prompt is not allowed" in records[failing]["failMsg"]
    assert records[failing]["creditsConsumed"] == 0
    others = [record for task_id, record in records.items() if task_id != failing]
    assert [record["state"] for record in others] == ["success"] * 2
    assert balance(server, key) == 30 - 2 * BATCH_PRICE
    assert audit_ok(server)
    with rows_of(server.data_dir) as db:
        assert set(db.execute(select(tasks.c.provider, tasks.c.upstream)).all()) == {
            ("google", "google")
        }


def test_a_restart_while_a_job_is_open_finds_it_again_and_sends_no_second_one(
    tmp_path: Path, fake: FakeGemini
) -> None:
    data_dir = tmp_path / "data"
    with running_server(data_dir, **settings_for(fake)) as first:
        _account_id, key = new_account(first, 30)
        task_ids = create_batch(first, key, 3)
        job = the_job(fake)
        wait_queuing(first, key, task_ids)
    # As if the answer to the job's creation had been lost: only its display name is known.
    with rows_of(data_dir) as db:
        db.execute(update(batch_jobs).values(upstream_name=None))
        db.commit()

    with running_server(data_dir, **settings_for(fake)) as second:
        wait_queuing(second, key, task_ids)
        fake.batches.complete(job.name)
        records = [second.wait(key, task_id) for task_id in task_ids]
        assert [record["state"] for record in records] == ["success"] * 3
        assert balance(second, key) == 30 - 3 * BATCH_PRICE
        assert audit_ok(second)
    assert fake.batches.create_calls == 1
    assert len(fake.batches.jobs) == 1
    with rows_of(data_dir) as db:
        (row,) = db.execute(select(batch_jobs)).mappings()
        assert (row["state"], row["upstream_name"]) == ("done", job.name)


def test_past_the_inline_limit_the_job_goes_as_a_jsonl_file(
    start_server: Callable[..., Server], fake: FakeGemini
) -> None:
    from test_client_sdk import png

    server = start_server(**settings_for(fake, batch_inline_limit_bytes=300))
    _, key = new_account(server, 30)
    with Client(server.base_url, key) as client:
        task_ids = [
            client.submit(f"picture {index}", [png(size=(40, 30))], lane="batch")
            for index in range(3)
        ]
    job = the_job(fake)
    assert job.input_file is not None
    lines = [json.loads(line) for line in fake.batches.files[job.input_file][1].splitlines()]
    assert sorted(line["key"] for line in lines) == sorted(task_ids)
    part = lines[0]["request"]["contents"][0]["parts"][1]
    assert part["inlineData"]["mimeType"] == "image/png"

    fake.batches.complete(job.name)
    records = [server.wait(key, task_id) for task_id in task_ids]
    assert [record["state"] for record in records] == ["success"] * 3


def test_the_lane_field_is_checked_and_vertex_refuses_it(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(live_provider="sandbox", sandbox_batch_delay_ms=0, **BATCH)
    key = server.key()
    refused = server.create(key, {**prompt_body(), "lane": "later"})
    assert refused["code"] == 422
    assert refused["msg"].startswith("lane: ")
    task_id = server.create(key, {**prompt_body(), "lane": None})["data"]["taskId"]
    assert server.wait(key, task_id)["state"] == "success"
    # Test keys' batch-lane tasks run on the sandbox, one at a time as they come.
    task_id = server.create(key, batch_body())["data"]["taskId"]
    assert server.wait(key, task_id)["state"] == "success"

    vertex = start_server(
        live_provider="vertex", GOOGLE_CLOUD_PROJECT="a-project", run_worker=False
    )
    answer = vertex.create(vertex.key(test=False), batch_body())
    assert answer["code"] == 505
    assert "Vertex AI" in answer["msg"]


def test_batch_lane_tasks_count_against_the_waiting_cap(
    start_server: Callable[..., Server], fake: FakeGemini
) -> None:
    server = start_server(**settings_for(fake, max_waiting_tasks=2, batch_max_requests=50))
    _, key = new_account(server, 100)
    create_batch(server, key, 2)
    refused = server.create(key, batch_body())
    assert refused["code"] == 429
    assert "too many waiting tasks" in refused["msg"]


def test_the_batch_command_sends_every_line_on_the_batch_lane(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    from test_client_cli import client_env, run

    server = start_server(sandbox_batch_delay_ms=0)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "one"}\n{"prompt": "two", "lane": "now"}\n')
    env = client_env(server, server.key())

    def batch(out: str, lane: str) -> int:
        return run(env, "batch", str(prompts), "-o", str(tmp_path / out), "--lane", lane).returncode

    assert run(env, "batch", str(prompts), "-o", str(tmp_path / "first")).returncode == 0
    assert batch("out", "batch") == 0  # the same file, on another lane: a batch of its own
    with rows_of(server.data_dir) as db:
        lanes = db.execute(select(tasks.c.lane).order_by(tasks.c.seq)).scalars().all()
    assert lanes == ["now", "now", "batch", "batch"]
    assert batch("refused", "later") == 2  # not a lane: refused before anything is sent


def test_a_job_past_the_batch_limit_is_cancelled_and_its_tasks_fail_504(
    start_server: Callable[..., Server], fake: FakeGemini
) -> None:
    # The limit is over before the first poll: the task timeout (900 s) plays no part.
    server = start_server(
        **settings_for(fake, batch_timeout_seconds=0.001, batch_requeue_failed=False)
    )
    _, key = new_account(server, 30)
    task_ids = create_batch(server, key, 3)
    job = the_job(fake)  # left pending: still open at Google
    records = [server.wait(key, task_id) for task_id in task_ids]
    assert [record["failCode"] for record in records] == ["504"] * 3
    assert all("in the batch lane" in record["failMsg"] for record in records)
    assert fake.batches.job(job.name).state == "CANCELLED"
    assert balance(server, key) == 30
    assert audit_ok(server)
