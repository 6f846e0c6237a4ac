"""Integration: the task store and its lease logic on a real SQLite file.

The query functions of ``bananastand.store.sql.tasks`` run through ``Database.write`` and
``Database.read`` exactly as the worker and the API run them: one writer thread that
commits in groups, reader threads, and the same file shared by several ``Database``
instances (as several processes share it).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, insert
from sqlalchemy.exc import IntegrityError

from bananastand.contract import TaskState
from bananastand.ids import new_task_id, random_token
from bananastand.records import Claim, Task
from bananastand.store import migrate
from bananastand.store.sql import tasks as queries
from bananastand.store.sqlite.database import Database
from bananastand.store.tables import tasks as tasks_table

ACCOUNT = "acct_store_tests"
LEASE_MS = 1_000
T0 = 1_700_000_000_000  # a fixed clock: every query takes ``now_ms`` explicitly


def open_db(path: Path) -> Database:
    db = Database(f"sqlite:///{path}")
    migrate.upgrade(db)
    return db


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def db(db_path: Path) -> Iterator[Database]:
    database = open_db(db_path)
    yield database
    asyncio.run(database.close())


def new_task(task_id: str | None = None, account_id: str = ACCOUNT) -> queries.NewTask:
    return queries.NewTask(
        id=task_id or new_task_id(),
        account_id=account_id,
        key_id="key_store_tests",
        provider="sandbox",
        model="nano-banana-pro",
        param='{"model":"nano-banana-pro"}',
        input='{"prompt":"a banana"}',
        callback_url=None,
    )


async def add_tasks(db: Database, count: int, now: int = T0) -> list[str]:
    """``count`` waiting tasks, created one after the other (so in ``seq`` order)."""
    ids = []
    for _ in range(count):
        made = await db.write(
            partial(queries.create_task, new=new_task(), now_ms=now, idempotency=None)
        )
        ids.append(made.task_id)
    return ids


async def claim(
    db: Database, limit: int = 1, now: int = T0, token: str | None = None
) -> list[Claim]:
    return await db.write(
        partial(
            queries.claim_tasks,
            worker_id="worker-test",
            lease_token=token or random_token(24),
            limit=limit,
            now_ms=now,
            lease_ms=LEASE_MS,
        )
    )


async def get(db: Database, task_id: str) -> Task:
    task = await db.read(partial(queries.get_task, task_id=task_id))
    assert task is not None
    return task


async def finish(
    db: Database,
    task_id: str,
    token: str,
    now: int = T0 + 100,
    state: TaskState = TaskState.SUCCESS,
    **fields: str,
) -> bool:
    return await db.write(
        partial(
            queries.finish_task,
            task_id=task_id,
            lease_token=token,
            now_ms=now,
            state=state,
            **fields,
        )
    )


async def mark_generating(db: Database, task_id: str, token: str, now: int = T0 + 10) -> bool:
    return await db.write(
        partial(queries.mark_generating, task_id=task_id, lease_token=token, now_ms=now)
    )


async def renew(db: Database, task_id: str, token: str, now: int = T0 + 10) -> set[str]:
    return await db.write(
        partial(queries.renew_leases, held=[(task_id, token)], now_ms=now, lease_ms=LEASE_MS)
    )


async def rescue(db: Database, now: int, max_attempts: int = 3) -> queries.Rescue:
    return await db.write(partial(queries.rescue_expired, now_ms=now, max_attempts=max_attempts))


async def cancel(db: Database, task_id: str, account_id: str = ACCOUNT) -> Task | None:
    return await db.write(
        partial(queries.cancel_task, task_id=task_id, account_id=account_id, now_ms=T0 + 50)
    )


def raw_row(path: Path, task_id: str) -> dict[str, Any]:
    """The ``tasks`` row as SQLite has it, read outside ``Database`` (lease columns too)."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.row_factory = sqlite3.Row
        row = connection.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
    assert row is not None, task_id
    return dict(row)


def count_rows(path: Path, table: str = "tasks") -> int:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        (count,) = connection.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(count)


# -- claiming ------------------------------------------------------------------------------


