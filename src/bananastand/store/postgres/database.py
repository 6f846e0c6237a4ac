"""The PostgreSQL runner: the same group commit as SQLite's, over a network.

Writes still go through one writer thread per process, one transaction per group: with
``synchronous_commit=on`` each commit waits for the WAL flush, and a group shares one.
Many processes write at once, each with its own group, which the queries allow (row
locks, ``SKIP LOCKED`` claims). Readers are in autocommit: a statement sees what was
committed when it began, and no reader connection idles inside a transaction (where it
would hold locks that a migration waits for). Within a write transaction, INSERTs go out
in pipeline mode, not waited for one by one (``pipeline``).

Reconnecting is the pool's (``pool_pre_ping`` checks a connection when it is taken) and
the runner's (a lost connection is dropped; the next unit of work gets a new one).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from sqlalchemy import Connection, Engine, create_engine, text

from bananastand.store.postgres.pipeline import end_before_sqlalchemy, sending_ahead
from bananastand.store.runner import WRITER_OPTION, GroupCommitRunner

#: ``pg_advisory_lock`` key held while migrating: any number of processes starting at once
#: on one database migrate it once (the others wait, then find it at head).
MIGRATION_LOCK = 0x62616E616E61  # "banana"


def psycopg_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (SQLAlchemy's default for it is psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


class PostgresDatabase(GroupCommitRunner):
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        statement_timeout_ms: int = 30_000,
        readers: int = 8,
    ) -> None:
        self.url = psycopg_url(url)
        super().__init__(_engine(self.url, pool_size, statement_timeout_ms), readers=readers)
        self._clock_offset_ms = 0

    def _reader_options(self) -> dict[str, object]:
        return {"isolation_level": "AUTOCOMMIT"}

    def _writer_connection(self) -> Connection:
        connection = super()._writer_connection()
        end_before_sqlalchemy(connection)
        return connection

    def _sending(self, connection: Connection) -> AbstractContextManager[None]:
        """The INSERTs of a write transaction in pipeline mode (``pipeline``)."""
        return sending_ahead(connection)

    @contextmanager
    def exclusive_connection(self) -> Iterator[Connection]:
        """A connection holding the migration lock, released when it ends."""
        with self._engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            connection.commit()
            try:
                yield connection.execution_options(**{WRITER_OPTION: True})
            finally:
                if connection.in_transaction():
                    connection.rollback()
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
                connection.commit()

    def sync_clock(self) -> None:
        """Read the database's clock: from now on ``now_ms`` is that clock, the one every
        process on this database decides by (lease expiry, retries, key lifetimes),
        whatever each machine's own clock says. Measured once per process, at the middle
        of the query's round trip; machines' clocks drift by milliseconds a day."""
        with self._engine.connect() as connection:
            before = time.time_ns()
            database_ms = connection.execute(
                text("SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint")
            ).scalar_one()
            after = time.time_ns()
        self._clock_offset_ms = int(database_ms) - (before + after) // 2_000_000

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self._clock_offset_ms


def _engine(url: str, pool_size: int, statement_timeout_ms: int) -> Engine:
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args={"options": f"-c statement_timeout={statement_timeout_ms}"},
    )
