"""Queries that read tasks, create them, and end them: every way a task ends goes through
`end_tasks`, with its refund and its callback in the same transaction.

What a worker does with a task it holds (claim, renew, finish, hand back, rescue) is in
``leases``; the Idempotency-Keys of createTask in ``idempotency``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, func, select, update

from bananastand.contract import TaskState
from bananastand.records import Task
from bananastand.store.ports import (
    Admission,
    Created,
    CreateRefusal,
    Failure,
    IdempotencyClaim,
    KeyReused,
    NewTask,
    TooManyWaiting,
)
from bananastand.store.sql import callbacks, ledger
from bananastand.store.sql.idempotency import claim_idempotency_key, live_idempotency_key
from bananastand.store.sql.prepared import PreparedInsert, PreparedQuery
from bananastand.store.tables import tasks

_TASK_BY_ID = select(tasks).where(tasks.c.id == bindparam("task_id"))
# recordInfo's query: the one every polling client runs over and over.
_TASK_OF_ACCOUNT = PreparedQuery(_TASK_BY_ID.where(tasks.c.account_id == bindparam("account_id")))


def get_task(connection: Connection, task_id: str, account_id: str | None = None) -> Task | None:
    row: Mapping[Any, Any] | None
    if account_id is None:
        row = connection.execute(_TASK_BY_ID, {"task_id": task_id}).mappings().first()
    else:
        row = _TASK_OF_ACCOUNT.first(connection, task_id=task_id, account_id=account_id)
    return Task.from_row(row) if row else None


#: ``id IN (...)`` lists at most this long: well below every database's bound-parameter cap.
VERSION_CHUNK = 500
_VERSIONS = select(tasks.c.id, tasks.c.state, tasks.c.updated_at).where(
    tasks.c.id.in_(bindparam("ids", expanding=True))
)


def task_versions(connection: Connection, task_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
    """``(state, updated_at)`` of each task that exists: what event streams compare to
    learn that a task changed. Narrow on purpose: the rest of the row is read only for
    the tasks that did."""
    found: dict[str, tuple[str, int]] = {}
    for start in range(0, len(task_ids), VERSION_CHUNK):
        chunk = list(task_ids[start : start + VERSION_CHUNK])
        for task_id, state, updated_at in connection.execute(_VERSIONS, {"ids": chunk}):
            found[task_id] = (state, updated_at)
    return found


_TASK_BY_UPSTREAM_HANDLE = select(tasks.c.id).where(
    tasks.c.upstream == bindparam("upstream"), tasks.c.upstream_handle == bindparam("handle")
)


def task_by_upstream_handle(connection: Connection, upstream: str, handle: str) -> str | None:
    """By ``ix_tasks_upstream_handle``; a handle is unique within its upstream."""
    found = connection.execute(_TASK_BY_UPSTREAM_HANDLE, {"upstream": upstream, "handle": handle})
    task_id: str | None = found.scalar()
    return task_id


def list_tasks(
    connection: Connection,
    account_id: str,
    *,
    state: TaskState | None,
    limit: int,
    before_seq: int | None,
    model: str | None = None,
) -> list[Task]:
    """Newest first; ``before_seq`` continues a page (keyset pagination stays stable)."""
    query = select(tasks).where(tasks.c.account_id == account_id)
    if state is not None:
        query = query.where(tasks.c.state == state.value)
    if model is not None:
        query = query.where(tasks.c.model == model)
    if before_seq is not None:
        query = query.where(tasks.c.seq < before_seq)
    query = query.order_by(tasks.c.seq.desc()).limit(limit)
    return [Task.from_row(row) for row in connection.execute(query).mappings()]


_INSERT_TASK = PreparedInsert(
    tasks,
    (
        "id",
        "account_id",
        "key_id",
        "provider",
        "model",
        "state",
        "param",
        "input",
        "callback_url",
        "credits_consumed",
        "created_at",
        "updated_at",
        "lane",
    ),
)


def create_task(
    connection: Connection,
    new: NewTask,
    now_ms: int,
    idempotency: IdempotencyClaim | None,
    admission: Admission,
) -> Created | CreateRefusal:
    """Insert the task, or return the one an earlier request with the same key made.

    The charge is part of the same transaction: no task without its charge, no charge
    without its task, and a replayed request is never charged again. Every check comes
    first, under the account's row lock, so a refusal returns with nothing written (and
    nothing to roll back). The lock makes the checks and the writes one step per account
    with several writers (PostgreSQL): two requests with one Idempotency-Key, or two
    charges against one balance, take turns; SQLite's single writer already does.
    """
    ledger.lock_account(connection, new.account_id)
    if idempotency is not None:
        earlier = live_idempotency_key(connection, new.account_id, idempotency, now_ms)
        if earlier is not None:
            if earlier["request_hash"] != idempotency.request_hash:
                return KeyReused(idempotency.key)
            return Created(task_id=earlier["task_id"], created=False)
    if admission.max_waiting is not None:
        waiting = _count_waiting(connection, new.account_id, admission.max_waiting)
        if waiting >= admission.max_waiting:
            return TooManyWaiting(waiting=waiting, cap=admission.max_waiting)
    if new.credits > 0:
        refused = ledger.charge(
            connection,
            new.account_id,
            new.id,
            new.credits,
            now_ms,
            monthly_cap=admission.monthly_cap,
            month_start_ms=admission.month_start_ms,
        )
        if refused is not None:
            return refused
    if idempotency is not None:
        claim_idempotency_key(connection, new, idempotency, now_ms)
    _INSERT_TASK.run(
        connection,
        {
            "id": new.id,
            "account_id": new.account_id,
            "key_id": new.key_id,
            "provider": new.provider,
            "model": new.model,
            "state": TaskState.WAITING.value,
            "param": new.param,
            "input": new.input,
            "callback_url": new.callback_url,
            "credits_consumed": new.credits,
            "created_at": now_ms,
            "updated_at": now_ms,
            "lane": new.lane,
        },
    )
    return Created(task_id=new.id, created=True)


def _count_waiting(connection: Connection, account_id: str, cap: int) -> int:
    """The account's waiting tasks, counted up to ``cap``: a long queue costs no more."""
    waiting_rows = (
        select(tasks.c.seq)
        .where(tasks.c.account_id == account_id, tasks.c.state == TaskState.WAITING.value)
        .limit(cap)
        .subquery()
    )
    count: int = connection.execute(select(func.count()).select_from(waiting_rows)).scalar_one()
    return count