def test_claim_takes_the_oldest_first_and_respects_the_limit(db: Database) -> None:
    async def scenario() -> None:
        ids = await add_tasks(db, 5)
        first = await claim(db, limit=2)
        assert [c.task.id for c in first] == ids[:2]
        assert all(c.task.state is TaskState.QUEUING and c.task.attempts == 1 for c in first)
        assert all(c.task.started_at == T0 for c in first)
        rest = await claim(db, limit=10)
        assert [c.task.id for c in rest] == ids[2:]
        assert await claim(db, limit=10) == []
        # One token per claim call, shared by the tasks that call took.
        assert len({c.lease_token for c in first}) == 1
        assert first[0].lease_token != rest[0].lease_token

    asyncio.run(scenario())


def test_claim_skips_tasks_that_are_not_waiting(db: Database, db_path: Path) -> None:
    async def scenario() -> str:
        ids = await add_tasks(db, 3)
        assert await cancel(db, ids[0]) is not None  # now fail: never claimed
        taken = await claim(db, limit=1)
        assert [c.task.id for c in taken] == [ids[1]]
        again = await claim(db, limit=5)
        assert [c.task.id for c in again] == [ids[2]]

        return ids[0]

    canceled_id = asyncio.run(scenario())
    row = raw_row(db_path, canceled_id)
    assert row["state"] == "fail"
    assert row["attempts"] == 0
    assert row["lease_token"] is None


def test_two_claimers_on_one_file_never_share_a_task(db_path: Path) -> None:
    total, calls, limit = 200, 20, 7

    async def scenario() -> None:
        one, two = open_db(db_path), open_db(db_path)
        try:
            ids = await add_tasks(one, total)

            async def claimer(db: Database) -> list[Claim]:
                results = await asyncio.gather(*(claim(db, limit=limit) for _ in range(calls)))
                return [c for result in results for c in result]

            got_one, got_two = await asyncio.gather(claimer(one), claimer(two))
        finally:
            await one.close()
            await two.close()

        ids_one = [c.task.id for c in got_one]
        ids_two = [c.task.id for c in got_two]
        assert len(ids_one) == len(set(ids_one))
        assert len(ids_two) == len(set(ids_two))
        assert set(ids_one) & set(ids_two) == set()
        assert set(ids_one) | set(ids_two) == set(ids)
        assert got_one, "both claimers should have won some tasks"
        assert got_two, "both claimers should have won some tasks"
        # Every task carries the token of the one claim that took it, and one attempt.
        for c in got_one + got_two:
            row = raw_row(db_path, c.task.id)
            assert row["lease_token"] == c.lease_token
            assert row["attempts"] == 1
            assert row["state"] == "queuing"

    asyncio.run(scenario())


# -- fencing -------------------------------------------------------------------------------


def test_rescue_fences_out_the_old_lease(db: Database, db_path: Path) -> None:
    async def scenario() -> None:
        [task_id] = await add_tasks(db, 1)
        [old] = await claim(db)
        assert await mark_generating(db, task_id, old.lease_token)
        # Not expired yet: rescue leaves it alone.
        early = await rescue(db, now=T0 + LEASE_MS - 1)
        assert early.requeued == []
        assert early.failed == []
        rescued = await rescue(db, now=T0 + LEASE_MS + 1)
        assert rescued.requeued == [task_id]
        assert rescued.failed == []
        row = raw_row(db_path, task_id)
        assert row["state"] == "waiting"
        assert row["lease_token"] is None
        assert row["lease_expires_at"] is None
        assert row["worker_id"] is None
        assert row["attempts"] == 1  # the lost attempt counts

        token = old.lease_token
        assert not await mark_generating(db, task_id, token)
        assert await renew(db, task_id, token) == {task_id}
        assert not await finish(db, task_id, token, result_keys='["results/old.png"]')
        assert (await get(db, task_id)).state is TaskState.WAITING

        # A new claim gets a new token; the old one still changes nothing.
        [new] = await claim(db, now=T0 + 2 * LEASE_MS)
        assert new.task.id == task_id
        assert new.task.attempts == 2
        assert new.lease_token != token
        assert not await mark_generating(db, task_id, token)
        assert not await finish(db, task_id, token, result_keys='["results/old.png"]')
        assert await renew(db, task_id, new.lease_token, now=T0 + 2 * LEASE_MS) == set()
        assert await finish(db, task_id, new.lease_token, result_keys='["results/new.png"]')
        done = await get(db, task_id)
        assert done.state is TaskState.SUCCESS
        assert done.result_keys == ("results/new.png",)

    asyncio.run(scenario())


