"""The batch lane's port (``store.ports.BatchStore``) over its queries (``sql.batches``),
mixed into `bananastand.store.sqlstore.SqlStore`: every write is one unit of work of its
runner, like the rest of the store's."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

from bananastand.records import BatchJob, Claim
from bananastand.store.ports import BatchGroup
from bananastand.store.runner import Runner
from bananastand.store.sql import batches


class BatchQueries:
    runner: Runner
    _clock: Callable[[], int]

    async def batch_groups(self) -> list[BatchGroup]:
        return await self.runner.read(batches.batch_groups)

    async def claim_batch_tasks(
        self,
        *,
        lease_token: str,
        holder: str,
        group: tuple[str, str] | None,
        limit: int,
        lease_ms: int,
    ) -> list[Claim]:
        return await self.runner.write(
            partial(
                batches.claim_batch_tasks,
                lease_token=lease_token,
                holder=holder,
                group=group,
                limit=limit,
                now_ms=self._clock(),
                lease_ms=lease_ms,
            )
        )

    async def open_batch_job(self, job: BatchJob, held: Iterable[tuple[str, str]]) -> list[str]:
        return await self.runner.write(partial(batches.open_batch_job, job=job, held=list(held)))

    async def batch_jobs(self, job_ids: Iterable[str]) -> list[BatchJob]:
        return await self.runner.read(partial(batches.get_batch_jobs, job_ids=list(job_ids)))

    async def update_batch_job(
        self,
        job_id: str,
        *,
        state: str | None = None,
        upstream_name: str | None = None,
        outcome: str | None = None,
    ) -> None:
        await self.runner.write(
            partial(
                batches.update_batch_job,
                job_id=job_id,
                now_ms=self._clock(),
                state=state,
                upstream_name=upstream_name,
                outcome=outcome,
            )
        )

    async def to_now_lane(self, held: Iterable[tuple[str, str]]) -> list[str]:
        return await self.runner.write(
            partial(batches.to_now_lane, held=list(held), now_ms=self._clock())
        )
