"""Callbacks from jobs-api upstreams (``POST /hooks/upstream/{upstream}``).

An upstream that ends a relayed task calls back, signed with the secret of our account
there (the upstream's ``webhook_secret``). The body is never trusted: the hosted API's
``X-Webhook-Signature`` covers only ``taskId.timestamp``, so a callback says no more than
*look now*. The process that receives it (any API process) names our task on
``Topic.TASKS``; the worker following that upstream task, in whatever process, polls
recordInfo at once (``relay._Nudges``) and reads the outcome from the upstream itself.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping

from bananastand.client.webhooks import CallbackVerificationError, verify_callback
from bananastand.settings import Settings
from bananastand.store.ports import TaskStore
from bananastand.upstreams import UpstreamKind
from bananastand.wakeups import Topic, Wakeups

log = logging.getLogger(__name__)


class HookOutcome(enum.Enum):
    #: Verified; the worker following the task was told to poll.
    NUDGED = "nudged"
    #: Verified, but no task of ours is that upstream task (ended long ago, or never ours).
    NO_TASK = "no task"
    #: No such upstream, or one without a ``webhook_secret``: it takes no callbacks.
    UNKNOWN_UPSTREAM = "unknown upstream"
    #: The signature or timestamp does not check out: ignored.
    REFUSED = "refused"


class UpstreamHooks:
    """``secrets``: each jobs-api upstream's ``webhook_secret``, by upstream name."""

    def __init__(self, secrets: Mapping[str, str], store: TaskStore, wakeups: Wakeups) -> None:
        self._secrets = {name: secret for name, secret in secrets.items() if secret}
        self._store = store
        self._wakeups = wakeups

    @classmethod
    def from_settings(cls, settings: Settings, store: TaskStore, wakeups: Wakeups) -> UpstreamHooks:
        """The jobs-api upstreams of the config file that have a ``webhook_secret``."""
        secrets = {
            name: config.webhook_secret
            for name, config in settings.upstreams.items()
            if config.kind is UpstreamKind.JOBS_API
        }
        return cls(secrets, store, wakeups)

    async def receive(self, upstream: str, body: bytes, headers: Mapping[str, str]) -> HookOutcome:
        secret = self._secrets.get(upstream)
        if secret is None:
            log.warning(
                "ignored a callback for an upstream that takes none", extra={"upstream": upstream}
            )
            return HookOutcome.UNKNOWN_UPSTREAM
        try:
            payload = verify_callback(body, headers, secret)
        except CallbackVerificationError as exc:
            log.warning(
                "ignored an upstream callback that failed verification",
                extra={"upstream": upstream, "reason": str(exc)},
            )
            return HookOutcome.REFUSED
        data = payload.get("data")
        handle = data.get("taskId") if isinstance(data, dict) else None
        task_id = (
            await self._store.task_by_upstream_handle(upstream, handle)
            if isinstance(handle, str)
            else None
        )
        if task_id is None:
            log.info(
                "an upstream called back about no task of ours",
                extra={"upstream": upstream, "upstream_task": handle},
            )
            return HookOutcome.NO_TASK
        self._wakeups.publish(Topic.TASKS, (task_id,))
        return HookOutcome.NUDGED
