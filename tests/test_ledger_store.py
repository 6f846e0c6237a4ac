"""Integration: the ledger queries inside the task transactions, where HTTP cannot easily reach:
a task failed by the rescue pass, a late second outcome, a second refund row."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, insert
from sqlalchemy.exc import IntegrityError

from bananastand.contract import TaskState
from bananastand.store.sql import accounts as account_queries
from bananastand.store.sql import ledger, migrate
from bananastand.store.sql import tasks as queries
from bananastand.store.sqlite.database import Database
from bananastand.store.tables import credit_ledger

T0 = 1_800_000_000_000


@pytest.fixture
def connection(tmp_path: Path) -> Iterator[Connection]:
    db = Database(f"sqlite:///{tmp_path / 'ledger.db'}")
    migrate.upgrade(db)
    with db.engine.begin() as conn:
        yield conn
    db.engine.dispose()


def charged_task(connection: Connection, task_id: str, credits: int = 18) -> str:
    account_queries.create_account(connection, "acct_a", "a", T0, starting_credits=100)
    new = queries.NewTask(
        id=task_id,
        account_id="acct_a",
        key_id="key_a",
        provider="sandbox",
        model="nano-banana-pro",
        param="{}",
        input="{}",
        callback_url=None,
        credits=credits,
    )
    queries.create_task(connection, new, T0, None)
    return queries.claim_tasks(
        connection, worker_id="w", lease_token="lease1", limit=1, now_ms=T0, lease_ms=1000
    )[0].lease_token


def test_a_task_failed_by_the_rescue_pass_is_refunded_once(connection: Connection) -> None:
    charged_task(connection, "task_r")
    assert ledger.balance(connection, "acct_a") == 82
    rescued = queries.rescue_expired(connection, T0 + 5000, max_attempts=1)
    assert rescued.failed == ["task_r"]
    assert ledger.balance(connection, "acct_a") == 100
    assert queries.rescue_expired(connection, T0 + 9000, max_attempts=1).failed == []
    assert ledger.balance(connection, "acct_a") == 100
    task = queries.get_task(connection, "task_r")
    assert task is not None
    assert task.credits_consumed == 0
    assert ledger.audit(connection) == []


def test_a_late_second_outcome_refunds_nothing(connection: Connection) -> None:
    lease = charged_task(connection, "task_f")
    fail = {"state": TaskState.FAIL, "fail_code": "500", "fail_msg": "boom"}
    assert queries.finish_task(connection, "task_f", lease, T0 + 10, **fail)  # type: ignore[arg-type]
    assert not queries.finish_task(connection, "task_f", lease, T0 + 20, **fail)  # type: ignore[arg-type]
    assert ledger.refund_task(connection, "task_f", T0 + 30) == 0
    assert ledger.balance(connection, "acct_a") == 100
    reasons = [entry.reason for entry in ledger.entries(connection, "acct_a", 10)]
    assert sorted(reasons) == ["charge", "grant", "refund"]


def test_a_success_keeps_the_charge(connection: Connection) -> None:
    lease = charged_task(connection, "task_s")
    assert queries.finish_task(connection, "task_s", lease, T0 + 10, state=TaskState.SUCCESS)
    assert ledger.balance(connection, "acct_a") == 82
    assert ledger.audit(connection) == []


def test_the_database_refuses_a_second_refund_row(connection: Connection) -> None:
    charged_task(connection, "task_u")
    row = {"account_id": "acct_a", "amount": 18, "reason": "refund", "task_id": "task_u"}
    connection.execute(insert(credit_ledger).values(**row, created_at=T0))
    with pytest.raises(IntegrityError):
        connection.execute(insert(credit_ledger).values(**row, created_at=T0 + 1))
