"""Queries about credits: every grant, charge and refund is a ledger row.

The balance is the sum of an account's rows. ``accounts.credits`` caches that sum and is
changed only here, in the same transaction as the row that explains the change; the
``audit`` query proves the two agree. Charges are conditional updates
(``credits >= amount``), so concurrent charges can never overdraw, on SQLite (one writer)
as on PostgreSQL (the row lock of the UPDATE).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, func, insert, select, update

from bananastand.errors import InsufficientCreditsError, ValidationError
from bananastand.records import LedgerEntry
from bananastand.storable import INT64_MAX
from bananastand.store.schema import accounts, credit_ledger, tasks

CHARGE = "charge"
REFUND = "refund"
GRANT = "grant"


def _record(
    connection: Connection,
    account_id: str,
    amount: int,
    reason: str,
    now_ms: int,
    *,
    task_id: str | None = None,
    note: str = "",
) -> None:
    connection.execute(
        insert(credit_ledger).values(
            account_id=account_id,
            amount=amount,
            reason=reason,
            task_id=task_id,
            note=note,
            created_at=now_ms,
        )
    )
    connection.execute(
        update(accounts)
        .where(accounts.c.id == account_id)
        .values(credits=accounts.c.credits + amount)
    )


def balance(connection: Connection, account_id: str) -> int | None:
    found: int | None = connection.execute(
        select(accounts.c.credits).where(accounts.c.id == account_id)
    ).scalar_one_or_none()
    return found


def grant(connection: Connection, account_id: str, amount: int, now_ms: int, note: str) -> int:
    """Add (or, negative, take away) credits by hand; returns the new balance.

    A negative grant may not take the balance below zero, nor a grant above what the
    BIGINT column holds (SQLite would quietly make it a float).
    """
    current = balance(connection, account_id)
    if current is None:
        raise LookupError(account_id)
    if current + amount > INT64_MAX:
        raise ValidationError(f"amount: the balance would be more than {INT64_MAX}")
    if current + amount < 0:
        raise InsufficientCreditsError(
            f"account {account_id} has {current} credits; cannot take away {-amount}"
        )
    _record(connection, account_id, amount, GRANT, now_ms, note=note)
    return current + amount


def charge(
    connection: Connection,
    account_id: str,
    task_id: str,
    amount: int,
    now_ms: int,
    *,
    monthly_cap: int | None = None,
    month_start_ms: int = 0,
) -> None:
    """Take ``amount`` for a task, or raise InsufficientCreditsError and change nothing."""
    if monthly_cap is not None:
        spent = -(
            connection.execute(
                select(func.coalesce(func.sum(credit_ledger.c.amount), 0)).where(
                    credit_ledger.c.account_id == account_id,
                    credit_ledger.c.reason.in_((CHARGE, REFUND)),
                    credit_ledger.c.created_at >= month_start_ms,
                )
            ).scalar_one()
        )
        if spent + amount > monthly_cap:
            raise InsufficientCreditsError(
                f"monthly spending cap reached: {spent} of {monthly_cap} credits spent "
                f"this month, this task costs {amount}"
            )
    taken = connection.execute(
        update(accounts)
        .where(accounts.c.id == account_id, accounts.c.credits >= amount)
        .values(credits=accounts.c.credits - amount)
    )
    if taken.rowcount != 1:
        raise InsufficientCreditsError(f"insufficient credits: this task costs {amount}")
    connection.execute(
        insert(credit_ledger).values(
            account_id=account_id,
            amount=-amount,
            reason=CHARGE,
            task_id=task_id,
            note="",
            created_at=now_ms,
        )
    )


def refund_task(connection: Connection, task_id: str, now_ms: int) -> int:
    """Give back what a failed task consumed; returns the amount (0: nothing to give back).

    ``credits_consumed`` drops to 0 with the refund, so a second call finds nothing; the
    unique (task_id, reason) index is the last line of defence.
    """
    row = connection.execute(
        select(tasks.c.account_id, tasks.c.credits_consumed).where(tasks.c.id == task_id)
    ).first()
    if row is None or row.credits_consumed <= 0:
        return 0
    amount = int(row.credits_consumed)
    _record(connection, row.account_id, amount, REFUND, now_ms, task_id=task_id)
    connection.execute(update(tasks).where(tasks.c.id == task_id).values(credits_consumed=0))
    return amount


def entries(connection: Connection, account_id: str, limit: int) -> list[LedgerEntry]:
    """The account's newest rows first."""
    query = (
        select(credit_ledger)
        .where(credit_ledger.c.account_id == account_id)
        .order_by(credit_ledger.c.seq.desc())
        .limit(limit)
    )
    return [LedgerEntry.from_row(row) for row in connection.execute(query).mappings()]


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """A balance (or a task's creditsConsumed) that its ledger rows do not explain."""

    kind: str  # "account" or "task"
    id: str
    recorded: int
    ledger: int


def audit(connection: Connection) -> list[Discrepancy]:
    """Every account whose balance is not its ledger sum, and every task whose
    creditsConsumed is not what its charge and refund rows add up to."""
    per_account = (
        select(credit_ledger.c.account_id, func.sum(credit_ledger.c.amount).label("total"))
        .group_by(credit_ledger.c.account_id)
        .subquery()
    )
    account_sum = func.coalesce(per_account.c.total, 0)
    found = [
        Discrepancy("account", row.id, int(row.credits), int(row.total))
        for row in connection.execute(
            select(accounts.c.id, accounts.c.credits, account_sum.label("total"))
            .select_from(accounts.outerjoin(per_account, per_account.c.account_id == accounts.c.id))
            .where(accounts.c.credits != account_sum)
        )
    ]
    per_task = (
        select(credit_ledger.c.task_id, func.sum(credit_ledger.c.amount).label("total"))
        .where(credit_ledger.c.task_id.is_not(None))
        .group_by(credit_ledger.c.task_id)
        .subquery()
    )
    task_sum = -func.coalesce(per_task.c.total, 0)
    found.extend(
        Discrepancy("task", row.id, int(row.credits_consumed), int(row.total))
        for row in connection.execute(
            select(tasks.c.id, tasks.c.credits_consumed, task_sum.label("total"))
            .select_from(tasks.outerjoin(per_task, per_task.c.task_id == tasks.c.id))
            .where(tasks.c.credits_consumed != task_sum)
        )
    )
    return found
