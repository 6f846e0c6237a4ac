"""A task's wire record, with links to its results made at the moment it is handed out.

The store keeps storage keys, never links: a link names the server's public URL, and a
server restarted on another port or behind a new domain must hand out links that work
there, for old tasks too. A result link expires ``result_link_seconds`` after the task
ended, so one record gives the same link on every read (and every callback attempt)
until the public URL or the signing secret changes.
"""

from __future__ import annotations

from typing import Any

import orjson

from bananastand.records import Task
from bananastand.storage.links import LinkSigner


class RecordMaker:
    """Makes the wire record (``contract.TaskRecord``, field for field) of a stored task."""

    def __init__(self, links: LinkSigner, result_link_seconds: int) -> None:
        self._links = links
        self._lifetime_s = result_link_seconds

    def result_urls(self, task: Task) -> list[str]:
        if not task.result_keys:
            return []
        ended_s = (task.completed_at or task.updated_at) // 1000
        return [self._link(key, ended_s + self._lifetime_s) for key in task.result_keys]

    def record(self, task: Task) -> dict[str, Any]:
        """The ``data`` of recordInfo, the list, event streams and callbacks.

        A plain dict rather than a ``TaskRecord``: recordInfo is the API's hottest answer,
        and the suite holds every answer to the model's fields."""
        urls = self.result_urls(task)
        return {
            "taskId": task.id,
            "model": task.model,
            "state": task.state.value,
            "param": task.param,
            "resultJson": orjson.dumps({"resultUrls": urls}).decode() if urls else "",
            "failCode": task.fail_code,
            "failMsg": task.fail_msg,
            "costTime": task.cost_time_ms,
            "createTime": task.created_at,
            "updateTime": task.updated_at,
            "completeTime": task.completed_at,
            "creditsConsumed": task.credits_consumed,
        }

    def _link(self, key: str, expires_at: int) -> str:
        # Stored before links were made at hand-out time and not one of ours: kept as is.
        if key.startswith(("http://", "https://")):
            return key
        return self._links.url(key, expires_at)
