"""Integration: the store contract: what every adapter of ``store.ports`` must do.

Each test speaks only the ports' language (the methods of ``Store``: no query function, no
SQL), against a fresh database, on the adapter of ``store_helpers.ADAPTERS`` for this run's
database (``BANANASTAND_TEST_DATABASE``: SQLite or PostgreSQL; ``make test`` runs both).
The store decides by a clock the test sets: leases expire, retries fall due and
Idempotency-Keys age when the test moves it, never by waiting. Concurrent callers
are real ones (threads, each with its own event loop, over two stores on one database as
two processes); each concurrent test asserts only what must hold whatever the
interleaving. What only SQLite's runner does is in ``test_store_sqlite.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bananastand.contract import TaskState
from bananastand.records import (
    ApiKey,
    BatchJob,
    BreakerState,
    Callback,
    CallbackAttempt,
    Claim,
    DeliveryState,
    Task,
    WebhookSecret,
)
from bananastand.storable import INT64_MAX
from bananastand.store import ports
from bananastand.store.ports import (
    DAY_MS,
    Admission,
    BalanceOverflow,
    BatchGroup,
    ClaimedCallback,
    Created,
    CreateRefusal,
    DayUsage,
    Failure,
    IdempotencyClaim,
    KeyReused,
    MonthlyCapReached,
    NotEnoughCredits,
    PendingWork,
    QueueDepth,
    Rescue,
    Store,
    TooManyWaiting,
    WorkerProcess,
)
from conftest import DATABASE
from databases import DATABASES
from store_helpers import (
    ACCOUNT,
    ADAPTERS,
    T0,
    Adapter,
    FakeClock,
    add_tasks,
    in_threads,
    new_task,
    scenario,
)

OTHER = "acct_other"
LEASE_MS = 1_000
NO_LIMITS = Admission()
CANCELED = Failure("400", "canceled")
GIVE_UP = Failure("500", "the worker running this task stopped 2 times; giving up")
URL_A = "https://a.example/hook"
URL_B = "http://b.example:8080/cb"
NOTHING_PENDING = PendingWork(waiting=False, expired=False, callbacks_due=False)
TASKS_WAITING = PendingWork(waiting=True, expired=False, callbacks_due=False)
LEASES_EXPIRED = PendingWork(waiting=False, expired=True, callbacks_due=False)


def test_every_method_of_every_port_is_called_here() -> None:
    """A method added to a port is one more this suite must prove."""
    source = Path(__file__).read_text()
    methods = {
        name
        for port in Store.__mro__
        if port.__module__ == ports.__name__
        for name, value in vars(port).items()
        if callable(value) and not name.startswith("_")
    }
    assert len(methods) > 30
    assert sorted(name for name in methods if f".{name}(" not in source) == []


# -- fixtures: one store per adapter ---------------------------------------------------------


def test_every_database_of_a_run_has_an_adapter() -> None:
    assert sorted(ADAPTERS) == sorted(DATABASES)


@pytest.fixture(scope="session", params=[DATABASE])
def adapter(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Adapter:
    name: str = request.param
    return ADAPTERS[name](tmp_path_factory.mktemp(name))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def connect(adapter: Adapter, tmp_path: Path, clock: FakeClock) -> Iterator[Callable[[], Store]]:
    """Opens a store on this test's database; each one more stands for one more process."""
    url = adapter.new_database(tmp_path)
    opened: list[Store] = []

    def open_one() -> Store:
        opened.append(adapter.open(url, clock))
        return opened[-1]

    yield open_one
    for store in opened:
        asyncio.run(store.close())


@pytest.fixture
def store(connect: Callable[[], Store]) -> Store:
    return connect()


# -- helpers ---------------------------------------------------------------------------------


def key(name: str, request_hash: str = "hash-a", ttl_ms: int = 60_000) -> IdempotencyClaim:
    return IdempotencyClaim(key=name, request_hash=request_hash, ttl_ms=ttl_ms)


async def claim(
    store: Store, limit: int = 1, token: str = "lease-1", worker: str = "worker-1"
) -> list[Claim]:
    return await store.claim_tasks(
        worker_id=worker, lease_token=token, limit=limit, lease_ms=LEASE_MS
    )


async def get(store: Store, task_id: str, account_id: str = ACCOUNT) -> Task:
    task = await store.get_task(task_id, account_id)
    assert task is not None, task_id
    return task


async def listed(
    store: Store,
    account_id: str = ACCOUNT,
    *,
    state: TaskState | None = None,
    before_seq: int | None = None,
) -> list[str]:
    tasks = await store.list_tasks(account_id, state=state, limit=1_000, before_seq=before_seq)
    return [task.id for task in tasks]


async def callback_of(store: Store, task_id: str, account_id: str = ACCOUNT) -> Callback:
    task, found = await store.callback_of_task(task_id, account_id)
    assert task is not None
    assert found is not None, f"{task_id} has no callback"
    return found


class Secrets:
    """``new_secret`` for the outbox: counts the secrets it was asked to make."""

    def __init__(self) -> None:
        self.made = 0

    def __call__(self) -> str:
        self.made += 1
        return f"whsec-{self.made}"


async def claim_callbacks(
    store: Store,
    token: str,
    *,
    limit: int = 10,
    per_host: int = 10,
    in_flight: dict[str, int] | None = None,
    secrets: Secrets | None = None,
) -> list[ClaimedCallback]:
    return await store.claim_due(
        lease_token=token,
        limit=limit,
        per_host=per_host,
        in_flight=in_flight or {},
        lease_ms=LEASE_MS,
        new_secret=secrets or Secrets(),
    )


def attempt(at: int, status: int | None = 503, *, success: bool = False) -> CallbackAttempt:
    return CallbackAttempt(
        attempted_at=at,
        duration_ms=12,
        http_status=status,
        error="" if success else f"HTTP {status}",
        success=success,
    )


# -- creating, reading and listing tasks -----------------------------------------------------


@scenario
async def test_a_created_task_reads_back_as_written(store: Store, clock: FakeClock) -> None:
    await store.ping()
    assert store.now_ms() == T0
    await store.create_account(ACCOUNT, "a", 10)
    new = new_task(credits=3, callback_url=URL_A)
    assert await store.create_task(new, None, NO_LIMITS) == Created(new.id, created=True)
    task = await get(store, new.id)
    assert task.id == new.id
    assert task.seq > 0
    assert (task.account_id, task.key_id, task.provider, task.model) == (
        new.account_id,
        new.key_id,
        new.provider,
        new.model,
    )
    assert (task.param, task.input, task.callback_url) == (new.param, new.input, URL_A)
    assert task.state is TaskState.WAITING
    assert task.credits_consumed == 3
    assert task.created_at == task.updated_at == T0
    assert task.started_at is None
    assert task.completed_at is None
    assert task.cost_time_ms is None
    assert task.attempts == 0
    assert task.result_keys == ()
    assert (task.fail_code, task.fail_msg, task.usage) == ("", "", "{}")
    # Charged in the same step.
    assert await store.balance(ACCOUNT) == 7
    # Another account's task is as unknown as a missing one.
    assert await store.get_task(new.id, OTHER) is None
    assert await store.get_task("task_unknown", ACCOUNT) is None


@scenario
async def test_lookups_asked_at_once_each_get_exactly_their_own_answer(store: Store) -> None:
    """recordInfo's lookups, many at once (a runner may answer them together): each caller
    gets its task, and None for a missing one or another account's, however they mix."""
    mine = await add_tasks(store, 4)
    theirs = await add_tasks(store, 3, OTHER)
    asks = (
        [(task_id, ACCOUNT) for task_id in mine] * 3  # each asked for three times
        + [(task_id, OTHER) for task_id in theirs]
        + [(task_id, OTHER) for task_id in mine[:2]]  # another account's, by its id
        + [(task_id, ACCOUNT) for task_id in theirs]
        + [("task_unknown", ACCOUNT), ("task_unknown", OTHER), ("task_unknown", ACCOUNT)]
    )
    random.Random(7).shuffle(asks)
    answers = await asyncio.gather(*(store.get_task(t, account) for t, account in asks))
    owner = {**dict.fromkeys(mine, ACCOUNT), **dict.fromkeys(theirs, OTHER)}
    expected = {task_id: await get(store, task_id, account) for task_id, account in owner.items()}
    for (task_id, account), answer in zip(asks, answers, strict=True):
        if owner.get(task_id) == account:
            assert answer == expected[task_id], (task_id, account)
        else:
            assert answer is None, (task_id, account)


@scenario
async def test_list_tasks_newest_first_by_state_and_in_stable_pages(
    store: Store, clock: FakeClock
) -> None:
    ids = await add_tasks(store, 5)
    [other] = await add_tasks(store, 1, OTHER)
    newest = ids[::-1]
    everything = await store.list_tasks(ACCOUNT, state=None, limit=10, before_seq=None)
    assert [task.id for task in everything] == newest
    seqs = [task.seq for task in everything]
    assert seqs == sorted(seqs, reverse=True)
    assert len(set(seqs)) == 5

    page = await store.list_tasks(ACCOUNT, state=None, limit=2, before_seq=None)
    assert [task.id for task in page] == newest[:2]
    # A task made meanwhile does not shift the next pages.
    [extra] = await add_tasks(store, 1)
    page = await store.list_tasks(ACCOUNT, state=None, limit=2, before_seq=page[-1].seq)
    assert [task.id for task in page] == newest[2:4]
    page = await store.list_tasks(ACCOUNT, state=None, limit=2, before_seq=page[-1].seq)
    assert [task.id for task in page] == newest[4:]
    assert await listed(store, before_seq=page[-1].seq) == []

    [held] = await claim(store)
    assert held.task.id == ids[0]
    assert await store.cancel_task(ids[1], ACCOUNT, CANCELED) is not None
    waiting = await store.list_tasks(ACCOUNT, state=TaskState.WAITING, limit=2, before_seq=None)
    assert [task.id for task in waiting] == [extra, ids[4]]
    assert all(task.state is TaskState.WAITING for task in waiting)
    rest = await listed(store, state=TaskState.WAITING, before_seq=waiting[-1].seq)
    assert rest == [ids[3], ids[2]]
    assert await listed(store, state=TaskState.QUEUING) == [ids[0]]
    assert await listed(store, state=TaskState.FAIL) == [ids[1]]
    assert await listed(store, state=TaskState.GENERATING) == []
    assert await listed(store, state=TaskState.SUCCESS) == []
    assert await listed(store, OTHER) == [other]
    assert await listed(store, "acct_unknown") == []


@scenario
async def test_list_tasks_of_one_model_pages_past_the_other_models(store: Store) -> None:
    pro: list[str] = []
    flash: list[str] = []
    for _ in range(3):  # interleaved: each page of one model skips the other's tasks
        pro += await add_tasks(store, 1)
        flash += await add_tasks(store, 1, model="nano-banana-2")
    pro += await add_tasks(store, 1)
    [foreign] = await add_tasks(store, 1, OTHER, model="nano-banana-2")

    page = await store.list_tasks(
        ACCOUNT, state=None, limit=2, before_seq=None, model="nano-banana-2"
    )
    assert [task.id for task in page] == flash[::-1][:2]
    assert all(task.model == "nano-banana-2" for task in page)
    rest = await store.list_tasks(
        ACCOUNT, state=None, limit=2, before_seq=page[-1].seq, model="nano-banana-2"
    )
    assert [task.id for task in rest] == flash[:1]
    pro_tasks = await store.list_tasks(
        ACCOUNT, state=None, limit=10, before_seq=None, model="nano-banana-pro"
    )
    assert [task.id for task in pro_tasks] == pro[::-1]
    assert await store.cancel_task(flash[1], ACCOUNT, CANCELED) is not None
    failed = await store.list_tasks(
        ACCOUNT, state=TaskState.FAIL, limit=10, before_seq=None, model="nano-banana-2"
    )
    assert [task.id for task in failed] == [flash[1]]
    assert (
        await store.list_tasks(
            ACCOUNT, state=TaskState.FAIL, limit=10, before_seq=None, model="nano-banana-pro"
        )
        == []
    )
    assert (
        await store.list_tasks(
            ACCOUNT, state=None, limit=10, before_seq=None, model="no-such-model"
        )
        == []
    )
    others = await store.list_tasks(
        OTHER, state=None, limit=10, before_seq=None, model="nano-banana-2"
    )
    assert [task.id for task in others] == [foreign]


