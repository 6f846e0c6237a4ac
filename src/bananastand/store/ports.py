"""What the domain needs from storage, in the domain's words: small Protocols it owns.

Adapters (``store.sqlite`` today) implement them; the domain (tasks, accounts, billing,
webhooks, files, events, the worker) never imports a driver, a dialect or a connection.
A refusal (no credits, a cap, a reused Idempotency-Key) is a value a method returns, not
an exception: a refused write must never abort the other writes committed with it. The
adapter owns the clock that decides (lease expiry, retry times, idempotency lifetime):
on a database server every machine then agrees on "now".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from bananastand.contract import TaskState
from bananastand.records import (
    Account,
    ApiKey,
    BatchJob,
    Breaker,
    Callback,
    CallbackAttempt,
    Claim,
    DeliveryState,
    LedgerEntry,
    LiveWorker,
    Task,
    WebhookSecret,
)
from bananastand.store.port_values import (
    DAY_MS,
    LIMIT_NAMES,
    Admission,
    BalanceOverflow,
    BatchGroup,
    ClaimedCallback,
    Created,
    CreateRefusal,
    DayUsage,
    Discrepancy,
    Failure,
    IdempotencyClaim,
    KeyReused,
    MonthlyCapReached,
    NewTask,
    NotEnoughCredits,
    PendingWork,
    QueueDepth,
    Rescue,
    StoreUnavailable,
    TooManyWaiting,
    WorkerProcess,
)

__all__ = [
    "DAY_MS",
    "LIMIT_NAMES",
    "Admission",
    "BalanceOverflow",
    "BatchGroup",
    "ClaimedCallback",
    "CreateRefusal",
    "Created",
    "DayUsage",
    "Discrepancy",
    "Failure",
    "IdempotencyClaim",
    "KeyReused",
    "MonthlyCapReached",
    "NewTask",
    "NotEnoughCredits",
    "PendingWork",
    "QueueDepth",
    "Rescue",
    "StoreUnavailable",
    "TooManyWaiting",
    "WorkerProcess",
]

# -- ports ----------------------------------------------------------------------------------


class Clock(Protocol):
    def now_ms(self) -> int:
        """Epoch milliseconds by the store's clock: the one every decision is made by."""
        ...


