"""The values the store's ports take and give: plain frozen records, no behaviour.

A module of their own so that the ports (``store.ports``) read as the list of what the
domain asks of storage; both are imported from ``store.ports``.
"""

from __future__ import annotations

from dataclasses import dataclass

from bananastand.records import Task, WebhookSecret


class StoreUnavailable(Exception):
    """The database could not be reached, or dropped the connection while a statement ran.

    A write cut off this way may or may not have committed, so it is never run again by
    the store; callers decide. The worker leaves such a task to its lease (it runs again,
    fenced, once the lease expires) rather than failing it for the database's sake; an API
    request answers 500 with its request id.
    """


#: The limits an operator may set per account; ``None`` restores the server default.
LIMIT_NAMES = ("create_rate", "read_rate", "max_waiting", "monthly_cap")


@dataclass(frozen=True, slots=True)
class NewTask:
    id: str
    account_id: str
    key_id: str
    provider: str
    model: str
    param: str
    input: str
    callback_url: str | None
    #: What the task costs, charged in the transaction that creates it (0: free).
    credits: int = 0
    #: ``now``, or ``batch``: the batch singleton runs it (unless it is on the sandbox).
    lane: str = "now"


@dataclass(frozen=True, slots=True)
class Admission:
    """The account's limits that creating a task must respect (``None``: no limit)."""

    max_waiting: int | None = None
    monthly_cap: int | None = None
    #: Start of the current calendar month (UTC) by the store's clock: the cap counts from here.
    month_start_ms: int = 0


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    key: str
    request_hash: str
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class Created:
    task_id: str
    #: False when an earlier request with the same Idempotency-Key made the task.
    created: bool


@dataclass(frozen=True, slots=True)
class NotEnoughCredits:
    balance: int
    cost: int


@dataclass(frozen=True, slots=True)
class MonthlyCapReached:
    spent: int
    cap: int
    cost: int


@dataclass(frozen=True, slots=True)
class TooManyWaiting:
    waiting: int
    cap: int


@dataclass(frozen=True, slots=True)
class KeyReused:
    """The Idempotency-Key was used, within its lifetime, for a different request."""

    key: str


#: Why the store made no task (nothing was written).
CreateRefusal = NotEnoughCredits | MonthlyCapReached | TooManyWaiting | KeyReused


@dataclass(frozen=True, slots=True)
class BalanceOverflow:
    """A grant would take the balance past what a 64-bit column holds."""

    limit: int


@dataclass(frozen=True, slots=True)
class Failure:
    """How a task ends as ``fail``: the domain's words, the store only writes them."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Rescue:
    requeued: list[str]
    failed: list[str]


@dataclass(frozen=True, slots=True)
class PendingWork:
    """What an idle worker's poll finds, before it writes anything."""

    #: Some task is waiting to be claimed.
    waiting: bool
    #: Some task's lease ran out (its worker stopped): a rescue pass has work.
    expired: bool
    #: Some callback is due (a retry, or one that no sender has taken): senders look.
    callbacks_due: bool


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """The tasks not final yet, as a scrape reports them."""

    #: Tasks per unfinished state (``waiting``, ``queuing``, ``generating``); 0s included.
    by_state: dict[str, int]
    #: ``created_at`` of the oldest waiting task; None when none waits.
    oldest_waiting_ms: int | None


@dataclass(frozen=True, slots=True)
class ClaimedCallback:
    id: str
    lease_token: str
    url: str
    host_key: str
    tries: int
    task: Task
    secret: WebhookSecret


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """A balance (or a task's creditsConsumed) that its ledger rows do not explain."""

    kind: str  # "account" or "task"
    id: str
    recorded: int
    ledger: int


#: A UTC day in epoch milliseconds: what usage is counted by.
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class DayUsage:
    """One UTC day of an account's use: tasks created, credits spent (refunds deducted)."""

    #: Start of the day, epoch milliseconds.
    day_ms: int
    tasks: int
    credits: int


@dataclass(frozen=True, slots=True)
class BatchGroup:
    """Batch-lane tasks of one upstream and model that wait for a job."""

    upstream: str
    model: str
    waiting: int
    #: ``created_at`` of the oldest of them.
    oldest_ms: int
    #: Tasks of jobs already sent, back to ``waiting`` (their holder stopped): resumed.
    in_job: bool = False


@dataclass(frozen=True, slots=True)
class WorkerProcess:
    """Who a worker process is, as it reports itself at each heartbeat."""

    id: str
    host: str
    pid: int
    #: "worker", or "serve" for the API process that runs a worker too.
    role: str
    started_at: int
    concurrency: int
