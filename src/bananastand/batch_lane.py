"""The batch lane: tasks created with ``"lane": "batch"`` go to the upstream's Batch API in
jobs, at the batch price, and end one by one when their job does.

One process of the cluster runs it: whichever worker holds the ``batch-lane`` lease (the
leases table of ``membership``), asked at each round, so a successor takes over a lease
time after the holder died. Each round it

1. renews the leases of the tasks it holds (a task canceled meanwhile drops out);
2. takes back tasks of jobs already sent that came back to ``waiting`` (their holder
   stopped): the job is resumed, never sent again;
3. claims the tasks of each (upstream, model) whose group is due (``batch_max_requests``
   waiting, or the oldest waiting ``batch_max_wait_seconds``), records the job with its
   tasks in it, then sends it under a display name that finds it again at the upstream if
   the answer to its creation was lost;
4. polls each open job: once it succeeded, each task ends with its own image or failure,
   through the same fenced write as a worker's (refunded once, called back in the ending
   transaction); a job that failed, expired, or outlived ``batch_timeout_seconds`` puts its
   tasks back on the now lane (``batch_requeue_failed``) or fails them.

Tasks are claimed like a worker claims them (``queuing``, a lease), with a lease long
enough to outlast a round, so rescue and cancel treat them as any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from bananastand.contract import Lane, TaskInput, TaskState
from bananastand.errors import FeatureDisabledError, TaskFailure, UpstreamError, UpstreamTimeout
from bananastand.ids import random_token
from bananastand.inputs import InputLoader
from bananastand.logs import bind_task
from bananastand.outcomes import Outcomes, save_result
from bananastand.providers.base import GenerationRequest
from bananastand.providers.batch_base import BatchItem, BatchUpstream, ItemResult, JobProgress
from bananastand.providers.registry import route_plan
from bananastand.records import BatchJob, Claim
from bananastand.settings import Settings
from bananastand.storage.base import Storage
from bananastand.store.ports import BatchGroup, BatchStore, TaskStore, WorkerRegistry
from bananastand.upstreams import SANDBOX, RoutePlan, UpstreamKind
from bananastand.wakeups import Topic, Wakeups

log = logging.getLogger(__name__)

#: The lease whose holder runs the batch lane for the cluster.
BATCH_LEASE = "batch-lane"
#: Tasks back from jobs already sent, taken in one claim.
RESUME_CLAIM = 5000


class BatchLaneStore(BatchStore, TaskStore, WorkerRegistry, Protocol):
    """The batch tasks and jobs, the fenced writes about held tasks, and the leases."""


@dataclass
class OpenJob:
    record: BatchJob
    #: The tasks of the job this process holds, by id.
    held: dict[str, Claim] = field(default_factory=dict)


class BatchLane:
    def __init__(
        self,
        store: BatchLaneStore,
        settings: Settings,
        upstreams: Mapping[str, BatchUpstream],
        *,
        storage: Storage,
        inputs: InputLoader,
        outcomes: Outcomes,
        wakeups: Wakeups,
        holder: str,
    ) -> None:
        self._store = store
        self._settings = settings
        self._upstreams = dict(upstreams)
        self._storage = storage
        self._inputs = inputs
        self._outcomes = outcomes
        self._wakeups = wakeups
        self._holder = holder
        # The tasks' leases and the lane's own, renewed each round: both outlast a round
        # that runs late (a big job's upload) and lapse soon after this process stops.
        self._lease_ms = int((3 * settings.batch_poll_seconds + settings.lease_seconds) * 1000)
        self._jobs: dict[str, OpenJob] = {}
        self._leading = False
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Until ``stop()``; then hands back the tasks it holds (their jobs go on at the
        upstream, and whoever leads next resumes them)."""
        try:
            while not self._stopping.is_set():
                try:
                    if await self._lead():
                        await self._round()
                except Exception:
                    log.exception("batch lane round failed; trying again at the next")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._settings.batch_poll_seconds)
        finally:
            await self._let_go()
            for upstream in self._upstreams.values():
                await upstream.aclose()

    async def _lead(self) -> bool:
        leading = await self._store.take_lease(BATCH_LEASE, self._holder, self._lease_ms)
        if leading and not self._leading:
            log.info("took the batch-lane lease: this process runs the cluster's batch jobs")
        if not leading and self._leading:
            log.warning("lost the batch-lane lease; handing back the batch tasks held here")
            await self._let_go()
        self._leading = leading
        return leading

    async def _round(self) -> None:
        await self._renew()
        groups = await self._store.batch_groups()
        if any(group.in_job for group in groups):
            await self._resume()
        for group in groups:
            if not group.in_job and self._due(group):
                await self._open(group)
        for job in list(self._jobs.values()):
            upstream = self._upstreams.get(job.record.upstream)
            if upstream is None:
                await self._end(job, f"no Batch API is configured for {job.record.upstream}")
            else:
                await self._poll(job, upstream)

    def _due(self, group: BatchGroup) -> bool:
        waited_ms = self._store.now_ms() - group.oldest_ms
        return (
            group.waiting >= self._settings.batch_max_requests
            or waited_ms >= self._settings.batch_max_wait_seconds * 1000
        )

    async def _renew(self) -> None:
        held = [
            (task_id, claim.lease_token)
            for job in self._jobs.values()
            for task_id, claim in job.held.items()
        ]
        if not held:
            return
        lost = await self._store.renew_leases(held, self._lease_ms)
        for job in list(self._jobs.values()):
            for task_id in lost & job.held.keys():
                del job.held[task_id]
            if not job.held:
                # Every task of it was canceled: nothing is waiting for its answers.
                if job.record.upstream_name and job.record.upstream in self._upstreams:
                    await self._upstreams[job.record.upstream].cancel(job.record.upstream_name)
                await self._done(job, "every task of the job was canceled")

    async def _resume(self) -> None:
        token = random_token(24)
        claims = await self._store.claim_batch_tasks(
            lease_token=token,
            holder=self._holder,
            group=None,
            limit=RESUME_CLAIM,
            lease_ms=self._lease_ms,
        )
        by_job: dict[str, list[Claim]] = {}
        for claim in claims:
            by_job.setdefault(claim.task.batch_job or "", []).append(claim)
        self._wakeups.publish(Topic.TASKS, [claim.task.id for claim in claims])
        records = {job.id: job for job in await self._store.batch_jobs(by_job)}
        for job_id, job_claims in by_job.items():
            record = records.get(job_id)
            if record is None or record.state != "open":
                await self._to_now_lane(job_claims, f"batch job {job_id} is no longer open")
                continue
            job = self._jobs.setdefault(job_id, OpenJob(record))
            job.held.update((claim.task.id, claim) for claim in job_claims)
            log.info("resumed a batch job", extra={"batch_job": job_id, "tasks": len(job_claims)})

    async def _open(self, group: BatchGroup) -> None:
        token = random_token(24)
        claims = await self._store.claim_batch_tasks(
            lease_token=token,
            holder=self._holder,
            group=(group.upstream, group.model),
            limit=self._settings.batch_max_requests,
            lease_ms=self._lease_ms,
        )
        if not claims:
            return
        if group.upstream not in self._upstreams:
            await self._to_now_lane(claims, f"no Batch API is configured for {group.upstream}")
            return
        now = self._store.now_ms()
        job_id = random_token(16)
        oldest = min(claim.task.created_at for claim in claims)
        record = BatchJob(
            id=job_id,
            upstream=group.upstream,
            model=group.model,
            display_name=f"bananastand-{job_id}",
            state="open",
            upstream_name=None,
            tasks=len(claims),
            created_at=now,
            updated_at=now,
            deadline_at=oldest + int(self._settings.batch_timeout_seconds * 1000),
        )
        joined = set(await self._store.open_batch_job(record, [(c.task.id, token) for c in claims]))
        job = OpenJob(record, {c.task.id: c for c in claims if c.task.id in joined})
        self._jobs[job_id] = job
        self._wakeups.publish(Topic.TASKS, list(job.held))
        await self._submit(job, self._upstreams[group.upstream])

    async def _submit(self, job: OpenJob, upstream: BatchUpstream) -> None:
        """Send the job (again, after a failed attempt that left it unknown upstream)."""
        items = []
        for claim in list(job.held.values()):
            spec = TaskInput.model_validate_json(claim.task.input)
            try:
                images = await self._inputs.load(spec.image_input)
            except TaskFailure as failure:
                with bind_task(claim.task.id):
                    await self._outcomes.finish(claim, TaskState.FAIL, fail=failure)
                del job.held[claim.task.id]
                continue
            request = GenerationRequest(
                model=claim.task.model,
                prompt=spec.prompt,
                images=images,
                aspect_ratio=spec.aspect_ratio,
                resolution=spec.resolution,
                output_format=spec.output_format,
                lane=Lane.BATCH,
            )
            items.append(BatchItem(key=claim.task.id, request=request))
        if not items:
            await self._done(job, "no task of the job could be sent")
            return
        try:
            name = await upstream.submit(job.record.model, job.record.display_name, items)
        except TaskFailure as failure:
            await self._end(job, failure.message)
            return
        except Exception as exc:  # the SDK's errors, a dropped connection: unknown, retried
            refused = getattr(exc, "code", None)
            if isinstance(refused, int) and 400 <= refused < 500 and refused != 429:
                await self._end(job, f"the upstream refused the batch job: {exc}")
                return
            log.warning("sending the batch job failed; trying again: %s", exc)
            return
        await self._store.update_batch_job(job.record.id, upstream_name=name)
        job.record = replace(job.record, upstream_name=name)
        log.info(
            "batch job sent",
            extra={"batch_job": job.record.id, "upstream_job": name, "tasks": len(items)},
        )

    async def _poll(self, job: OpenJob, upstream: BatchUpstream) -> None:
        name = job.record.upstream_name
        if name is None:
            name = await upstream.find(job.record.display_name)
            if name is None:
                await self._submit(job, upstream)
                return
            await self._store.update_batch_job(job.record.id, upstream_name=name)
            job.record = replace(job.record, upstream_name=name)
        state = await upstream.state(name)
        if state.progress is JobProgress.SUCCEEDED:
            await self._finish(job, await upstream.results(name, list(job.held)))
        elif state.progress is JobProgress.ENDED:
            await self._end(job, f"the batch job ended {state.state}")
        elif self._store.now_ms() >= job.record.deadline_at:
            await upstream.cancel(name)
            limit = self._settings.batch_timeout_seconds
            await self._end(job, f"timed out after {limit:g} s in the batch lane", timed_out=True)

    async def _finish(self, job: OpenJob, results: list[ItemResult]) -> None:
        for result in results:
            claim = job.held.get(result.key)
            if claim is None:
                continue
            with bind_task(claim.task.id):
                if result.image is None:
                    failure = result.failure or UpstreamError("no answer in the batch job")
                    await self._outcomes.finish(claim, TaskState.FAIL, fail=failure)
                    continue
                spec = TaskInput.model_validate_json(claim.task.input)
                usage = {**result.image.usage, "provider": job.record.upstream}
                outcome = await save_result(
                    self._storage, claim.task.id, result.image, spec.output_format, usage
                )
                await self._outcomes.finish(claim, TaskState.SUCCESS, outcome=outcome)
        await self._done(job, "succeeded")

    async def _end(self, job: OpenJob, reason: str, *, timed_out: bool = False) -> None:
        """The job gave no answers: its tasks to the now lane, or failed (refunded)."""
        claims = list(job.held.values())
        if self._settings.batch_requeue_failed:
            await self._to_now_lane(claims, reason)
        else:
            for claim in claims:
                failure = (UpstreamTimeout if timed_out else UpstreamError)(reason)
                with bind_task(claim.task.id):
                    await self._outcomes.finish(claim, TaskState.FAIL, fail=failure)
        await self._done(job, reason)

    async def _to_now_lane(self, claims: Sequence[Claim], reason: str) -> None:
        moved = await self._store.to_now_lane([(c.task.id, c.lease_token) for c in claims])
        if moved:
            log.warning("batch tasks go to the now lane: %s", reason, extra={"tasks": len(moved)})
            self._wakeups.publish(Topic.TASKS, moved)
            self._wakeups.publish(Topic.WORK)

    async def _done(self, job: OpenJob, outcome: str) -> None:
        await self._store.update_batch_job(job.record.id, state="done", outcome=outcome)
        self._jobs.pop(job.record.id, None)
        log.info("batch job done", extra={"batch_job": job.record.id, "outcome": outcome})

    async def _let_go(self) -> None:
        """Hand back the held tasks (still in their jobs) and the lease."""
        jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            for task_id, claim in job.held.items():
                with contextlib.suppress(Exception):
                    await self._store.release_task(task_id, claim.lease_token)
        if jobs:
            self._wakeups.publish(Topic.TASKS, [t for job in jobs for t in job.held])
        if self._leading:
            with contextlib.suppress(Exception):
                await self._store.release_lease(BATCH_LEASE, self._holder)
            self._leading = False


