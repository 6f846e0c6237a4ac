"""Queries of the live-worker registry and of the cluster's named leases."""

from __future__ import annotations

from sqlalchemy import Connection, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from bananastand.records import LiveWorker
from bananastand.store.ports import WorkerProcess
from bananastand.store.sql.upsert import upsert
from bananastand.store.tables import leases, workers


def heartbeat(
    connection: Connection,
    process: WorkerProcess,
    in_flight: int,
    now_ms: int,
    live_for_ms: int,
) -> list[str]:
    upsert(
        connection,
        workers,
        {"id": process.id},
        {
            "host": process.host,
            "pid": process.pid,
            "role": process.role,
            "started_at": process.started_at,
            "concurrency": process.concurrency,
            "heartbeat_at": now_ms,
            "live_until": now_ms + live_for_ms,
            "in_flight": in_flight,
        },
    )
    live = select(workers.c.id).where(workers.c.live_until >= now_ms).order_by(workers.c.id)
    return list(connection.execute(live).scalars())


def remove_worker(connection: Connection, worker_id: str) -> bool:
    return connection.execute(delete(workers).where(workers.c.id == worker_id)).rowcount == 1


def live_workers(connection: Connection, now_ms: int) -> list[LiveWorker]:
    rows = connection.execute(
        select(workers)
        .where(workers.c.live_until >= now_ms)
        .order_by(workers.c.host, workers.c.pid, workers.c.id)
    )
    return [LiveWorker.from_row(row._mapping) for row in rows]


def forget_workers(connection: Connection, dead_since_ms: int) -> int:
    return connection.execute(delete(workers).where(workers.c.live_until < dead_since_ms)).rowcount


def take_lease(connection: Connection, name: str, holder: str, now_ms: int, ttl_ms: int) -> bool:
    """One conditional UPDATE decides between callers: on PostgreSQL a second updater
    waits for the first's row lock and then finds the row no longer matching; on SQLite
    writers are serialized anyway. Only a lease never taken before needs the INSERT,
    where the primary key refuses all but the first."""
    expires_at = now_ms + ttl_ms
    taken = connection.execute(
        update(leases)
        .where(leases.c.name == name, or_(leases.c.holder == holder, leases.c.expires_at < now_ms))
        .values(holder=holder, expires_at=expires_at)
    )
    if taken.rowcount == 1:
        return True
    if connection.execute(select(leases.c.name).where(leases.c.name == name)).first():
        return False  # another holder's lease still runs
    try:
        with connection.begin_nested():
            connection.execute(
                insert(leases).values(name=name, holder=holder, expires_at=expires_at)
            )
    except IntegrityError:
        return False  # another process made it first
    return True


def release_lease(connection: Connection, name: str, holder: str) -> bool:
    released = connection.execute(
        delete(leases).where(leases.c.name == name, leases.c.holder == holder)
    )
    return released.rowcount == 1
