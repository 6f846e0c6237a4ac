"""``bananastand db copy``: moving house, from one database into a new, empty one
(SQLite to PostgreSQL, typically, when the roles move to machines of their own).

What it promises, and why:

- The source is never written to. SQLite is opened read-only, and the source is not
  migrated: one behind the code's schema is refused, to be migrated first by the
  bananastand that runs on it (``bananastand migrate``), so that the
  data migrations run where they were meant to, never half-way inside a copy.
- The target is migrated to head, then must hold no rows in any table: a copy merges
  nothing, and refusing before the first write leaves a wrong target as it was.
- All or nothing: one transaction on the target, committed after the last row, read and
  written in batches of ``BATCH`` rows so that a big database never sits in memory whole.
- Primary keys are kept, the integer ``seq`` columns too: task ids, key ids and account
  ids are what clients and receivers hold, and ``seq`` orders the ledger, the queue and
  the pages of ``jobs/list``.
- Without ``--with-tasks`` the tasks stay behind (and with them their callbacks and
  Idempotency-Keys, which mean nothing without their task), but the ledger is copied
  whole, charge and refund rows still naming their task ids. A balance is the sum of its
  rows, and the monthly cap counts this month's charges, so the rows must all come; and
  ``credits audit`` checks each task against its rows, so rows whose task is not there
  check nothing and the copy audits clean either way.

The source should be quiet (its servers stopped): it is read table by table, and
whatever is written to it after the copy began stays there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Table, func, insert, inspect, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

from bananastand.client.exits import SERVER, USAGE, fail
from bananastand.store import migrate, open_runner, tables
from bananastand.store.postgres.database import psycopg_url
from bananastand.store.runner import GroupCommitRunner as Database

#: Rows read and inserted at a time: memory stays small, round trips few.
BATCH = 1000

#: What is always copied, and what ``--with-tasks`` adds (copied in foreign-key order,
#: the order of ``metadata.sorted_tables``).
ALWAYS = (
    tables.accounts,
    tables.api_keys,
    tables.credit_ledger,
    tables.webhook_secrets,
    tables.switches,
)
WITH_TASKS = (
    tables.tasks,
    tables.idempotency_keys,
    tables.callbacks,
    tables.callback_attempts,
    # The batch lane's jobs: a task inside one names it, and its job is found again by it.
    tables.batch_jobs,
)

_EXPECTED = "expected sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/NAME"


class CopyFailed(Exception):
    """Why the copy did not happen (nothing was committed), and the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def database_url(text: str, option: str) -> URL:
    """``text`` as a URL this copy can open; a plain ``postgresql://`` means psycopg 3, the
    PostgreSQL driver bananastand installs (SQLAlchemy's default would be psycopg2)."""
    try:
        url = make_url(text)
    except ArgumentError:
        # Not echoed: a URL that does not parse may still hold a password.
        raise CopyFailed(f"{option} is not a database URL: {_EXPECTED}", USAGE) from None
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise CopyFailed(f"{option} {shown(url)}: {_EXPECTED}", USAGE)
    return make_url(psycopg_url(url.render_as_string(hide_password=False)))


def shown(url: URL) -> str:
    """The URL as output may show it: never its password."""
    return url.render_as_string(hide_password=True)


def _read_only(url: URL) -> URL:
    """SQLite opened read-only: a missing file is an error, not a new, empty database."""
    if url.get_backend_name() != "sqlite":
        return url
    return url.set(
        database=f"file:{quote(url.database or '')}", query={"mode": "ro", "uri": "true"}
    )


@contextmanager
def _blame(role: str, option: str, url: URL) -> Iterator[None]:
    """A database error inside becomes one line naming the database (never its password):
    one that cannot be reached or used, or a row the target refused (PostgreSQL holds
    strings to their declared length, SQLite never did), which undoes the whole copy."""
    try:
        yield
    except SQLAlchemyError as exc:
        said = " ".join(str(getattr(exc, "orig", None) or exc).split())
        if url.password:
            said = said.replace(str(url.password), "***")
        message = f"{role} {shown(url)}: {said}: nothing was copied"
        if isinstance(exc, OperationalError):
            message += f"; check {option}, and that the database is up"
        raise CopyFailed(message, SERVER) from exc


@contextmanager
def _opened(url: URL) -> Iterator[Database]:
    """The database bananastand itself would open for ``url`` (its SQLite settings, its
    migrations); nothing connects until it is used."""
    database = open_runner(url.render_as_string(hide_password=False))
    try:
        yield database
    finally:
        asyncio.run(database.close())


def _revision(database: Database) -> str:
    """The schema revision, ``""`` when there is none (a new database), as one string."""
    return ",".join(sorted(migrate.current_revisions(database)))


def _head() -> str:
    return ",".join(sorted(migrate.head_revisions()))


