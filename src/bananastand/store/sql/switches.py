"""Queries about operator switches: a small name -> value table every process polls."""

from __future__ import annotations

from sqlalchemy import Connection, delete, select

from bananastand.store.sql.upsert import upsert
from bananastand.store.tables import switches


def all_switches(connection: Connection) -> dict[str, str]:
    return {row.name: row.value for row in connection.execute(select(switches))}


def put_switch(connection: Connection, name: str, value: str, now_ms: int) -> None:
    upsert(connection, switches, {"name": name}, {"value": value, "updated_at": now_ms})


def remove_switch(connection: Connection, name: str) -> bool:
    return connection.execute(delete(switches).where(switches.c.name == name)).rowcount == 1