@scenario
async def test_task_versions_are_state_and_update_time(store: Store, clock: FakeClock) -> None:
    ids = await add_tasks(store, 2)
    clock.advance(5)
    assert [c.task.id for c in await claim(store)] == [ids[0]]
    versions = {
        ids[0]: (TaskState.QUEUING.value, T0 + 5),
        ids[1]: (TaskState.WAITING.value, T0),
    }
    assert await store.task_versions([ids[0], ids[1], "task_unknown"]) == versions
    assert await store.task_versions([]) == {}
    # A long list (streams of many tasks): unknown ids are left out, whatever the count.
    many = [f"task_missing_{n}" for n in range(1_200)]
    assert await store.task_versions([*many[:700], ids[1], *many[700:], ids[0]]) == versions


# -- claiming --------------------------------------------------------------------------------


@scenario
async def test_claim_takes_the_oldest_first_and_respects_the_limit(
    store: Store, clock: FakeClock
) -> None:
    ids = await add_tasks(store, 5)
    clock.advance(10)
    first = await claim(store, limit=2, token="lease-1")
    assert [c.task.id for c in first] == ids[:2]
    for c in first:
        assert c.task.state is TaskState.QUEUING
        assert c.task.attempts == 1
        assert c.task.started_at == c.task.updated_at == T0 + 10
        assert c.task.completed_at is None
    rest = await claim(store, limit=10, token="lease-2")
    assert [c.task.id for c in rest] == ids[2:]
    assert await claim(store, limit=10, token="lease-3") == []
    # Every task of one claim carries that claim's token, and is stored as handed out.
    assert {c.lease_token for c in first} == {"lease-1"}
    assert {c.lease_token for c in rest} == {"lease-2"}
    for c in first + rest:
        assert await get(store, c.task.id) == c.task


@scenario
async def test_claim_skips_tasks_that_are_not_waiting(store: Store, clock: FakeClock) -> None:
    ids = await add_tasks(store, 4)
    assert await store.cancel_task(ids[0], ACCOUNT, CANCELED) is not None  # never claimed
    assert [c.task.id for c in await claim(store, limit=1, token="lease-1")] == [ids[1]]
    assert await store.mark_generating(ids[1], "lease-1")
    assert [c.task.id for c in await claim(store, limit=1, token="lease-2")] == [ids[2]]
    assert await store.finish_task(ids[2], "lease-2", state=TaskState.SUCCESS)
    assert [c.task.id for c in await claim(store, limit=5, token="lease-3")] == [ids[3]]
    assert await claim(store, limit=5, token="lease-4") == []
    canceled = await get(store, ids[0])
    assert canceled.state is TaskState.FAIL
    assert canceled.attempts == 0
    assert canceled.started_at is None


# -- fencing: a worker that lost its lease changes nothing --------------------------------


@scenario
async def test_queue_depth_counts_unfinished_tasks_and_the_oldest_waiting(
    store: Store, clock: FakeClock
) -> None:
    empty = {"waiting": 0, "queuing": 0, "generating": 0}
    assert await store.queue_depth() == QueueDepth(by_state=empty, oldest_waiting_ms=None)
    [oldest] = await add_tasks(store, 1)
    clock.now = T0 + 500
    [succeeds, queues, waits] = await add_tasks(store, 3)
    # The oldest is claimed and generates: the oldest waiting one is then younger.
    [taken] = await claim(store, token="lease-a")
    assert taken.task.id == oldest
    assert await store.mark_generating(oldest, "lease-a")
    claimed = await claim(store, limit=2, token="lease-b")
    assert [c.task.id for c in claimed] == [succeeds, queues]
    assert await store.finish_task(succeeds, "lease-b", state=TaskState.SUCCESS)
    assert await store.queue_depth() == QueueDepth(
        by_state={"waiting": 1, "queuing": 1, "generating": 1}, oldest_waiting_ms=T0 + 500
    )
    assert (await store.cancel_task(waits, ACCOUNT, CANCELED)) is not None
    assert (await store.queue_depth()).oldest_waiting_ms is None


@scenario
async def test_rescue_fences_out_the_old_lease(store: Store, clock: FakeClock) -> None:
    assert await store.pending_work() == PendingWork(
        waiting=False, expired=False, callbacks_due=False
    )
    [task_id] = await add_tasks(store, 1)
    assert await store.pending_work() == PendingWork(
        waiting=True, expired=False, callbacks_due=False
    )
    await claim(store, token="lease-old")
    assert await store.mark_generating(task_id, "lease-old")
    # The lease ends at T0 + LEASE_MS: until then rescue leaves it alone.
    clock.now = T0 + LEASE_MS
    assert await store.pending_work() == PendingWork(
        waiting=False, expired=False, callbacks_due=False
    )
    assert await store.rescue_expired(3, GIVE_UP) == Rescue(requeued=[], failed=[])
    clock.now = T0 + LEASE_MS + 1
    assert await store.pending_work() == PendingWork(
        waiting=False, expired=True, callbacks_due=False
    )
    assert await store.rescue_expired(3, GIVE_UP) == Rescue(requeued=[task_id], failed=[])
    assert await store.pending_work() == PendingWork(
        waiting=True, expired=False, callbacks_due=False
    )
    rescued = await get(store, task_id)
    assert rescued.state is TaskState.WAITING
    assert rescued.attempts == 1  # the lost attempt counts
    assert rescued.completed_at is None

    assert not await store.mark_generating(task_id, "lease-old")
    assert await store.renew_leases([(task_id, "lease-old")], LEASE_MS) == {task_id}
    assert not await store.finish_task(
        task_id, "lease-old", state=TaskState.SUCCESS, result_keys='["results/old.png"]'
    )
    assert not await store.release_task(task_id, "lease-old")
    assert await get(store, task_id) == rescued

    # A new claim gets a new token; the old one still changes nothing.
    clock.now = T0 + 2 * LEASE_MS
    [new] = await claim(store, token="lease-new")
    assert new.task.id == task_id
    assert new.task.attempts == 2
    assert new.task.started_at == T0  # processing time counts from the first claim
    assert not await store.mark_generating(task_id, "lease-old")
    assert not await store.finish_task(
        task_id, "lease-old", state=TaskState.SUCCESS, result_keys='["results/old.png"]'
    )
    assert await store.renew_leases([(task_id, "lease-new")], LEASE_MS) == set()
    assert await store.finish_task(
        task_id, "lease-new", state=TaskState.SUCCESS, result_keys='["results/new.png"]'
    )
    done = await get(store, task_id)
    assert done.state is TaskState.SUCCESS
    assert done.result_keys == ("results/new.png",)


@scenario
async def test_the_upstream_handle_outlives_a_rescue(store: Store, clock: FakeClock) -> None:
    """What an upstream knows a task by is written before the task shows generating, and
    a rescue keeps it: the next claim follows that upstream task, never a second one."""
    [task_id] = await add_tasks(store, 1)
    await claim(store, token="lease-1")
    assert await store.remember_upstream(
        task_id, "lease-1", upstream="relay", handle="creating:key-1"
    )
    held = await get(store, task_id)
    assert (held.state, held.upstream, held.upstream_handle) == (
        TaskState.QUEUING,
        "relay",
        "creating:key-1",
    )
    assert await store.mark_generating(task_id, "lease-1", upstream="relay", handle="up-7")
    clock.now = T0 + LEASE_MS + 1
    assert await store.rescue_expired(3, GIVE_UP) == Rescue(requeued=[task_id], failed=[])
    assert not await store.remember_upstream(task_id, "lease-1", upstream="other", handle="x")
    [again] = await claim(store, token="lease-2")
    assert (again.task.upstream, again.task.upstream_handle) == ("relay", "up-7")
    # Generating without naming an upstream keeps the one written; naming one replaces it.
    assert await store.mark_generating(task_id, "lease-2")
    assert (await get(store, task_id)).upstream_handle == "up-7"
    assert await store.mark_generating(task_id, "lease-2", upstream="google")
    moved = await get(store, task_id)
    assert (moved.upstream, moved.upstream_handle) == ("google", None)


@scenario
async def test_a_task_is_found_by_its_upstream_handle(store: Store) -> None:
    """Whom an upstream's callback is about: the handle names a task only on its upstream."""
    first, second = await add_tasks(store, 2)
    await claim(store, limit=2)
    assert await store.mark_generating(first, "lease-1", upstream="kie", handle="up-1")
    assert await store.mark_generating(second, "lease-1", upstream="other", handle="up-1")
    assert await store.task_by_upstream_handle("kie", "up-1") == first
    assert await store.task_by_upstream_handle("other", "up-1") == second
    assert await store.task_by_upstream_handle("kie", "up-2") is None


@scenario
async def test_renew_keeps_a_lease_from_being_rescued(store: Store, clock: FakeClock) -> None:
    [task_id] = await add_tasks(store, 1)
    await claim(store, token="lease-1")
    clock.now = T0 + 900
    assert await store.renew_leases([(task_id, "lease-1")], LEASE_MS) == set()
    # The first lease would have ended at T0+1000; the renewed one lasts to T0+1900.
    clock.now = T0 + 1_500
    assert await store.rescue_expired(3, GIVE_UP) == Rescue([], [])
    clock.now = T0 + 1_900
    assert await store.rescue_expired(3, GIVE_UP) == Rescue([], [])
    clock.now = T0 + 1_901
    assert await store.rescue_expired(3, GIVE_UP) == Rescue([task_id], [])


@scenario
async def test_renew_covers_more_leases_than_one_statement(store: Store, clock: FakeClock) -> None:
    count = 1_005  # the SQL stores renew 500 a statement: three statements
    ids = await add_tasks(store, count)
    await claim(store, token="lease-1", limit=count)
    clock.now = T0 + 500
    lost = ids[-2], ids[3]  # one in the last statement, one in the first
    held = [(task_id, "lease-other" if task_id in lost else "lease-1") for task_id in ids]
    assert await store.renew_leases(held, LEASE_MS) == set(lost)
    clock.now = T0 + LEASE_MS + 1
    assert sorted((await store.rescue_expired(3, GIVE_UP)).requeued) == sorted(lost)


@scenario
async def test_renew_answers_the_leases_that_are_gone(store: Store, clock: FakeClock) -> None:
    a, b = await add_tasks(store, 2)
    await claim(store, token="lease-a")
    await claim(store, token="lease-b")
    clock.now = T0 + 500
    held = [(a, "lease-a"), (b, "lease-a"), ("task_unknown", "lease-a")]
    assert await store.renew_leases(held, LEASE_MS) == {b, "task_unknown"}
    assert await store.renew_leases([], LEASE_MS) == set()
    # Only a's lease was extended (to T0+1500); b's still ends at T0+1000.
    clock.now = T0 + LEASE_MS + 1
    assert await store.rescue_expired(3, GIVE_UP) == Rescue([b], [])