def _check_source(source: Database, url: URL) -> None:
    found = _revision(source)
    if not found:
        raise CopyFailed(f"source {shown(url)} is not a bananastand database (no schema)", USAGE)
    if found != _head():
        raise CopyFailed(
            f"source {shown(url)} is at schema revision {found}, this bananastand copies "
            f"{_head()}: run `bananastand migrate` on it, then copy",
            USAGE,
        )


def _check_target(target: Database, url: URL) -> None:
    """Refuse a target with rows in any table, or at another schema than none or head
    (an older one would be migrated by its own bananastand, a newer one not at all):
    before the first write, so a refused target is left as it was."""
    found = _revision(target)
    if found and found != _head():
        raise CopyFailed(
            f"target {shown(url)} is at schema revision {found}, not {_head()}: "
            "copy into a new, empty database",
            USAGE,
        )
    with target.engine.connect() as connection:
        present = inspect(connection)
        for table in tables.metadata.sorted_tables:
            if present.has_table(table.name) and connection.scalar(select(table.select().exists())):
                raise CopyFailed(
                    f"target {shown(url)} is not empty: table {table.name} has rows; "
                    "copy into a new, empty database",
                    USAGE,
                )


def _batches(connection: Connection, table: Table, url: URL) -> Iterator[list[dict[str, Any]]]:
    """The table's rows in primary-key order, ``BATCH`` at a time (streamed by the driver:
    a cursor on SQLite, a server-side cursor on PostgreSQL)."""
    with _blame("source", "--from", url):
        query = select(table).order_by(*table.primary_key.columns)
        result = connection.execution_options(yield_per=BATCH).execute(query)
        for part in result.mappings().partitions():
            yield [dict(row) for row in part]


def _move_sequences(connection: Connection, copied: list[Table]) -> None:
    """Set PostgreSQL's sequences past the copied ``seq`` values.

    Rows inserted with their own ``seq`` leave a sequence where it was, so the next task
    or ledger row would take ``seq`` 1 and collide with a copied one. SQLite needs nothing:
    it gives a new row the largest key plus one. This is the one place that must know the
    target is PostgreSQL: the portable queries insert without a key and never need to.
    """
    if connection.dialect.name != "postgresql":
        return
    for table in copied:
        column = table.autoincrement_column
        if column is not None:  # an empty table: max() is NULL and setval leaves it alone
            sequence = func.pg_get_serial_sequence(table.name, column.name)
            connection.execute(select(func.setval(sequence, func.max(column))))


def _copy_rows(
    reading: Connection, writing: Connection, copied: list[Table], source_url: URL
) -> list[tuple[str, int]]:
    """Every table in one transaction on ``writing``: committed whole, or not at all."""
    counts: list[tuple[str, int]] = []
    with writing.begin():
        for table in copied:
            rows = 0
            for batch in _batches(reading, table, source_url):
                writing.execute(insert(table), batch)
                rows += len(batch)
            counts.append((table.name, rows))
        _move_sequences(writing, copied)
    return counts


def copy_database(source_url: URL, target_url: URL, *, with_tasks: bool) -> list[tuple[str, int]]:
    """Copy the source's rows into the (new, empty) target; rows copied per table."""
    wanted = {*ALWAYS, *(WITH_TASKS if with_tasks else ())}
    copied = [table for table in tables.metadata.sorted_tables if table in wanted]
    with ExitStack() as stack:
        source = stack.enter_context(_opened(_read_only(source_url)))
        target = stack.enter_context(_opened(target_url))
        with _blame("source", "--from", source_url):
            _check_source(source, source_url)
            reading = stack.enter_context(source.engine.connect())
        with _blame("target", "--to", target_url):
            _check_target(target, target_url)
            migrate.upgrade(target)
        with _blame("target", "--to", target_url), target.exclusive_connection() as writing:
            return _copy_rows(reading, writing, copied, source_url)


def run(source_text: str, target_text: str, *, with_tasks: bool) -> None:
    """The command: the rows copied per table on stdout, or one line on stderr and the
    exit status (2: a URL, a schema or a target that will not do; 4: a database that
    cannot be reached or used)."""
    try:
        target = database_url(target_text, "--to")
        counts = copy_database(database_url(source_text, "--from"), target, with_tasks=with_tasks)
    except CopyFailed as exc:
        fail(exc.message, exc.status)
    except ImportError as exc:  # a URL whose driver is not installed
        fail(f"database: {exc}: install the database's driver", USAGE)
    for name, rows in counts:
        print(f"{name}: {rows}")
    if not with_tasks:
        left = ", ".join(table.name for table in WITH_TASKS)
        print(f"not copied: {left} (--with-tasks copies them)")
    total = sum(rows for _, rows in counts)
    print(f"copied {total} rows into {shown(target)}")
