"""Queries about credits: every grant, charge and refund is a ledger row.

The balance is the sum of an account's rows. ``accounts.credits`` caches that sum and is
changed only here, in the same transaction as the row that explains the change; the
``audit`` query proves the two agree. Charges and grants are conditional updates
(``credits >= amount``), so concurrent ones can never overdraw, on SQLite (one writer) as
on PostgreSQL (the row lock of the UPDATE); checks that read other rows first (the
monthly cap) run under the account's row lock (``lock_account``), taken once per
transaction.
"""

from __future__ import annotations

import weakref
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update

from bananastand.records import LedgerEntry
from bananastand.storable import INT64_MAX
from bananastand.store.ports import (
    DAY_MS,
    BalanceOverflow,
    DayUsage,
    Discrepancy,
    MonthlyCapReached,
    NotEnoughCredits,
)
from bananastand.store.sql.prepared import PreparedInsert, PreparedQuery
from bananastand.store.tables import accounts, credit_ledger, tasks

CHARGE = "charge"
REFUND = "refund"
GRANT = "grant"


_INSERT_ROW = PreparedInsert(
    credit_ledger, ("account_id", "amount", "reason", "task_id", "note", "created_at")
)


def _insert_row(
    connection: Connection,
    account_id: str,
    amount: int,
    reason: str,
    now_ms: int,
    *,
    task_id: str | None = None,
    note: str = "",
) -> None:
    """The row that explains a change of ``accounts.credits`` made in the same transaction.

    On the driver's cursor, as the task's INSERT: nothing waits for its answer, so a
    charged create sends both ahead of their results where the runner allows it."""
    _INSERT_ROW.run(
        connection,
        {
            "account_id": account_id,
            "amount": amount,
            "reason": reason,
            "task_id": task_id,
            "note": note,
            "created_at": now_ms,
        },
    )


_LOCK_ACCOUNT = PreparedQuery(
    select(accounts.c.credits).where(accounts.c.id == bindparam("account_id")).with_for_update()
)
#: Key of ``Connection.info``: the transaction whose account locks ``_held_accounts`` knows.
_HELD = "bananastand_held_accounts"


def lock_account(connection: Connection, account_id: str) -> None:
    """Hold the account's row until the transaction ends.

    What several writers need before reading other rows to decide (the monthly cap, the
    waiting tasks, an Idempotency-Key). SQLite's compiler leaves ``FOR UPDATE`` out: its
    writer is serialised, every write transaction already holds the whole database.

    A lock is taken once per transaction: the writer commits its writes in groups, and
    every later create of the group for the same account would lock the row its own
    transaction already holds (a round trip that waits for nothing). Only the lock is
    remembered, never the balance: each charge still decides on the row as it is then
    (a conditional UPDATE), whatever the group's earlier writes did to it.
    """
    held = _held_accounts(connection)
    if held is not None and account_id in held:
        return
    found = _LOCK_ACCOUNT.first(connection, account_id=account_id)
    if held is not None and found is not None:  # no row, no lock: look again next time
        held.add(account_id)


def _held_accounts(connection: Connection) -> set[str] | None:
    """The accounts locked in the connection's innermost transaction (None: not in one).

    Kept with the transaction object itself, not cleared by events: a new transaction (the
    next group, each write of a group rerun one by one) is a new object and starts with
    none, so a lock released by a commit or a rollback is never taken for held. A
    savepoint counts as a transaction of its own: rolling back to it releases the locks
    taken since, and locks taken before it are merely taken again.
    """
    transaction: Any = connection.get_nested_transaction() or connection.get_transaction()
    if transaction is None:
        return None
    info = connection.info
    entry: tuple[weakref.ref[Any], set[str]] | None = info.get(_HELD)
    if entry is None or entry[0]() is not transaction:
        # A weak reference: it keeps nothing alive, and once its transaction is gone it
        # answers None, so a later transaction at the same address is not taken for it.
        entry = info[_HELD] = (weakref.ref(transaction), set())
    return entry[1]


def balance(connection: Connection, account_id: str) -> int | None:
    found: int | None = connection.execute(
        select(accounts.c.credits).where(accounts.c.id == account_id)
    ).scalar_one_or_none()
    return found