@scenario
async def test_finish_writes_the_outcome_once(store: Store, clock: FakeClock) -> None:
    await store.create_account(ACCOUNT, "a", 10)
    [task_id] = await add_tasks(store, 1, credits=3, callback_url=URL_A)
    await claim(store, token="lease-1")
    clock.now = T0 + 10
    assert await store.mark_generating(task_id, "lease-1")
    assert (await get(store, task_id)).state is TaskState.GENERATING
    clock.now = T0 + 500
    assert await store.finish_task(
        task_id,
        "lease-1",
        state=TaskState.SUCCESS,
        result_keys='["results/a.png"]',
        usage='{"images":1}',
    )
    first = await get(store, task_id)
    assert first.state is TaskState.SUCCESS
    assert first.completed_at == first.updated_at == T0 + 500
    assert first.cost_time_ms == 500
    assert first.result_keys == ("results/a.png",)
    assert (first.fail_code, first.fail_msg) == ("", "")
    assert first.usage == '{"images":1}'
    assert first.credits_consumed == 3

    clock.now = T0 + 900
    late = await store.finish_task(
        task_id, "lease-1", state=TaskState.FAIL, failure=Failure("500", "late")
    )
    assert late is False
    # Nor can it be renewed, marked or released any more.
    assert await store.renew_leases([(task_id, "lease-1")], LEASE_MS) == {task_id}
    assert not await store.mark_generating(task_id, "lease-1")
    assert not await store.release_task(task_id, "lease-1")
    assert await get(store, task_id) == first
    assert await store.balance(ACCOUNT) == 7  # a success keeps its charge
    found = await callback_of(store, task_id)
    assert (found.state, found.next_attempt_at) == (DeliveryState.PENDING, T0 + 500)
    assert await store.audit() == []


@scenario
async def test_release_hands_the_task_back_without_counting_an_attempt(
    store: Store, clock: FakeClock
) -> None:
    [task_id] = await add_tasks(store, 1)
    await claim(store, token="lease-1")
    assert await store.mark_generating(task_id, "lease-1")
    assert (await get(store, task_id)).attempts == 1
    clock.advance(5)
    assert await store.release_task(task_id, "lease-1")
    released = await get(store, task_id)
    assert released.state is TaskState.WAITING
    assert released.attempts == 0
    assert released.updated_at == T0 + 5
    assert released.completed_at is None
    # The released lease is dead...
    assert not await store.finish_task(task_id, "lease-1", state=TaskState.SUCCESS)
    assert not await store.release_task(task_id, "lease-1")
    assert await store.renew_leases([(task_id, "lease-1")], LEASE_MS) == {task_id}
    # ...and the next claim is attempt 1 again.
    [again] = await claim(store, token="lease-2")
    assert again.task.id == task_id
    assert again.task.attempts == 1
    # Nothing expired, so rescue has nothing to do.
    assert await store.rescue_expired(1, GIVE_UP) == Rescue([], [])


# -- cancel ----------------------------------------------------------------------------------


@scenario
async def test_cancel_a_waiting_task(store: Store, clock: FakeClock) -> None:
    await store.create_account(ACCOUNT, "a", 10)
    [task_id] = await add_tasks(store, 1, credits=4, callback_url=URL_A)
    assert await store.balance(ACCOUNT) == 6
    clock.advance(50)
    assert await store.cancel_task(task_id, OTHER, CANCELED) is None
    assert (await get(store, task_id)).state is TaskState.WAITING
    canceled = await store.cancel_task(task_id, ACCOUNT, CANCELED)
    assert canceled is not None
    assert canceled.state is TaskState.FAIL
    assert (canceled.fail_code, canceled.fail_msg) == ("400", "canceled")
    assert canceled.completed_at == canceled.updated_at == T0 + 50
    assert canceled.cost_time_ms == 0  # never started
    assert canceled.credits_consumed == 0
    assert await get(store, task_id) == canceled
    # Refunded in full, and its callback is in the outbox, due at once.
    assert await store.balance(ACCOUNT) == 10
    found = await callback_of(store, task_id)
    assert found.id
    assert (found.task_id, found.url, found.state) == (task_id, URL_A, DeliveryState.PENDING)
    assert (found.next_attempt_at, found.delivered_at, found.attempts) == (T0 + 50, None, ())
    assert await claim(store, limit=5) == []
    assert await store.cancel_task("task_unknown", ACCOUNT, CANCELED) is None
    # Canceling again changes nothing and refunds nothing.
    clock.advance(50)
    assert await store.cancel_task(task_id, ACCOUNT, CANCELED) == canceled
    assert await store.balance(ACCOUNT) == 10
    assert (await callback_of(store, task_id)).id == found.id
    assert await store.audit() == []


@scenario
async def test_cancel_a_queuing_task_fences_out_its_worker(store: Store, clock: FakeClock) -> None:
    [task_id] = await add_tasks(store, 1)
    await claim(store, token="lease-1")
    canceled = await store.cancel_task(task_id, ACCOUNT, CANCELED)
    assert canceled is not None
    assert canceled.state is TaskState.FAIL
    assert canceled.fail_msg == "canceled"
    assert not await store.mark_generating(task_id, "lease-1")
    assert await store.renew_leases([(task_id, "lease-1")], LEASE_MS) == {task_id}
    assert not await store.finish_task(
        task_id, "lease-1", state=TaskState.SUCCESS, result_keys='["results/x.png"]'
    )
    assert not await store.release_task(task_id, "lease-1")
    assert await get(store, task_id) == canceled
    # And no rescue brings it back.
    clock.advance(10 * LEASE_MS)
    assert await store.rescue_expired(3, GIVE_UP) == Rescue([], [])
    assert await get(store, task_id) == canceled


@scenario
async def test_cancel_does_not_touch_a_generating_task(store: Store, clock: FakeClock) -> None:
    [task_id] = await add_tasks(store, 1, callback_url=URL_A)
    await claim(store, token="lease-1")
    assert await store.mark_generating(task_id, "lease-1")
    before = await get(store, task_id)
    clock.advance(10)
    assert await store.cancel_task(task_id, ACCOUNT, CANCELED) == before
    assert await get(store, task_id) == before
    assert await store.callback_of_task(task_id, ACCOUNT) == (before, None)
    assert await store.finish_task(task_id, "lease-1", state=TaskState.SUCCESS)
    done = await get(store, task_id)
    assert done.state is TaskState.SUCCESS
    # A final task cannot be canceled either.
    assert await store.cancel_task(task_id, ACCOUNT, CANCELED) == done


# -- rescue, refunds ---------------------------------------------------------------------


@scenario
async def test_rescue_fails_tasks_that_ran_out_of_attempts_and_refunds_them_once(
    store: Store, clock: FakeClock
) -> None:
    await store.create_account(ACCOUNT, "a", 100)
    task_id, other_id = await add_tasks(store, 2, credits=18, callback_url=URL_A)
    assert await store.balance(ACCOUNT) == 64
    outcomes = []
    for attempt_number in (1, 2):
        [held] = await claim(store, token=f"lease-{attempt_number}")
        assert held.task.id == task_id
        assert held.task.attempts == attempt_number
        assert await store.mark_generating(task_id, held.lease_token)
        clock.advance(LEASE_MS + 1)
        outcomes.append(await store.rescue_expired(2, GIVE_UP))
    assert outcomes == [
        Rescue(requeued=[task_id], failed=[]),
        Rescue(requeued=[], failed=[task_id]),
    ]
    failed = await get(store, task_id)
    assert failed.state is TaskState.FAIL
    assert (failed.fail_code, failed.fail_msg) == (GIVE_UP.code, GIVE_UP.message)
    assert failed.completed_at == clock.now
    assert failed.attempts == 2
    assert failed.credits_consumed == 0
    assert not await store.finish_task(task_id, "lease-2", state=TaskState.SUCCESS)
    assert await store.balance(ACCOUNT) == 82  # the failed task's 18 came back
    # Its callback was enqueued with the outcome; the other task never was claimed.
    assert (await callback_of(store, task_id)).next_attempt_at == clock.now
    other = await get(store, other_id)
    assert other.state is TaskState.WAITING
    assert other.credits_consumed == 18
    # A later rescue finds nothing, and refunds nothing again.
    clock.advance(10 * LEASE_MS)
    assert await store.rescue_expired(2, GIVE_UP) == Rescue([], [])
    assert await store.balance(ACCOUNT) == 82
    reasons = [entry.reason for entry in await store.entries(ACCOUNT, 10)]
    assert sorted(reasons) == ["charge", "charge", "grant", "refund"]
    assert await store.audit() == []


@scenario
async def test_a_failed_task_is_refunded_once(store: Store, clock: FakeClock) -> None:
    await store.create_account(ACCOUNT, "a", 100)
    [task_id] = await add_tasks(store, 1, credits=18)
    assert await store.balance(ACCOUNT) == 82
    await claim(store, token="lease-1")
    clock.advance(10)
    boom = Failure("500", "boom")
    assert await store.finish_task(task_id, "lease-1", state=TaskState.FAIL, failure=boom)
    failed = await get(store, task_id)
    assert failed.state is TaskState.FAIL
    assert (failed.fail_code, failed.fail_msg) == ("500", "boom")
    assert failed.credits_consumed == 0
    assert failed.result_keys == ()
    # A late second outcome refunds nothing.
    assert not await store.finish_task(task_id, "lease-1", state=TaskState.FAIL, failure=boom)
    assert await store.balance(ACCOUNT) == 100
    rows = [(e.amount, e.reason, e.task_id) for e in await store.entries(ACCOUNT, 10)]
    assert rows == [(18, "refund", task_id), (-18, "charge", task_id), (100, "grant", None)]
    assert await store.audit() == []


@scenario
async def test_a_success_keeps_the_charge(store: Store, clock: FakeClock) -> None:
    await store.create_account(ACCOUNT, "a", 100)
    [task_id] = await add_tasks(store, 1, credits=18)
    await claim(store, token="lease-1")
    assert await store.finish_task(task_id, "lease-1", state=TaskState.SUCCESS)
    assert await store.balance(ACCOUNT) == 82
    assert (await get(store, task_id)).credits_consumed == 18
    assert await store.audit() == []


@scenario
async def test_the_ledger_pages_newest_first_and_usage_counts_utc_days(
    store: Store, clock: FakeClock
) -> None:
    day = T0 - T0 % DAY_MS
    await store.create_account(ACCOUNT, "a", 100)
    await store.create_account(OTHER, "b", 100)
    [first] = await add_tasks(store, 1, credits=18)
    clock.now = day + DAY_MS - 1  # the day's last millisecond
    [canceled] = await add_tasks(store, 1, credits=18)
    clock.advance(1)  # the next day: the refund counts there, not with its charge
    assert await store.cancel_task(canceled, ACCOUNT, CANCELED) is not None
    [costly] = await add_tasks(store, 1, credits=24)
    await add_tasks(store, 1, OTHER, credits=5)  # another account's
    assert await store.usage_by_day(ACCOUNT, day) == [
        DayUsage(day_ms=day, tasks=2, credits=36),
        DayUsage(day_ms=day + DAY_MS, tasks=1, credits=24 - 18),
    ]
    assert await store.usage_by_day(ACCOUNT, day + DAY_MS) == [DayUsage(day + DAY_MS, 1, 6)]
    assert await store.usage_by_day("acct_unknown", day) == []

    every = await store.entries(ACCOUNT, 10)
    assert [(entry.reason, entry.task_id) for entry in every] == [
        ("charge", costly),
        ("refund", canceled),
        ("charge", canceled),
        ("charge", first),
        ("grant", None),
    ]
    page = await store.entries(ACCOUNT, 2)
    assert page == every[:2]
    assert await store.entries(ACCOUNT, 10, before_seq=page[-1].seq) == every[2:]
    assert await store.entries(ACCOUNT, 10, before_seq=every[-1].seq) == []


