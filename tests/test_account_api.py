"""Acceptance: what the account page reads over the public API, with the account's own
key: its ledger in pages, its usage per UTC day, its keys (listed and revoked, never
made); and the operator's queue (``GET /admin/queue``). A real server and its sandbox."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from accounts_helpers import ADMIN_TOKEN, admin_ok, call, new_account
from conftest import Server, prompt_body

PRICE = 18
DAY_MS = 86_400_000


@pytest.fixture
def billed(start_server: Callable[..., Server]) -> Server:
    """Live keys run on the sandbox, so their tasks are charged and really run."""
    return start_server(live_provider="sandbox", admin_token=ADMIN_TOKEN)


def data(server: Server, method: str, path: str, key: str, **kwargs: Any) -> Any:
    answer = call(server, method, path, key, **kwargs).json()
    assert answer["code"] == 200, answer
    return answer["data"]


def code(server: Server, method: str, path: str, key: str, **kwargs: Any) -> tuple[int, str]:
    answer = call(server, method, path, key, **kwargs).json()
    return answer["code"], answer["msg"]


def run(server: Server, key: str, prompt: str) -> dict[str, Any]:
    task_id = server.create(key, prompt_body(prompt))["data"]["taskId"]
    return server.wait(key, task_id)


def test_the_ledger_shows_grants_charges_and_refunds_newest_first_with_their_tasks(
    billed: Server,
) -> None:
    _, key = new_account(billed, credits=100)
    done = run(billed, key, "a banana")
    failed = run(billed, key, "[sandbox:fail=upstream] a banana")
    assert (done["state"], failed["state"]) == ("success", "fail")
    found = data(billed, "GET", "/api/v1/account/ledger", key)
    rows = [(row["reason"], row["amount"], row["taskId"]) for row in found["entries"]]
    assert rows == [
        ("refund", PRICE, failed["taskId"]),
        ("charge", -PRICE, failed["taskId"]),
        ("charge", -PRICE, done["taskId"]),
        ("grant", 100, None),
    ]
    assert found["nextCursor"] is None
    # Another account's ledger is its own.
    _, other = new_account(billed, credits=5)
    assert [
        row["amount"] for row in data(billed, "GET", "/api/v1/account/ledger", other)["entries"]
    ] == [5]


def test_the_ledger_pages_with_its_cursor(billed: Server) -> None:
    account_id, key = new_account(billed)
    for amount in range(1, 61):
        admin_ok(billed, "POST", f"/admin/accounts/{account_id}/credits", {"amount": amount})
    first = data(billed, "GET", "/api/v1/account/ledger", key)
    assert [row["amount"] for row in first["entries"]] == list(range(60, 10, -1))
    rest = data(
        billed, "GET", "/api/v1/account/ledger", key, params={"cursor": first["nextCursor"]}
    )
    assert [row["amount"] for row in rest["entries"]] == list(range(10, 0, -1))
    assert rest["nextCursor"] is None
    refused = code(billed, "GET", "/api/v1/account/ledger", key, params={"cursor": "nope"})
    assert refused == (422, "cursor: not a cursor this server handed out")


def test_usage_has_every_utc_day_with_tasks_and_credits_net_of_refunds(billed: Server) -> None:
    _, key = new_account(billed, credits=100)
    run(billed, key, "a banana")
    failed = run(billed, key, "[sandbox:fail=upstream] a banana")
    days = data(billed, "GET", "/api/v1/account/usage", key)
    assert len(days) == 30
    steps = {later["day"] - earlier["day"] for earlier, later in itertools.pairwise(days)}
    assert steps == {DAY_MS}
    assert all(day["day"] % DAY_MS == 0 for day in days)
    today = days[-1]
    assert today["day"] <= failed["createTime"] < today["day"] + DAY_MS
    assert (today["tasks"], today["credits"]) == (2, PRICE)
    assert all((day["tasks"], day["credits"]) == (0, 0) for day in days[:-1])
    assert len(data(billed, "GET", "/api/v1/account/usage", key, params={"days": 1})) == 1
    for bad in ("0", "367"):
        assert code(billed, "GET", "/api/v1/account/usage", key, params={"days": bad}) == (
            422,
            "days: must be from 1 to 366",
        )
    assert code(billed, "GET", "/api/v1/account/usage", key, params={"days": "many"})[0] == 422


def test_a_key_lists_and_revokes_its_accounts_keys_but_cannot_make_one(billed: Server) -> None:
    account_id, key = new_account(billed)
    spare = admin_ok(
        billed, "POST", f"/admin/accounts/{account_id}/keys", {"name": "ci", "test": True}
    )
    _, stranger = new_account(billed)
    listed = data(billed, "GET", "/api/v1/account/keys", key)
    assert sorted((row["name"], row["kind"], row["current"]) for row in listed) == [
        ("", "live", True),
        ("ci", "test", False),
    ]
    for row in listed:
        assert set(row) == {
            "id", "name", "prefix", "kind", "createdAt", "revokedAt", "expiresAt", "lastUsedAt",
            "current",
        }  # fmt: skip
        assert spare["secret"] not in str(row)
        assert key not in str(row)
        assert spare["secret"].startswith(row["prefix"]) or key.startswith(row["prefix"])
    # The key that asked was used just now; the spare one never was, until it is.
    used = {row["name"]: row["lastUsedAt"] for row in listed}
    assert used[""] is not None
    assert used[""] >= listed[0]["createdAt"]
    assert used["ci"] is None
    assert data(billed, "GET", "/api/v1/chat/credit", spare["secret"]) == 0
    again = {
        row["name"]: row["lastUsedAt"] for row in data(billed, "GET", "/api/v1/account/keys", key)
    }
    assert again["ci"] is not None
    assert again[""] == used[""]  # recorded at most once a minute per key
    # Another account's key is not found, exactly as an unknown one, and stays usable.
    stranger_id = data(billed, "GET", "/api/v1/account/keys", stranger)[0]["id"]
    for unknown in (stranger_id, "key_unknown"):
        answer = code(billed, "POST", f"/api/v1/account/keys/{unknown}/revoke", key)
        assert answer == (404, f"no active key {unknown}")
    assert data(billed, "GET", "/api/v1/chat/credit", stranger) == 0
    # Revoked: the key answers 401 from then on; its listing says when.
    revoked = data(billed, "POST", f"/api/v1/account/keys/{spare['id']}/revoke", key)
    assert revoked == {"id": spare["id"], "revoked": True}
    assert code(billed, "GET", "/api/v1/chat/credit", spare["secret"])[0] == 401
    after = {row["id"]: row for row in data(billed, "GET", "/api/v1/account/keys", key)}
    assert after[spare["id"]]["revokedAt"] is not None
    # No route makes a key with an API key.
    made = call(billed, "POST", "/api/v1/account/keys", key, json={"name": "mine"})
    assert made.json()["code"] == 404
    assert len(data(billed, "GET", "/api/v1/account/keys", key)) == 2


def test_the_queue_shows_tasks_by_state_the_oldest_waiting_and_live_workers(
    start_server: Callable[..., Server],
) -> None:
    idle = start_server(admin_token=ADMIN_TOKEN, run_worker=False)
    empty = admin_ok(idle, "GET", "/admin/queue")
    assert empty == {
        "byState": {"waiting": 0, "queuing": 0, "generating": 0},
        "oldestWaitingAt": None,
        "oldestWaitingAgeMs": None,
        "workers": [],
    }
    key = idle.key()
    made = [idle.create(key, prompt_body())["data"]["taskId"] for _ in range(2)]
    queue = admin_ok(idle, "GET", "/admin/queue")
    assert queue["byState"] == {"waiting": 2, "queuing": 0, "generating": 0}
    assert queue["oldestWaitingAt"] == idle.record(key, made[0])["data"]["createTime"]
    assert queue["oldestWaitingAgeMs"] >= 0
    assert call(idle, "GET", "/admin/queue", key).json()["code"] == 401

    working = start_server(admin_token=ADMIN_TOKEN)
    [worker] = admin_ok(working, "GET", "/admin/queue")["workers"]
    assert worker["role"] == "serve"
    assert worker["inFlight"] == 0