def batch_provider(plan: RoutePlan, model: str, chosen: str) -> str:
    """The upstream a batch-lane task of ``model`` is for: the first of kind ``gemini`` on
    the model's route (``chosen``, the sandbox, stays: test keys run there); 505 when the
    route has none."""
    if chosen == SANDBOX:
        return chosen
    route = plan.route(model)
    kinds = [plan.upstreams[name].kind for name in route if name in plan.upstreams]
    for name, kind in zip(route, kinds, strict=False):
        if kind is UpstreamKind.GEMINI:
            return name
    if UpstreamKind.VERTEX in kinds:
        raise FeatureDisabledError(
            "lane: the batch lane needs a Gemini API upstream; Vertex AI batch jobs read and "
            "write Cloud Storage or BigQuery, which this server does not use"
        )
    raise FeatureDisabledError(f"lane: no Gemini API upstream on the route of {model}")


def batch_upstreams(settings: Settings) -> dict[str, BatchUpstream]:
    """The Batch APIs of the routed upstreams of kind ``gemini``, each on the first key of
    its pool (a job is found again only by the key that made it). Built only where some
    exist, so a server without them never imports google-genai for this."""
    plan = route_plan(settings)
    routed = {name for route in plan.routes.values() for name in route}
    gemini = {
        name: config
        for name, config in plan.upstreams.items()
        if name in routed and config.kind is UpstreamKind.GEMINI
    }
    if not gemini:
        return {}
    from bananastand.providers.google_batch import GoogleBatches

    return {
        name: GoogleBatches.gemini(
            name,
            config.keys[0],
            settings.models,
            base_url=config.base_url,
            timeout_s=config.timeout_seconds,
            inline_limit_bytes=settings.batch_inline_limit_bytes,
            upstream_model=config.model,
        )
        for name, config in gemini.items()
    }
