"""Queries of the task table as the queue: a worker claims waiting tasks with a lease,
renews it, and finishes or hands back what it holds; a rescue takes back the tasks whose
worker stopped renewing.

Writes about a claimed task are fenced by its lease token: a worker that lost its lease
changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, func, or_, select, tuple_, update

from bananastand.contract import TaskState
from bananastand.records import Claim, Task
from bananastand.store.ports import Failure, Rescue
from bananastand.store.sql.tasks import end_tasks
from bananastand.store.tables import tasks

ACTIVE = (TaskState.QUEUING.value, TaskState.GENERATING.value)
#: The lanes' names: a worker runs ``now`` tasks; the batch singleton ``batch`` ones.
NOW_LANE, BATCH_LANE = "now", "batch"
#: Test keys' tasks run on the sandbox whatever their lane.
SANDBOX = "sandbox"


def for_workers() -> ColumnElement[bool]:
    """The waiting tasks a worker may claim: all but the batch lane's, which the batch
    singleton sends upstream in jobs (the sandbox's run here, with its batch delay)."""
    return and_(
        tasks.c.state == TaskState.WAITING.value,
        or_(tasks.c.lane == NOW_LANE, tasks.c.provider == SANDBOX),
    )


def claim_tasks(
    connection: Connection,
    *,
    worker_id: str,
    lease_token: str,
    limit: int,
    now_ms: int,
    lease_ms: int,
) -> list[Claim]:
    """Take up to ``limit`` waiting tasks of the now lane (see `for_workers`), oldest first."""
    return claim_where(
        connection,
        for_workers(),
        holder=worker_id,
        lease_token=lease_token,
        limit=limit,
        now_ms=now_ms,
        lease_ms=lease_ms,
    )


def claim_where(
    connection: Connection,
    which: ColumnElement[bool],
    *,
    holder: str,
    lease_token: str,
    limit: int,
    now_ms: int,
    lease_ms: int,
) -> list[Claim]:
    """Take up to ``limit`` tasks that match ``which`` (waiting ones), oldest first: each
    ``queuing``, one attempt more, under ``lease_token`` held by ``holder``.

    With several writers, rows another worker is claiming are skipped, never waited for
    or taken twice (``FOR UPDATE SKIP LOCKED``; SQLite, whose writer is serialised, needs
    nothing and its compiler leaves the clause out).
    """
    # A CTE, not ``IN (subquery)``: a planner may run a LIMIT subquery inside an UPDATE
    # more than once and update more rows than asked for; a CTE with FOR UPDATE is run
    # once (it has a side effect, so PostgreSQL never inlines it).
    oldest = (
        select(tasks.c.seq)
        .where(which)
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
                worker_id=holder,
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


def mark_generating(
    connection: Connection,
    task_id: str,
    lease_token: str,
    now_ms: int,
    *,
    upstream: str | None = None,
    handle: str | None = None,
) -> bool:
    """The task runs upstream now; ``upstream`` names the upstream that took it (kept as
    it was when None) and ``handle`` what that upstream knows it by."""
    values: dict[str, Any] = {"state": TaskState.GENERATING.value, "updated_at": now_ms}
    if upstream is not None:
        values.update(upstream=upstream, upstream_handle=handle)
    result = connection.execute(update(tasks).where(_fenced(task_id, lease_token)).values(values))
    return result.rowcount == 1


def remember_upstream(
    connection: Connection,
    task_id: str,
    lease_token: str,
    now_ms: int,
    *,
    upstream: str,
    handle: str | None,
) -> bool:
    """Which upstream holds the task and by what handle, the state left as it is: written
    before a call whose answer, if lost, must not lead to a second upstream task."""
    result = connection.execute(
        update(tasks)
        .where(_fenced(task_id, lease_token))
        .values(upstream=upstream, upstream_handle=handle, updated_at=now_ms)
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
    ended = end_tasks(
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
    failed = end_tasks(
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
