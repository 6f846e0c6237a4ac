"""Runs tasks: claims waiting ones with a lease, runs each through its provider, and
writes the outcome fenced by the lease.

One worker runs many tasks at once on one event loop (``worker_concurrency``). While it
holds tasks it renews their leases; a worker that dies stops renewing, and any worker's
rescue pass puts its tasks back to ``waiting`` (or fails them after ``max_attempts``).
On shutdown it stops claiming, lets running tasks finish within the grace period, and
hands the rest back untouched. When it claims (only while tasks may be waiting for it,
taking turns with the other workers at tasks made elsewhere) is ``claiming``'s to say.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping
from functools import partial
from typing import Protocol

from bananastand.batch_lane import BatchLane
from bananastand.breakers import Breakers
from bananastand.claiming import Claiming
from bananastand.contract import FAIL_INTERNAL, Lane, TaskInput, TaskState
from bananastand.errors import LeaseLost, TaskFailure, UpstreamTimeout
from bananastand.failover import RouteRunner
from bananastand.fetch import SafeFetcher
from bananastand.ids import now_ms, random_token
from bananastand.inputs import InputLoader
from bananastand.logs import bind_task
from bananastand.membership import Membership
from bananastand.metrics import Metrics
from bananastand.outcomes import Outcomes, save_result
from bananastand.providers.base import GenerationRequest
from bananastand.providers.batch_base import BatchUpstream
from bananastand.providers.registry import ProviderRegistry
from bananastand.records import Claim
from bananastand.retention import retention_rules, sweep
from bananastand.settings import Settings
from bananastand.storage.base import Storage
from bananastand.storage.links import LinkSigner
from bananastand.store.ports import (
    BatchStore,
    BreakerStore,
    Failure,
    StoreUnavailable,
    TaskStore,
    WorkerProcess,
    WorkerRegistry,
)
from bananastand.wakeups import Topic, Wakeups

log = logging.getLogger(__name__)

#: How often the cluster deletes idempotency keys past their lifetime, and the registry
#: rows of workers silent for longer than this.
_PURGE_INTERVAL = 3600.0


class WorkerStore(TaskStore, WorkerRegistry, BreakerStore, BatchStore, Protocol):
    """What a worker needs of the store: the queue, the registry it heartbeats, the
    upstreams' breakers, and the batch lane's tasks and jobs (for the worker that runs
    the lane)."""


class Worker:
    def __init__(
        self,
        store: WorkerStore,
        settings: Settings,
        providers: ProviderRegistry,
        storage: Storage,
        fetcher: SafeFetcher,
        *,
        links: LinkSigner,
        metrics: Metrics,
        wakeups: Wakeups | None = None,
        role: str = "worker",
        batch_upstreams: Mapping[str, BatchUpstream] | None = None,
    ) -> None:
        """``role``: what the registry lists this process as ("serve": the API runs it);
        ``batch_upstreams``: the Batch APIs this process may run the batch lane on (it
        does while it holds the cluster's batch-lane lease)."""
        self._store = store
        self._metrics = metrics
        # Where it tells every process what it committed (tasks changed, callbacks due,
        # tasks handed back) and hears that tasks were created anywhere.
        self._wakeups = wakeups or Wakeups()
        self._claiming = Claiming(settings.worker_turn_look_seconds)
        self._wakeups.subscribe(Topic.WORK, lambda _ids: self.wake())
        self._settings = settings
        self._outcomes = Outcomes(store, self._wakeups, metrics)
        self._providers = providers
        breakers = Breakers(
            store, providers.breaker_policy, refresh_s=settings.upstream_breaker_refresh_seconds
        )
        self._route = RouteRunner(store, breakers, metrics)
        self._storage = storage
        self._inputs = InputLoader(
            fetcher,
            storage,
            links=links,
            concurrency=settings.fetch_concurrency,
            max_bytes=settings.max_input_image_bytes,
            max_pixels=settings.max_input_image_pixels,
        )
        host, pid = socket.gethostname(), os.getpid()
        self.worker_id = f"{host}:{pid}:{random_token(6)}"
        self._membership = Membership(
            store,
            WorkerProcess(
                id=self.worker_id,
                host=host,
                pid=pid,
                role=role,
                started_at=store.now_ms(),
                concurrency=settings.worker_concurrency,
            ),
            settings,
            in_flight=lambda: self.running,
            wakeups=self._wakeups,
        )
        # Tasks created in another process are claimed by one live worker, in turn.
        self._wakeups.take_turns(self._membership.my_turn, self._claiming.turn_passed)
        self._lease_ms = int(settings.lease_seconds * 1000)
        self._batch_lane = (
            BatchLane(
                store,
                settings,
                batch_upstreams,
                storage=storage,
                inputs=self._inputs,
                outcomes=self._outcomes,
                wakeups=self._wakeups,
                holder=self.worker_id,
            )
            if batch_upstreams
            else None
        )
        self._running: dict[str, tuple[asyncio.Task[None], Claim]] = {}
        self._stopping = asyncio.Event()
        #: When ``_look_around`` last ran (monotonic): the upkeep looks only if no poll did.
        self._looked_at = 0.0

    def wake(self) -> None:
        """Tasks became claimable: look for work now rather than at the next poll (or,
        with no free slot, as soon as one frees up)."""
        self._claiming.announced()

    def stop(self) -> None:
        self._stopping.set()
        self._claiming.interrupt()

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def live_workers(self) -> int:
        """Live worker processes of the whole cluster, this one included (at least 1), as
        of this worker's last heartbeat: no query of its own. What a per-process budget
        (the upstream limiter's, without Redis) is divided by to hold the cluster to it."""
        return self._membership.live_workers

    async def run(self) -> None:
        """Work until ``stop()``; then drain and return."""
        log.info(
            "worker started",
            extra={"worker_id": self.worker_id, "concurrency": self._settings.worker_concurrency},
        )
        heartbeat = asyncio.create_task(self._membership.run(), name="worker-heartbeat")
        upkeep = asyncio.create_task(self._upkeep(), name="worker-upkeep")
        lane = self._batch_lane
        batches = asyncio.create_task(lane.run(), name="batch-lane") if lane else None
        try:
            await self._rescue()
            claiming = self._claiming
            while not self._stopping.is_set():
                if self._free_slots() > 0:
                    if claiming.look_due:
                        claiming.looked(await self._look_around())
                    if claiming.maybe_waiting:
                        await self._claim()
                        continue
                await claiming.wait(self._settings.poll_interval_seconds)
            await self._drain()
        finally:
            self._claiming.close()
            if lane is not None and batches is not None:
                lane.stop()
                await batches  # hands back the batch tasks it holds
            # The heartbeat goes on through the drain: a draining worker is still live.
            for loop in (upkeep, heartbeat):
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
            await self._membership.leave()
            log.info("worker stopped", extra={"worker_id": self.worker_id})

    async def _look_around(self) -> bool:
        """A poll (no wake-up) first asks what there is to do, for this worker and its
        process's callback sender, in one read: finding nothing costs one statement, not
        a claim's write transaction. Whether tasks are waiting."""
        self._looked_at = time.monotonic()
        try:
            pending = await self._store.pending_work()
        except Exception:
            log.exception("looking for work failed; trying again at the next poll")
            return False
        if pending.expired:
            await self._rescue()
        if pending.callbacks_due:
            self._wakeups.wake_here(Topic.CALLBACKS)
        return pending.waiting

    def _free_slots(self) -> int:
        return self._settings.worker_concurrency - len(self._running)

    async def _claim(self) -> None:
        free = self._free_slots()
        self._claiming.claiming()
        claims = await self._store.claim_tasks(
            worker_id=self.worker_id,
            lease_token=random_token(24),
            limit=free,
            lease_ms=self._lease_ms,
        )
        self._metrics.worker_claims.labels("true" if claims else "false").inc()
        if claims:
            self._wakeups.publish(Topic.TASKS, [claim.task.id for claim in claims])
        for claim in claims:
            runner = asyncio.create_task(self._run(claim), name=f"task-{claim.task.id}")
            self._running[claim.task.id] = (runner, claim)
            runner.add_done_callback(partial(self._finished, claim.task.id))
        self._claiming.claimed(len(claims), free)

    def _finished(self, task_id: str, _runner: asyncio.Task[None]) -> None:
        self._running.pop(task_id, None)
        self._claiming.slot_freed()

    async def _drain(self) -> None:
        if self._running:
            log.info("draining %d running tasks", len(self._running))
            runners = [runner for runner, _ in self._running.values()]
            await asyncio.wait(runners, timeout=self._settings.shutdown_grace_seconds)
        leftover = list(self._running.values())
        for runner, _ in leftover:
            runner.cancel()
        for runner, claim in leftover:
            with contextlib.suppress(asyncio.CancelledError):
                await runner
            released = await self._store.release_task(claim.task.id, claim.lease_token)
            if released:
                self._wakeups.publish(Topic.TASKS, (claim.task.id,))
                self._wakeups.publish(Topic.WORK)  # for another worker to take it now
            with bind_task(claim.task.id):
                log.info("handed back unfinished task" if released else "task lease was gone")

    async def _upkeep(self) -> None:
        """Renew our leases often; rescue tasks of dead workers; and now and then, in the
        one worker of the cluster that holds the periodic-jobs lease, forget expired
        idempotency keys and sweep expired files. A worker that does not hold the lease
        asks for it again when its next job falls due."""
        interval = max(0.05, self._settings.lease_seconds / 3)
        sweep_every = self._settings.sweep_interval_seconds
        next_purge = 0.0
        next_sweep = 0.0 if sweep_every > 0 else float("inf")
        while True:
            await asyncio.sleep(interval)
            try:
                await self._renew()
                # No poll since the last round: a busy worker (or one woken often).
                if time.monotonic() - self._looked_at >= interval and await self._look_around():
                    self.wake()
                now = time.monotonic()
                purge_due, sweep_due = now >= next_purge, now >= next_sweep
                if (purge_due or sweep_due) and await self._membership.lead():
                    if purge_due:
                        await self._purge()
                    if sweep_due:
                        await self._sweep()
                if purge_due:
                    next_purge = now + _PURGE_INTERVAL
                if sweep_due:
                    next_sweep = now + sweep_every
            except Exception:
                log.exception("worker upkeep failed; retrying")

    async def _purge(self) -> None:
        await self._store.purge_idempotency_keys(self._settings.idempotency_ttl_seconds * 1000)
        await self._store.forget_workers(int(_PURGE_INTERVAL * 1000))

    async def _sweep(self) -> None:
        rules = retention_rules(self._settings)
        deleted = await sweep(self._storage, rules, now_ms=self._store.now_ms())
        log.info("retention sweep done", extra={"worker_id": self.worker_id, "deleted": deleted})

    async def _renew(self) -> None:
        held = [(task_id, claim.lease_token) for task_id, (_, claim) in self._running.items()]
        if not held:
            return
        lost = await self._store.renew_leases(held, self._lease_ms)
        for task_id in lost:
            entry = self._running.get(task_id)
            if entry is not None:
                with bind_task(task_id):
                    log.warning("lease lost; abandoning the task here")
                entry[0].cancel()

    async def _rescue(self) -> None:
        attempts = self._settings.max_attempts
        rescued = await self._store.rescue_expired(
            attempts,
            Failure(
                FAIL_INTERNAL, f"the worker running this task stopped {attempts} times; giving up"
            ),
        )
        for task_id in rescued.requeued:
            with bind_task(task_id):
                log.warning("rescued a task whose worker stopped; back to waiting")
        for task_id in rescued.failed:
            with bind_task(task_id):
                log.error("task failed: its worker stopped too many times")
            # The rescue knows ids, not models: these few are counted under no model.
            self._metrics.tasks_finished.labels("", TaskState.FAIL.value, FAIL_INTERNAL).inc()
        if rescued.requeued or rescued.failed:
            self._wakeups.publish(Topic.TASKS, [*rescued.requeued, *rescued.failed])
        if rescued.requeued:
            self._wakeups.publish(Topic.WORK)
        if rescued.failed:
            self._wakeups.publish(Topic.CALLBACKS)

    async def _run(self, claim: Claim) -> None:
        task = claim.task
        with bind_task(task.id), self._metrics.tasks_in_flight.track_inprogress():
            log.info("task claimed", extra={"attempt": task.attempts, "provider": task.provider})
            try:
                await self._attempt(claim)
            except StoreUnavailable as exc:
                # Not the task's fault: it is no longer renewed, so once its lease expires
                # a worker runs it again (fenced: an outcome written meanwhile stands).
                log.warning("the database went away mid-task; it runs again later: %s", exc)

    async def _attempt(self, claim: Claim) -> None:
        try:
            async with asyncio.timeout(self._settings.task_timeout_seconds):
                outcome = await self._generate(claim)
        except TimeoutError:
            failure: TaskFailure = UpstreamTimeout(
                f"timed out after {self._settings.task_timeout_seconds:g} s"
            )
            await self._finish(claim, TaskState.FAIL, fail=failure)
        except TaskFailure as failure:
            await self._finish(claim, TaskState.FAIL, fail=failure)
        except LeaseLost:
            log.warning("lease lost before the task could start generating")
        except StoreUnavailable:
            raise
        except Exception:
            log.exception("task crashed")
            await self._finish(
                claim,
                TaskState.FAIL,
                fail=TaskFailure(f"internal error while running the task (ref {claim.task.id})"),
            )
        else:
            await self._finish(claim, TaskState.SUCCESS, outcome=outcome)

    async def _generate(self, claim: Claim) -> tuple[str, str]:
        """Fetch inputs, call the provider, store the image: (result keys, usage) as JSON."""
        claimed = time.monotonic()  # the claim was committed just before this task began
        task = claim.task
        spec = TaskInput.model_validate_json(task.input)
        images = await self._inputs.load(spec.image_input)
        route = self._providers.route_of(task)

        def on_started() -> None:
            self._wakeups.publish(Topic.TASKS, (task.id,))
            self._metrics.claim_to_start.observe(time.monotonic() - claimed)

        request = GenerationRequest(
            model=task.model,
            prompt=spec.prompt,
            images=images,
            aspect_ratio=spec.aspect_ratio,
            resolution=spec.resolution,
            output_format=spec.output_format,
            image_urls=tuple(spec.image_input),
            lane=Lane(task.lane),
        )
        image, attempt = await self._route.run(claim, route, request, on_started=on_started)
        started = attempt.started_at or now_ms()
        usage = {**image.usage, "provider_ms": now_ms() - started}
        return await save_result(self._storage, task.id, image, spec.output_format, usage)

    async def _finish(
        self,
        claim: Claim,
        state: TaskState,
        *,
        outcome: tuple[str, str] | None = None,
        fail: TaskFailure | None = None,
    ) -> None:
        await self._outcomes.finish(claim, state, outcome=outcome, fail=fail)
