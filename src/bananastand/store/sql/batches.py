"""Queries of the batch lane: the batch singleton claims batch-lane tasks with a lease like
a worker does (``leases``), records the job that holds them before sending it, and puts
the tasks of a failed job back on the now lane.

Ending a task is not here: the singleton ends each task with ``leases.finish_task``, so a
batch-lane task is refunded once and called back exactly as any other.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, and_, func, insert, select, tuple_, update

from bananastand.contract import TaskState
from bananastand.records import BatchJob, Claim
from bananastand.store.ports import BatchGroup
from bananastand.store.sql.leases import ACTIVE, BATCH_LANE, NOW_LANE, SANDBOX, claim_where
from bananastand.store.tables import batch_jobs, tasks

#: Tasks one statement changes by id: well below every database's bound-parameter cap.
CHUNK = 500


def _batch_waiting() -> Any:
    return and_(
        tasks.c.lane == BATCH_LANE,
        tasks.c.state == TaskState.WAITING.value,
        tasks.c.provider != SANDBOX,
    )


def batch_groups(connection: Connection) -> list[BatchGroup]:
    """The waiting batch-lane tasks per upstream and model, apart: those waiting for a
    job, and those of a job already sent, back to ``waiting`` after their holder stopped."""
    in_job = tasks.c.batch_job.is_not(None).label("in_job")
    rows = connection.execute(
        select(tasks.c.provider, tasks.c.model, in_job, func.count(), func.min(tasks.c.created_at))
        .where(_batch_waiting())
        .group_by(tasks.c.provider, tasks.c.model, in_job)
    ).all()
    return [
        BatchGroup(upstream, model, waiting=count, oldest_ms=oldest, in_job=bool(job))
        for upstream, model, job, count, oldest in rows
    ]


def claim_batch_tasks(
    connection: Connection,
    *,
    lease_token: str,
    holder: str,
    group: tuple[str, str] | None,
    limit: int,
    now_ms: int,
    lease_ms: int,
) -> list[Claim]:
    """Take up to ``limit`` waiting batch-lane tasks, oldest first: of one (upstream,
    model) ``group`` not in a job yet, or (``group`` None) those whose job was sent before
    they came back to ``waiting`` (their singleton stopped). Claimed as a worker claims
    (``queuing``, an attempt counted, a lease), so rescue and cancel treat them alike."""
    which = _batch_waiting()
    if group is None:
        which = and_(which, tasks.c.batch_job.is_not(None))
    else:
        which = and_(
            which,
            tasks.c.batch_job.is_(None),
            tasks.c.provider == group[0],
            tasks.c.model == group[1],
        )
    return claim_where(
        connection,
        which,
        holder=holder,
        lease_token=lease_token,
        limit=limit,
        now_ms=now_ms,
        lease_ms=lease_ms,
    )


def open_batch_job(
    connection: Connection, job: BatchJob, held: Iterable[tuple[str, str]]
) -> list[str]:
    """Record the job and put the ``held`` tasks (id, lease token) in it, in one
    transaction, before anything is sent; the ids of the tasks still held (a task
    canceled meanwhile is not)."""
    connection.execute(insert(batch_jobs).values(**_job_values(job)))
    values = {"batch_job": job.id, "upstream": job.upstream, "updated_at": job.created_at}
    return _update_held(connection, held, values)


def get_batch_jobs(connection: Connection, job_ids: Iterable[str]) -> list[BatchJob]:
    ids = list(job_ids)
    found: list[BatchJob] = []
    for start in range(0, len(ids), CHUNK):
        query = select(batch_jobs).where(batch_jobs.c.id.in_(ids[start : start + CHUNK]))
        found.extend(BatchJob.from_row(row) for row in connection.execute(query).mappings())
    return found


def update_batch_job(
    connection: Connection,
    job_id: str,
    now_ms: int,
    *,
    state: str | None = None,
    upstream_name: str | None = None,
    outcome: str | None = None,
) -> None:
    values: dict[str, Any] = {"updated_at": now_ms}
    for name, value in (("state", state), ("upstream_name", upstream_name), ("outcome", outcome)):
        if value is not None:
            values[name] = value
    connection.execute(update(batch_jobs).where(batch_jobs.c.id == job_id).values(values))


def to_now_lane(connection: Connection, held: Iterable[tuple[str, str]], now_ms: int) -> list[str]:
    """The ``held`` tasks (id, lease token) back to ``waiting`` on the now lane, out of
    their job, the batch's attempt not counted: a worker runs each as if it had just come.
    Their price stays the batch lane's. The ids of the tasks moved (fenced by the lease)."""
    values = {
        "state": TaskState.WAITING.value,
        "lane": NOW_LANE,
        "batch_job": None,
        "attempts": tasks.c.attempts - 1,
        "lease_token": None,
        "lease_expires_at": None,
        "worker_id": None,
        "updated_at": now_ms,
    }
    return _update_held(connection, held, values)


def _update_held(
    connection: Connection, held: Iterable[tuple[str, str]], values: dict[str, Any]
) -> list[str]:
    """Set ``values`` on the tasks still held (id, lease token); the ids changed."""
    pairs = list(held)
    changed: list[str] = []
    for start in range(0, len(pairs), CHUNK):
        chunk = pairs[start : start + CHUNK]
        result = connection.execute(
            update(tasks)
            .where(
                tasks.c.id.in_([task_id for task_id, _ in chunk]),
                tuple_(tasks.c.id, tasks.c.lease_token).in_(chunk),
                tasks.c.state.in_(ACTIVE),
            )
            .values(values)
            .returning(tasks.c.id)
        )
        changed.extend(result.scalars())
    return changed


def _job_values(job: BatchJob) -> dict[str, Any]:
    return {name: getattr(job, name) for name in BatchJob.__slots__}
