"""Every port of ``store.ports`` over SQLAlchemy Core queries (``store.sql``).

The queries are portable; what differs between databases is how units of work run: where
(a thread, the event loop), in which transactions (SQLite commits writes in groups), and
which clock decides. That is a ``Runner``, which each adapter brings. This class only
chooses, per query, whether it is a point read (``lookup``, or ``lookup_keyed`` where the
runner may batch the callers waiting at once), a read, or a write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial

from bananastand.contract import TaskState
from bananastand.records import (
    Account,
    ApiKey,
    Callback,
    CallbackAttempt,
    Claim,
    DeliveryState,
    LedgerEntry,
    Task,
    WebhookSecret,
)
from bananastand.store.batchstore import BatchQueries
from bananastand.store.clusterstore import ClusterQueries
from bananastand.store.ports import (
    Admission,
    BalanceOverflow,
    ClaimedCallback,
    Created,
    CreateRefusal,
    DayUsage,
    Discrepancy,
    Failure,
    IdempotencyClaim,
    NewTask,
    NotEnoughCredits,
    PendingWork,
    QueueDepth,
    Rescue,
)
from bananastand.store.runner import KeyedLookup, Runner
from bananastand.store.sql import (
    accounts,
    callbacks,
    idempotency,
    leases,
    ledger,
    lookups,
    probes,
    switches,
    tasks,
)

#: recordInfo's lookup: every polling client runs it over and over.
TASK_OF_ACCOUNT = KeyedLookup(one=lookups.task_of_account, many=lookups.tasks_of_accounts)


class SqlStore(BatchQueries, ClusterQueries):
    def __init__(self, runner: Runner, clock: Callable[[], int]) -> None:
        self.runner = runner
        self._clock = clock

    def now_ms(self) -> int:
        return self._clock()

    async def ping(self) -> None:
        await self.runner.ping()

    async def close(self) -> None:
        await self.runner.close()

    # -- tasks ----------------------------------------------------------------------------

    async def create_task(
        self, new: NewTask, idempotency: IdempotencyClaim | None, admission: Admission
    ) -> Created | CreateRefusal:
        return await self.runner.write(
            partial(
                tasks.create_task,
                new=new,
                now_ms=self._clock(),
                idempotency=idempotency,
                admission=admission,
            )
        )

    async def get_task(self, task_id: str, account_id: str) -> Task | None:
        return await self.runner.lookup_keyed(TASK_OF_ACCOUNT, (task_id, account_id))

    async def list_tasks(
        self,
        account_id: str,
        *,
        state: TaskState | None,
        limit: int,
        before_seq: int | None,
        model: str | None = None,
    ) -> list[Task]:
        return await self.runner.read(
            partial(
                tasks.list_tasks,
                account_id=account_id,
                state=state,
                limit=limit,
                before_seq=before_seq,
                model=model,
            )
        )

    async def task_versions(self, task_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        # A read, not a lookup: with many streams open this is a long IN list.
        return await self.runner.read(partial(tasks.task_versions, task_ids=task_ids))

    async def cancel_task(self, task_id: str, account_id: str, failure: Failure) -> Task | None:
        return await self.runner.write(
            partial(
                tasks.cancel_task,
                task_id=task_id,
                account_id=account_id,
                now_ms=self._clock(),
                failure=failure,
            )
        )

    async def claim_tasks(
        self, *, worker_id: str, lease_token: str, limit: int, lease_ms: int
    ) -> list[Claim]:
        return await self.runner.write(
            partial(
                leases.claim_tasks,
                worker_id=worker_id,
                lease_token=lease_token,
                limit=limit,
                now_ms=self._clock(),
                lease_ms=lease_ms,
            )
        )

    async def renew_leases(self, held: Iterable[tuple[str, str]], lease_ms: int) -> set[str]:
        return await self.runner.write(
            partial(leases.renew_leases, held=held, now_ms=self._clock(), lease_ms=lease_ms)
        )

    async def mark_generating(
        self,
        task_id: str,
        lease_token: str,
        *,
        upstream: str | None = None,
        handle: str | None = None,
    ) -> bool:
        return await self.runner.write(
            partial(
                leases.mark_generating,
                task_id=task_id,
                lease_token=lease_token,
                now_ms=self._clock(),
                upstream=upstream,
                handle=handle,
            )
        )

    async def remember_upstream(
        self, task_id: str, lease_token: str, *, upstream: str, handle: str | None
    ) -> bool:
        return await self.runner.write(
            partial(
                leases.remember_upstream,
                task_id=task_id,
                lease_token=lease_token,
                now_ms=self._clock(),
                upstream=upstream,
                handle=handle,
            )
        )

    async def task_by_upstream_handle(self, upstream: str, handle: str) -> str | None:
        return await self.runner.lookup(
            partial(tasks.task_by_upstream_handle, upstream=upstream, handle=handle)
        )

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
        return await self.runner.write(
            partial(
                leases.finish_task,
                task_id=task_id,
                lease_token=lease_token,
                now_ms=self._clock(),
                state=state,
                result_keys=result_keys,
                failure=failure,
                usage=usage,
            )
        )

    async def release_task(self, task_id: str, lease_token: str) -> bool:
        return await self.runner.write(
            partial(
                leases.release_task, task_id=task_id, lease_token=lease_token, now_ms=self._clock()
            )
        )

    async def pending_work(self) -> PendingWork:
        return await self.runner.read(partial(probes.pending_work, now_ms=self._clock()))

    async def queue_depth(self) -> QueueDepth:
        return await self.runner.read(probes.queue_depth)

    async def rescue_expired(self, max_attempts: int, give_up: Failure) -> Rescue:
        return await self.runner.write(
            partial(
                leases.rescue_expired,
                now_ms=self._clock(),
                max_attempts=max_attempts,
                give_up=give_up,
            )
        )

    async def purge_idempotency_keys(self, ttl_ms: int) -> int:
        return await self.runner.write(
            partial(idempotency.purge_idempotency_keys, older_than_ms=self._clock() - ttl_ms)
        )

    # -- the outbox -----------------------------------------------------------------------

    async def claim_due(
        self,
        *,
        lease_token: str,
        limit: int,
        per_host: int,
        in_flight: Mapping[str, int],
        lease_ms: int,
        new_secret: Callable[[], str],
    ) -> list[ClaimedCallback]:
        return await self.runner.write(
            partial(
                callbacks.claim_due,
                lease_token=lease_token,
                limit=limit,
                per_host=per_host,
                in_flight=in_flight,
                now_ms=self._clock(),
                lease_ms=lease_ms,
                new_secret=new_secret,
            )
        )

    async def record_attempt(
        self,
        *,
        callback_id: str,
        lease_token: str,
        attempt: CallbackAttempt,
        state: DeliveryState,
        retry_in_ms: int | None,
    ) -> bool:
        now = self._clock()
        return await self.runner.write(
            partial(
                callbacks.record_attempt,
                callback_id=callback_id,
                lease_token=lease_token,
                attempt=attempt,
                state=state,
                next_attempt_at=None if retry_in_ms is None else now + retry_in_ms,
                now_ms=now,
            )
        )

    async def release_callbacks(self, held: Iterable[tuple[str, str]]) -> int:
        return await self.runner.write(partial(callbacks.release, held=held))

    async def callback_of_task(
        self, task_id: str, account_id: str
    ) -> tuple[Task | None, Callback | None]:
        return await self.runner.read(
            partial(callbacks.callback_of_task, task_id=task_id, account_id=account_id)
        )

    async def resend(self, task_id: str, account_id: str) -> bool:
        return await self.runner.write(
            partial(callbacks.resend, task_id=task_id, account_id=account_id, now_ms=self._clock())
        )

    async def account_secret(
        self, account_id: str, new_secret: Callable[[], str], *, rotate: bool
    ) -> WebhookSecret | None:
        return await self.runner.write(
            partial(
                callbacks.account_secret,
                account_id=account_id,
                now_ms=self._clock(),
                new_secret=new_secret,
                rotate=rotate,
            )
        )

    # -- accounts and keys ----------------------------------------------------------------

    async def create_account(self, account_id: str, name: str, starting_credits: int) -> Account:
        return await self.runner.write(
            partial(
                accounts.create_account,
                account_id=account_id,
                name=name,
                now_ms=self._clock(),
                starting_credits=starting_credits,
            )
        )

    async def get_account(self, account_id: str) -> Account | None:
        return await self.runner.lookup(partial(accounts.get_account, account_id=account_id))

    async def list_accounts(self) -> list[Account]:
        return await self.runner.read(accounts.list_accounts)

    async def count_accounts(self) -> int:
        return await self.runner.read(accounts.count_accounts)

    async def set_limits(self, account_id: str, values: Mapping[str, object]) -> bool:
        return await self.runner.write(
            partial(accounts.set_limits, account_id=account_id, values=values)
        )

    async def insert_key(
        self,
        key: ApiKey,
        secret_hash: str,
        new_account_name: str | None,
        starting_credits: int = 0,
    ) -> bool:
        return await self.runner.write(
            partial(
                accounts.insert_key,
                key=key,
                secret_hash=secret_hash,
                new_account_name=new_account_name,
                starting_credits=starting_credits,
            )
        )

    async def find_key_by_hash(self, secret_hash: str) -> ApiKey | None:
        return await self.runner.lookup(partial(accounts.find_key_by_hash, secret_hash=secret_hash))

    async def get_key(self, key_id: str) -> ApiKey | None:
        return await self.runner.read(partial(accounts.get_key, key_id=key_id))

    async def list_keys(self, account_id: str | None = None) -> list[ApiKey]:
        return await self.runner.read(partial(accounts.list_keys, account_id=account_id))

    async def mark_key_used(self, key_id: str) -> None:
        await self.runner.write(partial(accounts.mark_key_used, key_id=key_id, at_ms=self._clock()))

    async def revoke_key(self, key_id: str) -> bool:
        return await self.runner.write(
            partial(accounts.revoke_key, key_id=key_id, now_ms=self._clock())
        )

    # -- the ledger -----------------------------------------------------------------------

    async def balance(self, account_id: str) -> int | None:
        return await self.runner.read(partial(ledger.balance, account_id=account_id))

    async def grant(
        self, account_id: str, amount: int, note: str
    ) -> int | NotEnoughCredits | BalanceOverflow | None:
        return await self.runner.write(
            partial(
                ledger.grant, account_id=account_id, amount=amount, now_ms=self._clock(), note=note
            )
        )

    async def entries(
        self, account_id: str, limit: int, before_seq: int | None = None
    ) -> list[LedgerEntry]:
        return await self.runner.read(
            partial(ledger.entries, account_id=account_id, limit=limit, before_seq=before_seq)
        )

    async def usage_by_day(self, account_id: str, since_ms: int) -> list[DayUsage]:
        return await self.runner.read(
            partial(ledger.usage_by_day, account_id=account_id, since_ms=since_ms)
        )

    async def audit(self) -> list[Discrepancy]:
        return await self.runner.read(ledger.audit)

    # -- switches -------------------------------------------------------------------------

    async def all_switches(self) -> dict[str, str]:
        return await self.runner.read(switches.all_switches)

    async def put_switch(self, name: str, value: str) -> None:
        await self.runner.write(
            partial(switches.put_switch, name=name, value=value, now_ms=self._clock())
        )

    async def remove_switch(self, name: str) -> bool:
        return await self.runner.write(partial(switches.remove_switch, name=name))