# -- admission: refusals are values, and write nothing ------------------------------------


@scenario
async def test_not_enough_credits_writes_nothing(store: Store, clock: FakeClock) -> None:
    await store.create_account(ACCOUNT, "a", 3)
    costly = new_task(credits=5)
    refused = await store.create_task(costly, key("k"), NO_LIMITS)
    assert refused == NotEnoughCredits(balance=3, cost=5)
    assert await store.get_task(costly.id, ACCOUNT) is None
    assert await store.balance(ACCOUNT) == 3
    assert len(await store.entries(ACCOUNT, 10)) == 1  # the starting grant alone
    # Nor was the Idempotency-Key taken: the key is free for another request.
    cheap = new_task(credits=3)
    assert await store.create_task(cheap, key("k", "hash-b"), NO_LIMITS) == Created(cheap.id, True)
    assert await store.balance(ACCOUNT) == 0
    # A free task needs no credits.
    free = new_task()
    assert await store.create_task(free, None, NO_LIMITS) == Created(free.id, True)
    # An account that does not exist has no credits.
    nobody = new_task("acct_unknown", credits=1)
    assert await store.create_task(nobody, None, NO_LIMITS) == NotEnoughCredits(0, 1)
    assert await store.audit() == []


@scenario
async def test_too_many_waiting_counts_only_the_accounts_waiting_tasks(
    store: Store, clock: FakeClock
) -> None:
    await store.create_account(ACCOUNT, "a", 10)
    limits = Admission(max_waiting=2)
    for _ in range(2):
        new = new_task(credits=1)
        assert await store.create_task(new, None, limits) == Created(new.id, True)
    third = new_task(credits=1)
    assert await store.create_task(third, None, limits) == TooManyWaiting(waiting=2, cap=2)
    assert await store.get_task(third.id, ACCOUNT) is None
    assert await store.balance(ACCOUNT) == 8  # the refusal charged nothing
    # Another account's queue is its own.
    other = new_task(OTHER)
    assert await store.create_task(other, None, limits) == Created(other.id, True)
    # A claimed task no longer waits.
    await claim(store)
    assert await store.create_task(third, None, limits) == Created(third.id, True)
    zero = new_task()
    assert await store.create_task(zero, None, Admission(max_waiting=0)) == TooManyWaiting(0, 0)


@scenario
async def test_the_monthly_cap_counts_this_months_charges_less_refunds(
    store: Store, clock: FakeClock
) -> None:
    await store.create_account(ACCOUNT, "a", 100)
    month = Admission(monthly_cap=5, month_start_ms=T0)
    a, b, c, d = (new_task(credits=n) for n in (2, 2, 2, 1))
    assert await store.create_task(a, None, month) == Created(a.id, True)
    assert await store.create_task(b, None, month) == Created(b.id, True)
    assert await store.create_task(c, None, month) == MonthlyCapReached(spent=4, cap=5, cost=2)
    assert await store.get_task(c.id, ACCOUNT) is None
    assert await store.create_task(d, None, month) == Created(d.id, True)  # exactly the cap
    # A refund gives the spending back.
    assert await store.cancel_task(a.id, ACCOUNT, CANCELED) is not None
    assert await store.create_task(c, None, month) == Created(c.id, True)
    # Grants are not spending; a new month starts from nothing.
    assert await store.grant(ACCOUNT, 50, "top-up") == 145
    clock.advance(1_000)
    next_month = Admission(monthly_cap=5, month_start_ms=clock.now)
    e, f = new_task(credits=5), new_task(credits=1)
    assert await store.create_task(e, None, next_month) == Created(e.id, True)
    assert await store.create_task(f, None, next_month) == MonthlyCapReached(5, 5, 1)
    assert await store.balance(ACCOUNT) == 140
    assert await store.audit() == []


# -- Idempotency-Keys ------------------------------------------------------------------------


@scenario
async def test_idempotency_same_key_same_request_returns_the_first_task(
    store: Store, clock: FakeClock
) -> None:
    await store.create_account(ACCOUNT, "a", 10)
    await store.create_account(OTHER, "b", 0)
    first = new_task(credits=2)
    assert await store.create_task(first, key("k1"), NO_LIMITS) == Created(first.id, True)
    clock.advance(1_000)
    again = new_task(credits=2)
    assert await store.create_task(again, key("k1"), NO_LIMITS) == Created(first.id, False)
    assert await store.get_task(again.id, ACCOUNT) is None
    assert await store.balance(ACCOUNT) == 8  # a replay is never charged again
    # The replay is answered even where a new request would now be refused.
    assert await store.grant(ACCOUNT, -8, "spent elsewhere") == 0
    replay = await store.create_task(new_task(credits=2), key("k1"), Admission(max_waiting=1))
    assert replay == Created(first.id, False)
    # Another account may use the same key for its own task.
    theirs = new_task(OTHER)
    assert await store.create_task(theirs, key("k1"), NO_LIMITS) == Created(theirs.id, True)
    assert await listed(store) == [first.id]
    assert await listed(store, OTHER) == [theirs.id]


@scenario
async def test_idempotency_same_key_other_request_is_refused(
    store: Store, clock: FakeClock
) -> None:
    await store.create_account(ACCOUNT, "a", 5)
    first = new_task(credits=1)
    assert await store.create_task(first, key("k1", "hash-a"), NO_LIMITS) == Created(first.id, True)
    clock.advance(1_000)
    other = new_task(credits=1)
    assert await store.create_task(other, key("k1", "hash-b"), NO_LIMITS) == KeyReused("k1")
    # The refusal wrote nothing, and the key still names the first task.
    assert await store.get_task(other.id, ACCOUNT) is None
    assert await store.balance(ACCOUNT) == 4
    clock.advance(1_000)
    same = new_task(credits=1)
    assert await store.create_task(same, key("k1", "hash-a"), NO_LIMITS) == Created(first.id, False)
    assert await listed(store) == [first.id]


@scenario
async def test_idempotency_expired_key_makes_a_new_task(store: Store, clock: FakeClock) -> None:
    first = new_task()
    assert await store.create_task(first, key("k1", ttl_ms=500), NO_LIMITS) == Created(
        first.id, True
    )
    clock.now = T0 + 499
    assert await store.create_task(new_task(), key("k1", ttl_ms=500), NO_LIMITS) == Created(
        first.id, False
    )
    clock.now = T0 + 500
    later = new_task()
    assert await store.create_task(later, key("k1", ttl_ms=500), NO_LIMITS) == Created(
        later.id, True
    )
    # The key now names the new task, within its own lifetime.
    clock.now = T0 + 600
    assert await store.create_task(new_task(), key("k1", ttl_ms=500), NO_LIMITS) == Created(
        later.id, False
    )
    # TTL 0: every request is new, even in the same millisecond; and a different request
    # hash is no conflict once the key expired.
    zero_a, zero_b = new_task(), new_task()
    made_a = await store.create_task(zero_a, key("k2", "hash-a", ttl_ms=0), NO_LIMITS)
    made_b = await store.create_task(zero_b, key("k2", "hash-b", ttl_ms=0), NO_LIMITS)
    assert (made_a, made_b) == (Created(zero_a.id, True), Created(zero_b.id, True))
    assert len(await listed(store)) == 4
    # One key is kept per (account, key), the latest use: two in all.
    clock.advance(1)
    assert await store.purge_idempotency_keys(0) == 2


@scenario
async def test_purge_forgets_only_old_idempotency_keys(store: Store, clock: FakeClock) -> None:
    old, new = new_task(), new_task()
    assert await store.create_task(old, key("old"), NO_LIMITS) == Created(old.id, True)
    clock.now = T0 + 1_000
    assert await store.create_task(new, key("new"), NO_LIMITS) == Created(new.id, True)
    clock.now = T0 + 2_000
    assert await store.purge_idempotency_keys(1_000) == 1  # made before T0+1000: "old"
    # The surviving key still answers...
    assert await store.create_task(new_task(), key("new"), NO_LIMITS) == Created(new.id, False)
    # ...the purged one is forgotten, though its lifetime had not ended...
    again = new_task()
    assert await store.create_task(again, key("old"), NO_LIMITS) == Created(again.id, True)
    # ...and the purged key's task is untouched.
    assert (await get(store, old.id)).state is TaskState.WAITING
    assert await store.purge_idempotency_keys(1_000) == 0
    assert len(await listed(store)) == 3


# -- the outbox ------------------------------------------------------------------------------


@scenario
async def test_every_way_a_task_ends_enqueues_its_callback(store: Store, clock: FakeClock) -> None:
    await store.create_account(ACCOUNT, "a", 0)  # callbacks are signed with its secret
    succeeded, failed, canceled, rescued, requeued, silent = await add_tasks(
        store, 6, callback_url=URL_A
    )
    [no_url] = await add_tasks(store, 1)
    assert await store.callback_of_task("task_unknown", ACCOUNT) == (None, None)
    assert await store.callback_of_task(succeeded, OTHER) == (None, None)
    waiting = await get(store, succeeded)
    assert await store.callback_of_task(succeeded, ACCOUNT) == (waiting, None)

    await claim(store, limit=2, token="lease-1")  # succeeded, failed
    assert await store.finish_task(succeeded, "lease-1", state=TaskState.SUCCESS)
    assert await store.finish_task(
        failed, "lease-1", state=TaskState.FAIL, failure=Failure("500", "x")
    )
    assert await store.cancel_task(canceled, ACCOUNT, CANCELED) is not None
    await claim(store, limit=1, token="lease-2")  # rescued: out of attempts at once
    clock.advance(LEASE_MS + 1)
    assert await store.rescue_expired(1, GIVE_UP) == Rescue([], [rescued])
    await claim(store, limit=1, token="lease-3")  # requeued: tries left
    clock.advance(LEASE_MS + 1)
    assert await store.rescue_expired(3, GIVE_UP) == Rescue([requeued], [])
    assert await store.cancel_task(no_url, ACCOUNT, CANCELED) is not None

    ids = set()
    for task_id in (succeeded, failed, canceled, rescued):
        task, found = await store.callback_of_task(task_id, ACCOUNT)
        assert task == await get(store, task_id)
        assert found is not None
        assert (found.task_id, found.url, found.state) == (task_id, URL_A, DeliveryState.PENDING)
        assert found.next_attempt_at == task.completed_at
        assert found.attempts == ()
        ids.add(found.id)
    assert len(ids) == 4  # a webhook-id of its own each
    for task_id in (requeued, silent, no_url):
        task, found = await store.callback_of_task(task_id, ACCOUNT)
        assert task is not None
        assert found is None
    claimed = await claim_callbacks(store, "cb-1")
    assert {c.task.id for c in claimed} == {succeeded, failed, canceled, rescued}


