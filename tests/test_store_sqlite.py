"""Integration: what only the SQLite adapter does, on a real file: its runner (``Database``:
one writer thread that commits in groups, readers that never wait for it) and its rows.

The behaviour every adapter owes is in ``test_store_contract.py``; here are the runner's
own promises (a failing write fails alone, a refusal never reruns its group, close
finishes what was asked) and the few columns no port shows (the lease of a task), read
with ``sqlite3`` straight from the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, event, insert
from sqlalchemy.exc import IntegrityError

from bananastand.contract import TaskState
from bananastand.store.ports import (
    Admission,
    Created,
    CreateRefusal,
    Discrepancy,
    Failure,
    IdempotencyClaim,
    KeyReused,
    MonthlyCapReached,
    NewTask,
    NotEnoughCredits,
    Rescue,
    TooManyWaiting,
)
from bananastand.store.sqlite.database import MAX_GROUP, Database
from bananastand.store.sqlstore import SqlStore
from bananastand.store.tables import switches, webhook_secrets
from store_helpers import (
    ACCOUNT,
    DEADLOCK_GUARD_S,
    T0,
    FakeClock,
    SqliteAdapter,
    in_threads,
    new_task,
    one_group,
    scenario,
)

LEASE_MS = 1_000
NO_LIMITS = Admission()
CANCELED = Failure("400", "canceled")
GIVE_UP = Failure("500", "giving up")

pytestmark = pytest.mark.sqlite_only(reason="SQLite's runner and file")


@pytest.fixture(scope="session")
def sqlite(tmp_path_factory: pytest.TempPathFactory) -> SqliteAdapter:
    return SqliteAdapter(tmp_path_factory.mktemp("sqlite"))


@pytest.fixture
def db_path(sqlite: SqliteAdapter, tmp_path: Path) -> Path:
    return Path(sqlite.new_database(tmp_path).removeprefix("sqlite:///"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db(db_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{db_path}")
    yield database
    asyncio.run(database.close())


@pytest.fixture
def store(db: Database, clock: FakeClock) -> SqlStore:
    return SqlStore(db, clock=clock)


def raw_row(path: Path, table: str, where: str, *args: object) -> dict[str, Any]:
    """A row as SQLite has it, read outside ``Database`` (columns no port shows too)."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.row_factory = sqlite3.Row
        row = connection.execute(f"SELECT * FROM {table} WHERE {where}", args).fetchone()
    assert row is not None, (table, where, args)
    return dict(row)


def lease_of(path: Path, task_id: str) -> tuple[Any, ...]:
    row = raw_row(path, "tasks", "id = ?", task_id)
    return (
        row["state"],
        row["attempts"],
        row["lease_token"],
        row["lease_expires_at"],
        row["worker_id"],
    )


