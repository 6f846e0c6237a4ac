"""Acceptance: credits over HTTP: charges with the task, 402 without a task, refunds exactly once,
test keys free, no overdraw under concurrency, and a ledger that always adds up."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from accounts_helpers import ADMIN_TOKEN, admin_ok, balance, call, new_account
from bananastand.store.tables import accounts
from conftest import Server, cli, prompt_body, rows_of

PRICE = 18


@pytest.fixture
def billed(start_server: Callable[..., Server]) -> Server:
    """Live keys run on the sandbox, so their tasks are charged and really run."""
    return start_server(live_provider="sandbox", admin_token=ADMIN_TOKEN)


def create(server: Server, key: str, body: Any = None, **headers: str) -> dict[str, Any]:
    answer: dict[str, Any] = server.create(key, prompt_body() if body is None else body, **headers)
    return answer


def ledger(server: Server, account_id: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = admin_ok(server, "GET", f"/admin/accounts/{account_id}")["ledger"]
    return rows


def audit(server: Server) -> dict[str, Any]:
    found: dict[str, Any] = admin_ok(server, "GET", "/admin/credits/audit")
    return found


def test_credit_answers_the_balance_as_a_plain_number(billed: Server) -> None:
    _, key = new_account(billed, 40)
    answer = call(billed, "GET", "/api/v1/chat/credit", key).json()
    assert answer == {"code": 200, "msg": "success", "message": "success", "data": 40}


def test_new_accounts_start_with_the_starting_credits(start_server: Callable[..., Server]) -> None:
    server = start_server(admin_token=ADMIN_TOKEN, starting_credits=25)
    account_id, key = new_account(server)
    assert balance(server, key) == 25
    assert [(row["amount"], row["reason"]) for row in ledger(server, account_id)] == [(25, "grant")]


def test_create_charges_and_reports_credits_consumed(billed: Server) -> None:
    account_id, key = new_account(billed, 100)
    task_id = create(billed, key)["data"]["taskId"]
    assert balance(billed, key) == 100 - PRICE
    data = billed.wait(key, task_id)
    assert data["state"] == "success", data
    assert data["creditsConsumed"] == PRICE
    four_k = create(billed, key, prompt_body(resolution="4K"))["data"]["taskId"]
    assert billed.record(key, four_k)["data"]["creditsConsumed"] == 24
    assert balance(billed, key) == 100 - PRICE - 24
    charges = [row for row in ledger(billed, account_id) if row["reason"] == "charge"]
    assert sorted((row["taskId"], row["amount"]) for row in charges) == sorted(
        [(task_id, -PRICE), (four_k, -24)]
    )


def test_not_enough_credits_is_402_and_no_task(billed: Server) -> None:
    _, key = new_account(billed, PRICE + 5)
    assert create(billed, key)["code"] == 200
    refused = create(billed, key)
    assert refused["code"] == 402, refused
    assert refused["data"] is None
    assert "credits" in refused["msg"]
    listed = call(billed, "GET", "/api/v1/jobs/list", key).json()["data"]["items"]
    assert len(listed) == 1
    assert balance(billed, key) == 5
    assert audit(billed)["ok"] is True


def test_a_failed_task_is_refunded_exactly_once(billed: Server) -> None:
    account_id, key = new_account(billed, PRICE)
    task_id = create(billed, key, prompt_body("[sandbox:fail=upstream]"))["data"]["taskId"]
    data = billed.wait(key, task_id)
    assert data["state"] == "fail"
    assert data["creditsConsumed"] == 0  # charged minus refunded
    assert balance(billed, key) == PRICE
    rows = [(row["reason"], row["amount"]) for row in ledger(billed, account_id)]
    assert sorted(rows) == sorted([("grant", PRICE), ("charge", -PRICE), ("refund", PRICE)])
    assert audit(billed)["ok"] is True


def test_canceling_refunds_once(start_server: Callable[..., Server]) -> None:
    server = start_server(live_provider="sandbox", admin_token=ADMIN_TOKEN, run_worker=False)
    account_id, key = new_account(server, PRICE)
    task_id = create(server, key)["data"]["taskId"]
    assert balance(server, key) == 0
    canceled = call(server, "POST", "/api/v1/jobs/cancel", key, json={"taskId": task_id}).json()
    assert canceled["code"] == 200
    assert canceled["data"]["creditsConsumed"] == 0
    again = call(server, "POST", "/api/v1/jobs/cancel", key, json={"taskId": task_id}).json()
    assert again["code"] == 200  # canceling twice is harmless...
    assert balance(server, key) == PRICE  # ...and refunds once
    assert [row["reason"] for row in ledger(server, account_id)].count("refund") == 1


def test_test_keys_are_never_charged(billed: Server) -> None:
    account_id, key = new_account(billed, 0, test=True)
    task_id = create(billed, key)["data"]["taskId"]
    assert billed.wait(key, task_id)["creditsConsumed"] == 0
    assert balance(billed, key) == 0
    assert ledger(billed, account_id) == []


def test_an_idempotent_replay_is_not_charged_again(billed: Server) -> None:
    _, key = new_account(billed, 100)
    first = create(billed, key, **{"Idempotency-Key": "once"})
    second = create(billed, key, **{"Idempotency-Key": "once"})
    assert first["data"]["taskId"] == second["data"]["taskId"]
    assert balance(billed, key) == 100 - PRICE


def test_billing_off_runs_without_credits(start_server: Callable[..., Server]) -> None:
    server = start_server(live_provider="sandbox", billing=False, admin_token=ADMIN_TOKEN)
    _, key = new_account(server, 0)
    task_id = create(server, key)["data"]["taskId"]
    assert server.wait(key, task_id)["creditsConsumed"] == 0
    assert balance(server, key) == 0


def test_monthly_cap_refuses_with_402(billed: Server) -> None:
    account_id, key = new_account(billed, 1000)
    admin_ok(billed, "POST", f"/admin/accounts/{account_id}/limits", {"monthlyCap": 2 * PRICE})
    assert create(billed, key)["code"] == 200
    assert create(billed, key)["code"] == 200
    refused = create(billed, key)
    assert refused["code"] == 402
    assert "monthly spending cap" in refused["msg"]


async def _parallel_creates(base_url: str, key: str, count: int) -> list[int]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:

        async def one() -> int:
            response = await client.post(
                "/api/v1/jobs/createTask",
                json=prompt_body(),
                headers={"Authorization": f"Bearer {key}"},
            )
            code: int = response.json()["code"]
            return code

        return await asyncio.gather(*(one() for _ in range(count)))


def test_fifty_parallel_creates_never_overdraw(billed: Server) -> None:
    """Written against the HTTP API only, so it runs unchanged on any database."""
    _, key = new_account(billed, 10 * PRICE)
    codes = asyncio.run(_parallel_creates(billed.base_url, key, 50))
    assert codes.count(200) == 10
    assert codes.count(402) == 40
    assert balance(billed, key) == 0
    listed = call(billed, "GET", "/api/v1/jobs/list", key, params={"limit": 100}).json()
    assert len(listed["data"]["items"]) == 10
    assert audit(billed)["ok"] is True


def test_ledger_adds_up_after_random_failures_and_audit_catches_tampering(
    billed: Server,
) -> None:
    rng = random.Random(4)
    account_id, key = new_account(billed, 40 * PRICE)
    prompts = [
        rng.choice(["fine", "[sandbox:fail=upstream]", "[sandbox:fail=safety]", "ok too"])
        for _ in range(24)
    ]
    task_ids = [create(billed, key, prompt_body(prompt))["data"]["taskId"] for prompt in prompts]
    final = [billed.wait(key, task_id) for task_id in task_ids]
    succeeded = sum(data["state"] == "success" for data in final)
    assert 0 < succeeded < len(final)
    assert balance(billed, key) == 40 * PRICE - succeeded * PRICE
    assert audit(billed) == {"ok": True, "discrepancies": []}
    checked = cli(billed.data_dir, "credits", "audit")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("ok:")

    with rows_of(billed.data_dir) as connection:
        connection.execute(
            update(accounts)
            .where(accounts.c.id == account_id)
            .values(credits=accounts.c.credits + 7)
        )
    tampered = cli(billed.data_dir, "credits", "audit")
    assert tampered.returncode == 1
    assert account_id in tampered.stdout
    assert audit(billed)["discrepancies"] == [
        {
            "kind": "account",
            "id": account_id,
            "recorded": 40 * PRICE - succeeded * PRICE + 7,
            "ledger": 40 * PRICE - succeeded * PRICE,
        }
    ]


def test_a_key_never_sees_or_spends_another_accounts_tasks_or_credits(billed: Server) -> None:
    _, rich = new_account(billed, 100)
    _, poor = new_account(billed, 0)
    task_id = create(billed, rich)["data"]["taskId"]
    assert billed.record(poor, task_id)["code"] == 404
    canceled = call(billed, "POST", "/api/v1/jobs/cancel", poor, json={"taskId": task_id})
    assert canceled.json()["code"] == 404
    assert call(billed, "GET", "/api/v1/jobs/list", poor).json()["data"]["items"] == []
    assert balance(billed, poor) == 0
    assert create(billed, poor)["code"] == 402
    assert balance(billed, rich) == 100 - PRICE