@scenario
async def test_claim_due_hands_out_due_callbacks_under_a_lease(
    store: Store, clock: FakeClock
) -> None:
    await store.create_account(ACCOUNT, "a", 0)
    ids = await add_tasks(store, 3, callback_url=URL_A)
    assert not (await store.pending_work()).callbacks_due  # nothing ended yet
    for n, task_id in enumerate(ids):
        clock.now = T0 + 10 * n
        assert await store.cancel_task(task_id, ACCOUNT, CANCELED) is not None
    clock.now = T0 + 100
    assert (await store.pending_work()).callbacks_due
    secrets = Secrets()
    first = await claim_callbacks(store, "cb-1", limit=2, secrets=secrets)
    assert [c.task.id for c in first] == ids[:2]  # the longest due first
    for c in first:
        assert (c.lease_token, c.url, c.tries) == ("cb-1", URL_A, 0)
        assert c.task == await get(store, c.task.id)
        assert c.id == (await callback_of(store, c.task.id)).id
        assert c.secret == WebhookSecret(ACCOUNT, "whsec-1", None, None, T0 + 100)
    assert secrets.made == 1  # one secret per account, made on first use
    # Leased callbacks are not handed out again while the lease lasts.
    second = await claim_callbacks(store, "cb-2", secrets=secrets)
    assert [c.task.id for c in second] == ids[2:]
    assert await claim_callbacks(store, "cb-3") == []
    clock.now = T0 + 100 + LEASE_MS
    assert not (await store.pending_work()).callbacks_due
    assert await claim_callbacks(store, "cb-3") == []
    # A sender that stopped: once the lease ran out the callbacks go out again, same ids.
    clock.advance(1)
    assert (await store.pending_work()).callbacks_due
    again = await claim_callbacks(store, "cb-4", secrets=secrets)
    assert [(c.id, c.tries, c.lease_token) for c in again] == [
        (c.id, 0, "cb-4") for c in first + second
    ]
    assert secrets.made == 1


@scenario
async def test_claim_due_limits_deliveries_per_host(store: Store, clock: FakeClock) -> None:
    await store.create_account(ACCOUNT, "a", 0)  # callbacks are signed with its secret
    urls = [URL_A, URL_A, "https://A.example:443/other", URL_B, URL_B + "?x=1"]
    ids = []
    for url in urls:
        [task_id] = await add_tasks(store, 1, callback_url=url)
        assert await store.cancel_task(task_id, ACCOUNT, CANCELED) is not None
        ids.append(task_id)
        clock.advance(1)
    got = await claim_callbacks(store, "cb-1", per_host=2)
    assert [c.task.id for c in got] == [ids[0], ids[1], ids[3], ids[4]]
    host_a, host_b = got[0].host_key, got[2].host_key
    assert host_a != host_b
    assert [c.host_key for c in got] == [host_a, host_a, host_b, host_b]
    # What the caller still has in flight counts against the host too.
    assert await claim_callbacks(store, "cb-2", per_host=2, in_flight={host_a: 2}) == []
    assert await claim_callbacks(store, "cb-2", per_host=2, in_flight={host_a: 3}) == []
    [third] = await claim_callbacks(store, "cb-2", per_host=2, in_flight={host_a: 1, host_b: 2})
    assert (third.task.id, third.host_key) == (ids[2], host_a)  # same host, default port
    assert third.url == "https://A.example:443/other"


@scenario
async def test_claim_due_respects_the_limit_across_hosts(store: Store, clock: FakeClock) -> None:
    await store.create_account(ACCOUNT, "a", 0)  # callbacks are signed with its secret
    for n in range(4):
        [task_id] = await add_tasks(store, 1, callback_url=f"https://h{n}.example/cb")
        assert await store.cancel_task(task_id, ACCOUNT, CANCELED) is not None
        clock.advance(1)
    assert len(await claim_callbacks(store, "cb-1", limit=3, per_host=1)) == 3
    assert len(await claim_callbacks(store, "cb-2", limit=3, per_host=1)) == 1


@scenario
async def test_record_attempt_schedules_the_retry_by_the_stores_clock(
    store: Store, clock: FakeClock
) -> None:
    await store.create_account(ACCOUNT, "a", 0)  # callbacks are signed with its secret
    [task_id] = await add_tasks(store, 1, callback_url=URL_A)
    assert await store.cancel_task(task_id, ACCOUNT, CANCELED) is not None
    [sent] = await claim_callbacks(store, "cb-1")
    clock.now = T0 + 50
    failed_once = attempt(T0 + 38)
    assert await store.record_attempt(
        callback_id=sent.id,
        lease_token="cb-1",
        attempt=failed_once,
        state=DeliveryState.PENDING,
        retry_in_ms=5_000,
    )
    found = await callback_of(store, task_id)
    assert (found.id, found.state, found.delivered_at) == (sent.id, DeliveryState.PENDING, None)
    assert type(found.state) is DeliveryState  # the enum, not a string that equals it
    assert found.next_attempt_at == T0 + 5_050
    assert found.attempts == (failed_once,)
    # The recorded attempt ended that lease: its token changes nothing any more.
    assert await store.release_callbacks([(sent.id, "cb-1")]) == 0
    # Not due a millisecond early; due on time, one try done.
    clock.now = T0 + 5_049
    assert await claim_callbacks(store, "cb-2") == []
    clock.now = T0 + 5_050
    [retry] = await claim_callbacks(store, "cb-2")
    assert (retry.id, retry.tries) == (sent.id, 1)
    no_answer = attempt(T0 + 5_050, None)
    assert await store.record_attempt(
        callback_id=sent.id,
        lease_token="cb-2",
        attempt=no_answer,
        state=DeliveryState.PENDING,
        retry_in_ms=0,
    )
    [now_due] = await claim_callbacks(store, "cb-3")
    assert now_due.tries == 2
    assert (await callback_of(store, task_id)).attempts == (failed_once, no_answer)


@scenario
async def test_delivered_and_failed_callbacks_are_final(store: Store, clock: FakeClock) -> None:
    await store.create_account(ACCOUNT, "a", 0)  # callbacks are signed with its secret
    delivered, given_up = await add_tasks(store, 2, callback_url=URL_A)
    for task_id in (delivered, given_up):
        assert await store.cancel_task(task_id, ACCOUNT, CANCELED) is not None
    sent = {c.task.id: c for c in await claim_callbacks(store, "cb-1")}
    clock.now = T0 + 70
    ok = attempt(T0 + 60, 200, success=True)
    assert await store.record_attempt(
        callback_id=sent[delivered].id,
        lease_token="cb-1",
        attempt=ok,
        state=DeliveryState.DELIVERED,
        retry_in_ms=None,
    )
    refused = attempt(T0 + 65, 410)
    assert await store.record_attempt(
        callback_id=sent[given_up].id,
        lease_token="cb-1",
        attempt=refused,
        state=DeliveryState.FAILED,
        retry_in_ms=None,
    )
    done = await callback_of(store, delivered)
    assert (done.state, done.delivered_at, done.next_attempt_at) == (
        DeliveryState.DELIVERED,
        T0 + 70,
        None,
    )
    assert done.attempts == (ok,)
    gone = await callback_of(store, given_up)
    assert (gone.state, gone.delivered_at, gone.next_attempt_at) == (
        DeliveryState.FAILED,
        None,
        None,
    )
    assert gone.attempts == (refused,)
    clock.advance(100 * LEASE_MS)
    assert await claim_callbacks(store, "cb-2") == []


@scenario
async def test_release_callbacks_makes_them_due_again_without_an_attempt(
    store: Store, clock: FakeClock
) -> None:
    await store.create_account(ACCOUNT, "a", 0)  # callbacks are signed with its secret
    ids = await add_tasks(store, 2, callback_url=URL_A)
    for task_id in ids:
        assert await store.cancel_task(task_id, ACCOUNT, CANCELED) is not None
    one, two = await claim_callbacks(store, "cb-1")
    held = [(one.id, "cb-1"), (two.id, "cb-other"), ("msg_unknown", "cb-1")]
    assert await store.release_callbacks(held) == 1
    assert await store.release_callbacks([]) == 0
    [back] = await claim_callbacks(store, "cb-2")  # at once: no time has passed
    assert (back.id, back.tries) == (one.id, 0)
    assert (await callback_of(store, one.task.id)).attempts == ()


@scenario
async def test_resend_restarts_the_series_and_fences_out_a_delivery_in_flight(
    store: Store, clock: FakeClock
) -> None:
    await store.create_account(ACCOUNT, "a", 0)  # callbacks are signed with its secret
    [task_id] = await add_tasks(store, 1, callback_url=URL_A)
    [waiting] = await add_tasks(store, 1, callback_url=URL_A)
    assert not await store.resend(waiting, ACCOUNT)  # no callback until it ends
    assert not await store.resend("task_unknown", ACCOUNT)
    assert await store.cancel_task(task_id, ACCOUNT, CANCELED) is not None
    [sent] = await claim_callbacks(store, "cb-1")
    ok = attempt(T0 + 5, 200, success=True)
    assert await store.record_attempt(
        callback_id=sent.id,
        lease_token="cb-1",
        attempt=ok,
        state=DeliveryState.DELIVERED,
        retry_in_ms=None,
    )
    assert not await store.resend(task_id, OTHER)
    clock.now = T0 + 1_000
    assert await store.resend(task_id, ACCOUNT)
    found = await callback_of(store, task_id)
    assert (found.id, found.state, found.next_attempt_at) == (
        sent.id,
        DeliveryState.PENDING,
        T0 + 1_000,
    )
    assert found.attempts == (ok,)  # the history stays
    [again] = await claim_callbacks(store, "cb-2")
    assert (again.id, again.tries) == (sent.id, 0)
    # A resend while that delivery is in flight takes the callback over: the delivery's
    # outcome is still recorded as an attempt but no longer decides anything.
    clock.now = T0 + 2_000
    assert await store.resend(task_id, ACCOUNT)
    late = attempt(T0 + 1_990, 500)
    assert not await store.record_attempt(
        callback_id=sent.id,
        lease_token="cb-2",
        attempt=late,
        state=DeliveryState.FAILED,
        retry_in_ms=None,
    )
    found = await callback_of(store, task_id)
    assert (found.state, found.next_attempt_at) == (DeliveryState.PENDING, T0 + 2_000)
    assert found.attempts == (ok, late)
    [third] = await claim_callbacks(store, "cb-3")
    assert (third.id, third.tries) == (sent.id, 0)


@scenario
async def test_account_secret_is_made_once_and_rotates(store: Store, clock: FakeClock) -> None:
    secrets = Secrets()
    assert await store.account_secret("acct_unknown", secrets, rotate=False) is None
    assert await store.account_secret("acct_unknown", secrets, rotate=True) is None
    assert secrets.made == 0
    await store.create_account(ACCOUNT, "a", 0)
    clock.now = T0 + 10
    made = await store.account_secret(ACCOUNT, secrets, rotate=False)
    assert made == WebhookSecret(ACCOUNT, "whsec-1", None, None, T0 + 10)
    clock.now = T0 + 20
    assert await store.account_secret(ACCOUNT, secrets, rotate=False) == made
    assert secrets.made == 1
    clock.now = T0 + 100
    rotated = await store.account_secret(ACCOUNT, secrets, rotate=True)
    assert rotated == WebhookSecret(ACCOUNT, "whsec-2", "whsec-1", T0 + 100, T0 + 10)
    assert await store.account_secret(ACCOUNT, secrets, rotate=False) == rotated
    # Rotating an account that never had a secret makes its first.
    await store.create_account(OTHER, "b", 0)
    first = await store.account_secret(OTHER, secrets, rotate=True)
    assert first == WebhookSecret(OTHER, "whsec-3", None, None, T0 + 100)
    # Callbacks are signed with the account's secret as it is now.
    [task_id] = await add_tasks(store, 1, callback_url=URL_A)
    assert await store.cancel_task(task_id, ACCOUNT, CANCELED) is not None
    [sent] = await claim_callbacks(store, "cb-1", secrets=secrets)
    assert sent.secret == rotated
    assert secrets.made == 3