def count_rows(path: Path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        (count,) = connection.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(count)


def put_raw_switch(connection: Connection, name: str) -> str:
    """A unit of work of the plainest kind: one INSERT (a second one of a name fails)."""
    connection.execute(insert(switches).values(name=name, value="", updated_at=T0))
    return name


def count_commits(db: Database) -> list[int]:
    """One entry per transaction the runner commits from now on."""
    commits: list[int] = []
    event.listen(db.engine, "commit", lambda _connection: commits.append(1))
    return commits


# -- group commit ----------------------------------------------------------------------------


@scenario
async def test_many_concurrent_writes_all_commit_in_groups(
    db: Database, store: SqlStore, db_path: Path
) -> None:
    commits = count_commits(db)
    news = [new_task() for _ in range(500)]
    made = await asyncio.gather(*(store.create_task(new, None, NO_LIMITS) for new in news))
    assert made == [Created(new.id, True) for new in news]
    assert count_rows(db_path, "tasks") == 500
    assert 0 < len(commits) < 500, "the writes should have been committed in groups"
    assert db.groups_rerun == 0


@scenario
async def test_a_failing_write_fails_only_itself(db: Database, store: SqlStore) -> None:
    runs: list[str] = []

    def put(connection: Connection, name: str, label: str) -> str:
        runs.append(label)
        return put_raw_switch(connection, name)

    holding, release = threading.Event(), threading.Event()

    def hold(_connection: Connection) -> None:
        # Holds the writer until the next three writes are queued, so they form one group.
        holding.set()
        assert release.wait(DEADLOCK_GUARD_S)

    await db.write(lambda connection: put(connection, "taken", "original"))
    blocker = asyncio.ensure_future(db.write(hold))
    assert await asyncio.to_thread(holding.wait, DEADLOCK_GUARD_S)
    queued = asyncio.gather(
        db.write(lambda connection: put(connection, "before", "before")),
        db.write(lambda connection: put(connection, "taken", "duplicate")),
        db.write(lambda connection: put(connection, "after", "after")),
        return_exceptions=True,
    )
    await asyncio.sleep(0)  # one turn of the loop: each write puts itself in the queue
    release.set()
    before, duplicate, after = await queued
    await blocker
    assert before == "before"
    assert isinstance(duplicate, IntegrityError)
    assert after == "after"
    # They were tried as one group first, then each on its own after the failure.
    assert runs[1:3] == ["before", "duplicate"]
    assert runs[3:] == ["before", "duplicate", "after"]
    assert db.groups_rerun == 1
    assert await store.all_switches() == {"taken": "", "before": "", "after": ""}


@scenario
async def test_a_write_whose_error_comes_at_commit_fails_only_itself(
    db: Database, store: SqlStore, db_path: Path
) -> None:
    """An error may come after every write of the group returned: here a foreign key
    checked only at COMMIT (``defer_foreign_keys``). The group is not committed, so
    nobody may be told it was: each runs again alone and only the culprit fails."""

    def orphan(connection: Connection) -> str:
        connection.exec_driver_sql("PRAGMA defer_foreign_keys = ON")  # until the COMMIT
        connection.execute(
            insert(webhook_secrets).values(account_id="acct_nobody", secret="s", created_at=T0)
        )
        return "orphan"

    async with one_group(db):
        queued = asyncio.gather(
            db.write(lambda connection: put_raw_switch(connection, "before")),
            db.write(orphan),
            db.write(lambda connection: put_raw_switch(connection, "after")),
            return_exceptions=True,
        )
    before, failed, after = await queued
    assert (before, after) == ("before", "after")
    assert isinstance(failed, IntegrityError), failed
    assert db.groups_rerun == 1
    assert await store.all_switches() == {"before": "", "after": ""}
    assert count_rows(db_path, "webhook_secrets") == 0


@scenario
async def test_a_failing_write_alone_raises_and_writes_nothing(
    db: Database, store: SqlStore
) -> None:
    def half_then_fail(connection: Connection) -> None:
        put_raw_switch(connection, "half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await db.write(half_then_fail)
    # The writer survives and keeps committing.
    await store.put_switch("whole", "1")
    assert await store.all_switches() == {"whole": "1"}
    assert db.groups_rerun == 0  # alone, it was no group


@scenario
async def test_a_refusal_in_a_group_commit_does_not_rerun_the_group(
    db: Database, store: SqlStore
) -> None:
    """Fifty creates wait behind a held writer and so share one transaction; a third of
    them are refused (no credits, too many waiting, the monthly cap, a reused key). Each
    gets its own answer, in order, and the group commits once: a refusal is a value, not
    an error that would undo its neighbours and run them all again one by one."""
    await store.create_account("acct_rich", "rich", 1_000)
    await store.create_account("acct_poor", "poor", 2)
    await store.create_account("acct_busy", "busy", 0)
    await store.create_account("acct_capped", "capped", 1_000)
    busy = Admission(max_waiting=3)
    capped = Admission(monthly_cap=5, month_start_ms=T0)

    def key(name: str, request_hash: str) -> IdempotencyClaim:
        return IdempotencyClaim(name, request_hash, ttl_ms=60_000)

    calls: list[tuple[NewTask, IdempotencyClaim | None, Admission, Created | CreateRefusal]] = []
    first_keyed: NewTask | None = None
    for n in range(5):
        rich = new_task("acct_rich")
        calls.append((rich, None, NO_LIMITS, Created(rich.id, True)))
        poor = new_task("acct_poor", credits=1)
        calls.append(
            (poor, None, NO_LIMITS, Created(poor.id, True) if n < 2 else NotEnoughCredits(0, 1))
        )
        queued = new_task("acct_busy")
        calls.append(
            (queued, None, busy, Created(queued.id, True) if n < 3 else TooManyWaiting(3, 3))
        )
        spend = new_task("acct_capped", credits=2)
        calls.append(
            (spend, None, capped, Created(spend.id, True) if n < 2 else MonthlyCapReached(4, 5, 2))
        )
        keyed = new_task("acct_rich", credits=1)
        first_keyed = first_keyed or keyed
        calls.append((keyed, key("k", "hash-a"), NO_LIMITS, Created(first_keyed.id, n == 0)))
        calls.append((new_task("acct_rich"), key("k", "hash-b"), NO_LIMITS, KeyReused("k")))
        own = new_task("acct_rich", credits=5)
        calls.append((own, key(f"k{n}", "x"), NO_LIMITS, Created(own.id, True)))
        calls.append((new_task("acct_rich"), key(f"k{n}", "y"), NO_LIMITS, KeyReused(f"k{n}")))
        calls.append((new_task("acct_rich"), key(f"k{n}", "x"), NO_LIMITS, Created(own.id, False)))
        free = new_task("acct_poor")  # free tasks need no credits
        calls.append((free, None, NO_LIMITS, Created(free.id, True)))
    assert len(calls) == 50 < MAX_GROUP

    commits = count_commits(db)
    holding, release = threading.Event(), threading.Event()

    def hold(_connection: Connection) -> None:
        holding.set()
        assert release.wait(DEADLOCK_GUARD_S)

    blocker = asyncio.ensure_future(db.write(hold))
    assert await asyncio.to_thread(holding.wait, DEADLOCK_GUARD_S)
    answers = asyncio.gather(
        *(store.create_task(new, idem, limits) for new, idem, limits, _ in calls)
    )
    await asyncio.sleep(0)  # one turn of the loop: each call puts its write in the queue
    release.set()
    assert await answers == [expected for *_, expected in calls]
    await blocker
    assert db.groups_rerun == 0
    assert len(commits) == 2  # the held write's own, then one for all fifty

    assert await store.balance("acct_rich") == 1_000 - 1 - 5 * 5
    assert await store.balance("acct_poor") == 0
    assert await store.balance("acct_capped") == 1_000 - 2 * 2
    for account_id, count in (("acct_rich", 11), ("acct_poor", 7), ("acct_busy", 3)):
        listed = await store.list_tasks(account_id, state=None, limit=100, before_seq=None)
        assert len(listed) == count, account_id
    assert await store.audit() == []


# -- the runner's life -----------------------------------------------------------------------


@scenario
async def test_close_finishes_queued_writes(store: SqlStore, db_path: Path) -> None:
    news = [new_task() for _ in range(MAX_GROUP * 2 + 88)]  # more than one group
    pending = [asyncio.ensure_future(store.create_task(new, None, NO_LIMITS)) for new in news]
    await asyncio.sleep(0)  # let every write reach the queue
    await store.close()
    assert all(write.done() for write in pending)
    assert [write.result() for write in pending] == [Created(new.id, True) for new in news]
    assert count_rows(db_path, "tasks") == len(news)
    with pytest.raises(RuntimeError, match="closed"):
        await store.create_task(new_task(), None, NO_LIMITS)
    with pytest.raises(RuntimeError, match="closed"):
        await store.list_tasks(ACCOUNT, state=None, limit=1, before_seq=None)
    with pytest.raises(RuntimeError, match="closed"):
        await store.get_task(news[0].id, ACCOUNT)
    await store.close()  # twice is fine


def test_a_write_left_behind_by_a_finished_event_loop_does_not_stop_the_writer(
    db: Database, store: SqlStore
) -> None:
    """One ``Database`` serves several ``asyncio.run`` calls (as the CLI and these tests
    use it). A write whose caller gave up and whose loop then closed must not take the
    writer thread down with it: later writes from a new loop still commit."""
    running, release = threading.Event(), threading.Event()

    def slow_put(connection: Connection) -> None:
        running.set()
        assert release.wait(DEADLOCK_GUARD_S)
        put_raw_switch(connection, "slow")

    async def give_up() -> None:
        write = asyncio.ensure_future(db.write(slow_put))
        assert await asyncio.to_thread(running.wait, DEADLOCK_GUARD_S)
        write.cancel()

    asyncio.run(give_up())  # the loop is closed while the write is still running
    release.set()  # the write commits and its result is handed to the closed loop

    async def write_again() -> dict[str, str]:
        # A writer thread that died would never answer.
        await asyncio.wait_for(store.put_switch("later", "1"), DEADLOCK_GUARD_S)
        return await store.all_switches()

    # The abandoned write stands.
    assert asyncio.run(write_again()) == {"slow": "", "later": "1"}


@scenario
async def test_writes_take_the_write_lock_up_front_and_readers_never_wait(
    db: Database, store: SqlStore, db_path: Path
) -> None:
    """The writer's transactions begin IMMEDIATE (another process cannot take the lock
    between its reads and its writes); readers go on while it holds the lock (WAL)."""
    await store.create_account(ACCOUNT, "a", 5)
    made = await store.create_task(new_task(credits=1), None, NO_LIMITS)
    assert isinstance(made, Created)
    holding, release = threading.Event(), threading.Event()

    def hold(_connection: Connection) -> None:  # writes nothing, yet holds the lock
        holding.set()
        assert release.wait(DEADLOCK_GUARD_S)

    blocker = asyncio.ensure_future(db.write(hold))
    try:
        assert await asyncio.to_thread(holding.wait, DEADLOCK_GUARD_S)
        with contextlib.closing(sqlite3.connect(db_path, timeout=0)) as outsider:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                outsider.execute("BEGIN IMMEDIATE")
            assert outsider.execute("SELECT count(*) FROM tasks").fetchone() == (1,)
        assert (await store.get_task(made.task_id, ACCOUNT)) is not None
        assert await store.balance(ACCOUNT) == 4
        assert len(await store.list_tasks(ACCOUNT, state=None, limit=5, before_seq=None)) == 1
    finally:
        release.set()
        await blocker


# -- rows no port shows ----------------------------------------------------------------------


@scenario
async def test_a_tasks_lease_columns_follow_its_claims(
    store: SqlStore, clock: FakeClock, db_path: Path
) -> None:
    made = await store.create_task(new_task(), None, NO_LIMITS)
    assert isinstance(made, Created)
    task_id = made.task_id
    assert lease_of(db_path, task_id) == ("waiting", 0, None, None, None)

    async def claim(token: str) -> None:
        [claimed] = await store.claim_tasks(
            worker_id="worker-1", lease_token=token, limit=1, lease_ms=LEASE_MS
        )
        assert claimed.task.id == task_id

    await claim("lease-1")
    assert lease_of(db_path, task_id) == ("queuing", 1, "lease-1", T0 + LEASE_MS, "worker-1")
    clock.now = T0 + 500
    assert await store.renew_leases([(task_id, "lease-1")], LEASE_MS) == set()
    assert lease_of(db_path, task_id)[3] == T0 + 500 + LEASE_MS
    assert await store.release_task(task_id, "lease-1")
    assert lease_of(db_path, task_id) == ("waiting", 0, None, None, None)

    await claim("lease-2")
    assert await store.mark_generating(task_id, "lease-2")
    clock.advance(LEASE_MS + 1)
    assert await store.rescue_expired(3, GIVE_UP) == Rescue([task_id], [])
    assert lease_of(db_path, task_id) == ("waiting", 1, None, None, None)

    await claim("lease-3")
    assert await store.finish_task(task_id, "lease-3", state=TaskState.SUCCESS)
    state, attempts, token, expires, _worker = lease_of(db_path, task_id)
    assert (state, attempts, token, expires) == ("success", 2, None, None)

    made = await store.create_task(new_task(), None, NO_LIMITS)
    assert isinstance(made, Created)
    await store.claim_tasks(worker_id="w", lease_token="lease-4", limit=1, lease_ms=LEASE_MS)
    assert await store.cancel_task(made.task_id, ACCOUNT, CANCELED) is not None
    assert lease_of(db_path, made.task_id)[:4] == ("fail", 1, None, None)

    made = await store.create_task(new_task(), None, NO_LIMITS)
    assert isinstance(made, Created)
    await store.claim_tasks(worker_id="w", lease_token="lease-5", limit=1, lease_ms=LEASE_MS)
    clock.advance(LEASE_MS + 1)
    assert await store.rescue_expired(1, GIVE_UP) == Rescue([], [made.task_id])
    assert lease_of(db_path, made.task_id)[:4] == ("fail", 1, None, None)


@scenario
async def test_the_database_refuses_a_second_refund_row(store: SqlStore, db_path: Path) -> None:
    await store.create_account(ACCOUNT, "a", 100)
    new = new_task(credits=18)
    assert await store.create_task(new, None, NO_LIMITS) == Created(new.id, True)
    assert await store.cancel_task(new.id, ACCOUNT, CANCELED) is not None
    refund = raw_row(db_path, "credit_ledger", "task_id = ? AND reason = 'refund'", new.id)
    assert refund["amount"] == 18
    with (
        contextlib.closing(sqlite3.connect(db_path)) as connection,
        pytest.raises(sqlite3.IntegrityError, match="UNIQUE"),
    ):
        connection.execute(
            "INSERT INTO credit_ledger (account_id, amount, reason, task_id, note, created_at)"
            " VALUES (?, 18, 'refund', ?, '', ?)",
            (ACCOUNT, new.id, T0 + 1),
        )
    assert await store.balance(ACCOUNT) == 100


@scenario
async def test_audit_finds_what_the_ledger_does_not_explain(store: SqlStore, db_path: Path) -> None:
    await store.create_account(ACCOUNT, "a", 10)
    new = new_task(credits=3)
    assert await store.create_task(new, None, NO_LIMITS) == Created(new.id, True)
    assert await store.audit() == []
    with contextlib.closing(sqlite3.connect(db_path)) as connection, connection:
        connection.execute("UPDATE accounts SET credits = credits + 5 WHERE id = ?", (ACCOUNT,))
        connection.execute("UPDATE tasks SET credits_consumed = 7 WHERE id = ?", (new.id,))
    assert await store.audit() == [
        Discrepancy("account", ACCOUNT, recorded=12, ledger=7),
        Discrepancy("task", new.id, recorded=7, ledger=3),
    ]


def test_first_writes_from_many_threads_at_once_start_one_writer(db: Database) -> None:
    """The writer thread starts on the first write; first writes racing from several
    threads (each with its own event loop) must neither start it twice nor be lost."""

    async def one_write(index: int) -> int:
        return await db.write(lambda connection: index)

    assert in_threads(16, one_write) == list(range(16))
