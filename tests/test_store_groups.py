"""Integration: createTask in the writer's groups, on this run's database (SQLite or
PostgreSQL, ``BANANASTAND_TEST_DATABASE``): what a group of creates sends, and that its
decisions and its failures stay each write's own.

A group's transaction locks each account once, however many of its creates are for it;
the next transaction (the next group, or each write of a group run again one by one)
locks again. What reached the database is counted with its own means: SQLite's trace of
the writer's connection, PostgreSQL's ``pg_stat_statements``. Groups are made by holding
the writer until their writes are queued (``one_group``), never by timing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from bananastand.contract import TaskState
from bananastand.store.ports import (
    Admission,
    Created,
    CreateRefusal,
    Failure,
    IdempotencyClaim,
    MonthlyCapReached,
    NotEnoughCredits,
    StoreUnavailable,
    TooManyWaiting,
)
from bananastand.store.runner import GroupCommitRunner
from bananastand.store.sql import ledger, tasks
from bananastand.store.sqlstore import SqlStore
from conftest import DATABASE, postgres_server
from store_helpers import (
    ACCOUNT,
    ADAPTERS,
    DEADLOCK_GUARD_S,
    T0,
    Adapter,
    FakeClock,
    in_threads,
    new_task,
    one_group,
    scenario,
)

OTHER = "acct_other"
NO_LIMITS = Admission()
#: The account lock's statement (``ledger.lock_account``): on SQLite without FOR UPDATE,
#: the same text as a balance read, so the counted scenarios refuse nothing.
LOCK_ON = {
    "sqlite": "SELECT accounts.credits FROM accounts WHERE",
    "postgresql": "%FROM accounts%FOR UPDATE%",
}


@pytest.fixture(scope="session")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Adapter:
    return ADAPTERS[DATABASE](tmp_path_factory.mktemp(DATABASE))


@pytest.fixture
def url(adapter: Adapter, tmp_path: Path) -> str:
    return adapter.new_database(tmp_path)


@pytest.fixture
def connect(adapter: Adapter, url: str) -> Iterator[Callable[[], SqlStore]]:
    """Opens a store on this test's database; each one more stands for one more process."""
    opened: list[SqlStore] = []

    def open_one() -> SqlStore:
        opened.append(cast(SqlStore, adapter.open(url, FakeClock())))
        return opened[-1]

    yield open_one
    for store in opened:
        asyncio.run(store.close())


@pytest.fixture
def store(connect: Callable[[], SqlStore]) -> SqlStore:
    return connect()


@pytest.fixture
def db(store: SqlStore) -> GroupCommitRunner:
    return cast(GroupCommitRunner, store.runner)


@pytest.fixture
def locks(db: GroupCommitRunner, url: str) -> Callable[[], Awaitable[int]]:
    """The account locks that reached the database so far, from this store's writer."""
    if DATABASE == "postgresql":
        name = url.rsplit("/", 1)[1]
        server = postgres_server()
        return lambda: asyncio.to_thread(server.statement_calls, name, LOCK_ON[DATABASE])
    traced: list[str] = []

    def trace(connection: Connection) -> None:
        connection.connection.driver_connection.set_trace_callback(traced.append)  # type: ignore[union-attr]

    async def count() -> int:
        if not traced:
            await db.write(trace)
            traced.append("-- traced")
        texts = (" ".join(statement.split()) for statement in traced)
        return sum(text.startswith(LOCK_ON[DATABASE]) for text in texts)

    return count


def key(name: str, request_hash: str = "hash-a") -> IdempotencyClaim:
    return IdempotencyClaim(key=name, request_hash=request_hash, ttl_ms=60_000)


