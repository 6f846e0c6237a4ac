"""How a held task ends, whoever holds it (a worker, or the batch lane's singleton): its
image stored as a result, and its outcome written once, fenced by its lease, in the
store's ending transaction (refund, callback), then told to the other processes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import orjson

from bananastand import imaging
from bananastand.contract import OutputFormat, TaskState
from bananastand.errors import TaskFailure
from bananastand.ids import random_token
from bananastand.metrics import Metrics
from bananastand.providers.base import GeneratedImage
from bananastand.records import Claim
from bananastand.storage.base import Storage
from bananastand.store.ports import Failure, TaskStore
from bananastand.wakeups import Topic, Wakeups

log = logging.getLogger(__name__)


async def save_result(
    storage: Storage,
    task_id: str,
    image: GeneratedImage,
    output_format: OutputFormat,
    usage: Mapping[str, int | float | str],
) -> tuple[str, str]:
    """The image in the requested format, stored: (result keys, usage) as JSON."""
    data = await asyncio.to_thread(imaging.to_output_format, image.data, output_format)
    key = f"results/{task_id}/{random_token(24)}.{output_format.value}"
    await storage.put(key, data, output_format.mime_type)
    return orjson.dumps([key]).decode(), orjson.dumps(dict(usage)).decode()


class Outcomes:
    """Writes the end of held tasks and tells every process of it."""

    def __init__(self, store: TaskStore, wakeups: Wakeups, metrics: Metrics) -> None:
        self._store = store
        self._wakeups = wakeups
        self._metrics = metrics

    async def finish(
        self,
        claim: Claim,
        state: TaskState,
        *,
        outcome: tuple[str, str] | None = None,
        fail: TaskFailure | None = None,
    ) -> bool:
        """Whether it was written (False: the lease was lost, the outcome dropped)."""
        result_keys, usage = outcome or ("", "{}")
        written = await self._store.finish_task(
            claim.task.id,
            claim.lease_token,
            state=state,
            result_keys=result_keys,
            failure=Failure(fail.fail_code, fail.message) if fail else None,
            usage=usage,
        )
        if written:
            self._wakeups.publish(Topic.TASKS, (claim.task.id,))
            self._metrics.tasks_finished.labels(
                claim.task.model, state.value, fail.fail_code if fail else ""
            ).inc()
        if written and claim.task.callback_url:
            self._wakeups.publish(Topic.CALLBACKS)
        if not written:
            log.warning("outcome dropped: the lease was lost (canceled or rescued meanwhile)")
        elif fail is not None:
            log.info("task failed", extra={"fail_code": fail.fail_code, "fail_msg": fail.message})
        else:
            log.info("task succeeded")
        return written