def test_renew_keeps_a_lease_from_being_rescued(db: Database) -> None:
    async def scenario() -> None:
        [task_id] = await add_tasks(db, 1)
        [held] = await claim(db)
        assert await renew(db, task_id, held.lease_token, now=T0 + 900) == set()
        # The first lease would have expired at T0+1000; the renewed one lasts to T0+1900.
        assert (await rescue(db, now=T0 + 1_500)).requeued == []
        assert (await rescue(db, now=T0 + 1_901)).requeued == [task_id]

    asyncio.run(scenario())


def test_finish_writes_the_outcome_once(db: Database, db_path: Path) -> None:
    async def scenario() -> None:
        [task_id] = await add_tasks(db, 1)
        [held] = await claim(db)
        assert await mark_generating(db, task_id, held.lease_token)
        assert await finish(
            db, task_id, held.lease_token, now=T0 + 500, result_keys='["results/a.png"]'
        )
        first = raw_row(db_path, task_id)
        again = await finish(
            db,
            task_id,
            held.lease_token,
            now=T0 + 900,
            state=TaskState.FAIL,
            fail_code="500",
            fail_msg="late",
        )
        assert again is False
        assert raw_row(db_path, task_id) == first
        assert first["state"] == "success"
        assert first["completed_at"] == T0 + 500
        assert first["result_keys"] == '["results/a.png"]'
        assert first["fail_code"] == ""
        assert first["fail_msg"] == ""
        assert first["lease_token"] is None
        # Nor can it be renewed, marked or released any more.
        assert await renew(db, task_id, held.lease_token) == {task_id}
        assert not await mark_generating(db, task_id, held.lease_token)
        assert not await db.write(
            partial(queries.release_task, task_id=task_id, lease_token=held.lease_token, now_ms=T0)
        )
        assert raw_row(db_path, task_id) == first

    asyncio.run(scenario())


# -- cancel --------------------------------------------------------------------------------


def test_cancel_a_waiting_task(db: Database) -> None:
    async def scenario() -> None:
        [task_id] = await add_tasks(db, 1)
        assert await cancel(db, task_id, account_id="acct_someone_else") is None
        assert (await get(db, task_id)).state is TaskState.WAITING
        canceled = await cancel(db, task_id)
        assert canceled is not None
        assert canceled.state is TaskState.FAIL
        assert canceled.fail_code == "400"
        assert canceled.fail_msg == "canceled"
        assert canceled.completed_at == T0 + 50
        assert canceled.cost_time_ms == 0  # never started
        assert await claim(db, limit=5) == []
        assert await cancel(db, "task_unknown") is None

    asyncio.run(scenario())


def test_cancel_a_queuing_task_fences_out_its_worker(db: Database, db_path: Path) -> None:
    async def scenario() -> None:
        [task_id] = await add_tasks(db, 1)
        [held] = await claim(db)
        canceled = await cancel(db, task_id)
        assert canceled is not None
        assert canceled.state is TaskState.FAIL
        assert canceled.fail_msg == "canceled"
        after_cancel = raw_row(db_path, task_id)
        assert after_cancel["lease_token"] is None
        token = held.lease_token
        assert not await mark_generating(db, task_id, token)
        assert await renew(db, task_id, token) == {task_id}
        assert not await finish(db, task_id, token, result_keys='["results/x.png"]')
        assert not await db.write(
            partial(queries.release_task, task_id=task_id, lease_token=token, now_ms=T0 + 60)
        )
        assert raw_row(db_path, task_id) == after_cancel
        # And no rescue brings it back.
        assert await rescue(db, now=T0 + 10 * LEASE_MS) == queries.Rescue([], [])

    asyncio.run(scenario())