@scenario
async def test_a_group_locks_each_of_its_accounts_once(
    store: SqlStore, db: GroupCommitRunner, locks: Callable[[], Awaitable[int]]
) -> None:
    """Thirty charged creates for two accounts in one group: two locks, exact charges;
    the next group locks again (the commit ended the first one's locks)."""
    await store.create_account(ACCOUNT, "a", 100)
    await store.create_account(OTHER, "b", 100)
    before = await locks()
    news = [new_task(ACCOUNT if n % 3 else OTHER, credits=1) for n in range(30)]
    async with one_group(db):
        answers = asyncio.gather(*(store.create_task(new, None, NO_LIMITS) for new in news))
    assert await answers == [Created(new.id, True) for new in news]
    assert await locks() - before == 2
    assert db.groups_rerun == 0
    later = new_task(OTHER, credits=1)
    assert await store.create_task(later, None, NO_LIMITS) == Created(later.id, True)
    assert await locks() - before == 3
    assert await store.balance(ACCOUNT) == 100 - 20
    assert await store.balance(OTHER) == 100 - 10 - 1
    assert await store.audit() == []


@scenario
async def test_each_decision_in_a_group_sees_the_groups_earlier_writes(
    store: SqlStore, db: GroupCommitRunner
) -> None:
    """Under one lock per account, every check still reads the rows as the group's
    earlier writes left them: the balance, the month's spending, the waiting tasks and
    the Idempotency-Keys; each refusal writes nothing and reruns nothing."""
    await store.create_account(ACCOUNT, "poor", 3)
    await store.create_account(OTHER, "capped", 1_000)
    await store.create_account("acct_busy", "busy", 0)
    capped = Admission(monthly_cap=4, month_start_ms=T0)
    busy = Admission(max_waiting=2)
    calls: list[tuple[Any, IdempotencyClaim | None, Admission, Created | CreateRefusal]] = []
    first_keyed = new_task()  # free: no credits needed
    for n in range(6):
        poor = new_task(ACCOUNT, credits=1)
        calls.append(
            (poor, None, NO_LIMITS, Created(poor.id, True) if n < 3 else NotEnoughCredits(0, 1))
        )
        spend = new_task(OTHER, credits=2)
        calls.append(
            (spend, None, capped, Created(spend.id, True) if n < 2 else MonthlyCapReached(4, 4, 2))
        )
        queued = new_task("acct_busy")
        calls.append(
            (queued, None, busy, Created(queued.id, True) if n < 2 else TooManyWaiting(2, 2))
        )
        keyed = first_keyed if n == 0 else new_task()
        calls.append((keyed, key("k"), NO_LIMITS, Created(first_keyed.id, n == 0)))
    async with one_group(db):
        answers = asyncio.gather(*(store.create_task(new, k, a) for new, k, a, _ in calls))
    assert await answers == [expected for *_, expected in calls]
    assert db.groups_rerun == 0
    assert await store.balance(ACCOUNT) == 0
    assert await store.balance(OTHER) == 1_000 - 4
    assert await store.audit() == []


@pytest.mark.parametrize("credits", [0, 1], ids=["free", "charged"])
@scenario
async def test_a_failing_create_in_a_group_fails_alone(
    store: SqlStore, db: GroupCommitRunner, locks: Callable[[], Awaitable[int]], credits: int
) -> None:
    """A create whose task id is taken (the primary key refuses its INSERT) among good
    ones: the group is undone and each runs again alone; the failure is its caller's, its
    neighbours commit, its charge is undone with it, and each rerun locks anew."""
    await store.create_account(ACCOUNT, "a", 100)
    taken = new_task(credits=credits)
    assert await store.create_task(taken, None, NO_LIMITS) == Created(taken.id, True)
    before = await locks()
    news = [new_task(credits=credits) for _ in range(5)]
    news[2] = dataclasses.replace(news[2], id=taken.id)
    async with one_group(db):
        answers = asyncio.gather(
            *(store.create_task(new, None, NO_LIMITS) for new in news), return_exceptions=True
        )
    done = await answers
    assert isinstance(done[2], IntegrityError), done[2]
    assert [done[n] for n in (0, 1, 3, 4)] == [Created(news[n].id, True) for n in (0, 1, 3, 4)]
    assert db.groups_rerun == 1
    assert await locks() - before == 1 + 5  # the group's, then each write's alone
    listed = await store.list_tasks(ACCOUNT, state=None, limit=10, before_seq=None)
    assert sorted(task.id for task in listed) == sorted(
        [taken.id, *(news[n].id for n in (0, 1, 3, 4))]
    )
    assert await store.balance(ACCOUNT) == 100 - 5 * credits
    assert await store.audit() == []
    # The writer carries on: the next group commits whole.
    after = [new_task(credits=credits) for _ in range(3)]
    async with one_group(db):
        answers = asyncio.gather(*(store.create_task(new, None, NO_LIMITS) for new in after))
    assert await answers == [Created(new.id, True) for new in after]
    assert db.groups_rerun == 1


