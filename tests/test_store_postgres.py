"""Integration: what only the PostgreSQL adapter's runner does, on this worker's throwaway
server: recordInfo's lookups that wait at the same moment are one read (one thread hop,
one round trip, one statement), at most two at once.

Which callers meet in a batch is decided by the event loop's order (callers started
together all ask before the first batch takes its keys), never by time. What every
adapter owes (each caller gets its own answer) is in ``test_store_contract.py``; the
batching helper alone is in ``test_coalesce.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import ProgrammingError

from bananastand.records import Task
from bananastand.store.postgres.database import PostgresDatabase
from bananastand.store.runner import MAX_LOOKUP_BATCH
from bananastand.store.sql import lookups
from bananastand.store.sqlstore import SqlStore
from conftest import postgres_server
from store_helpers import ACCOUNT, FakeClock, PostgresqlAdapter, add_tasks, scenario

OTHER = "acct_other"

pytestmark = pytest.mark.postgresql_only(reason="PostgreSQL's runner")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> PostgresqlAdapter:
    return PostgresqlAdapter(tmp_path_factory.mktemp("postgresql"))


@pytest.fixture
def url(adapter: PostgresqlAdapter, tmp_path: Path) -> str:
    return adapter.new_database(tmp_path)


@pytest.fixture
def connect(url: str) -> Iterator[Callable[..., tuple[SqlStore, PostgresDatabase]]]:
    """A store on this test's database, over a runner with ``readers`` threads."""
    opened: list[SqlStore] = []

    def open_one(readers: int = 8) -> tuple[SqlStore, PostgresDatabase]:
        runner = PostgresDatabase(url, readers=readers)
        opened.append(SqlStore(runner, clock=FakeClock()))
        return opened[-1], runner

    yield open_one
    for store in opened:
        asyncio.run(store.close())


def psql(url: str, sql: str) -> str:
    return postgres_server().psql(sql, database=url.rsplit("/", 1)[1])


async def ids_of(store: SqlStore, asks: list[tuple[str, str]]) -> list[str | None]:
    answers: list[Task | None] = await asyncio.gather(
        *(store.get_task(task_id, account) for task_id, account in asks)
    )
    for (_, account), answer in zip(asks, answers, strict=True):
        assert answer is None or answer.account_id == account
    return [None if answer is None else answer.id for answer in answers]


@scenario
async def test_lookups_asked_at_once_are_one_read_and_each_caller_gets_its_own_row(
    connect: Callable[..., tuple[SqlStore, PostgresDatabase]],
) -> None:
    store, runner = connect()
    mine = await add_tasks(store, 5)
    [theirs] = await add_tasks(store, 1, OTHER)
    owner = {**dict.fromkeys(mine, ACCOUNT), theirs: OTHER}
    asks = [
        *((task_id, ACCOUNT) for task_id in mine),
        (mine[0], ACCOUNT),  # the same again
        (mine[1], OTHER),  # another account's task, by its id
        (theirs, OTHER),
        (theirs, ACCOUNT),
        ("task_unknown", ACCOUNT),
    ] * 4
    answers = await asyncio.gather(*(store.get_task(t, account) for t, account in asks))
    assert runner.lookup_batches == 1  # 40 callers, one read
    assert [None if answer is None else answer.id for answer in answers] == [
        task_id if owner.get(task_id) == account else None for task_id, account in asks
    ]
    # The batch's rows are the point query's (a lookup alone), field for field.
    for (task_id, account), answer in zip(asks, answers, strict=True):
        assert answer == await store.get_task(task_id, account)
    assert runner.lookup_batches == 1 + len(asks)


@scenario
async def test_more_callers_than_one_batch_takes_are_the_fewest_batches(
    connect: Callable[..., tuple[SqlStore, PostgresDatabase]],
) -> None:
    store, runner = connect()
    mine = await add_tasks(store, 3)
    missing = [(f"task_missing_{n}", ACCOUNT) for n in range(MAX_LOOKUP_BATCH)]
    asks = [(task_id, ACCOUNT) for task_id in mine] + missing
    assert await ids_of(store, asks) == [*mine, *[None] * len(missing)]
    assert runner.lookup_batches == 2


@scenario
async def test_an_error_in_a_batch_reaches_every_caller_in_it(
    connect: Callable[..., tuple[SqlStore, PostgresDatabase]], url: str
) -> None:
    store, runner = connect()
    mine = await add_tasks(store, 3)
    asks = [(task_id, ACCOUNT) for task_id in mine] * 5
    await asyncio.to_thread(psql, url, "ALTER TABLE tasks RENAME TO tasks_away")
    answers = await asyncio.gather(
        *(store.get_task(task_id, account) for task_id, account in asks), return_exceptions=True
    )
    assert runner.lookup_batches == 1
    assert all(isinstance(answer, ProgrammingError) for answer in answers), answers
    assert 'relation "tasks" does not exist' in str(answers[0])
    with pytest.raises(ProgrammingError):  # alone too (the point query)
        await store.get_task(mine[0], ACCOUNT)
    await asyncio.to_thread(psql, url, "ALTER TABLE tasks_away RENAME TO tasks")
    assert await ids_of(store, asks) == [task_id for task_id, _ in asks]


@scenario
async def test_a_batch_that_lost_its_connection_runs_again_on_a_new_one(
    connect: Callable[..., tuple[SqlStore, PostgresDatabase]], url: str
) -> None:
    # One reader thread: the batch surely meets the connection that was terminated.
    store, runner = connect(readers=1)
    mine = await add_tasks(store, 3)
    asks = [(task_id, ACCOUNT) for task_id in mine] * 4
    assert await ids_of(store, asks) == [task_id for task_id, _ in asks]
    terminated = await asyncio.to_thread(
        psql,
        url,
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    assert int(terminated) >= 1  # the reader's (and the writer's)
    assert await ids_of(store, asks) == [task_id for task_id, _ in asks]
    assert runner.lookup_batches == 2
    # The lone point query heals the same way.
    await asyncio.to_thread(
        psql,
        url,
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    assert await ids_of(store, asks[:1]) == [mine[0]]


@scenario
async def test_the_batch_query_answers_any_number_of_keys_in_their_order(
    connect: Callable[..., tuple[SqlStore, PostgresDatabase]],
) -> None:
    """``tasks_of_accounts`` alone, over more ids than one statement takes."""
    store, runner = connect()
    mine = await add_tasks(store, 3)
    [theirs] = await add_tasks(store, 1, OTHER)
    missing = [(f"task_missing_{n}", ACCOUNT) for n in range(2 * lookups.MAX_IDS)]
    keys = [
        (mine[0], ACCOUNT),
        *missing[: lookups.MAX_IDS],
        (mine[1], ACCOUNT),
        (theirs, ACCOUNT),
        *missing[lookups.MAX_IDS :],
        (mine[2], ACCOUNT),
        (theirs, OTHER),
        (mine[0], ACCOUNT),
    ]
    answers = await runner.read(lambda connection: lookups.tasks_of_accounts(connection, keys))
    expected = [
        task_id if task_id in mine or (task_id, account) == (theirs, OTHER) else None
        for task_id, account in keys
    ]
    assert [None if answer is None else answer.id for answer in answers] == expected
    for (task_id, account), answer in zip(keys, answers, strict=True):
        if answer is not None:
            assert answer == await store.get_task(task_id, account)