def grant(
    connection: Connection, account_id: str, amount: int, now_ms: int, note: str
) -> int | NotEnoughCredits | BalanceOverflow | None:
    """Add (or, negative, take away) credits by hand; the new balance, or why not (None:
    no such account), with nothing written.

    One conditional UPDATE: a negative grant may not take the balance below zero, nor a
    grant above what the BIGINT column holds (SQLite would quietly make it a float). Each
    bound compares the balance with a value that itself fits in 64 bits: ``INT64_MAX -
    amount`` would not for a negative amount, and the driver refuses such a parameter.
    """
    if -INT64_MAX <= amount <= INT64_MAX:
        fits = (
            accounts.c.credits <= INT64_MAX - amount
            if amount >= 0
            else accounts.c.credits >= -amount
        )
        changed = connection.execute(
            update(accounts)
            .where(accounts.c.id == account_id, fits)
            .values(credits=accounts.c.credits + amount)
            .returning(accounts.c.credits)
        ).scalar_one_or_none()
        if changed is not None:
            _insert_row(connection, account_id, amount, GRANT, now_ms, note=note)
            return int(changed)
    # Refused (or more than any balance could give or take): say why, with nothing written.
    current = balance(connection, account_id)
    if current is None:
        return None
    if amount < 0:
        return NotEnoughCredits(balance=current, cost=-amount)
    return BalanceOverflow(limit=INT64_MAX)


def charge(
    connection: Connection,
    account_id: str,
    task_id: str,
    amount: int,
    now_ms: int,
    *,
    monthly_cap: int | None = None,
    month_start_ms: int = 0,
) -> NotEnoughCredits | MonthlyCapReached | None:
    """Take ``amount`` for a task; or why not, with nothing written. The caller holds the
    account's row lock when there is a monthly cap (see ``lock_account``)."""
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
            return MonthlyCapReached(spent=spent, cap=monthly_cap, cost=amount)
    taken = connection.execute(
        update(accounts)
        .where(accounts.c.id == account_id, accounts.c.credits >= amount)
        .values(credits=accounts.c.credits - amount)
    )
    if taken.rowcount != 1:
        return NotEnoughCredits(balance=balance(connection, account_id) or 0, cost=amount)
    _insert_row(connection, account_id, -amount, CHARGE, now_ms, task_id=task_id)
    return None


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
    connection.execute(
        update(accounts)
        .where(accounts.c.id == row.account_id)
        .values(credits=accounts.c.credits + amount)
    )
    _insert_row(connection, row.account_id, amount, REFUND, now_ms, task_id=task_id)
    connection.execute(update(tasks).where(tasks.c.id == task_id).values(credits_consumed=0))
    return amount


def entries(
    connection: Connection, account_id: str, limit: int, before_seq: int | None = None
) -> list[LedgerEntry]:
    """The account's newest rows first; older than ``before_seq`` where given (a page)."""
    query = (
        select(credit_ledger)
        .where(credit_ledger.c.account_id == account_id)
        .order_by(credit_ledger.c.seq.desc())
        .limit(limit)
    )
    if before_seq is not None:
        query = query.where(credit_ledger.c.seq < before_seq)
    return [LedgerEntry.from_row(row) for row in connection.execute(query).mappings()]


def usage_by_day(connection: Connection, account_id: str, since_ms: int) -> list[DayUsage]:
    """Tasks created and credits spent (charges less refunds) per UTC day since ``since_ms``,
    oldest first; days with neither are left out.

    The day is ``created_at`` less its remainder of a day: epoch milliseconds count UTC
    days exactly, and ``%`` is the same integer operator on SQLite and PostgreSQL.
    """
    task_day = (tasks.c.created_at - tasks.c.created_at % DAY_MS).label("day")
    created = {
        int(day): int(count)
        for day, count in connection.execute(
            select(task_day, func.count())
            .where(tasks.c.account_id == account_id, tasks.c.created_at >= since_ms)
            .group_by(task_day)
        )
    }
    spend_day = (credit_ledger.c.created_at - credit_ledger.c.created_at % DAY_MS).label("day")
    spent = {
        int(day): int(amount)
        for day, amount in connection.execute(
            select(spend_day, -func.sum(credit_ledger.c.amount))
            .where(
                credit_ledger.c.account_id == account_id,
                credit_ledger.c.reason.in_((CHARGE, REFUND)),
                credit_ledger.c.created_at >= since_ms,
            )
            .group_by(spend_day)
        )
    }
    return [
        DayUsage(day_ms=day, tasks=created.get(day, 0), credits=spent.get(day, 0))
        for day in sorted(created.keys() | spent.keys())
    ]


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