@scenario
async def test_charges_stay_exact_with_two_processes_writing_in_groups(
    store: SqlStore, connect: Callable[[], SqlStore]
) -> None:
    """Eight clients, half through a second process, each sending ten creates at once (so
    each process writes them in groups): one account pays for 25 of its 40, the other's
    monthly cap allows 20 of its 40; nothing more, whatever the interleaving."""
    second = connect()
    await store.create_account(ACCOUNT, "a", 25)
    await second.create_account(OTHER, "b", 1_000)
    stores = [store, second]
    capped = Admission(monthly_cap=20, month_start_ms=T0)

    async def client(n: int) -> list[Created | CreateRefusal]:
        account, limits = (ACCOUNT, NO_LIMITS) if n % 4 < 2 else (OTHER, capped)
        creates = (
            stores[n % 2].create_task(new_task(account, credits=1), None, limits) for _ in range(10)
        )
        return list(await asyncio.gather(*creates))

    answers = [answer for sent in await asyncio.to_thread(in_threads, 8, client) for answer in sent]
    made = [answer for answer in answers if isinstance(answer, Created)]
    assert len(made) == 45
    refused = sorted((answer for answer in answers if not isinstance(answer, Created)), key=repr)
    assert refused == sorted(
        [MonthlyCapReached(20, 20, 1)] * 20 + [NotEnoughCredits(0, 1)] * 15, key=repr
    )
    assert await store.balance(ACCOUNT) == 0
    assert await store.balance(OTHER) == 1_000 - 20
    assert await store.audit() == []


@scenario
async def test_a_write_reads_what_the_groups_earlier_inserts_wrote(
    store: SqlStore, db: GroupCommitRunner
) -> None:
    """A task created and canceled in one group: the cancel (through SQLAlchemy) finds the
    row the create's INSERT wrote (on PostgreSQL sent ahead of its result) and refunds it."""
    await store.create_account(ACCOUNT, "a", 10)
    new = new_task(credits=4)
    async with one_group(db):
        made = asyncio.ensure_future(store.create_task(new, None, NO_LIMITS))
        canceled = asyncio.ensure_future(store.cancel_task(new.id, ACCOUNT, Failure("400", "no")))
    assert await made == Created(new.id, True)
    task = await canceled
    assert task is not None
    assert task.state is TaskState.FAIL
    assert db.groups_rerun == 0  # in the group, not alone after it failed
    assert await store.balance(ACCOUNT) == 10
    assert await store.audit() == []


def pipeline_status(connection: Connection) -> int:
    """The writer's connection's pipeline mode now (psycopg: 0 off, 1 on)."""
    driver = connection.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    return int(driver.pgconn.pipeline_status)


