"""Runs units of work against a database, off the event loop; each adapter brings its engine.

A unit of work is a plain function ``fn(connection) -> value`` built from SQLAlchemy Core;
this class decides where it runs:

- reads run on a small pool of threads, each holding one long-lived connection;
- lookups by key (``lookup_keyed``: recordInfo's task) that wait at the same moment are
  one read: one thread hop, one round trip and one statement for all of them
  (``store.coalesce``), at most ``LOOKUP_BATCHES`` at once;
- writes go to one writer thread that commits them in groups: every write that arrives
  while a commit is in flight shares the next transaction, and one durable commit (an
  fsync, a WAL flush) covers them all. A refusal (no credits, a cap) is a value a write
  returns with nothing written, never an exception; only a real error (a constraint, a
  bug) undoes the group, whose writes then run again one by one so that the error stays
  with its caller. Savepoints per write would cost every write two more statements for
  what should never happen. An error may also come as the transaction ends (at COMMIT,
  or for statements an adapter sent ahead of their results, ``_sending``): a group is
  written only once its transaction has ended well.
- a lost connection (a restarted database server, a terminated backend) is the
  adapter's to heal: the connection is dropped and the next unit of work gets a new one.
  A read that lost its connection runs once more on a fresh one; writes do not: a group
  whose COMMIT was cut off may have committed, and running it again could apply it twice,
  so its callers get the error (code 500) and retry on their own terms (Idempotency-Key).

Why not ``AsyncEngine``/``AsyncSession``: on SQLite, aiosqlite already runs every connection
in its own thread and hops to it for each cursor operation, and a session per request adds
pool and unit-of-work overhead; measured against a bare endpoint that alone cost most of the
request budget. Here each unit of work is one thread hop, and durability costs one commit
per group instead of one per request.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from bananastand.store.coalesce import Coalescer
from bananastand.store.ports import StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
Work = Callable[[Connection], T]

#: Most writes committed together; bounds the latency a large group adds to its first write.
MAX_GROUP = 256
#: Batches of keyed lookups in flight at once: while they run, the next batch gathers
#: callers; the other reader threads stay free for the other reads.
LOOKUP_BATCHES = 2
#: Most keys in one batch of lookups (one ``IN`` list).
MAX_LOOKUP_BATCH = 256


@dataclass(frozen=True, slots=True)
class KeyedLookup(Generic[K, V]):
    """A point read by key in two shapes: ``one(connection, key)`` and ``many(connection,
    keys)``, one value per key in their order, where a key with no row has the value that
    ``one`` gives it. A runner runs whichever is cheaper where it runs them."""

    one: Callable[[Connection, K], V]
    many: Callable[[Connection, Sequence[K]], list[V]]


class Runner(Protocol):
    """What ``SqlStore`` runs its units of work on; each adapter brings one."""

    async def read(self, work: Work[T]) -> T: ...

    async def lookup(self, work: Work[T]) -> T:
        """A read of a row or two by an index, run wherever that is cheapest."""
        ...

    async def lookup_keyed(self, lookup: KeyedLookup[K, V], key: K) -> V:
        """A lookup by key; the runner may answer the callers waiting at once with one
        read of all their keys (``lookup.many``)."""
        ...

    async def write(self, work: Work[T]) -> T:
        """In a transaction; returns once it is durably committed."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class _Job:
    work: Work[Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


_STOP = object()
#: Execution option of the writer's connection (adapters may start its transactions their way).
WRITER_OPTION = "bananastand_writer"


def lost_connection(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection itself is gone (not the statement refused)."""
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def unavailable(exc: BaseException) -> BaseException:
    """What a caller is handed for ``exc``: `StoreUnavailable` when the connection was
    lost, else ``exc`` itself (a refused statement is the caller's own error)."""
    if lost_connection(exc):
        error = StoreUnavailable(f"the database connection was lost: {exc.__class__.__name__}")
        error.__cause__ = exc
        return error
    return exc


class GroupCommitRunner:
    """The only owner of connections and transactions (``engine``: the adapter's)."""

    def __init__(self, engine: Engine, *, readers: int = 4) -> None:
        self._engine = engine
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="db-read")
        self._reader_local = threading.local()
        self._reader_connections: list[Connection] = []
        self._reader_lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="db-write", daemon=True)
        self._writer_started = False
        self._writer_lock = threading.Lock()
        self._closed = False
        self._coalescers: dict[KeyedLookup[Any, Any], Coalescer[Any, Any]] = {}
        #: Groups undone by an error in one of their writes and run again one by one.
        self.groups_rerun = 0
        #: Reads that answered keyed lookups (``lookup_keyed``), each one batch of them.
        self.lookup_batches = 0

    @property
    def engine(self) -> Engine:
        """For migrations and tools that need a plain engine; the app uses read/write."""
        return self._engine

    def sync_clock(self) -> None:
        """Learn the database's clock (``now_ms``); an embedded database has this machine's."""

    def now_ms(self) -> int:
        """Epoch milliseconds by the database's clock: the one decisions are made by."""
        return time.time_ns() // 1_000_000

    def _reader_options(self) -> dict[str, object]:
        """Execution options of the readers' connections (the adapter's choice)."""
        return {}

    @contextmanager
    def exclusive_connection(self) -> Iterator[Connection]:
        """A connection that holds the database's migration lock (the adapter's kind)."""
        with self._engine.connect() as connection:
            yield connection.execution_options(**{WRITER_OPTION: True})

    # -- reads ---------------------------------------------------------------------------

    async def read(self, work: Work[T]) -> T:
        """Run a read-only unit of work; it sees committed data, never a half-written group."""
        if self._closed:
            raise RuntimeError("database is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._run_read, work)

    async def lookup(self, work: Work[T]) -> T:
        """A read of a row or two by an index (recordInfo, key lookups): on a thread here;
        an adapter may run it where it is cheaper."""
        return await self.read(work)

    async def lookup_keyed(self, lookup: KeyedLookup[K, V], key: K) -> V:
        """``lookup.one(connection, key)``, run with the lookups of the same kind that wait
        now as one read (``lookup.many``, or ``one`` for a batch of one), at most
        ``LOOKUP_BATCHES`` at once. An error reaches every caller of its batch; a batch
        that lost its connection runs again once, as every read does."""
        if self._closed:
            raise RuntimeError("database is closed")
        loop = asyncio.get_running_loop()
        coalescer = self._coalescers.get(lookup)
        if coalescer is None or coalescer.loop is not loop:
            # One per event loop: a store shared by threads with loops of their own (tests,
            # tools) batches each loop's callers apart.
            coalescer = Coalescer(
                partial(self._lookup_batch, lookup),
                loop=loop,
                max_in_flight=LOOKUP_BATCHES,
                max_batch=MAX_LOOKUP_BATCH,
            )
            self._coalescers[lookup] = coalescer
        value: V = await coalescer.get(key)
        return value

    async def _lookup_batch(self, lookup: KeyedLookup[K, V], keys: Sequence[K]) -> list[V]:
        self.lookup_batches += 1
        if len(keys) == 1:
            [key] = keys
            return [await self.read(lambda connection: lookup.one(connection, key))]
        return await self.read(lambda connection: lookup.many(connection, keys))

    def _run_read(self, work: Work[T]) -> T:
        try:
            return self._read_once(work)
        except DBAPIError as exc:
            if not lost_connection(exc):
                raise
            log.warning("a read lost its database connection; trying once more")
            try:
                return self._read_once(work)
            except DBAPIError as again:
                if lost_connection(again):
                    raise unavailable(again) from again
                raise

    def _read_once(self, work: Work[T]) -> T:
        connection: Connection | None = getattr(self._reader_local, "connection", None)
        if connection is None or connection.invalidated or connection.closed:
            if connection is not None:
                # Forgotten first: while the database is down the connect below fails,
                # and this thread would keep a closed connection until it ended.
                self._reader_local.connection = None
                self._forget_reader(connection)
            try:
                connection = self._engine.connect().execution_options(**self._reader_options())
            except DBAPIError as exc:
                raise StoreUnavailable(f"cannot connect to the database: {exc}") from exc
            self._reader_local.connection = connection
            with self._reader_lock:
                self._reader_connections.append(connection)
        try:
            return work(connection)
        finally:
            if connection.in_transaction() and not connection.invalidated:
                connection.rollback()

    def _forget_reader(self, connection: Connection) -> None:
        with self._reader_lock:
            if connection in self._reader_connections:
                self._reader_connections.remove(connection)
        _close_quietly(connection)

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

    def _writer_connection(self) -> Connection:
        return self._engine.connect().execution_options(**{WRITER_OPTION: True})

    def _write_loop(self) -> None:
        connection: Connection | None = None
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
                connection = self._usable(connection, group)
                if connection is not None:
                    self._commit_group(connection, group)
                if stop_after:
                    return
        finally:
            if connection is not None:
                _close_quietly(connection)

    def _usable(self, connection: Connection | None, group: list[_Job]) -> Connection | None:
        """The writer's connection, a new one if it was lost; when none can be had (the
        database is down), the group fails with why and the next one tries again."""
        if connection is not None and not connection.invalidated:
            return connection
        if connection is not None:
            _close_quietly(connection)
        try:
            return self._writer_connection()
        except Exception as exc:
            log.error("cannot connect to the database to write: %s", exc)
            refused = StoreUnavailable(f"cannot connect to the database: {exc}")
            refused.__cause__ = exc
            _settle_by_loop([(job, False, refused) for job in group])
            return None

    def _commit_group(self, connection: Connection, group: list[_Job]) -> None:
        """All writes of the group in one transaction; if any of them raises, the group is
        rolled back and each write runs again in a transaction of its own, so a failure
        stays with its caller and its neighbours still commit."""
        outcomes: list[tuple[_Job, bool, Any]] | None = None
        if len(group) > 1:
            try:
                with connection.begin(), self._sending(connection):
                    done = [(job, True, job.work(connection)) for job in group]
                # Only now: an error may come after the last write returned, as the
                # transaction ends (results sent ahead, a constraint checked at COMMIT).
                outcomes = done
            except Exception as exc:
                if lost_connection(exc):  # it may have committed: never run it twice
                    log.error("the database connection was lost writing a group of %d", len(group))
                    outcomes = [(job, False, unavailable(exc)) for job in group]
                else:  # rolled back: run them one by one
                    self.groups_rerun += 1
                    log.warning("a write failed in a group of %d; one by one", len(group))
        if outcomes is None:
            outcomes = [self._commit_one(connection, job) for job in group]
        _settle_by_loop(outcomes)

    def _commit_one(self, connection: Connection, job: _Job) -> tuple[_Job, bool, Any]:
        try:
            with connection.begin(), self._sending(connection):
                return job, True, job.work(connection)
        except Exception as exc:  # handed to its caller
            return job, False, unavailable(exc)

    def _sending(self, connection: Connection) -> AbstractContextManager[None]:
        """Around the writes of one transaction, inside it: where an adapter may send
        statements without waiting for each one's result (PostgreSQL's pipeline mode).
        Every error among them is raised before this ends, while the transaction can
        still be rolled back: the group is undone and rerun one by one as for any other
        error. Here every statement waits for its own result."""
        return nullcontext()

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
                _close_quietly(connection)
            self._reader_connections.clear()
        self._engine.dispose()


def _close_quietly(connection: Connection) -> None:
    """Close a connection that may be broken (the server restarted, the backend was
    terminated): there is nothing left to save on it, and closing must not fail."""
    try:
        connection.close()
    except Exception as exc:
        log.debug("closing a broken database connection: %s", exc)


def _settle_by_loop(outcomes: list[tuple[_Job, bool, Any]]) -> None:
    """Hand each caller its outcome; one wake-up per event loop, not per write (waking a
    loop is a system call)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, bool, Any]]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_all, settled)
        except RuntimeError:
            # The caller's event loop is gone; the writes stand, nobody awaits them.
            log.debug("writes committed for a closed event loop")


def _settle_all(outcomes: list[tuple[_Job, bool, Any]]) -> None:
    for job, ok, value in outcomes:
        if job.future.cancelled():
            continue
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)
