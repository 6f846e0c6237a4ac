"""Runs units of work against the database, off the event loop.

A unit of work is a plain function ``fn(connection) -> value`` built from SQLAlchemy Core;
this class decides where it runs:

- reads run on a small pool of threads, each holding one long-lived connection
  (on SQLite in WAL mode readers never wait for the writer);
- writes go to one writer thread that commits them in groups: every write that arrives
  while a commit is in flight shares the next transaction, and one fsync covers them all.
  A refusal (no credits, a cap) is a value a write returns with nothing written, never an
  exception; only a real error (a constraint, a bug) undoes the group, whose writes then
  run again one by one so that the error stays with its caller. Savepoints per write
  would cost every write two more statements for what should never happen.

Why not ``AsyncEngine``/``AsyncSession``: on SQLite, aiosqlite already runs every connection
in its own thread and hops to it for each cursor operation, and a session per request adds
pool and unit-of-work overhead; measured against a bare endpoint that alone cost most of the
request budget. Here each unit of work is one thread hop, and durability costs one fsync per
group instead of one per request.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[Connection], T]

#: Most writes committed together; bounds the latency a large group adds to its first write.
MAX_GROUP = 256


@dataclass(slots=True)
class _Job:
    work: Work[Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


_STOP = object()
_WRITER_OPTION = "bananastand_writer"


class Database:
    """The only owner of connections and transactions."""

    def __init__(self, url: str, *, sqlite_synchronous: str = "FULL", readers: int = 4) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._engine = self._make_engine(url, sqlite_synchronous)
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="db-read")
        self._reader_local = threading.local()
        self._reader_connections: list[Connection] = []
        self._reader_lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="db-write", daemon=True)
        self._writer_started = False
        self._writer_lock = threading.Lock()
        self._closed = False
        #: Groups undone by an error in one of their writes and run again one by one.
        self.groups_rerun = 0

    @property
    def engine(self) -> Engine:
        """For migrations and tools that need a plain engine; the app uses read/write."""
        return self._engine

    @staticmethod
    def _make_engine(url: str, sqlite_synchronous: str) -> Engine:
        if not url.startswith("sqlite"):
            return create_engine(url, pool_pre_ping=True)
        # Connections live as long as their thread; a pool would only add bookkeeping.
        engine = create_engine(url, poolclass=NullPool, connect_args={"check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            # Let us, not pysqlite, decide where transactions begin (see "begin" below).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={sqlite_synchronous}")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            # Only the writer opens transactions; IMMEDIATE takes the write lock up front, so
            # two processes never deadlock upgrading a read lock. Readers stay autocommit.
            if connection.get_execution_options().get(_WRITER_OPTION):
                connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    @contextmanager
    def exclusive_connection(self) -> Iterator[Connection]:
        """A connection whose transactions take the write lock at once (for migrations)."""
        with self._engine.connect() as connection:
            yield connection.execution_options(**{_WRITER_OPTION: True})

    # -- reads ---------------------------------------------------------------------------

    async def read(self, work: Work[T]) -> T:
        """Run a read-only unit of work; it sees committed data, never a half-written group."""
        if self._closed:
            raise RuntimeError("database is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._run_read, work)

    async def lookup(self, work: Work[T]) -> T:
        """A read of a row or two by an index (recordInfo, key lookups).

        On SQLite it runs right here on the event loop: in WAL mode readers never wait for
        writers, the query takes tens of microseconds, and handing it to a thread and back
        cost several times that. Other databases are across a network: a thread, as always.
        """
        if not self.is_sqlite:
            return await self.read(work)
        if self._closed:
            raise RuntimeError("database is closed")
        return self._run_read(work)

    def _run_read(self, work: Work[T]) -> T:
        connection: Connection | None = getattr(self._reader_local, "connection", None)
        if connection is None:
            connection = self._engine.connect()
            self._reader_local.connection = connection
            with self._reader_lock:
                self._reader_connections.append(connection)
        try:
            return work(connection)
        finally:
            if connection.in_transaction():
                connection.rollback()

    async def ping(self) -> None:
        await self.read(lambda connection: connection.execute(text("SELECT 1")))

    # -- writes --------------------------------------------------------------------------

    async def write(self, work: Work[T]) -> T:
        """Run a unit of work in a transaction; returns once it is durably committed."""
        if self._closed:
            raise RuntimeError("database is closed")
        if not self._writer_started:
            with self._writer_lock:  # first writes may come from several threads at once
                if not self._writer_started:
                    self._writer.start()
                    self._writer_started = True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(work, future, loop))
        return await future

    def _write_loop(self) -> None:
        connection = self._engine.connect().execution_options(**{_WRITER_OPTION: True})
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                group: list[_Job] = [first]  # type: ignore[list-item]
                stop_after = False
                while len(group) < MAX_GROUP:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop_after = True
                        break
                    group.append(item)  # type: ignore[arg-type]
                self._commit_group(connection, group)
                if stop_after:
                    return
        finally:
            connection.close()

    def _commit_group(self, connection: Connection, group: list[_Job]) -> None:
        """All writes of the group in one transaction; if any of them raises, the group is
        rolled back and each write runs again in a transaction of its own, so a failure
        stays with its caller and its neighbours still commit."""
        outcomes: list[tuple[_Job, bool, Any]] | None = None
        if len(group) > 1:
            try:
                with connection.begin():
                    outcomes = [(job, True, job.work(connection)) for job in group]
            except Exception:  # rerun one by one below
                self.groups_rerun += 1
                log.warning("a write failed in a group of %d; running them one by one", len(group))
                outcomes = None
        if outcomes is None:
            outcomes = [self._commit_one(connection, job) for job in group]
        # One wake-up per event loop, not per write: waking a loop is a system call.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, bool, Any]]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].loop, []).append(outcome)
        for loop, settled in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle_all, settled)
            except RuntimeError:
                # The caller's event loop is gone; the writes stand, nobody awaits them.
                log.debug("writes committed for a closed event loop")

    @staticmethod
    def _commit_one(connection: Connection, job: _Job) -> tuple[_Job, bool, Any]:
        try:
            with connection.begin():
                return job, True, job.work(connection)
        except Exception as exc:  # handed to its caller
            return job, False, exc

    async def close(self) -> None:
        """Finish queued writes, then close every connection."""
        if self._closed:
            return
        self._closed = True
        if self._writer_started:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._writer.join)
        self._readers.shutdown(wait=True)
        with self._reader_lock:
            for connection in self._reader_connections:
                connection.close()
            self._reader_connections.clear()
        self._engine.dispose()


def _settle_all(outcomes: list[tuple[_Job, bool, Any]]) -> None:
    for job, ok, value in outcomes:
        if job.future.cancelled():
            continue
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)
