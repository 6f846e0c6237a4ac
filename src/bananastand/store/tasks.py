"""Every query about tasks: the task table is also the queue.

Each function takes a Connection and returns plain values or records; ``Database`` runs it
in the right place and transaction. Writes about a claimed task are fenced by its lease
token: a worker that lost its lease changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, delete, func, insert, select, update

from bananastand.contract import CANCELED_MSG, FAIL_INPUT, FAIL_INTERNAL, TaskState
from bananastand.errors import RateLimitedError
from bananastand.records import Claim, Task
from bananastand.store import callbacks, ledger
from bananastand.store.database import PreparedInsert, PreparedQuery
from bananastand.store.schema import idempotency_keys, tasks

_ACTIVE = (TaskState.QUEUING.value, TaskState.GENERATING.value)


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
) -> list[Task]:
    """Newest first; ``before_seq`` continues a page (keyset pagination stays stable)."""
    query = select(tasks).where(tasks.c.account_id == account_id)
    if state is not None:
        query = query.where(tasks.c.state == state.value)
    if before_seq is not None:
        query = query.where(tasks.c.seq < before_seq)
    query = query.order_by(tasks.c.seq.desc()).limit(limit)
    return [Task.from_row(row) for row in connection.execute(query).mappings()]


@dataclass(frozen=True, slots=True)
class NewTask:
    id: str
    account_id: str
    key_id: str
    provider: str
    model: str
    param: str
    input: str
    callback_url: str | None
    #: What the task costs, charged in the transaction that creates it (0: free).
    credits: int = 0


@dataclass(frozen=True, slots=True)
class Admission:
    """The account's limits that creating a task must respect (``None``: no limit)."""

    max_waiting: int | None = None
    monthly_cap: int | None = None
    #: Start of the current calendar month (UTC): the monthly cap counts from here.
    month_start_ms: int = 0


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    key: str
    request_hash: str
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class Created:
    task_id: str
    #: False when an earlier request with the same Idempotency-Key made the task.
    created: bool


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used, within its lifetime, for a different request."""


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
    admission: Admission | None = None,
) -> Created:
    """Insert the task, or return the one an earlier request with the same key made.

    The charge is part of the same transaction: no task without its charge, no charge
    without its task, and a replayed request is never charged again. Raises
    InsufficientCreditsError (402) or RateLimitedError (429, too many waiting tasks) with
    nothing written.
    """
    if idempotency is not None:
        earlier = (
            connection.execute(
                select(idempotency_keys).where(
                    idempotency_keys.c.account_id == new.account_id,
                    idempotency_keys.c.key == idempotency.key,
                )
            )
            .mappings()
            .first()
        )
        if earlier is not None and earlier["created_at"] > now_ms - idempotency.ttl_ms:
            if earlier["request_hash"] != idempotency.request_hash:
                raise IdempotencyConflict(idempotency.key)
            return Created(task_id=earlier["task_id"], created=False)
        if earlier is not None:
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
    admission = admission or Admission()
    if admission.max_waiting is not None:
        # Counting stops at the cap: an account with a long queue costs no more per create.
        waiting_rows = (
            select(tasks.c.seq)
            .where(tasks.c.account_id == new.account_id, tasks.c.state == TaskState.WAITING.value)
            .limit(admission.max_waiting)
            .subquery()
        )
        waiting = connection.execute(select(func.count()).select_from(waiting_rows)).scalar_one()
        if waiting >= admission.max_waiting:
            raise RateLimitedError(
                f"too many waiting tasks: this account has {waiting} tasks waiting "
                f"(at most {admission.max_waiting}); try again when some have started",
                retry_after=1,
            )
    if new.credits > 0:
        ledger.charge(
            connection,
            new.account_id,
            new.id,
            new.credits,
            now_ms,
            monthly_cap=admission.monthly_cap,
            month_start_ms=admission.month_start_ms,
        )
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


def purge_idempotency_keys(connection: Connection, older_than_ms: int) -> int:
    result = connection.execute(
        delete(idempotency_keys).where(idempotency_keys.c.created_at < older_than_ms)
    )
    return result.rowcount


def cancel_task(connection: Connection, task_id: str, account_id: str, now_ms: int) -> Task | None:
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
        fail_code=FAIL_INPUT,
        fail_msg=CANCELED_MSG,
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

    The one dialect-specific query: PostgreSQL skips rows other workers are claiming;
    SQLite needs nothing, its writer is serialised.
    """
    oldest = (
        select(tasks.c.seq)
        .where(tasks.c.state == TaskState.WAITING.value)
        .order_by(tasks.c.seq)
        .limit(limit)
    )
    if connection.dialect.name == "postgresql":
        oldest = oldest.with_for_update(skip_locked=True)
    rows = (
        connection.execute(
            update(tasks)
            .where(tasks.c.seq.in_(oldest.scalar_subquery()))
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
        tasks.c.state.in_(_ACTIVE),
    )


def renew_leases(
    connection: Connection, held: Iterable[tuple[str, str]], now_ms: int, lease_ms: int
) -> set[str]:
    """Extend the leases still held; returns the task ids whose lease is gone."""
    lost: set[str] = set()
    for task_id, lease_token in held:
        result = connection.execute(
            update(tasks)
            .where(_fenced(task_id, lease_token))
            .values(lease_expires_at=now_ms + lease_ms)
        )
        if result.rowcount == 0:
            lost.add(task_id)
    return lost


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
    fail_code: str = "",
    fail_msg: str = "",
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
        fail_code=fail_code,
        fail_msg=fail_msg,
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


@dataclass(frozen=True, slots=True)
class Rescue:
    requeued: list[str]
    failed: list[str]


def rescue_expired(connection: Connection, now_ms: int, max_attempts: int) -> Rescue:
    """Tasks whose worker stopped renewing: back to ``waiting``, or ``fail`` when out of tries."""
    expired = and_(tasks.c.state.in_(_ACTIVE), tasks.c.lease_expires_at < now_ms)
    failed = _end(
        connection,
        and_(expired, tasks.c.attempts >= max_attempts),
        now_ms,
        TaskState.FAIL,
        fail_code=FAIL_INTERNAL,
        fail_msg=f"the worker running this task stopped {max_attempts} times; giving up",
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
