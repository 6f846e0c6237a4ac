"""Which bus carries wake-ups for a configuration (the adapters are imported only here)."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.engine import make_url

from bananastand.settings import Settings
from bananastand.store import is_postgres
from bananastand.wakeups import Bus

log = logging.getLogger(__name__)


def bus_for(settings: Settings) -> Bus | None:
    """LISTEN/NOTIFY on PostgreSQL (unless ``BANANASTAND_PG_NOTIFY`` is off), sockets
    beside a SQLite file; None where processes can only poll (an in-memory database)."""
    url = settings.effective_database_url
    if is_postgres(url):
        if not settings.pg_notify:
            return None
        from bananastand.store.postgres.database import psycopg_url
        from bananastand.wakeups.postgres import PostgresBus

        return PostgresBus(psycopg_url(url))
    from bananastand.wakeups import sockets

    database = make_url(url).database
    if not sockets.supported() or not database or database == ":memory:":
        return None
    return sockets.SocketBus(sockets.folder_for(Path(database)))
