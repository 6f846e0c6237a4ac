"""The account-facing side of callbacks: the webhook secret, the attempt log, resending."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from bananastand.addresses import HostList
from bananastand.errors import NotFoundError, ValidationError
from bananastand.records import Callback, DeliveryState, WebhookSecret
from bananastand.settings import Settings
from bananastand.store.ports import Outbox
from bananastand.webhooks.schedule import denied
from bananastand.webhooks.signing import new_secret


class Webhooks:
    """The account-facing side: webhook secrets, the attempt log, resending."""

    def __init__(
        self, store: Outbox, settings: Settings, *, on_resend: Callable[[], None] = lambda: None
    ) -> None:
        self._store = store
        self._settings = settings
        self._deny = HostList.parse(settings.callback_deny_hosts)
        # Lets a sender in this process send at once rather than at its next poll.
        self._on_resend = on_resend

    @property
    def rotation_window_ms(self) -> int:
        return int(self._settings.webhook_secret_rotation_seconds * 1000)

    async def secret(self, account_id: str, *, rotate: bool = False) -> WebhookSecret:
        """The account's secret, made on first use; ``rotate`` replaces it (the old one
        keeps signing, beside the new one, for the rotation window)."""
        found = await self._store.account_secret(account_id, new_secret, rotate=rotate)
        if found is None:
            raise NotFoundError(f"account {account_id} does not exist")
        return found

    async def callback(self, account_id: str, task_id: str) -> Callback:
        """The task's callback and its attempts; a task that has not ended has none yet."""

        task, found = await self._store.callback_of_task(task_id, account_id)
        if task is None:
            raise NotFoundError(f"task {task_id} not found")
        if task.callback_url is None:
            raise ValidationError("taskId: the task has no callBackUrl")
        if found is None:
            return Callback(
                id=None,
                task_id=task.id,
                url=task.callback_url,
                state=DeliveryState.WAITING,  # sent when the task ends
                next_attempt_at=None,
                delivered_at=None,
                attempts=(),
                upstream=task.upstream,
            )
        return replace(found, upstream=task.upstream)

    async def resend(self, account_id: str, task_id: str) -> Callback:
        """Send the callback again now (same webhook-id, a fresh retry schedule).

        A refused callback whose host is still denied stays as it is; once the setting
        no longer denies it, a resend sends it.
        """
        current = await self.callback(account_id, task_id)
        if current.id is None:
            raise ValidationError(
                "taskId: the task has not ended; its callback is sent when it does"
            )
        if current.state is DeliveryState.REFUSED and denied(self._deny, current.url):
            return current
        await self._store.resend(task_id, account_id)
        self._on_resend()
        return await self.callback(account_id, task_id)
