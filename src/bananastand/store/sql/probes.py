"""What an idle poll reads before it writes: one statement that finds nothing to do.

A claim is a write transaction (on PostgreSQL: BEGIN, the claim, COMMIT); ten idle
workers claiming tasks and callbacks every few seconds would be most of an idle
database's load. A probe is one read on an autocommit reader that asks for the worker
and its process's callback sender at once; claims run only when it found something.
"""

from __future__ import annotations

from sqlalchemy import Connection, exists, select

from bananastand.contract import TaskState
from bananastand.store.ports import PendingWork
from bananastand.store.sql.callbacks import due
from bananastand.store.sql.tasks import lease_expired
from bananastand.store.tables import tasks


def pending_work(connection: Connection, now_ms: int) -> PendingWork:
    waiting = exists().where(tasks.c.state == TaskState.WAITING.value)
    expired = exists().where(lease_expired(now_ms))
    row = connection.execute(select(waiting, expired, exists().where(due(now_ms)))).one()
    return PendingWork(waiting=bool(row[0]), expired=bool(row[1]), callbacks_due=bool(row[2]))