def test_cancel_does_not_touch_a_generating_task(db: Database, db_path: Path) -> None:
    async def scenario() -> None:
        [task_id] = await add_tasks(db, 1)
        [held] = await claim(db)
        assert await mark_generating(db, task_id, held.lease_token)
        before = raw_row(db_path, task_id)
        answer = await cancel(db, task_id)
        assert answer is not None
        assert answer.state is TaskState.GENERATING
        assert raw_row(db_path, task_id) == before
        assert await finish(db, task_id, held.lease_token)
        assert (await get(db, task_id)).state is TaskState.SUCCESS
        # A final task cannot be canceled either.
        done = await cancel(db, task_id)
        assert done is not None
        assert done.state is TaskState.SUCCESS

    asyncio.run(scenario())


# -- rescue and release --------------------------------------------------------------------


def test_rescue_fails_tasks_that_ran_out_of_attempts(db: Database, db_path: Path) -> None:
    async def scenario() -> None:
        [task_id, other_id] = await add_tasks(db, 2)
        now = T0
        for attempt in (1, 2):
            [held] = await claim(db, now=now)
            assert held.task.id == task_id
            assert held.task.attempts == attempt
            assert await mark_generating(db, task_id, held.lease_token, now=now)
            now += LEASE_MS + 1
            outcome = await rescue(db, now=now, max_attempts=2)
            if attempt == 1:
                assert outcome == queries.Rescue(requeued=[task_id], failed=[])
        assert outcome == queries.Rescue(requeued=[], failed=[task_id])
        row = raw_row(db_path, task_id)
        assert row["state"] == "fail"
        assert row["fail_code"] == "500"
        assert "stopped 2 times" in row["fail_msg"]
        assert row["completed_at"] == now
        assert row["lease_token"] is None
        assert row["lease_expires_at"] is None
        assert row["attempts"] == 2
        assert not await finish(db, task_id, held.lease_token)
        # The other task was never claimed and is still waiting.
        assert raw_row(db_path, other_id)["state"] == "waiting"

    asyncio.run(scenario())


def test_release_hands_the_task_back_without_counting_an_attempt(
    db: Database, db_path: Path
) -> None:
    async def scenario() -> None:
        [task_id] = await add_tasks(db, 1)
        [held] = await claim(db)
        assert await mark_generating(db, task_id, held.lease_token)
        assert raw_row(db_path, task_id)["attempts"] == 1
        released = await db.write(
            partial(queries.release_task, task_id=task_id, lease_token=held.lease_token, now_ms=T0)
        )
        assert released is True
        row = raw_row(db_path, task_id)
        assert row["state"] == "waiting"
        assert row["attempts"] == 0
        assert row["lease_token"] is None
        assert row["lease_expires_at"] is None
        assert row["worker_id"] is None
        # The released lease is dead...
        assert not await finish(db, task_id, held.lease_token)
        # ...and the next claim is attempt 1 again.
        [again] = await claim(db)
        assert again.task.id == task_id
        assert again.task.attempts == 1

    asyncio.run(scenario())


# -- group commit --------------------------------------------------------------------------


def test_many_concurrent_writes_all_commit(db: Database, db_path: Path) -> None:
    transactions: list[int] = []

    def insert_one(connection: Connection, new: queries.NewTask) -> str:
        transactions.append(id(connection.get_transaction()))
        return queries.create_task(connection, new, T0, None).task_id

    async def scenario() -> list[str]:
        news = [new_task() for _ in range(500)]
        return await asyncio.gather(*(db.write(partial(insert_one, new=new)) for new in news))

    ids = asyncio.run(scenario())
    assert len(set(ids)) == 500
    assert count_rows(db_path) == 500
    assert len(set(transactions)) < 500, "the writes should have been committed in groups"


