"""Persistence behind the ports of ``store.ports``.

``tables`` holds the schema, ``sql`` the portable queries, ``sqlstore`` the ports over
them, ``runner`` the group-committing runner, and each adapter (``sqlite``, ``postgres``)
its engine, locks and clock. ``open_store`` is where the roles get one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bananastand.settings import Settings
from bananastand.store import migrate
from bananastand.store.runner import GroupCommitRunner
from bananastand.store.sqlstore import SqlStore


async def open_settings_store(settings: Settings, *, migrate: bool) -> SqlStore:
    """The configured store; ``migrate``: bring its schema to the newest version."""
    return await open_store(
        settings.effective_database_url,
        sqlite_synchronous=settings.sqlite_synchronous,
        pool_size=settings.database_pool_size,
        statement_timeout_ms=int(settings.database_statement_timeout_seconds * 1000),
        upgrade=migrate,
    )


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql:", "postgresql+", "postgres:"))


def open_runner(
    url: str,
    *,
    sqlite_synchronous: str = "FULL",
    pool_size: int = 10,
    statement_timeout_ms: int = 30_000,
) -> GroupCommitRunner:
    """The runner of ``url``'s adapter; nothing connects until it is used."""
    if is_postgres(url):
        from bananastand.store.postgres.database import PostgresDatabase

        return PostgresDatabase(url, pool_size=pool_size, statement_timeout_ms=statement_timeout_ms)
    from bananastand.store.sqlite.database import Database

    return Database(url, sqlite_synchronous=sqlite_synchronous)


async def open_store(
    url: str,
    *,
    sqlite_synchronous: str = "FULL",
    pool_size: int = 10,
    statement_timeout_ms: int = 30_000,
    clock: Callable[[], int] | None = None,
    upgrade: bool = True,
) -> SqlStore:
    """The store for ``url``, its schema brought to the newest version first (``upgrade``;
    without it, a schema that is not the code's is ``migrate.SchemaMismatch``).

    ``clock`` (epoch ms) is the one every decision is made by: the database's on
    PostgreSQL, this machine's on SQLite; tests set their own."""
    db = open_runner(
        url,
        sqlite_synchronous=sqlite_synchronous,
        pool_size=pool_size,
        statement_timeout_ms=statement_timeout_ms,
    )
    try:
        await asyncio.to_thread(migrate.upgrade if upgrade else migrate.check, db)
        await asyncio.to_thread(db.sync_clock)
    except BaseException:
        await db.close()
        raise
    return SqlStore(db, clock=clock or db.now_ms)
