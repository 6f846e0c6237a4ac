"""Writing a row by its primary key whether or not it exists yet, with several writers."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Connection, Table, and_, insert, update
from sqlalchemy.exc import IntegrityError


def upsert(
    connection: Connection, table: Table, key: Mapping[str, object], values: Mapping[str, object]
) -> None:
    """An update of the row ``key`` names, else an insert; an insert that loses a race to
    another writer's (the primary key refuses it, in a savepoint that keeps the
    transaction usable) becomes the update after all. Portable: no dialect's ON CONFLICT,
    and the common case (the row exists) is one statement with no savepoint."""
    if _update(connection, table, key, values):
        return
    try:
        with connection.begin_nested():
            connection.execute(insert(table).values({**key, **values}))
    except IntegrityError:
        _update(connection, table, key, values)


def _update(
    connection: Connection, table: Table, key: Mapping[str, object], values: Mapping[str, object]
) -> bool:
    where = and_(*(table.c[name] == value for name, value in key.items()))
    return connection.execute(update(table).where(where).values(values)).rowcount == 1
