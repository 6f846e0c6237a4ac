"""Queries about operator switches: a small name -> value table every process polls."""

from __future__ import annotations

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from bananastand.store.tables import switches


def all_switches(connection: Connection) -> dict[str, str]:
    return {row.name: row.value for row in connection.execute(select(switches))}


def put_switch(connection: Connection, name: str, value: str, now_ms: int) -> None:
    """Set a switch, with several writers too: an update, else an insert; an insert that
    loses a race to another writer's (the primary key refuses it, in a savepoint that
    keeps the transaction usable) becomes the update after all."""
    if _update_switch(connection, name, value, now_ms):
        return
    try:
        with connection.begin_nested():
            connection.execute(insert(switches).values(name=name, value=value, updated_at=now_ms))
    except IntegrityError:
        _update_switch(connection, name, value, now_ms)


def _update_switch(connection: Connection, name: str, value: str, now_ms: int) -> bool:
    changed = connection.execute(
        update(switches).where(switches.c.name == name).values(value=value, updated_at=now_ms)
    )
    return changed.rowcount == 1


def remove_switch(connection: Connection, name: str) -> bool:
    return connection.execute(delete(switches).where(switches.c.name == name)).rowcount == 1
