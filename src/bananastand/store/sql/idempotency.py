"""Queries about createTask's Idempotency-Keys: a key's use lives ``ttl_ms`` (the
``idempotency_ttl_seconds`` setting), then the periodic purge forgets it."""

from __future__ import annotations

from sqlalchemy import Connection, RowMapping, delete, insert, select

from bananastand.store.ports import IdempotencyClaim, NewTask
from bananastand.store.tables import idempotency_keys


def live_idempotency_key(
    connection: Connection, account_id: str, idempotency: IdempotencyClaim, now_ms: int
) -> RowMapping | None:
    """The key's use within its lifetime (its task and request hash), if there is one."""
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


def claim_idempotency_key(
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


def purge_idempotency_keys(connection: Connection, older_than_ms: int) -> int:
    result = connection.execute(
        delete(idempotency_keys).where(idempotency_keys.c.created_at < older_than_ms)
    )
    return result.rowcount
