"""Helpers for the store's tests: a clock the test sets, one entry per store adapter, and
ways to run scenarios (an event loop per test, real parallel callers in threads).

The contract suite (``test_store_contract.py``) runs each of its tests once per entry of
``ADAPTERS``. An adapter says how to make a fresh, migrated, empty database for one test
and how to open a store on it; opening a second store on the same database stands for a
second process. A run of the suite is on one database (``BANANASTAND_TEST_DATABASE``, see
conftest.py): the contract suite runs that database's adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar

from bananastand.ids import new_task_id
from bananastand.store import open_runner
from bananastand.store.ports import Admission, Created, NewTask, Store
from bananastand.store.runner import GroupCommitRunner
from bananastand.store.sqlite.database import Database
from bananastand.store.sqlstore import SqlStore
from conftest import migrated, opening_the_run_database, postgres_server

P = ParamSpec("P")
R = TypeVar("R")

#: Only a guard against a deadlock: no test waits on it, a passing one never comes close.
DEADLOCK_GUARD_S = 60.0

#: Where every fake clock starts: a fixed instant, far from the real one.
T0 = 1_800_000_000_000


class FakeClock:
    """Epoch milliseconds that move only when the test says so."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> int:
        self.now += ms
        return self.now


class Adapter(Protocol):
    def new_database(self, tmp_path: Path) -> str:
        """The URL of a fresh database, migrated and empty, for one test."""
        ...

    def open(self, url: str, clock: Callable[[], int]) -> Store:
        """A store on ``url`` deciding by ``clock``; the caller closes it."""
        ...


class SqliteAdapter:
    """``open_store`` for a SQLite file (``Database`` + ``SqlStore``), with a fake clock.

    Migrating a file costs about a tenth of a second; each test gets a copy of one file
    migrated once per session, which costs nothing.
    """

    def __init__(self, workdir: Path) -> None:
        template = workdir / "migrated.db"
        migrated(f"sqlite:///{template}")
        self._template = template

    def new_database(self, tmp_path: Path) -> str:
        opening_the_run_database()
        path = tmp_path / "store.db"
        for suffix in ("", "-wal"):
            source = self._template.with_name(self._template.name + suffix)
            if source.exists():
                shutil.copyfile(source, path.with_name(path.name + suffix))
        return f"sqlite:///{path}"

    def open(self, url: str, clock: Callable[[], int]) -> Store:
        return SqlStore(Database(url), clock=clock)


class PostgresqlAdapter:
    """``open_store`` for a PostgreSQL database (its runner, ``PostgresDatabase``, and
    ``SqlStore``), with a fake clock, on this worker's throwaway server (conftest's
    ``postgres_server``).

    Each test gets a database of its own, copied by ``CREATE DATABASE ... TEMPLATE`` from one
    migrated once per session: as quick as an empty one, where migrating each would cost
    about a third of a second.
    """

    def __init__(self, workdir: Path) -> None:
        self._server = postgres_server()
        self._template = migrated(self._server.new_database()).rsplit("/", 1)[1]

    def new_database(self, tmp_path: Path) -> str:
        opening_the_run_database()
        return self._server.new_database(template=self._template)

    def open(self, url: str, clock: Callable[[], int]) -> Store:
        return SqlStore(open_runner(url), clock=clock)


#: name (a ``BANANASTAND_TEST_DATABASE``) -> how to set the adapter up once per session, in
#: a folder of its own.
ADAPTERS: dict[str, Callable[[Path], Adapter]] = {
    "sqlite": SqliteAdapter,
    "postgresql": PostgresqlAdapter,
}


def scenario(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an ``async def`` test in an event loop of its own, as ``asyncio.run`` does."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), DEADLOCK_GUARD_S))

    return run


def in_threads(count: int, call: Callable[[int], Coroutine[Any, Any, R]]) -> list[R]:
    """``call(0)`` ... ``call(count - 1)`` at once, each in a thread and an event loop of
    its own (as separate clients are), released together by a barrier; their answers in
    order. Blocks: from a scenario, run it with ``asyncio.to_thread``."""
    barrier = threading.Barrier(count)

    def one(index: int) -> R:
        barrier.wait(DEADLOCK_GUARD_S)
        return asyncio.run(call(index))

    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="caller") as pool:
        futures = [pool.submit(one, index) for index in range(count)]
        return [future.result(DEADLOCK_GUARD_S) for future in futures]


@contextlib.asynccontextmanager
async def one_group(runner: GroupCommitRunner) -> AsyncIterator[None]:
    """Writes started in the block share one transaction: the writer is held (by a write
    that waits) until the block ends and every write started in it is in the queue; then
    it takes them all as its next group (up to ``MAX_GROUP``)."""
    holding, release = threading.Event(), threading.Event()

    def hold(_connection: Any) -> None:
        holding.set()
        assert release.wait(DEADLOCK_GUARD_S)

    blocker = asyncio.ensure_future(runner.write(hold))
    try:
        assert await asyncio.to_thread(holding.wait, DEADLOCK_GUARD_S)
        yield
        await asyncio.sleep(0)  # one turn of the loop: each write puts itself in the queue
    finally:
        release.set()
        await blocker


#: The account the store tests make their tasks in.
ACCOUNT = "acct_store"


def new_task(
    account_id: str = ACCOUNT,
    *,
    credits: int = 0,
    callback_url: str | None = None,
    model: str = "nano-banana-pro",
) -> NewTask:
    return NewTask(
        id=new_task_id(),
        account_id=account_id,
        key_id="key_store",
        provider="sandbox",
        model=model,
        param=f'{{"model":"{model}"}}',
        input='{"prompt":"a banana"}',
        callback_url=callback_url,
        credits=credits,
    )


async def add_tasks(
    store: Store,
    count: int,
    account_id: str = ACCOUNT,
    *,
    credits: int = 0,
    callback_url: str | None = None,
    model: str = "nano-banana-pro",
) -> list[str]:
    """``count`` waiting tasks, made one after the other (so oldest first)."""
    ids = []
    for _ in range(count):
        new = new_task(account_id, credits=credits, callback_url=callback_url, model=model)
        assert await store.create_task(new, None, Admission()) == Created(new.id, created=True)
        ids.append(new.id)
    return ids
