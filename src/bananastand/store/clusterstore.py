"""The cluster's ports (``store.ports.WorkerRegistry``, ``store.ports.BreakerStore``) over
their queries (``sql.workers``, ``sql.breakers``), mixed into
`bananastand.store.sqlstore.SqlStore`: the rows every process of a deployment shares
about the others (who is live, who holds a named lease, which upstream's breaker is
open), each write one unit of work of its runner like the rest of the store's."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from bananastand.records import Breaker, LiveWorker
from bananastand.store.ports import WorkerProcess
from bananastand.store.runner import Runner
from bananastand.store.sql import breakers, workers


class ClusterQueries:
    runner: Runner
    _clock: Callable[[], int]

    # -- the worker registry and leases ---------------------------------------------------

    async def heartbeat(
        self, process: WorkerProcess, in_flight: int, live_for_ms: int
    ) -> list[str]:
        now = self._clock()
        beat = partial(workers.heartbeat, process=process, in_flight=in_flight, now_ms=now)
        return await self.runner.write(partial(beat, live_for_ms=live_for_ms))

    async def remove_worker(self, worker_id: str) -> bool:
        return await self.runner.write(partial(workers.remove_worker, worker_id=worker_id))

    async def live_workers(self) -> list[LiveWorker]:
        return await self.runner.read(partial(workers.live_workers, now_ms=self._clock()))

    async def forget_workers(self, dead_for_ms: int) -> int:
        since = self._clock() - dead_for_ms
        return await self.runner.write(partial(workers.forget_workers, dead_since_ms=since))

    async def take_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        now = self._clock()
        take = partial(workers.take_lease, name=name, holder=holder, now_ms=now, ttl_ms=ttl_ms)
        return await self.runner.write(take)

    async def release_lease(self, name: str, holder: str) -> bool:
        return await self.runner.write(partial(workers.release_lease, name=name, holder=holder))

    # -- the circuit breakers -------------------------------------------------------------

    async def breakers(self) -> list[Breaker]:
        return await self.runner.read(breakers.all_breakers)

    async def breaker_failed(self, name: str, *, threshold: int, trip: bool) -> Breaker:
        count = partial(breakers.breaker_failed, name=name, threshold=threshold, trip=trip)
        return await self.runner.write(partial(count, now_ms=self._clock()))

    async def breaker_closed(self, name: str) -> None:
        await self.runner.write(partial(breakers.breaker_closed, name=name, now_ms=self._clock()))

    async def breaker_trial(self, name: str, cooldown_ms: int) -> bool:
        trial = partial(breakers.breaker_trial, name=name, cooldown_ms=cooldown_ms)
        return await self.runner.write(partial(trial, now_ms=self._clock()))