@pytest.mark.postgresql_only(reason="psycopg's pipeline mode")
@scenario
async def test_a_groups_inserts_are_sent_without_waiting_until_the_transaction_ends(
    store: SqlStore, db: GroupCommitRunner
) -> None:
    """After a create, later writes of its group find the connection in pipeline mode
    (the INSERT went out, its result not waited for); a statement through SQLAlchemy
    ends the mode first, and the next transaction starts without it."""
    await store.create_account(ACCOUNT, "a", 10)
    first, second = new_task(), new_task()
    async with one_group(db):
        before = asyncio.ensure_future(db.write(pipeline_status))
        made = asyncio.gather(
            store.create_task(first, None, NO_LIMITS), store.create_task(second, None, NO_LIMITS)
        )
        during = asyncio.ensure_future(db.write(pipeline_status))
        balance = asyncio.ensure_future(
            db.write(lambda c: (ledger.balance(c, ACCOUNT), pipeline_status(c)))
        )
    assert await made == [Created(first.id, True), Created(second.id, True)]
    assert (await before, await during, await balance) == (0, 1, (10, 0))
    assert db.groups_rerun == 0
    assert await db.write(pipeline_status) == 0


@pytest.mark.postgresql_only(reason="psycopg's pipeline mode")
@scenario
async def test_a_write_that_swallows_an_error_sent_ahead_still_fails(
    store: SqlStore, db: GroupCommitRunner
) -> None:
    """A write whose INSERT failed, sent ahead, sees the error at its next statement; if
    it catches it and returns, its transaction still fails (PostgreSQL would quietly
    turn the COMMIT into a ROLLBACK): the caller is told, never answered a task that
    is not there."""
    await store.create_account(ACCOUNT, "a", 10)
    taken = new_task()
    assert await store.create_task(taken, None, NO_LIMITS) == Created(taken.id, True)

    def swallow(connection: Connection) -> str:
        tasks.create_task(
            connection, dataclasses.replace(new_task(), id=taken.id), T0, None, NO_LIMITS
        )
        try:
            ledger.balance(connection, ACCOUNT)
        except IntegrityError:
            return "carried on"
        return "no error"

    with pytest.raises(IntegrityError, match="uq_tasks_id"):
        await db.write(swallow)
    listed = await store.list_tasks(ACCOUNT, state=None, limit=10, before_seq=None)
    assert [task.id for task in listed] == [taken.id]


@pytest.mark.postgresql_only(reason="psycopg's pipeline mode, a backend terminated")
@scenario
async def test_a_connection_lost_with_inserts_sent_ahead_fails_the_group_once(
    store: SqlStore, db: GroupCommitRunner, url: str
) -> None:
    """The writer's backend is terminated while its group's INSERTs are sent ahead and
    not yet answered: the loss comes where the group waits for them. Every write of the
    group gets it and none runs again (never twice what may have committed; here it
    could not have: no COMMIT was sent); the next write gets a new connection."""
    await store.create_account(ACCOUNT, "a", 10)
    pid = await db.write(lambda c: c.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
    held, release = threading.Event(), threading.Event()

    def hold(_connection: Connection) -> None:
        held.set()
        assert release.wait(DEADLOCK_GUARD_S)

    news = [new_task(credits=1) for _ in range(3)]
    async with one_group(db):
        answers = asyncio.gather(
            *(store.create_task(new, None, NO_LIMITS) for new in news),
            db.write(hold),
            return_exceptions=True,
        )
    assert await asyncio.to_thread(held.wait, DEADLOCK_GUARD_S)
    name = url.rsplit("/", 1)[1]
    ended = await asyncio.to_thread(
        postgres_server().psql, f"SELECT pg_terminate_backend({pid}, 30000)", name
    )
    assert ended.strip() == "t"
    release.set()
    done = await answers
    # Handed over as the port's error, the driver's loss of the connection its cause.
    assert all(
        isinstance(answer, StoreUnavailable)
        and isinstance(answer.__cause__, DBAPIError)
        and answer.__cause__.connection_invalidated
        for answer in done
    ), done
    assert db.groups_rerun == 0
    assert await store.list_tasks(ACCOUNT, state=None, limit=10, before_seq=None) == []
    later = new_task(credits=1)
    assert await store.create_task(later, None, NO_LIMITS) == Created(later.id, True)
    assert await store.balance(ACCOUNT) == 9