class TaskStore(Clock, Protocol):
    """The task table, which is also the queue."""

    async def create_task(
        self, new: NewTask, idempotency: IdempotencyClaim | None, admission: Admission
    ) -> Created | CreateRefusal: ...

    async def get_task(self, task_id: str, account_id: str) -> Task | None: ...

    async def list_tasks(
        self,
        account_id: str,
        *,
        state: TaskState | None,
        limit: int,
        before_seq: int | None,
        model: str | None = None,
    ) -> list[Task]:
        """Newest first, of one ``state`` and one ``model`` where given (None: any)."""
        ...

    async def task_versions(self, task_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        """``(state, updated_at)`` of each task that exists."""
        ...

    async def cancel_task(self, task_id: str, account_id: str, failure: Failure) -> Task | None:
        """End a task that is not generating yet; the task as it is now (None: unknown)."""
        ...

    async def claim_tasks(
        self, *, worker_id: str, lease_token: str, limit: int, lease_ms: int
    ) -> list[Claim]: ...

    async def renew_leases(self, held: Iterable[tuple[str, str]], lease_ms: int) -> set[str]:
        """Extend the leases still held; the task ids whose lease is gone."""
        ...

    async def mark_generating(
        self,
        task_id: str,
        lease_token: str,
        *,
        upstream: str | None = None,
        handle: str | None = None,
    ) -> bool:
        """The task is generating, on ``upstream`` (by ``handle``) when named; False when
        the lease was lost."""
        ...

    async def remember_upstream(
        self, task_id: str, lease_token: str, *, upstream: str, handle: str | None
    ) -> bool:
        """Which upstream holds the task and by what handle, before its state changes;
        False when the lease was lost."""
        ...

    async def task_by_upstream_handle(self, upstream: str, handle: str) -> str | None:
        """Our task that ``upstream`` runs as ``handle`` (a relayed task's upstream taskId),
        or None: whom an upstream's callback is about."""
        ...

    async def finish_task(
        self,
        task_id: str,
        lease_token: str,
        *,
        state: TaskState,
        result_keys: str = "",
        failure: Failure | None = None,
        usage: str = "{}",
    ) -> bool:
        """Write the outcome once; False when the lease was lost."""
        ...

    async def release_task(self, task_id: str, lease_token: str) -> bool: ...

    async def rescue_expired(self, max_attempts: int, give_up: Failure) -> Rescue: ...

    async def pending_work(self) -> PendingWork:
        """One cheap read: whether a claim, a rescue or a callback sender would find
        anything. An idle worker's poll asks this first, for its process's sender too, so
        that finding nothing costs one statement, not write transactions."""
        ...

    async def queue_depth(self) -> QueueDepth:
        """One grouped read of the unfinished tasks, for the metrics scrape."""
        ...

    async def purge_idempotency_keys(self, ttl_ms: int) -> int: ...


class Outbox(Clock, Protocol):
    """Callbacks waiting to be delivered, their attempts, and the accounts' secrets."""

    async def claim_due(
        self,
        *,
        lease_token: str,
        limit: int,
        per_host: int,
        in_flight: Mapping[str, int],
        lease_ms: int,
        new_secret: Callable[[], str],
    ) -> list[ClaimedCallback]: ...

    async def record_attempt(
        self,
        *,
        callback_id: str,
        lease_token: str,
        attempt: CallbackAttempt,
        state: DeliveryState,
        retry_in_ms: int | None,
    ) -> bool:
        """Store the attempt and the next step; ``retry_in_ms`` from the store's now."""
        ...

    async def release_callbacks(self, held: Iterable[tuple[str, str]]) -> int: ...

    async def callback_of_task(
        self, task_id: str, account_id: str
    ) -> tuple[Task | None, Callback | None]: ...

    async def resend(self, task_id: str, account_id: str) -> bool: ...

    async def account_secret(
        self, account_id: str, new_secret: Callable[[], str], *, rotate: bool
    ) -> WebhookSecret | None: ...


class AccountStore(Clock, Protocol):
    async def create_account(
        self, account_id: str, name: str, starting_credits: int
    ) -> Account: ...

    async def get_account(self, account_id: str) -> Account | None: ...

    async def list_accounts(self) -> list[Account]: ...

    async def count_accounts(self) -> int: ...

    async def set_limits(self, account_id: str, values: Mapping[str, object]) -> bool: ...

    async def insert_key(
        self,
        key: ApiKey,
        secret_hash: str,
        new_account_name: str | None,
        starting_credits: int = 0,
    ) -> bool: ...

    async def find_key_by_hash(self, secret_hash: str) -> ApiKey | None: ...

    async def get_key(self, key_id: str) -> ApiKey | None: ...

    async def list_keys(self, account_id: str | None = None) -> list[ApiKey]: ...

    async def revoke_key(self, key_id: str) -> bool: ...

    async def mark_key_used(self, key_id: str) -> None:
        """Record that the key was used now (by the store's clock); a later use already
        recorded is kept."""
        ...


class Ledger(Clock, Protocol):
    async def balance(self, account_id: str) -> int | None: ...

    async def grant(
        self, account_id: str, amount: int, note: str
    ) -> int | NotEnoughCredits | BalanceOverflow | None:
        """The new balance, or why not (None: no such account); one atomic statement."""
        ...

    async def entries(
        self, account_id: str, limit: int, before_seq: int | None = None
    ) -> list[LedgerEntry]:
        """Newest first; only rows older than ``before_seq`` where given (the next page)."""
        ...

    async def usage_by_day(self, account_id: str, since_ms: int) -> list[DayUsage]:
        """Per UTC day since ``since_ms``, oldest first: only days with a task or a charge."""
        ...

    async def audit(self) -> list[Discrepancy]: ...


class SwitchStore(Protocol):
    async def all_switches(self) -> dict[str, str]: ...

    async def put_switch(self, name: str, value: str) -> None: ...

    async def remove_switch(self, name: str) -> bool: ...


class WorkerRegistry(Clock, Protocol):
    """The live worker processes of the cluster, and named leases that let one of them
    run a periodic job for all. Times are the store's clock, so machines agree on them."""

    async def heartbeat(
        self, process: WorkerProcess, in_flight: int, live_for_ms: int
    ) -> list[str]:
        """Write this process's row: its heartbeat now, live for ``live_for_ms`` unless it
        beats again; answer the ids of the live workers, this one included, in order.
        One transaction: a heartbeat is the registry's whole idle cost."""
        ...

    async def remove_worker(self, worker_id: str) -> bool: ...

    async def live_workers(self) -> list[LiveWorker]:
        """The workers whose last heartbeat's ``live_for_ms`` has not run out, by host
        and pid."""
        ...

    async def forget_workers(self, dead_for_ms: int) -> int:
        """Delete the rows of workers no longer live for longer than this (they died
        without leaving)."""
        ...

    async def take_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        """Take the lease ``name`` for ``ttl_ms`` from now, or renew it when ``holder``
        has it already; False while another holder's lease has not expired. Atomic: of
        any number of callers at once, at most one holds it."""
        ...

    async def release_lease(self, name: str, holder: str) -> bool:
        """Let the lease go (only its holder can) so another may take it at once."""
        ...


class BatchStore(Protocol):
    """The batch lane's side of the task table, and its jobs. Its tasks end through
    ``TaskStore.finish_task`` like a worker's: refunded once, called back alike."""

    async def batch_groups(self) -> list[BatchGroup]: ...

    async def claim_batch_tasks(
        self,
        *,
        lease_token: str,
        holder: str,
        group: tuple[str, str] | None,
        limit: int,
        lease_ms: int,
    ) -> list[Claim]:
        """Waiting batch-lane tasks of the (upstream, model) ``group`` not in a job yet,
        or (None) those back from a job that was sent, oldest first."""
        ...

    async def open_batch_job(self, job: BatchJob, held: Iterable[tuple[str, str]]) -> list[str]:
        """Record the job with the held tasks (id, lease token) in it; the ids still held."""
        ...

    async def batch_jobs(self, job_ids: Iterable[str]) -> list[BatchJob]: ...

    async def update_batch_job(
        self,
        job_id: str,
        *,
        state: str | None = None,
        upstream_name: str | None = None,
        outcome: str | None = None,
    ) -> None: ...

    async def to_now_lane(self, held: Iterable[tuple[str, str]]) -> list[str]:
        """The held tasks back to ``waiting`` on the now lane; the ids moved."""
        ...


class BreakerStore(Clock, Protocol):
    """The cluster's circuit breakers, one row per upstream that has failed: every
    process reads them (briefly cached) and writes only on failure or a change of state."""

    async def breakers(self) -> list[Breaker]: ...

    async def breaker_failed(self, name: str, *, threshold: int, trip: bool) -> Breaker:
        """Count one more consecutive failure, atomically; the breaker opens at
        ``threshold`` failures, at once when ``trip``, and again after a failed trial."""
        ...

    async def breaker_closed(self, name: str) -> None:
        """A success: no failures, closed."""
        ...

    async def breaker_trial(self, name: str, cooldown_ms: int) -> bool:
        """Half-open the breaker for one trial once its cool-down has passed (an open
        one since it opened, a half-open one since its last trial began); of any number
        of callers at once, one wins."""
        ...


class Store(
    TaskStore,
    Outbox,
    AccountStore,
    Ledger,
    SwitchStore,
    WorkerRegistry,
    BreakerStore,
    BatchStore,
    Protocol,
):
    """Everything at once: what an adapter is, and what a process opens."""

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
