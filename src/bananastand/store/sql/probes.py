"""What an idle poll reads before it writes: one statement that finds nothing to do.

A claim is a write transaction (on PostgreSQL: BEGIN, the claim, COMMIT); ten idle
workers claiming tasks and callbacks every few seconds would be most of an idle
database's load. A probe is one read on an autocommit reader that asks for the worker
and its process's callback sender at once; claims run only when it found something.
The metrics scrape's read of the queue lives here too: one statement, no write.
"""

from __future__ import annotations

from sqlalchemy import Connection, exists, func, select

from bananastand.contract import TaskState
from bananastand.store.ports import PendingWork, QueueDepth
from bananastand.store.sql.callbacks import due
from bananastand.store.sql.leases import for_workers, lease_expired
from bananastand.store.tables import tasks


def pending_work(connection: Connection, now_ms: int) -> PendingWork:
    waiting = exists().where(for_workers())
    expired = exists().where(lease_expired(now_ms))
    row = connection.execute(select(waiting, expired, exists().where(due(now_ms)))).one()
    return PendingWork(waiting=bool(row[0]), expired=bool(row[1]), callbacks_due=bool(row[2]))


#: The states a task passes through before its final one.
UNFINISHED = (TaskState.WAITING.value, TaskState.QUEUING.value, TaskState.GENERATING.value)


def queue_depth(connection: Connection) -> QueueDepth:
    """On the state index: the scrape reads only unfinished rows, never the history."""
    rows = connection.execute(
        select(tasks.c.state, func.count(), func.min(tasks.c.created_at))
        .where(tasks.c.state.in_(UNFINISHED))
        .group_by(tasks.c.state)
    ).all()
    found = {state: (count, oldest) for state, count, oldest in rows}
    waiting = found.get(TaskState.WAITING.value)
    return QueueDepth(
        by_state={state: found.get(state, (0, None))[0] for state in UNFINISHED},
        oldest_waiting_ms=waiting[1] if waiting else None,
    )