# -- accounts and keys -----------------------------------------------------------------------


def api_key(
    key_id: str,
    account_id: str,
    *,
    created_at: int = T0,
    is_test: bool = True,
    expires_at: int | None = None,
) -> ApiKey:
    return ApiKey(
        id=key_id,
        account_id=account_id,
        name=f"name of {key_id}",
        display_prefix=f"bs_{key_id[-4:]}",
        is_test=is_test,
        created_at=created_at,
        revoked_at=None,
        expires_at=expires_at,
    )


@scenario
async def test_accounts_are_created_read_listed_and_counted(store: Store, clock: FakeClock) -> None:
    assert await store.count_accounts() == 0
    assert await store.list_accounts() == []
    made = await store.create_account("acct_a", "Alpha", 25)
    assert made.id == "acct_a"
    assert (made.name, made.created_at, made.credits) == ("Alpha", T0, 25)
    assert (made.create_rate, made.read_rate, made.max_waiting, made.monthly_cap) == (
        None,
        None,
        None,
        None,
    )
    clock.advance(1)
    empty = await store.create_account("acct_b", "Beta", 0)
    assert await store.get_account("acct_a") == made
    assert await store.get_account("acct_b") == empty
    assert await store.get_account("acct_unknown") is None
    assert await store.list_accounts() == [made, empty]
    assert await store.count_accounts() == 2
    # Starting credits are a grant in the ledger like any other; none, no row.
    assert await store.balance("acct_a") == 25
    [start] = await store.entries("acct_a", 10)
    assert (start.account_id, start.amount, start.reason, start.task_id) == (
        "acct_a",
        25,
        "grant",
        None,
    )
    assert await store.entries("acct_b", 10) == []
    assert await store.audit() == []


@scenario
async def test_set_limits(store: Store, clock: FakeClock) -> None:
    await store.create_account(ACCOUNT, "a", 0)
    assert not await store.set_limits("acct_unknown", {"max_waiting": 1})
    assert not await store.set_limits("acct_unknown", {})
    assert await store.set_limits(ACCOUNT, {})
    limits = {"create_rate": "5/second", "read_rate": "50/second", "max_waiting": 3}
    assert await store.set_limits(ACCOUNT, {**limits, "monthly_cap": 100})
    account = await store.get_account(ACCOUNT)
    assert account is not None
    assert (account.create_rate, account.read_rate) == ("5/second", "50/second")
    assert (account.max_waiting, account.monthly_cap) == (3, 100)
    # None restores the default; the limits not named stay.
    assert await store.set_limits(ACCOUNT, {"max_waiting": None, "create_rate": None})
    account = await store.get_account(ACCOUNT)
    assert account is not None
    assert (account.create_rate, account.read_rate) == (None, "50/second")
    assert (account.max_waiting, account.monthly_cap) == (None, 100)
    # The same values again are still a success.
    assert await store.set_limits(ACCOUNT, {"monthly_cap": 100})
    with pytest.raises(ValueError, match="not a limit"):
        await store.set_limits(ACCOUNT, {"credits": 5})


@scenario
async def test_insert_key_into_a_new_an_existing_and_an_unknown_account(
    store: Store, clock: FakeClock
) -> None:
    first = api_key("key_first", "acct_new", created_at=T0 - 5)
    assert await store.insert_key(first, "hash-first", "New account", starting_credits=7)
    account = await store.get_account("acct_new")
    assert account is not None
    assert (account.name, account.created_at, account.credits) == ("New account", T0 - 5, 7)
    assert await store.balance("acct_new") == 7
    # Into the existing account: no starting credits the second time.
    second = api_key("key_second", "acct_new", is_test=False, expires_at=T0 + 1_000)
    assert await store.insert_key(second, "hash-second", None, starting_credits=7)
    assert await store.balance("acct_new") == 7
    assert await store.list_keys("acct_new") == [first, second]
    # An unknown account: nothing written.
    lost = api_key("key_lost", "acct_unknown")
    assert not await store.insert_key(lost, "hash-lost", None, starting_credits=7)
    assert await store.get_key("key_lost") is None
    assert await store.find_key_by_hash("hash-lost") is None
    assert await store.get_account("acct_unknown") is None
    assert await store.count_accounts() == 1
    assert await store.audit() == []


@scenario
async def test_keys_are_found_listed_and_revoked(store: Store, clock: FakeClock) -> None:
    one = api_key("key_one", "acct_1", created_at=T0)
    two = api_key("key_two", "acct_2", created_at=T0 + 1)
    three = api_key("key_three", "acct_1", created_at=T0 + 2)
    assert await store.insert_key(one, "hash-1", "one")
    assert await store.insert_key(two, "hash-2", "two")
    assert await store.insert_key(three, "hash-3", None)
    assert await store.find_key_by_hash("hash-1") == one
    assert await store.find_key_by_hash("hash-3") == three
    assert await store.find_key_by_hash("hash-none") is None
    assert await store.get_key("key_two") == two
    assert await store.get_key("key_none") is None
    assert await store.list_keys() == [one, two, three]
    assert await store.list_keys("acct_1") == [one, three]
    assert await store.list_keys("acct_unknown") == []

    clock.now = T0 + 100
    assert await store.revoke_key("key_one")
    revoked = await store.get_key("key_one")
    assert revoked is not None
    assert revoked.revoked_at == T0 + 100
    assert await store.find_key_by_hash("hash-1") == revoked
    assert not revoked.usable_at(T0 + 100)
    # Revoking twice keeps the first time.
    clock.now = T0 + 200
    assert not await store.revoke_key("key_one")
    assert await store.get_key("key_one") == revoked
    assert not await store.revoke_key("key_none")
    assert await store.get_key("key_three") == three


@scenario
async def test_a_keys_last_use_is_recorded_and_never_moves_back(
    store: Store, clock: FakeClock
) -> None:
    key_a, key_b = api_key("key_a", "acct_1"), api_key("key_b", "acct_1")
    assert await store.insert_key(key_a, "hash-a", "one")
    assert await store.insert_key(key_b, "hash-b", None)
    assert (await store.find_key_by_hash("hash-a")) == key_a  # never used: None
    clock.now = T0 + 500
    await store.mark_key_used("key_a")
    used = await store.get_key("key_a")
    assert used is not None
    assert used.last_used_at == T0 + 500
    assert await store.list_keys("acct_1") == [used, key_b]
    # A write that comes late (another process's, its request older) keeps the later use.
    clock.now = T0 + 100
    await store.mark_key_used("key_a")
    assert (await store.get_key("key_a")) == used
    await store.mark_key_used("key_unknown")  # nothing to record, and no error


# -- the ledger ------------------------------------------------------------------------------


@scenario
async def test_grant_adds_takes_away_and_refuses(store: Store, clock: FakeClock) -> None:
    await store.create_account(ACCOUNT, "a", 10)
    assert await store.balance("acct_unknown") is None
    steps = [
        (5, "bonus", 15),
        (-15, "taken back", 0),
        (-1, "too much", NotEnoughCredits(balance=0, cost=1)),
        (INT64_MAX, "all there is", INT64_MAX),
        (1, "one more", BalanceOverflow(limit=INT64_MAX)),
        (-INT64_MAX, "back to zero", 0),
        (3, "a few", 3),
        (-4, "too much", NotEnoughCredits(balance=3, cost=4)),
        # More than any balance could hold, either way.
        (INT64_MAX + 1, "past the column", BalanceOverflow(limit=INT64_MAX)),
        (-INT64_MAX - 1, "past the column", NotEnoughCredits(balance=3, cost=INT64_MAX + 1)),
    ]
    for amount, note, answer in steps:
        clock.advance(1)
        assert await store.grant(ACCOUNT, amount, note) == answer, note
    assert await store.balance(ACCOUNT) == 3
    assert await store.grant("acct_unknown", 5, "nobody") is None
    assert await store.grant("acct_unknown", -5, "nobody") is None
    # Refusals wrote nothing.
    written = [(e.amount, e.note) for e in await store.entries(ACCOUNT, 100)]
    granted = [(amount, note) for amount, note, answer in steps if isinstance(answer, int)]
    assert written[:-1] == granted[::-1]
    assert await store.audit() == []


@scenario
async def test_ledger_entries_come_newest_first(store: Store, clock: FakeClock) -> None:
    await store.create_account(ACCOUNT, "a", 20)
    await store.create_account(OTHER, "b", 0)
    clock.advance(10)
    [task_id] = await add_tasks(store, 1, credits=3)
    clock.advance(10)
    assert await store.cancel_task(task_id, ACCOUNT, CANCELED) is not None
    clock.advance(10)
    assert await store.grant(ACCOUNT, -5, "fee") == 15
    entries = await store.entries(ACCOUNT, 10)
    assert [(e.amount, e.reason, e.task_id, e.created_at) for e in entries] == [
        (-5, "grant", None, T0 + 30),
        (3, "refund", task_id, T0 + 20),
        (-3, "charge", task_id, T0 + 10),
        (20, "grant", None, T0),
    ]
    assert entries[0].note == "fee"
    assert all(e.account_id == ACCOUNT for e in entries)
    seqs = [e.seq for e in entries]
    assert seqs == sorted(seqs, reverse=True)
    assert await store.entries(ACCOUNT, 2) == entries[:2]
    assert await store.entries(OTHER, 10) == []
    assert await store.entries("acct_unknown", 10) == []


@scenario
async def test_audit_is_empty_after_mixed_activity(store: Store, clock: FakeClock) -> None:
    await store.create_account(ACCOUNT, "a", 50)
    await store.create_account(OTHER, "b", 5)
    ok, failed, canceled, rescued, requeued = await add_tasks(store, 5, credits=4)
    assert await store.create_task(new_task(OTHER, credits=9), None, NO_LIMITS) == (
        NotEnoughCredits(5, 9)
    )
    keyed = new_task(OTHER, credits=2)
    assert await store.create_task(keyed, key("k"), NO_LIMITS) == Created(keyed.id, True)
    assert await store.create_task(new_task(OTHER, credits=2), key("k"), NO_LIMITS) == (
        Created(keyed.id, False)
    )
    await claim(store, limit=2, token="lease-1")
    assert await store.finish_task(ok, "lease-1", state=TaskState.SUCCESS)
    assert await store.finish_task(failed, "lease-1", state=TaskState.FAIL, failure=GIVE_UP)
    assert await store.cancel_task(canceled, ACCOUNT, CANCELED) is not None
    await claim(store, limit=1, token="lease-2")
    clock.advance(LEASE_MS + 1)
    assert await store.rescue_expired(1, GIVE_UP) == Rescue([], [rescued])
    await claim(store, limit=1, token="lease-3")
    clock.advance(LEASE_MS + 1)
    assert await store.rescue_expired(3, GIVE_UP) == Rescue([requeued], [])
    assert await store.grant(ACCOUNT, 7, "bonus") is not None
    assert await store.grant(OTHER, -3, "fee") == 0
    assert await store.grant(OTHER, -1, "fee") == NotEnoughCredits(0, 1)
    # 50 - 5*4 charged + 3*4 refunded + 7 granted; 5 - 2 charged - 3 taken.
    assert await store.balance(ACCOUNT) == 49
    assert await store.balance(OTHER) == 0
    assert [(await get(store, t)).credits_consumed for t in (ok, failed, canceled, rescued)] == [
        4,
        0,
        0,
        0,
    ]
    assert await store.audit() == []


