"""Every query about tasks: the task table is also the queue.

Writes about a claimed task are fenced by its lease token: a worker that lost its lease
changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    RowMapping,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    tuple_,
    update,
)

from bananastand.contract import TaskState
from bananastand.records import Claim, Task
from bananastand.store.ports import (
    Admission,
    Created,
    CreateRefusal,
    Failure,
    IdempotencyClaim,
    KeyReused,
    NewTask,
    Rescue,
    TooManyWaiting,
)
from bananastand.store.sql import callbacks, ledger
from bananastand.store.sql.prepared import PreparedInsert, PreparedQuery
from bananastand.store.tables import idempotency_keys, tasks

ACTIVE = (TaskState.QUEUING.value, TaskState.GENERATING.value)


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
        earlier = _live_idempotency_key(connection, new.account_id, idempotency, now_ms)
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
        _claim_idempotency_key(connection, new, idempotency, now_ms)
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
        },
    )
    return Created(task_id=new.id, created=True)


def _live_idempotency_key(
    connection: Connection, account_id: str, idempotency: IdempotencyClaim, now_ms: int
) -> RowMapping | None:
    found: RowMapping | None = (
        connection.execute(
            select(idempotency_keys).where(
                idempotency_keys.c.account_id == account_id,
                idempotency_keys.c.key == idempotency.key,
                idempotency_keys.c.created_at > now_ms - idempotency.ttl_ms,
            )
        )
        .mappings()
        .first()
    )
    return found


def _claim_idempotency_key(
    connection: Connection, new: NewTask, idempotency: IdempotencyClaim, now_ms: int
) -> None:
    """Store the key for this task, replacing an expired use of it (one not yet purged)."""
    connection.execute(
        delete(idempotency_keys).where(
            idempotency_keys.c.account_id == new.account_id,
            idempotency_keys.c.key == idempotency.key,
        )
    )
    connection.execute(
        insert(idempotency_keys).values(
            account_id=new.account_id,
            key=idempotency.key,
            request_hash=idempotency.request_hash,
            task_id=new.id,
            created_at=now_ms,
        )
    )


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


def purge_idempotency_keys(connection: Connection, older_than_ms: int) -> int:
    result = connection.execute(
        delete(idempotency_keys).where(idempotency_keys.c.created_at < older_than_ms)
    )
    return result.rowcount


def cancel_task(
    connection: Connection, task_id: str, account_id: str, now_ms: int, failure: Failure
) -> Task | None:
    """End a task that is not generating yet; returns it as it is now (``None``: unknown).

    Clearing the lease fences out a worker that is still fetching the task's inputs. A
    canceled task is refunded in full, in the same transaction.
    """
    _end(
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


def claim_tasks(
    connection: Connection,
    *,
    worker_id: str,
    lease_token: str,
    limit: int,
    now_ms: int,
    lease_ms: int,
) -> list[Claim]:
    """Take up to ``limit`` waiting tasks, oldest first.

    With several writers, rows another worker is claiming are skipped, never waited for
    or taken twice (``FOR UPDATE SKIP LOCKED``; SQLite, whose writer is serialised, needs
    nothing and its compiler leaves the clause out).
    """
    # A CTE, not ``IN (subquery)``: a planner may run a LIMIT subquery inside an UPDATE
    # more than once and update more rows than asked for; a CTE with FOR UPDATE is run
    # once (it has a side effect, so PostgreSQL never inlines it).
    oldest = (
        select(tasks.c.seq)
        .where(tasks.c.state == TaskState.WAITING.value)
        .order_by(tasks.c.seq)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("oldest")
    )
    rows = (
        connection.execute(
            update(tasks)
            .where(tasks.c.seq.in_(select(oldest.c.seq)))
            .values(
                state=TaskState.QUEUING.value,
                attempts=tasks.c.attempts + 1,
                lease_token=lease_token,
                lease_expires_at=now_ms + lease_ms,
                worker_id=worker_id,
                started_at=func.coalesce(tasks.c.started_at, now_ms),
                updated_at=now_ms,
            )
            .returning(*tasks.c)
        )
        .mappings()
        .all()
    )
    claims = [Claim(task=Task.from_row(row), lease_token=lease_token) for row in rows]
    return sorted(claims, key=lambda claim: claim.task.seq)


def _fenced(task_id: str, lease_token: str) -> Any:
    return and_(
        tasks.c.id == task_id,
        tasks.c.lease_token == lease_token,
        tasks.c.state.in_(ACTIVE),
    )


#: Leases one renewal statement extends: a worker with 5,000 tasks in flight renewed them
#: with 5,000 statements in one transaction, holding the writer longer than a lease lasts
#: on a busy host. Two bound parameters each keep a statement under SQLite's limit.
RENEW_CHUNK = 500


def renew_leases(
    connection: Connection, held: Iterable[tuple[str, str]], now_ms: int, lease_ms: int
) -> set[str]:
    """Extend the leases still held; returns the task ids whose lease is gone."""
    pairs = list(held)
    renewed: set[str] = set()
    for start in range(0, len(pairs), RENEW_CHUNK):
        chunk = pairs[start : start + RENEW_CHUNK]
        result = connection.execute(
            update(tasks)
            .where(
                tasks.c.id.in_([task_id for task_id, _ in chunk]),  # by the primary key
                tuple_(tasks.c.id, tasks.c.lease_token).in_(chunk),
                tasks.c.state.in_(ACTIVE),
            )
            .values(lease_expires_at=now_ms + lease_ms)
            .returning(tasks.c.id)
        )
        renewed.update(result.scalars())
    return {task_id for task_id, _ in pairs} - renewed


def mark_generating(connection: Connection, task_id: str, lease_token: str, now_ms: int) -> bool:
    result = connection.execute(
        update(tasks)
        .where(_fenced(task_id, lease_token))
        .values(state=TaskState.GENERATING.value, updated_at=now_ms)
    )
    return result.rowcount == 1


def finish_task(
    connection: Connection,
    task_id: str,
    lease_token: str,
    now_ms: int,
    *,
    state: TaskState,
    result_keys: str = "",
    failure: Failure | None = None,
    usage: str = "{}",
) -> bool:
    """Write the outcome once; False when the lease was lost (someone else owns the task).

    A ``fail`` outcome refunds the task's credits in the same transaction.
    """
    ended = _end(
        connection,
        _fenced(task_id, lease_token),
        now_ms,
        state,
        result_keys=result_keys,
        fail_code=failure.code if failure else "",
        fail_msg=failure.message if failure else "",
        usage=usage,
    )
    return len(ended) == 1


def _end(
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


def release_task(connection: Connection, task_id: str, lease_token: str, now_ms: int) -> bool:
    """Hand a task back untouched (graceful shutdown): it does not count as an attempt."""
    result = connection.execute(
        update(tasks)
        .where(_fenced(task_id, lease_token))
        .values(
            state=TaskState.WAITING.value,
            attempts=tasks.c.attempts - 1,
            lease_token=None,
            lease_expires_at=None,
            worker_id=None,
            updated_at=now_ms,
        )
    )
    return result.rowcount == 1


def lease_expired(now_ms: int) -> ColumnElement[bool]:
    """Tasks held by a worker that stopped renewing their lease."""
    return and_(tasks.c.state.in_(ACTIVE), tasks.c.lease_expires_at < now_ms)


def rescue_expired(
    connection: Connection, now_ms: int, max_attempts: int, give_up: Failure
) -> Rescue:
    """Tasks whose worker stopped renewing: back to ``waiting``, or ``fail`` when out of tries."""
    expired = lease_expired(now_ms)
    failed = _end(
        connection,
        and_(expired, tasks.c.attempts >= max_attempts),
        now_ms,
        TaskState.FAIL,
        fail_code=give_up.code,
        fail_msg=give_up.message,
    )
    requeued = (
        connection.execute(
            update(tasks)
            .where(expired)
            .values(
                state=TaskState.WAITING.value,
                lease_token=None,
                lease_expires_at=None,
                worker_id=None,
                updated_at=now_ms,
            )
            .returning(tasks.c.id)
        )
        .scalars()
        .all()
    )
    return Rescue(requeued=list(requeued), failed=[row.id for row in failed])
