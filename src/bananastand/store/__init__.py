"""Persistence behind the ports of ``store.ports``.

``tables`` holds the schema, ``sql`` the portable queries, ``sqlstore`` the ports over
them, and each adapter (``sqlite``) the runner that decides where and in which
transaction a query runs. ``open_store`` is where the roles get one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bananastand.ids import now_ms
from bananastand.store import migrate
from bananastand.store.sqlite.database import Database
from bananastand.store.sqlstore import SqlStore


async def open_store(
    url: str, *, sqlite_synchronous: str = "FULL", clock: Callable[[], int] = now_ms
) -> SqlStore:
    """The store for ``url``, its schema brought to the newest version first.

    ``clock`` (epoch ms) is the one every decision is made by; tests set it."""
    db = Database(url, sqlite_synchronous=sqlite_synchronous)
    try:
        await asyncio.to_thread(migrate.upgrade, db)
    except BaseException:
        await db.close()
        raise
    return SqlStore(db, clock=clock)