# -- switches --------------------------------------------------------------------------------


@scenario
async def test_switches(store: Store, clock: FakeClock) -> None:
    assert await store.all_switches() == {}
    await store.put_switch("maintenance", "on")
    clock.advance(1)
    await store.put_switch("maintenance", "off")
    await store.put_switch("disabled_models", "a,b")
    assert await store.all_switches() == {"maintenance": "off", "disabled_models": "a,b"}
    assert await store.remove_switch("maintenance")
    assert not await store.remove_switch("maintenance")
    assert not await store.remove_switch("never-set")
    assert await store.all_switches() == {"disabled_models": "a,b"}


# -- the worker registry and leases ----------------------------------------------------------

LIVE_MS = 30_000


def worker_process(n: int, role: str = "worker") -> WorkerProcess:
    return WorkerProcess(
        id=f"host-{n}:{100 + n}:abc",
        host=f"host-{n}",
        pid=100 + n,
        role=role,
        started_at=T0,
        concurrency=4 * n,
    )


@scenario
async def test_heartbeats_list_the_live_workers_and_a_silent_one_drops_out(
    store: Store, connect: Callable[[], Store], clock: FakeClock
) -> None:
    other = connect()  # a second process
    first, second = worker_process(1), worker_process(2, role="serve")
    assert await store.heartbeat(first, 0, LIVE_MS) == [first.id]
    clock.advance(10_000)
    assert await other.heartbeat(second, 3, LIVE_MS) == [first.id, second.id]
    [one, two] = await store.live_workers()
    assert (one.id, one.host, one.pid, one.role, one.concurrency, one.in_flight) == (
        first.id,
        "host-1",
        101,
        "worker",
        4,
        0,
    )
    assert (one.started_at, one.heartbeat_at, one.live_until) == (T0, T0, T0 + LIVE_MS)
    assert (two.id, two.role, two.in_flight, two.heartbeat_at) == (
        second.id,
        "serve",
        3,
        T0 + 10_000,
    )
    # The first one fell silent: once its time ran out, only the second is live.
    clock.advance(LIVE_MS - 10_000 + 1)
    assert await other.heartbeat(second, 1, LIVE_MS) == [second.id]
    assert [w.id for w in await store.live_workers()] == [second.id]
    # Its next heartbeat brings it back, the same row updated, at a pace of its own.
    assert await store.heartbeat(first, 2, 3 * LIVE_MS) == [first.id, second.id]
    assert [(w.id, w.in_flight) for w in await other.live_workers()] == [
        (first.id, 2),
        (second.id, 1),
    ]
    clock.advance(2 * LIVE_MS)  # the second's time ran out, not the first's
    assert [w.id for w in await store.live_workers()] == [first.id]
    assert await other.remove_worker(first.id)
    assert not await other.remove_worker(first.id)
    assert await store.live_workers() == []


@scenario
async def test_forget_workers_deletes_only_the_rows_dead_for_longer(
    store: Store, clock: FakeClock
) -> None:
    await store.heartbeat(worker_process(1), 0, 1_000)  # live until T0 + 1000
    clock.advance(60_000)
    await store.heartbeat(worker_process(2), 0, 1_000)  # live until T0 + 61000
    clock.advance(1_001)
    assert await store.forget_workers(60_000) == 1
    assert await store.forget_workers(60_000) == 0
    assert await store.forget_workers(0) == 1  # the second one, dead for a millisecond


@scenario
async def test_a_lease_has_one_holder_until_its_ttl_runs_out(
    store: Store, connect: Callable[[], Store], clock: FakeClock
) -> None:
    other = connect()  # a second process
    assert await store.take_lease("sweep", "a", ttl_ms=1_000)
    assert not await other.take_lease("sweep", "b", ttl_ms=1_000)
    assert await other.take_lease("purge", "b", ttl_ms=1_000)  # leases are by name
    clock.advance(900)
    assert await store.take_lease("sweep", "a", ttl_ms=1_000)  # renewed: until T0 + 1900
    clock.advance(900)
    assert not await other.take_lease("sweep", "b", ttl_ms=1_000)
    clock.advance(101)  # a's lease ran out: b takes it, and a cannot take it back
    assert await other.take_lease("sweep", "b", ttl_ms=1_000)
    assert not await store.take_lease("sweep", "a", ttl_ms=1_000)
    assert not await store.release_lease("sweep", "a")  # only the holder lets go
    assert not await store.take_lease("sweep", "a", ttl_ms=1_000)
    assert await other.release_lease("sweep", "b")
    assert not await other.release_lease("sweep", "b")
    assert await store.take_lease("sweep", "a", ttl_ms=1_000)  # at once, with no wait


@scenario
async def test_of_many_callers_at_once_exactly_one_takes_a_lease(
    store: Store, connect: Callable[[], Store], clock: FakeClock
) -> None:
    """Twenty callers in two processes: once for a lease never taken (the INSERT race),
    once for one that expired (the UPDATE race)."""
    second = connect()
    await second.heartbeat(worker_process(1), 0, LIVE_MS)  # each store has written before
    stores = [store, second]

    async def take(n: int) -> bool:
        return await stores[n % 2].take_lease("sweep", f"holder-{n}", ttl_ms=1_000)

    for _ in range(2):
        taken = await asyncio.to_thread(in_threads, 20, take)
        assert sum(taken) == 1, taken
        clock.advance(1_001)


# -- circuit breakers ------------------------------------------------------------------------


@scenario
async def test_a_breaker_opens_at_its_threshold_half_opens_once_and_closes(
    store: Store, connect: Callable[[], Store], clock: FakeClock
) -> None:
    other = connect()  # a second process
    assert await store.breakers() == []
    await store.breaker_closed("google")  # a success with no row writes none
    assert await store.breakers() == []
    first = await store.breaker_failed("google", threshold=3, trip=False)
    assert (first.state, first.failures, first.opened_at) == (BreakerState.CLOSED, 1, None)
    await other.breaker_failed("google", threshold=3, trip=False)
    clock.advance(10)
    opened = await store.breaker_failed("google", threshold=3, trip=False)
    assert (opened.state, opened.failures, opened.opened_at) == (BreakerState.OPEN, 3, T0 + 10)
    clock.advance(10)
    still = await other.breaker_failed("google", threshold=3, trip=False)
    assert (still.state, still.opened_at) == (BreakerState.OPEN, T0 + 10)  # cool-down runs on
    assert not await store.breaker_trial("google", cooldown_ms=1_000)
    clock.advance(990)
    assert await store.breaker_trial("google", cooldown_ms=1_000)
    assert not await other.breaker_trial("google", cooldown_ms=1_000)  # one trial at a time
    (trial,) = await other.breakers()
    assert trial.state is BreakerState.HALF_OPEN
    reopened = await other.breaker_failed("google", threshold=3, trip=False)  # the trial failed
    assert (reopened.state, reopened.opened_at) == (BreakerState.OPEN, clock.now)
    clock.advance(1_000)
    assert await other.breaker_trial("google", cooldown_ms=1_000)
    await other.breaker_closed("google")  # the trial succeeded
    (closed,) = await store.breakers()
    assert (closed.state, closed.failures, closed.opened_at) == (BreakerState.CLOSED, 0, None)
    tripped = await store.breaker_failed("kie", threshold=5, trip=True)  # a wrong key: at once
    assert (tripped.state, tripped.failures) == (BreakerState.OPEN, 1)
    assert [breaker.name for breaker in await store.breakers()] == ["google", "kie"]


@scenario
async def test_failures_at_once_are_each_counted_and_one_caller_wins_the_trial(
    store: Store, connect: Callable[[], Store], clock: FakeClock
) -> None:
    second = connect()
    await second.heartbeat(worker_process(1), 0, LIVE_MS)  # each store has written before
    stores = [store, second]

    async def fail(n: int) -> object:
        return await stores[n % 2].breaker_failed("google", threshold=100, trip=False)

    await asyncio.to_thread(in_threads, 20, fail)  # the first INSERT races too
    (counted,) = await store.breakers()
    assert (counted.failures, counted.state) == (20, BreakerState.CLOSED)
    await store.breaker_failed("google", threshold=21, trip=False)
    clock.advance(1_000)

    async def trial(n: int) -> bool:
        return await stores[n % 2].breaker_trial("google", cooldown_ms=1_000)

    taken = await asyncio.to_thread(in_threads, 20, trial)
    assert sum(taken) == 1, taken


# -- concurrent callers ----------------------------------------------------------------------

CALLERS = 50


@scenario
async def test_50_callers_with_one_idempotency_key_make_one_task(
    store: Store, connect: Callable[[], Store]
) -> None:
    """Fifty clients send the same request with one Idempotency-Key at once, half of
    them through a second process: one task, one charge, one ``created``."""
    second = connect()
    await store.create_account(ACCOUNT, "a", 100)
    await second.create_account(OTHER, "b", 0)  # each store has written before
    stores = [store, second]

    async def send(n: int) -> Created | CreateRefusal:
        return await stores[n % 2].create_task(new_task(credits=1), key("same"), NO_LIMITS)

    answers = await asyncio.to_thread(in_threads, CALLERS, send)
    assert all(isinstance(answer, Created) for answer in answers), answers
    made = [answer for answer in answers if isinstance(answer, Created)]
    assert len({answer.task_id for answer in made}) == 1
    assert sum(answer.created for answer in made) == 1
    assert await listed(store) == [made[0].task_id]
    assert await store.balance(ACCOUNT) == 99
    assert await store.audit() == []


@scenario
async def test_50_callers_with_one_idempotency_key_and_different_requests_have_one_winner(
    store: Store, connect: Callable[[], Store]
) -> None:
    second = connect()
    await store.create_account(ACCOUNT, "a", 100)
    await second.create_account(OTHER, "b", 0)
    stores = [store, second]

    async def send(n: int) -> Created | CreateRefusal:
        claim = key("same", f"hash-{n}")
        return await stores[n % 2].create_task(new_task(credits=1), claim, NO_LIMITS)

    answers = await asyncio.to_thread(in_threads, CALLERS, send)
    winners = [n for n, answer in enumerate(answers) if isinstance(answer, Created)]
    assert len(winners) == 1, answers
    [winner] = winners
    made = answers[winner]
    assert isinstance(made, Created)
    assert made.created
    assert [answer for n, answer in enumerate(answers) if n != winner] == [KeyReused("same")] * (
        CALLERS - 1
    )
    assert await listed(store) == [made.task_id]
    # The winner's request, sent again, is answered with its task.
    replay = await store.create_task(new_task(), key("same", f"hash-{winner}"), NO_LIMITS)
    assert replay == Created(made.task_id, False)
    assert await store.balance(ACCOUNT) == 99
    assert await store.audit() == []