def test_a_failing_write_fails_only_itself(db: Database, db_path: Path) -> None:
    taken = new_task_id()
    runs: list[str] = []

    def insert_one(connection: Connection, new: queries.NewTask, label: str) -> str:
        runs.append(label)
        return queries.create_task(connection, new, T0, None).task_id

    blocking, release = threading.Event(), threading.Event()

    def block(_connection: Connection) -> None:
        # Holds the writer until the next three writes are queued, so they form one group.
        blocking.set()
        assert release.wait(30)

    async def scenario() -> list[Any]:
        await db.write(partial(insert_one, new=new_task(taken), label="original"))
        blocker = asyncio.create_task(db.write(block))
        assert await asyncio.to_thread(blocking.wait, 30)
        queued = asyncio.gather(
            db.write(partial(insert_one, new=new_task("task_before"), label="before")),
            db.write(partial(insert_one, new=new_task(taken), label="duplicate")),
            db.write(partial(insert_one, new=new_task("task_after"), label="after")),
            return_exceptions=True,
        )
        await asyncio.sleep(0)  # one turn of the loop: each write puts itself in the queue
        release.set()
        results = await queued
        await blocker
        return results

    before, duplicate, after = asyncio.run(scenario())
    assert before == "task_before"
    assert isinstance(duplicate, IntegrityError)
    assert after == "task_after"
    # They were tried as one group first, then each on its own after the failure.
    assert runs[1:3] == ["before", "duplicate"]
    assert runs[3:] == ["before", "duplicate", "after"]
    assert raw_row(db_path, "task_before")["state"] == "waiting"
    assert raw_row(db_path, "task_after")["state"] == "waiting"
    assert count_rows(db_path) == 3


def test_a_failing_write_alone_raises_and_writes_nothing(db: Database, db_path: Path) -> None:
    def half_then_fail(connection: Connection) -> None:
        connection.execute(
            insert(tasks_table).values(
                id="task_half",
                account_id=ACCOUNT,
                key_id="k",
                provider="sandbox",
                model="m",
                state="waiting",
                param="{}",
                input="{}",
                created_at=T0,
                updated_at=T0,
            )
        )
        raise RuntimeError("boom")

    async def scenario() -> None:
        with pytest.raises(RuntimeError, match="boom"):
            await db.write(half_then_fail)
        # The writer survives and keeps committing.
        await add_tasks(db, 1)

    asyncio.run(scenario())
    assert count_rows(db_path) == 1
    with contextlib.closing(sqlite3.connect(db_path)) as connection:
        assert connection.execute("SELECT 1 FROM tasks WHERE id='task_half'").fetchone() is None


def test_close_finishes_queued_writes(db_path: Path) -> None:
    db = open_db(db_path)

    async def scenario() -> None:
        pending = [
            asyncio.create_task(
                db.write(partial(queries.create_task, new=new_task(), now_ms=T0, idempotency=None))
            )
            for _ in range(600)  # more than one group (MAX_GROUP is 256)
        ]
        await asyncio.sleep(0)  # let every write reach the queue
        await db.close()
        assert all(task.done() for task in pending)
        created = [task.result() for task in pending]
        assert all(made.created for made in created)
        with pytest.raises(RuntimeError, match="closed"):
            await db.write(
                partial(queries.create_task, new=new_task(), now_ms=T0, idempotency=None)
            )
        with pytest.raises(RuntimeError, match="closed"):
            await db.read(partial(queries.get_task, task_id="x"))
        await db.close()  # twice is fine

    asyncio.run(scenario())
    assert count_rows(db_path) == 600


# -- idempotency ---------------------------------------------------------------------------


async def create_with_key(
    db: Database,
    key: str,
    request_hash: str,
    *,
    now: int = T0,
    ttl_ms: int = 60_000,
    account_id: str = ACCOUNT,
) -> queries.Created:
    return await db.write(
        partial(
            queries.create_task,
            new=new_task(account_id=account_id),
            now_ms=now,
            idempotency=queries.IdempotencyClaim(key=key, request_hash=request_hash, ttl_ms=ttl_ms),
        )
    )