def cancel_task(
    connection: Connection, task_id: str, account_id: str, now_ms: int, failure: Failure
) -> Task | None:
    """End a task that is not generating yet; returns it as it is now (``None``: unknown).

    Clearing the lease fences out a worker that is still fetching the task's inputs. A
    canceled task is refunded in full, in the same transaction.
    """
    end_tasks(
        connection,
        and_(
            tasks.c.id == task_id,
            tasks.c.account_id == account_id,
            tasks.c.state.in_((TaskState.WAITING.value, TaskState.QUEUING.value)),
        ),
        now_ms,
        TaskState.FAIL,
        fail_code=failure.code,
        fail_msg=failure.message,
    )
    return get_task(connection, task_id, account_id)


def end_tasks(
    connection: Connection, which: Any, now_ms: int, state: TaskState, **outcome: str
) -> Sequence[Row[Any]]:
    """Every way a task ends goes through here: the outcome, the lease dropped, and, in
    the same transaction, a failed task's refund and its callback, written together or
    not at all. Returns the tasks that ended."""
    ended = connection.execute(
        update(tasks)
        .where(which)
        .values(
            state=state.value,
            **outcome,
            completed_at=now_ms,
            updated_at=now_ms,
            lease_token=None,
            lease_expires_at=None,
        )
        .returning(tasks.c.id, tasks.c.account_id, tasks.c.callback_url)
    ).all()
    for task_id, account_id, callback_url in ended:
        if state is TaskState.FAIL:
            ledger.refund_task(connection, task_id, now_ms)
        if callback_url:
            callbacks.enqueue(
                connection, task_id=task_id, account_id=account_id, url=callback_url, now_ms=now_ms
            )
    return ended
