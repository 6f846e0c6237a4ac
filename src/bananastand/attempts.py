"""A task's turn on one upstream: the fenced writes a provider makes while it runs it.

The worker makes one `TaskAttempt` per task and upstream and hands it to the provider
(`bananastand.providers.base.Attempt`), which says when the task starts generating and,
for an upstream that knows the task by a handle of its own, writes that handle first.
"""

from __future__ import annotations

from collections.abc import Callable

from bananastand.errors import LeaseLost
from bananastand.ids import now_ms
from bananastand.records import Claim
from bananastand.store.ports import TaskStore


class TaskAttempt:
    """``on_started`` runs once the task shows ``generating`` (the worker tells the other
    processes and times the claim-to-start)."""

    def __init__(
        self,
        store: TaskStore,
        claim: Claim,
        upstream: str,
        *,
        on_started: Callable[[], None],
    ) -> None:
        self.task_id = claim.task.id
        task = claim.task
        self.handle = task.upstream_handle if task.upstream == upstream else None
        self.upstream = upstream
        #: When the task started generating here (epoch ms), or None.
        self.started_at: int | None = None
        self._store = store
        self._lease_token = claim.lease_token
        self._on_started = on_started

    async def remember(self, handle: str) -> None:
        written = await self._store.remember_upstream(
            self.task_id, self._lease_token, upstream=self.upstream, handle=handle
        )
        if not written:
            raise LeaseLost(self.task_id)
        self.handle = handle

    async def started(self, handle: str | None = None) -> None:
        marked = await self._store.mark_generating(
            self.task_id, self._lease_token, upstream=self.upstream, handle=handle
        )
        if not marked:
            raise LeaseLost(self.task_id)
        self.handle = handle
        self.started_at = now_ms()
        self._on_started()