def test_idempotency_same_key_same_request_returns_the_first_task(
    db: Database, db_path: Path
) -> None:
    async def scenario() -> None:
        first = await create_with_key(db, "k1", "hash-a")
        assert first.created is True
        again = await create_with_key(db, "k1", "hash-a", now=T0 + 1_000)
        assert again == queries.Created(task_id=first.task_id, created=False)
        # Another account may use the same key for its own task.
        other = await create_with_key(db, "k1", "hash-a", account_id="acct_other")
        assert other.created is True
        assert other.task_id != first.task_id

    asyncio.run(scenario())
    assert count_rows(db_path) == 2


def test_idempotency_same_key_other_request_conflicts(db: Database, db_path: Path) -> None:
    async def scenario() -> str:
        first = await create_with_key(db, "k1", "hash-a")
        with pytest.raises(queries.IdempotencyConflict):
            await create_with_key(db, "k1", "hash-b", now=T0 + 1_000)
        # The conflict wrote nothing, and the key still names the first task.
        again = await create_with_key(db, "k1", "hash-a", now=T0 + 2_000)
        assert again == queries.Created(task_id=first.task_id, created=False)
        return first.task_id

    asyncio.run(scenario())
    assert count_rows(db_path) == 1


def test_idempotency_expired_key_makes_a_new_task(db: Database, db_path: Path) -> None:
    async def scenario() -> None:
        first = await create_with_key(db, "k1", "hash-a", ttl_ms=500)
        later = await create_with_key(db, "k1", "hash-a", now=T0 + 500, ttl_ms=500)
        assert later.created is True
        assert later.task_id != first.task_id
        # The key now names the new task, within its own lifetime.
        again = await create_with_key(db, "k1", "hash-a", now=T0 + 600, ttl_ms=500)
        assert again == queries.Created(task_id=later.task_id, created=False)
        # TTL 0: every request is new, even in the same millisecond; and a different
        # request hash is no conflict once the key expired.
        zero_a = await create_with_key(db, "k2", "hash-a", ttl_ms=0)
        zero_b = await create_with_key(db, "k2", "hash-b", ttl_ms=0)
        assert zero_a.created
        assert zero_b.created
        assert zero_a.task_id != zero_b.task_id

    asyncio.run(scenario())
    assert count_rows(db_path) == 4
    assert count_rows(db_path, "idempotency_keys") == 2


def test_purge_forgets_only_old_idempotency_keys(db: Database, db_path: Path) -> None:
    async def scenario() -> None:
        await create_with_key(db, "old", "h", now=T0)
        await create_with_key(db, "new", "h", now=T0 + 1_000)
        purged = await db.write(partial(queries.purge_idempotency_keys, older_than_ms=T0 + 1_000))
        assert purged == 1
        # The surviving key still answers; the task of the purged one is untouched.
        again = await create_with_key(db, "new", "h", now=T0 + 2_000)
        assert again.created is False

    asyncio.run(scenario())
    assert count_rows(db_path) == 2
    assert count_rows(db_path, "idempotency_keys") == 1


def test_a_write_left_behind_by_a_finished_event_loop_does_not_stop_the_writer(
    db: Database, db_path: Path
) -> None:
    """One ``Database`` serves several ``asyncio.run`` calls (as the CLI and these tests
    use it). A write whose caller gave up and whose loop then closed must not take the
    writer thread down with it: later writes from a new loop still commit."""

    running, release = threading.Event(), threading.Event()

    def slow_insert(connection: Connection) -> None:
        running.set()
        assert release.wait(30)
        queries.create_task(connection, new_task("task_slow"), T0, None)

    async def give_up() -> None:
        write = asyncio.ensure_future(db.write(slow_insert))
        assert await asyncio.to_thread(running.wait, 30)
        write.cancel()

    asyncio.run(give_up())  # the loop is closed while the write is still running
    release.set()  # the write commits and its result is handed to the closed loop

    async def write_again() -> str:
        made = await asyncio.wait_for(
            db.write(partial(queries.create_task, new=new_task(), now_ms=T0, idempotency=None)),
            30,  # a writer thread that died would never answer
        )
        return made.task_id

    task_id = asyncio.run(write_again())
    assert raw_row(db_path, task_id)["state"] == "waiting"
    assert raw_row(db_path, "task_slow")["state"] == "waiting"  # the abandoned write stands