@scenario
async def test_50_charges_against_10_credits(store: Store, connect: Callable[[], Store]) -> None:
    """Parallel charges never overdraw: exactly as many tasks as the balance pays for."""
    second = connect()
    await store.create_account(ACCOUNT, "a", 10)
    await second.create_account(OTHER, "b", 0)
    stores = [store, second]

    async def send(n: int) -> Created | CreateRefusal:
        return await stores[n % 2].create_task(new_task(credits=1), None, NO_LIMITS)

    answers = await asyncio.to_thread(in_threads, CALLERS, send)
    made = [answer for answer in answers if isinstance(answer, Created)]
    assert len(made) == 10
    assert all(answer.created for answer in made)
    refused = [answer for answer in answers if not isinstance(answer, Created)]
    assert refused == [NotEnoughCredits(balance=0, cost=1)] * 40
    assert await store.balance(ACCOUNT) == 0
    assert sorted(await listed(store)) == sorted(answer.task_id for answer in made)
    charges = [e for e in await store.entries(ACCOUNT, 100) if e.reason == "charge"]
    assert len(charges) == 10
    assert await store.audit() == []


@scenario
async def test_concurrent_claimers_never_share_a_task(
    store: Store, connect: Callable[[], Store]
) -> None:
    """Eight workers (four per process) claim 3 at a time, 5 times each, from 100
    waiting tasks: 120 places for 100 tasks, at most 60 per process."""
    second = connect()
    await second.create_account(OTHER, "b", 0)  # each store has written before
    news = [new_task() for _ in range(100)]
    made = await asyncio.gather(*(store.create_task(new, None, NO_LIMITS) for new in news))
    assert made == [Created(new.id, True) for new in news]
    stores = [store, second]

    async def worker(n: int) -> list[Claim]:
        taken: list[Claim] = []
        for call in range(5):
            taken += await stores[n % 2].claim_tasks(
                worker_id=f"worker-{n}", lease_token=f"lease-{n}-{call}", limit=3, lease_ms=LEASE_MS
            )
        return taken

    per_worker = await asyncio.to_thread(in_threads, 8, worker)
    claims = list(itertools.chain.from_iterable(per_worker))
    claimed = [c.task.id for c in claims]
    assert len(claimed) == len(set(claimed)) == 100  # none twice...
    assert set(claimed) == {new.id for new in news}  # ...and every one once
    for n, taken in enumerate(per_worker):
        assert all(c.lease_token.startswith(f"lease-{n}-") for c in taken)
    by_process = [sum(len(per_worker[n]) for n in range(p, 8, 2)) for p in (0, 1)]
    assert all(count >= 40 for count in by_process), by_process  # 100 - 60 at least
    for c in claims:
        assert c.task.state is TaskState.QUEUING
        assert c.task.attempts == 1
    # Each task's lease is the one its claim handed out, and no other.
    assert await store.renew_leases([(c.task.id, c.lease_token) for c in claims], LEASE_MS) == (
        set()
    )
    others = [
        (c.task.id, f"lease-{(n + 1) % 8}-0") for n, taken in enumerate(per_worker) for c in taken
    ]
    assert await second.renew_leases(others, LEASE_MS) == set(claimed)
    assert await claim(store, limit=10, token="lease-last") == []


@scenario
async def test_fenced_writes_after_a_lost_lease_change_nothing(
    store: Store, connect: Callable[[], Store], clock: FakeClock
) -> None:
    """Worker A stalls past its lease; the task is rescued and worker B (another process)
    claims it. A then carries on as if nothing happened, at the same time as B finishes:
    every write of A is refused and changes nothing; B's outcome is the one that stands."""
    second = connect()
    await store.create_account(ACCOUNT, "a", 10)
    await second.create_account(OTHER, "b", 0)
    [task_id] = await add_tasks(store, 1, credits=2, callback_url=URL_A)
    await claim(store, token="lease-a", worker="worker-a")
    assert await store.mark_generating(task_id, "lease-a")
    clock.advance(LEASE_MS + 1)
    assert await store.rescue_expired(3, GIVE_UP) == Rescue([task_id], [])
    [b] = await second.claim_tasks(
        worker_id="worker-b", lease_token="lease-b", limit=1, lease_ms=LEASE_MS
    )
    assert (b.task.id, b.task.attempts) == (task_id, 2)
    before = await get(store, task_id)

    stale = await asyncio.gather(
        store.mark_generating(task_id, "lease-a"),
        store.renew_leases([(task_id, "lease-a")], LEASE_MS),
        store.finish_task(
            task_id, "lease-a", state=TaskState.SUCCESS, result_keys='["results/a.png"]'
        ),
        store.release_task(task_id, "lease-a"),
        store.finish_task(task_id, "lease-a", state=TaskState.FAIL, failure=Failure("500", "a")),
    )
    assert stale == [False, {task_id}, False, False, False]
    assert await get(store, task_id) == before

    assert await second.mark_generating(task_id, "lease-b")
    clock.advance(10)
    a_late, b_done = await asyncio.gather(
        store.finish_task(
            task_id, "lease-a", state=TaskState.FAIL, failure=Failure("500", "a, late")
        ),
        second.finish_task(
            task_id, "lease-b", state=TaskState.SUCCESS, result_keys='["results/b.png"]'
        ),
    )
    assert (a_late, b_done) == (False, True)
    done = await get(store, task_id)
    assert done.state is TaskState.SUCCESS
    assert done.result_keys == ("results/b.png",)
    assert (done.fail_code, done.fail_msg) == ("", "")
    assert done.attempts == 2
    assert done.credits_consumed == 2
    assert await store.balance(ACCOUNT) == 8  # charged once, never refunded
    assert (await callback_of(store, task_id)).next_attempt_at == clock.now
    assert await store.audit() == []


# -- the batch lane --------------------------------------------------------------------------

PRO = "nano-banana-pro"


async def add_batch_tasks(store: Store, count: int, *, provider: str = "gemini") -> list[str]:
    """``count`` waiting batch-lane tasks for ``provider``, charged 5 each."""
    ids = []
    for _ in range(count):
        new = dataclasses.replace(new_task(credits=5), provider=provider, lane="batch")
        assert await store.create_task(new, None, NO_LIMITS) == Created(new.id, created=True)
        ids.append(new.id)
    return ids


def batch_job(job_id: str, tasks: int, at: int) -> BatchJob:
    return BatchJob(
        id=job_id,
        upstream="gemini",
        model=PRO,
        display_name=f"bananastand-{job_id}",
        state="open",
        upstream_name=None,
        tasks=tasks,
        created_at=at,
        updated_at=at,
        deadline_at=at + 100_000,
    )


@scenario
async def test_batch_lane_tasks_wait_for_the_batch_singleton_not_for_a_worker(
    store: Store, clock: FakeClock
) -> None:
    await store.create_account(ACCOUNT, "a", 100)
    batched = await add_batch_tasks(store, 2)
    clock.advance(5)
    later = await add_batch_tasks(store, 1)
    on_sandbox = await add_batch_tasks(store, 1, provider="sandbox")
    now = await add_tasks(store, 1)
    assert (await get(store, batched[0])).lane == "batch"
    assert (await get(store, now[0])).lane == "now"

    claims = await store.claim_tasks(worker_id="w", lease_token="t", limit=10, lease_ms=LEASE_MS)
    assert sorted(claim.task.id for claim in claims) == sorted(on_sandbox + now)
    assert await store.pending_work() == NOTHING_PENDING  # batch-lane tasks wait, unclaimed
    assert await store.batch_groups() == [
        BatchGroup(upstream="gemini", model=PRO, waiting=3, oldest_ms=T0, in_job=False)
    ]
    assert later  # counted above: 3 waiting, the oldest from T0


@scenario
async def test_a_batch_job_holds_its_claimed_tasks_whose_ends_are_fenced(
    store: Store, clock: FakeClock
) -> None:
    await store.create_account(ACCOUNT, "a", 100)
    first, second, third = await add_batch_tasks(store, 3)
    claims = await store.claim_batch_tasks(
        lease_token="job-lease", holder="lane", group=("gemini", PRO), limit=2, lease_ms=LEASE_MS
    )
    assert [claim.task.id for claim in claims] == [first, second]  # oldest first, the limit
    assert [claim.task.state for claim in claims] == [TaskState.QUEUING] * 2
    assert (await store.cancel_task(second, ACCOUNT, CANCELED)) is not None  # before the job

    job = batch_job("job1", 2, clock.now)
    held = [(claim.task.id, "job-lease") for claim in claims]
    assert await store.open_batch_job(job, held) == [first]
    assert await store.batch_jobs(["job1", "unknown"]) == [job]
    held_task = await get(store, first)
    assert (held_task.batch_job, held_task.upstream) == ("job1", "gemini")
    assert (await get(store, third)).batch_job is None

    clock.advance(7)
    await store.update_batch_job("job1", upstream_name="batches/42")
    await store.update_batch_job("job1", state="done", outcome="succeeded")
    (updated,) = await store.batch_jobs(["job1"])
    assert (updated.upstream_name, updated.state, updated.outcome) == (
        "batches/42",
        "done",
        "succeeded",
    )
    assert updated.updated_at == clock.now

    assert await store.finish_task(
        first, "job-lease", state=TaskState.SUCCESS, result_keys='["results/a.png"]'
    )
    assert not await store.finish_task(second, "job-lease", state=TaskState.SUCCESS)  # canceled
    assert await store.balance(ACCOUNT) == 100 - 5 * 3 + 5  # the canceled one refunded
    assert await store.audit() == []


@scenario
async def test_tasks_of_a_sent_job_come_back_to_it_after_a_rescue(
    store: Store, clock: FakeClock
) -> None:
    await store.create_account(ACCOUNT, "a", 100)
    task_ids = await add_batch_tasks(store, 2)
    claims = await store.claim_batch_tasks(
        lease_token="a", holder="lane-a", group=("gemini", PRO), limit=5, lease_ms=LEASE_MS
    )
    await store.open_batch_job(batch_job("job1", 2, clock.now), [(t, "a") for t in task_ids])
    assert len(claims) == 2
    clock.advance(LEASE_MS + 1)  # lane-a stopped renewing
    assert await store.rescue_expired(3, GIVE_UP) == Rescue(task_ids, [])
    assert await store.batch_groups() == [
        BatchGroup(upstream="gemini", model=PRO, waiting=2, oldest_ms=T0, in_job=True)
    ]
    assert (
        await store.claim_batch_tasks(
            lease_token="b", holder="lane-b", group=("gemini", PRO), limit=5, lease_ms=LEASE_MS
        )
        == []
    )  # not a new job's
    back = await store.claim_batch_tasks(
        lease_token="b", holder="lane-b", group=None, limit=5, lease_ms=LEASE_MS
    )
    assert [(claim.task.id, claim.task.batch_job) for claim in back] == [
        (task_ids[0], "job1"),
        (task_ids[1], "job1"),
    ]
    assert [claim.task.attempts for claim in back] == [2, 2]


@scenario
async def test_the_tasks_of_a_failed_job_go_back_to_the_now_lane(
    store: Store, clock: FakeClock
) -> None:
    await store.create_account(ACCOUNT, "a", 100)
    task_ids = await add_batch_tasks(store, 2)
    await store.claim_batch_tasks(
        lease_token="a", holder="lane", group=("gemini", PRO), limit=5, lease_ms=LEASE_MS
    )
    await store.open_batch_job(batch_job("job1", 2, clock.now), [(t, "a") for t in task_ids])
    assert await store.to_now_lane([(task_ids[0], "stale"), (task_ids[1], "a")]) == [task_ids[1]]
    moved = await get(store, task_ids[1])
    assert (moved.state, moved.lane, moved.batch_job, moved.attempts) == (
        TaskState.WAITING,
        "now",
        None,
        0,
    )
    assert moved.credits_consumed == 5  # the batch price stays
    claims = await store.claim_tasks(worker_id="w", lease_token="t", limit=10, lease_ms=LEASE_MS)
    assert [claim.task.id for claim in claims] == [task_ids[1]]
