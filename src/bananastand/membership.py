"""A worker process's place in the cluster: its row in the live-worker registry, kept
fresh by a heartbeat, and the lease that makes one process of the cluster the one that
runs the periodic jobs (the retention sweep, the purges) for all.

Idle cost is what this is shaped by: ten idle workers must put only a few queries a
second on the database, all roles together. So a heartbeat is one transaction that also
counts the live workers; only the lease's holder renews it, with its heartbeat; the
others ask for it only when a job of theirs falls due (hourly by default), which is also
how one of them takes over, a lease time after the holder died.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from bananastand.settings import Settings
from bananastand.store.ports import WorkerProcess, WorkerRegistry
from bananastand.wakeups import Topic, Wakeups

log = logging.getLogger(__name__)

#: A worker whose last heartbeat is older than this many of its intervals is not live; the
#: jobs lease lasts as long, so a holder that misses two heartbeats in a row keeps it.
LIVE_HEARTBEATS = 3
#: The lease whose holder runs the cluster's periodic jobs.
JOBS_LEASE = "periodic-jobs"


class Membership:
    def __init__(
        self,
        registry: WorkerRegistry,
        process: WorkerProcess,
        settings: Settings,
        in_flight: Callable[[], int],
        wakeups: Wakeups,
    ) -> None:
        """``wakeups``: where it says that it joined or left, and hears of the others'
        (each worker rereads the live ones then, so that all soon agree on whose turn
        a task is, not only at their next heartbeats)."""
        self._registry = registry
        self._wakeups = wakeups
        wakeups.subscribe(Topic.WORKERS, lambda _ids: self._reread_soon())
        self._rereading: asyncio.Task[None] | None = None
        self._announced = False
        self._leaving = False
        self._process = process
        self._in_flight = in_flight
        self._interval = settings.worker_heartbeat_seconds
        self._live_for_ms = int(LIVE_HEARTBEATS * self._interval * 1000)
        #: The ids of the cluster's live workers, in order, as of the last heartbeat (none
        #: until the first one answers).
        self._live: list[str] = []
        self._leading = False

    @property
    def live_workers(self) -> int:
        """Live workers of the cluster, this one included, as of the last heartbeat (1
        until the first one answers): what a per-process budget is split by."""
        return max(1, len(self._live))

    def my_turn(self, turn: int) -> bool:
        """Whether ``turn`` (a number drawn by whoever asks, the same in every process)
        falls to this worker among the live ones, as of the last heartbeat: every worker
        that saw the same heartbeats agrees on which one it falls to. A worker that does
        not see itself live yet takes every turn."""
        live = self._live
        if self._process.id not in live:
            return True
        return live[turn % len(live)] == self._process.id

    async def run(self) -> None:
        """Heartbeat until cancelled; a heartbeat that fails is retried at the next one."""
        while True:
            try:
                await self._beat()
            except Exception:
                log.exception("worker heartbeat failed; retrying")
            await asyncio.sleep(self._interval)

    def _reread_soon(self) -> None:
        if self._leaving:
            return
        if self._rereading is None or self._rereading.done():
            self._rereading = asyncio.create_task(self._reread(), name="worker-registry")

    async def _reread(self) -> None:
        try:
            live = await self._registry.live_workers()
        except Exception:
            log.exception("could not read the live workers; the next heartbeat tells")
            return
        self._live = sorted(worker.id for worker in live)

    async def _beat(self) -> None:
        beat = self._registry.heartbeat(self._process, self._in_flight(), self._live_for_ms)
        if not self._leading:
            self._live = await beat
        else:
            # Sent together, so that the writer may commit both in one transaction.
            self._live, self._leading = await asyncio.gather(beat, self._take_lease())
            if not self._leading:
                log.warning("lost the periodic-jobs lease to another worker")
        if not self._announced:  # its first heartbeat answered: it is live now
            self._announced = True
            self._wakeups.publish(Topic.WORKERS)

    async def lead(self) -> bool:
        """Whether this process runs the cluster's periodic jobs now: takes the lease, or
        renews it when held (asked just before each job, so that a holder that stalled
        past its lease never runs one beside its successor)."""
        was_leading, self._leading = self._leading, await self._take_lease()
        if self._leading and not was_leading:
            log.info("took the periodic-jobs lease: this worker runs the cluster's jobs")
        return self._leading

    async def _take_lease(self) -> bool:
        return await self._registry.take_lease(JOBS_LEASE, self._process.id, self._live_for_ms)

    async def leave(self) -> None:
        """Leave the registry at a clean stop: the row goes at once, and the lease too, so
        another worker can take over the jobs without waiting out the lease."""
        self._leaving = True
        if self._rereading is not None:
            self._rereading.cancel()
        try:
            await self._registry.remove_worker(self._process.id)
            self._wakeups.publish(Topic.WORKERS)
            if self._leading:
                await self._registry.release_lease(JOBS_LEASE, self._process.id)
        except Exception:
            # The row then drops out of the listing when its heartbeats are too old.
            log.exception("could not leave the worker registry")
